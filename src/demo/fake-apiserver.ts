/**
 * A kube-apiserver stand-in for tests, the demo and benchmarks: mutual-TLS HTTPS on HTTP/2 and HTTP/1.1 with the
 * endpoints node clients and kubectl touch (/readyz /livez /healthz /version /api /apis, SelfSubjectReview, a
 * long watch, a large list), and fault controls an API server exhibits in production: not-ready, graceful
 * shutdown with `--shutdown-delay-duration`, a crash (RST on every socket) and a hang (nothing read or written).
 *
 * Connections are accepted by a plain TCP listener and handed to the TLS/HTTP server through a {@link RawRelay}, so
 * a hang can keep accepting TCP (as the kernel does for a stopped process) while never reading a byte, and a crash
 * can reset the raw TCP sockets underneath TLS.
 */
import { createServer as createTcpServer, isIP, type Server as TcpServer, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { createSecureServer, type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { OptionError } from '../errors.js';
import { formatAddress } from '../config/values.js';
import type { TestCA } from './test-ca.js';

/** Explicit key material for a stand-in: its serving certificate and key, and the CA that client certs must chain to. */
export interface FakeApiServerTls {
  /** PEM serving certificate (its SANs should cover the address clients dial, e.g. IP:127.0.0.1). */
  cert: string;
  /** PEM private key of `cert`. */
  key: string;
  /** PEM CA bundle client certificates are verified against (also what clients should trust for `cert`). */
  caCert: string;
}

/** File names of key material in a directory, as fake-apiserver-main.ts reads them (`--ca-dir`). */
export const KEY_DIR_FILES = { caCert: 'ca.crt', cert: 'apiserver.crt', key: 'apiserver.key' } as const;

/** Options of {@link startFakeApiServer}. Validated once; a bad value throws OptionError (APILB_ERR_OPTION_INVALID). */
export interface FakeApiServerOptions {
  /**
   * Key material: a {@link TestCA} (a serving certificate named `name` with SANs kubernetes, localhost, 127.0.0.1
   * and ::1 is issued from it), or explicit {@link FakeApiServerTls}. Required.
   */
  ca: TestCA | FakeApiServerTls;
  /** Name echoed in the `x-apiserver-name` header of every response and in /whoami. Default `apiserver-1`. */
  name?: string;
  /** Listen host, an IP literal or `localhost`. Default `127.0.0.1`. */
  host?: string;
  /** Listen port; 0 (the default) picks a free port, read it back from `port`. */
  port?: number;
  /**
   * Like kube-apiserver's `--anonymous-auth`. Default true: /readyz /livez /healthz /version answer without a
   * client certificate, every other path answers 403 to the anonymous user. False: every path answers 401
   * unless the client presents a certificate that verifies against the CA.
   */
  anonymousAuth?: boolean;
  /**
   * Milliseconds between watch events on an open watch. Default 1000. 0: only the initial ADDED event is sent and
   * the stream then stays open and silent. Negative values are rejected.
   */
  watchIntervalMs?: number;
  /** Version reported by /version, `vMAJOR.MINOR.PATCH`. Default `v1.31.0`. */
  version?: string;
}

/**
 * Which credentials a stand-in accepts, checked per request (a rotated-out certificate or token is refused on a
 * connection that was opened while it was current). Anything else, anonymous included, gets 401.
 */
export interface CredentialPolicy {
  /** PEM client certificates accepted (matched by SHA-256 fingerprint; they must also chain to the CA). */
  certs?: readonly string[];
  /** Bearer tokens accepted (`Authorization: Bearer <token>`). */
  tokens?: readonly string[];
}

/** Options of {@link FakeApiServer.gracefulShutdown}. */
export interface GracefulShutdownOptions {
  /**
   * Like `--shutdown-delay-duration`: how long /readyz answers 500 while everything is still served normally,
   * before the listener closes. Default 0 (close the listener at once).
   */
  delayMs?: number;
  /**
   * After the listener closed, how long in-flight requests may take before remaining connections are destroyed.
   * Default 60000 (kube-apiserver's default request timeout). 0 destroys them at once.
   */
  drainTimeoutMs?: number;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$/;
const VERSION_RE = /^v(\d+)\.(\d+)\.(\d+)$/;
/** Largest `?bytes=` a list response is built for (it is built in memory). */
const MAX_LIST_BYTES = 256 * 1024 * 1024;
/** Largest `?bytes=` /echo-size streams (it is generated on the fly). */
const MAX_ECHO_BYTES = 64 * 1024 * 1024 * 1024;
const DEFAULT_LIST_BYTES = 1024 * 1024;
const WRITE_CHUNK = 64 * 1024;
/** Payload of /echo-size, shared by every response (never written to). */
const ECHO_BLOCK = Buffer.alloc(WRITE_CHUNK, 'x');
const PUBLIC_PATHS = new Set(['/readyz', '/livez', '/healthz', '/version']);
const READYZ_CHECKS = ['ping', 'log', 'etcd', 'etcd-readiness', 'informer-sync', 'poststarthook/start-apiserver-admission-initializer'];

type Request = Http2ServerRequest;
type Response = Http2ServerResponse;

/** Who a request authenticated as. */
interface User {
  username: string;
  groups: string[];
  cn?: string;
  o: string[];
}

/** Who a request authenticated by bearer token is (the stand-in does not map tokens to users). */
const TOKEN_USER: User = { username: 'system:serviceaccount:kube-system:apilb', groups: ['system:serviceaccounts', 'system:authenticated'], o: [] };

/** Per-TLS-connection state of an HTTP/1.1 connection (HTTP/2 sessions drain through session.close()). */
interface Http1Conn {
  active: number;
}

function isTls(x: TestCA | FakeApiServerTls): x is FakeApiServerTls {
  return typeof (x as FakeApiServerTls).key === 'string' && typeof (x as FakeApiServerTls).caCert === 'string';
}

function validate(opts: FakeApiServerOptions): Required<Omit<FakeApiServerOptions, 'ca'>> & { tls: FakeApiServerTls } {
  if (opts === null || typeof opts !== 'object') throw new OptionError('opts', 'must be an object');
  const { ca } = opts;
  if (ca === null || typeof ca !== 'object') throw new OptionError('ca', 'is required (a TestCA or {cert, key, caCert})');
  const name = opts.name ?? 'apiserver-1';
  if (typeof name !== 'string' || !NAME_RE.test(name))
    throw new OptionError('name', `must match ${NAME_RE} (it is sent as a header), got ${JSON.stringify(name)}`);
  const host = opts.host ?? '127.0.0.1';
  if (typeof host !== 'string' || (host !== 'localhost' && isIP(host) === 0))
    throw new OptionError('host', `must be an IP literal or localhost, got ${JSON.stringify(host)}`);
  const port = opts.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new OptionError('port', `must be an integer 0..65535, got ${port}`);
  const anonymousAuth = opts.anonymousAuth ?? true;
  if (typeof anonymousAuth !== 'boolean') throw new OptionError('anonymousAuth', 'must be a boolean');
  const watchIntervalMs = opts.watchIntervalMs ?? 1000;
  if (!Number.isInteger(watchIntervalMs) || watchIntervalMs < 0) throw new OptionError('watchIntervalMs', `must be an integer >= 0, got ${watchIntervalMs}`);
  const version = opts.version ?? 'v1.31.0';
  if (typeof version !== 'string' || !VERSION_RE.test(version)) throw new OptionError('version', `must look like v1.31.0, got ${JSON.stringify(version)}`);
  let tls: FakeApiServerTls;
  if (isTls(ca)) {
    if (!ca.cert || !ca.key || !ca.caCert) throw new OptionError('ca', 'needs non-empty cert, key and caCert');
    tls = { cert: ca.cert, key: ca.key, caCert: ca.caCert };
  } else if (typeof ca.server === 'function' && typeof ca.cert === 'string') {
    const leaf = ca.server(name);
    tls = { cert: leaf.cert, key: leaf.key, caCert: ca.cert };
  } else {
    throw new OptionError('ca', 'must be a TestCA or {cert, key, caCert}');
  }
  return { name, host, port, anonymousAuth, watchIntervalMs, version, tls };
}

function status(code: number, reason: string, message: string): string {
  return JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, details: {}, code });
}

/** Parses `?bytes=N`: a non-negative safe integer up to `max`, or `dflt` when absent; null when invalid. */
function bytesParam(url: URL, dflt: number, max: number): number | null {
  const raw = url.searchParams.get('bytes');
  if (raw === null) return dflt;
  if (!/^\d{1,15}$/.test(raw)) return null;
  const n = Number(raw);
  return n <= max ? n : null;
}

/**
 * A PodList of exactly `bytes` bytes when `bytes` is at least the size of an empty list (smaller requests get the
 * empty list). Items are ~1 KB pods; whitespace before the final brace pads to the exact size (valid JSON).
 */
function podListBody(bytes: number): Buffer {
  const head = '{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1000"},"items":[';
  const tail = ']}';
  const parts: string[] = [];
  let size = head.length + tail.length;
  for (let i = 0; ; i++) {
    const pod = JSON.stringify({
      metadata: {
        name: `pod-${i}`,
        namespace: 'default',
        uid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
        resourceVersion: String(1000 + i),
        labels: { app: 'demo', 'pod-template-hash': '5d4f8c7b9' },
      },
      spec: {
        nodeName: `node-${i % 16}`,
        containers: [{ name: 'app', image: 'registry.k8s.io/pause:3.10', resources: { requests: { cpu: '10m', memory: '16Mi' } } }],
      },
      status: { phase: 'Running', podIP: `10.244.${(i >> 8) & 255}.${i & 255}`, conditions: [{ type: 'Ready', status: 'True' }], message: 'x'.repeat(480) },
    });
    const add = pod.length + (parts.length > 0 ? 1 : 0);
    if (size + add > bytes) break;
    parts.push(pod);
    size += add;
  }
  const body = head + parts.join(',') + tail;
  const pad = Math.max(0, bytes - body.length);
  return Buffer.from(body.slice(0, -1) + ' '.repeat(pad) + '}');
}

/** The running stand-in. Create with {@link startFakeApiServer}. */
export class FakeApiServer {
  /** Name sent in `x-apiserver-name`. */
  readonly name: string;
  /** Host it listens on. */
  readonly host: string;
  /** CA bundle (PEM) clients should trust and client certs must chain to. */
  readonly caCert: string;
  /** Requests received (any path, any outcome). */
  requests = 0;
  /** TCP connections accepted since start (including ones accepted while hung). */
  connections = 0;
  /** Requests answered 401 because of {@link requireCredentials}. */
  refused = 0;

  private readonly opts: ReturnType<typeof validate>;
  private readonly tcp: TcpServer;
  private readonly http: Http2SecureServer;
  private boundPort = 0;
  private ready = true;
  private draining = false;
  private listenerClosed = false;
  /** The TCP server emitted 'close' (listener closed and every accepted connection gone). */
  private tcpClosed = false;
  private hung = false;
  private crashed = false;
  private resumeWaiters: (() => void)[] = [];
  /** Accepted TCP sockets and the relay each one reaches TLS through. */
  private readonly raws = new Map<Socket, RawRelay>();
  /** Raw sockets accepted while hung: never handed to TLS until resume(). */
  private readonly held = new Set<Socket>();
  private readonly sessions = new Set<Http2Session>();
  private readonly http1 = new Map<TLSSocket, Http1Conn>();
  /** Open watches and how to stop each one's event timer. */
  private readonly watches = new Map<Response, () => void>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly listCache = new Map<number, Buffer>();
  private shutdownPromise: Promise<void> | undefined;
  private closePromise: Promise<void> | undefined;
  private resourceVersion = 1000;
  private policy: { fingerprints: Set<string>; tokens: Set<string> } | undefined;

  /** @internal use {@link startFakeApiServer}. */
  constructor(opts: FakeApiServerOptions) {
    this.opts = validate(opts);
    this.name = this.opts.name;
    this.host = this.opts.host;
    this.caCert = this.opts.tls.caCert;
    const { tls } = this.opts;
    this.http = createSecureServer({
      cert: tls.cert,
      key: tls.key,
      ca: tls.caCert,
      allowHTTP1: true,
      requestCert: true,
      // Verification happens per request (socket.authorized) so anonymous health checks still work.
      rejectUnauthorized: false,
    });
    this.http.on('request', (req, res) => this.onRequest(req, res));
    this.http.on('session', (session) => this.onSession(session));
    this.http.on('secureConnection', (socket) => this.onSecureConnection(socket));
    this.http.on('tlsClientError', function onTlsClientError() {
      /* a client that fails the handshake is its problem */
    });
    this.http.on('sessionError', function onSessionError() {
      /* the session is torn down by http2 itself */
    });
    this.tcp = createTcpServer({ noDelay: true }, (raw) => this.onConnection(raw));
  }

  /** Port it listens on (the real one when started with port 0). */
  get port(): number {
    return this.boundPort;
  }

  /**
   * Accepts only these credentials from now on, per request (see {@link CredentialPolicy}); `undefined` goes
   * back to the `anonymousAuth` behaviour.
   */
  requireCredentials(policy: CredentialPolicy | undefined): void {
    this.policy = policy && {
      fingerprints: new Set((policy.certs ?? []).map((pem) => new X509Certificate(pem).fingerprint256)),
      tokens: new Set(policy.tokens ?? []),
    };
  }

  /** `HOST:PORT` (IPv6 in brackets), e.g. `127.0.0.1:40123`. */
  get address(): string {
    return formatAddress({ host: this.host, port: this.boundPort });
  }

  /** Open TCP connections (held ones included). */
  get activeConnections(): number {
    return this.raws.size;
  }

  /** Whether /readyz would answer 200 now. */
  get isReady(): boolean {
    return this.ready && !this.draining;
  }

  /** @internal Binds the listener. */
  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      function onListenError(err: Error): void {
        reject(err);
      }
      this.tcp.once('error', onListenError);
      this.tcp.listen({ host: this.host, port: this.opts.port, ipv6Only: this.host.includes(':') }, () => {
        this.tcp.off('error', onListenError);
        resolve();
      });
    });
    this.boundPort = (this.tcp.address() as AddressInfo).port;
  }

  /** Sets what /readyz reports (like etcd becoming unreachable). Does not affect anything else. */
  setReady(ready: boolean): void {
    this.ready = ready;
  }

  /**
   * Mimics kube-apiserver's graceful termination: /readyz answers 500 at once while every request is still
   * served; after `delayMs` the listener closes (new connections are refused), open watches end cleanly,
   * HTTP/2 sessions get GOAWAY, HTTP/1.1 connections close once their in-flight request finishes. Resolves when
   * every connection is closed. Calling it again returns the same promise.
   */
  gracefulShutdown(opts: GracefulShutdownOptions = {}): Promise<void> {
    const delayMs = opts.delayMs ?? 0;
    const drainTimeoutMs = opts.drainTimeoutMs ?? 60_000;
    if (!Number.isInteger(delayMs) || delayMs < 0) throw new OptionError('delayMs', `must be an integer >= 0, got ${delayMs}`);
    if (!Number.isInteger(drainTimeoutMs) || drainTimeoutMs < 0) throw new OptionError('drainTimeoutMs', `must be an integer >= 0, got ${drainTimeoutMs}`);
    if (this.shutdownPromise) return this.shutdownPromise;
    this.draining = true;
    this.shutdownPromise = new Promise<void>((resolve) => {
      // Registered now so a crash() or close() during the delay also settles it.
      void this.allClosed().then(resolve);
      this.after(delayMs, () => {
        this.closeListener();
        for (const raw of this.held) raw.destroy();
        for (const [res, stop] of this.watches) {
          // Timer first: an event written after end() would reset the stream instead of finishing it.
          stop();
          res.end();
        }
        for (const session of this.sessions) session.close();
        for (const [socket, conn] of this.http1) if (conn.active === 0) socket.end();
        this.after(drainTimeoutMs, () => {
          for (const raw of this.raws.keys()) raw.destroy();
        });
      });
    });
    return this.shutdownPromise;
  }

  /**
   * A crash: the listener closes and every open TCP connection is reset (RST, clients see ECONNRESET). Resolves
   * when all sockets are gone.
   */
  async crash(): Promise<void> {
    this.draining = true;
    this.closeListener();
    for (const raw of this.raws.keys()) {
      // The raw TCP socket under TLS still owns the TCP handle; resetting it aborts the connection with RST.
      if (raw.destroyed) continue;
      try {
        raw.resetAndDestroy();
      } catch {
        raw.destroy();
      }
    }
    this.clearTimers();
    // Stalled handlers (from a hang) wake, see their response destroyed and return.
    this.crashed = true;
    this.releaseWaiters();
    await this.allClosed();
  }

  /**
   * A hang (a stopped or wedged process): open connections stop being read and written (requests in progress
   * stall, watches go silent, HTTP/2 PINGs are not answered); new TCP connections are still accepted but never
   * read, so TLS handshakes never complete. Undo with {@link resume}.
   */
  hang(): void {
    if (this.hung) return;
    this.hung = true;
    for (const relay of this.raws.values()) relay.hold();
  }

  /** Ends a {@link hang}: reading restarts, stalled requests continue, held connections get their TLS handshake. */
  resume(): void {
    if (!this.hung) return;
    this.hung = false;
    for (const [raw, relay] of this.raws) if (!this.held.has(raw)) relay.release();
    for (const raw of this.held) {
      this.held.delete(raw);
      const relay = this.raws.get(raw);
      if (raw.destroyed || !relay) continue;
      relay.release();
      this.http.emit('connection', relay);
    }
    this.releaseWaiters();
  }

  /** Releases everything at once: listener, every socket (destroyed, no drain), timers. Idempotent. */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.draining = true;
    this.closePromise = (async () => {
      this.closeListener();
      this.clearTimers();
      for (const [res, stop] of this.watches) {
        stop();
        res.destroy();
      }
      for (const session of this.sessions) session.destroy();
      for (const raw of this.raws.keys()) raw.destroy();
      this.releaseWaiters();
      await this.allClosed();
      this.listCache.clear();
    })();
    return this.closePromise;
  }

  // ---- connection plumbing ----

  private onConnection(raw: Socket): void {
    this.connections++;
    const relay = new RawRelay(raw, this.hung);
    this.raws.set(raw, relay);
    raw.on('error', function onRawError() {
      /* resets are expected in fault tests */
    });
    raw.once('close', () => {
      this.raws.delete(raw);
      this.held.delete(raw);
      this.checkClosed();
    });
    if (this.hung) {
      // Accepted by the kernel, never read: the client's ClientHello sits in our receive buffer.
      this.held.add(raw);
      return;
    }
    this.http.emit('connection', relay);
  }

  private onSecureConnection(socket: TLSSocket): void {
    socket.on('error', function onTlsError() {
      /* mirrored by the raw socket */
    });
    if (socket.alpnProtocol === 'h2') return;
    const conn: Http1Conn = { active: 0 };
    this.http1.set(socket, conn);
    socket.once('close', () => this.http1.delete(socket));
  }

  private onSession(session: Http2Session): void {
    this.sessions.add(session);
    session.on('error', function onSessionError() {
      /* the raw socket reports it */
    });
    session.once('close', () => this.sessions.delete(session));
    if (this.listenerClosed) session.close();
  }

  /**
   * Stops accepting at once. net.Server's close callback fires only after every accepted connection ended, so
   * it marks the end of allClosed(), not the end of accepting.
   */
  private closeListener(): void {
    this.listenerClosed = true;
    if (this.tcp.listening) {
      this.tcp.close(() => {
        this.tcpClosed = true;
        this.checkClosed();
      });
    } else {
      this.tcpClosed = true;
    }
  }

  private closedWaiters: (() => void)[] = [];

  private allClosed(): Promise<void> {
    return new Promise((resolve) => {
      this.closedWaiters.push(resolve);
      this.checkClosed();
    });
  }

  private checkClosed(): void {
    if (this.raws.size > 0 || !this.tcpClosed) return;
    this.clearTimers();
    const waiters = this.closedWaiters;
    this.closedWaiters = [];
    for (const w of waiters) w();
  }

  private after(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }

  private clearTimers(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }

  private releaseWaiters(): void {
    const waiters = this.resumeWaiters;
    this.resumeWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves at once unless hung; then when resumed (or crashed or closed). */
  private whenRunning(): Promise<void> {
    if (!this.hung || this.crashed || this.closePromise) return Promise.resolve();
    return new Promise((resolve) => this.resumeWaiters.push(resolve));
  }

  // ---- HTTP ----

  private onRequest(req: Request, res: Response): void {
    this.requests++;
    req.on('error', function onRequestError() {
      /* client went away */
    });
    res.on('error', function onResponseError() {
      /* client went away */
    });
    req.resume();
    res.setHeader('x-apiserver-name', this.name);
    if (req.httpVersionMajor === 1) this.trackHttp1(req, res);
    void this.whenRunning().then(() => {
      if (res.destroyed || res.writableEnded) return;
      try {
        this.route(req, res);
      } catch (err) {
        if (!res.headersSent) this.send(res, 500, status(500, 'InternalError', String(err)));
        else res.destroy();
      }
    });
  }

  private trackHttp1(req: Request, res: Response): void {
    const socket = req.socket as unknown as TLSSocket;
    const conn = this.http1.get(socket);
    if (!conn) return;
    conn.active++;
    res.once('close', () => {
      conn.active--;
      if (this.listenerClosed && conn.active === 0) socket.end();
    });
  }

  private authenticate(req: Request): User | 'invalid' | undefined {
    const socket = req.socket as unknown as TLSSocket;
    const cert = socket.getPeerCertificate();
    if (!cert || Object.keys(cert).length === 0) return undefined;
    if (!socket.authorized) return 'invalid';
    const subject = cert.subject as unknown as Record<string, string | string[] | undefined>;
    const cn = typeof subject.CN === 'string' ? subject.CN : Array.isArray(subject.CN) ? subject.CN[0] : undefined;
    const o = subject.O === undefined ? [] : Array.isArray(subject.O) ? subject.O : [subject.O];
    return { username: cn ?? '', groups: [...o, 'system:authenticated'], o, ...(cn !== undefined ? { cn } : {}) };
  }

  private allowedByPolicy(req: Request, policy: NonNullable<FakeApiServer['policy']>): boolean {
    const auth = req.headers.authorization;
    if (typeof auth === 'string' && auth.startsWith('Bearer ') && policy.tokens.has(auth.slice(7))) return true;
    const socket = req.socket as unknown as TLSSocket;
    const cert = socket.getPeerCertificate();
    return Boolean(cert && socket.authorized && cert.fingerprint256 && policy.fingerprints.has(cert.fingerprint256));
  }

  private send(res: Response, code: number, body: string | Buffer, type = 'application/json'): void {
    const buf = typeof body === 'string' ? Buffer.from(body) : body;
    const headers: Record<string, string | number> = { 'content-type': type, 'content-length': buf.length };
    if (this.listenerClosed && res.req.httpVersionMajor === 1) headers.connection = 'close';
    res.writeHead(code, headers);
    res.end(buf);
  }

  private route(req: Request, res: Response): void {
    const url = new URL(req.url, 'https://apiserver.invalid');
    const path = url.pathname;
    const method = req.method;
    if (this.policy && !this.allowedByPolicy(req, this.policy)) {
      this.refused++;
      this.send(res, 401, status(401, 'Unauthorized', 'Unauthorized'));
      return;
    }
    const user = this.authenticate(req) ?? (this.policy ? TOKEN_USER : undefined);
    if (user === 'invalid' || (user === undefined && !this.opts.anonymousAuth)) {
      this.send(res, 401, status(401, 'Unauthorized', 'Unauthorized'));
      return;
    }
    const isPublic = PUBLIC_PATHS.has(path) || /^\/(readyz|livez|healthz)\/[a-z-]+$/.test(path);
    if (user === undefined && !isPublic) {
      const verb = method === 'GET' ? 'get' : method.toLowerCase();
      this.send(res, 403, status(403, 'Forbidden', `forbidden: User "system:anonymous" cannot ${verb} path "${path}"`));
      return;
    }
    if (method === 'GET' && isPublic) return this.health(url, res);
    if (method === 'POST' && /^\/apis\/authentication\.k8s\.io\/v1(beta1|alpha1)?\/selfsubjectreviews$/.test(path) && user) {
      const apiVersion = path.split('/').slice(2, 4).join('/');
      this.send(
        res,
        201,
        JSON.stringify({
          kind: 'SelfSubjectReview',
          apiVersion,
          metadata: { creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') },
          status: { userInfo: { username: user.username, groups: user.groups } },
        }),
      );
      return;
    }
    if (method !== 'GET') {
      this.send(res, 405, status(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`));
      return;
    }
    if (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1' || path === '/watch' || path.startsWith('/api/v1/watch/')) {
      return this.watch(res);
    }
    switch (path) {
      case '/whoami':
        return this.send(res, 200, JSON.stringify({ cn: user?.cn ?? null, o: user?.o ?? [], server: this.name, httpVersion: req.httpVersion }));
      case '/api':
        return this.send(
          res,
          200,
          JSON.stringify({ kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: this.address }] }),
        );
      case '/api/v1':
        return this.send(
          res,
          200,
          JSON.stringify({
            kind: 'APIResourceList',
            groupVersion: 'v1',
            resources: [{ name: 'pods', singularName: 'pod', namespaced: true, kind: 'Pod', verbs: ['get', 'list', 'watch'], shortNames: ['po'] }],
          }),
        );
      case '/apis':
        return this.send(
          res,
          200,
          JSON.stringify({
            kind: 'APIGroupList',
            apiVersion: 'v1',
            groups: [
              {
                name: 'authentication.k8s.io',
                versions: [{ groupVersion: 'authentication.k8s.io/v1', version: 'v1' }],
                preferredVersion: { groupVersion: 'authentication.k8s.io/v1', version: 'v1' },
              },
            ],
          }),
        );
      case '/apis/authentication.k8s.io/v1':
        return this.send(
          res,
          200,
          JSON.stringify({
            kind: 'APIResourceList',
            apiVersion: 'v1',
            groupVersion: 'authentication.k8s.io/v1',
            resources: [
              { name: 'selfsubjectreviews', singularName: 'selfsubjectreview', namespaced: false, kind: 'SelfSubjectReview', verbs: ['create'] },
              { name: 'tokenreviews', singularName: 'tokenreview', namespaced: false, kind: 'TokenReview', verbs: ['create'] },
            ],
          }),
        );
      case '/api/v1/pods':
      case '/api/v1/namespaces/default/pods': {
        const bytes = bytesParam(url, DEFAULT_LIST_BYTES, MAX_LIST_BYTES);
        if (bytes === null) return this.send(res, 400, status(400, 'BadRequest', `bytes must be an integer 0..${MAX_LIST_BYTES}`));
        const body = this.podList(bytes);
        return void this.stream(res, 'application/json', bytes, (off, n) => body.subarray(off, off + n));
      }
      case '/echo-size': {
        const bytes = bytesParam(url, 0, MAX_ECHO_BYTES);
        if (bytes === null) return this.send(res, 400, status(400, 'BadRequest', `bytes must be an integer 0..${MAX_ECHO_BYTES}`));
        return void this.stream(res, 'application/octet-stream', bytes, (_off, n) => (n === ECHO_BLOCK.length ? ECHO_BLOCK : ECHO_BLOCK.subarray(0, n)));
      }
      default:
        return this.send(res, 404, status(404, 'NotFound', 'the server could not find the requested resource'));
    }
  }

  private health(url: URL, res: Response): void {
    const path = url.pathname;
    if (path === '/version') {
      const m = VERSION_RE.exec(this.opts.version)!;
      return this.send(
        res,
        200,
        JSON.stringify(
          {
            major: m[1],
            minor: m[2],
            gitVersion: this.opts.version,
            gitCommit: '0000000000000000000000000000000000000000',
            gitTreeState: 'clean',
            buildDate: '2024-08-13T07:28:49Z',
            goVersion: 'go1.22.5',
            compiler: 'gc',
            platform: 'linux/amd64',
          },
          null,
          2,
        ),
      );
    }
    const kind = path.split('/')[1]!;
    const checks = kind === 'readyz' ? [...READYZ_CHECKS, 'shutdown'] : ['ping', 'log', 'etcd'];
    const failed = new Set<string>();
    if (kind === 'readyz' && !this.ready) failed.add('etcd-readiness');
    if (kind === 'readyz' && this.draining) failed.add('shutdown');
    const single = path.split('/')[2];
    if (single !== undefined) {
      if (!checks.includes(single)) return this.send(res, 404, '404 page not found\n', 'text/plain; charset=utf-8');
      return failed.has(single)
        ? this.send(res, 500, `internal server error: ${single} check failed\n`, 'text/plain; charset=utf-8')
        : this.send(res, 200, 'ok', 'text/plain; charset=utf-8');
    }
    const verbose = url.searchParams.has('verbose');
    if (failed.size === 0 && !verbose) return this.send(res, 200, 'ok', 'text/plain; charset=utf-8');
    const lines = checks.map((c) => (failed.has(c) ? `[-]${c} failed: reason withheld` : `[+]${c} ok`));
    lines.push(failed.size > 0 ? `${kind} check failed` : `${kind} check passed`);
    this.send(res, failed.size > 0 ? 500 : 200, lines.join('\n') + '\n', 'text/plain; charset=utf-8');
  }

  private podList(bytes: number): Buffer {
    let body = this.listCache.get(bytes);
    if (!body) {
      body = podListBody(bytes);
      if (this.listCache.size >= 4) this.listCache.delete(this.listCache.keys().next().value!);
      this.listCache.set(bytes, body);
    }
    return body;
  }

  /** Writes `total` bytes produced by `chunk(offset, n)` with backpressure, stalling while hung. */
  private async stream(res: Response, type: string, total: number, chunk: (offset: number, n: number) => Buffer): Promise<void> {
    const headers: Record<string, string | number> = { 'content-type': type, 'content-length': total };
    if (this.listenerClosed && res.req.httpVersionMajor === 1) headers.connection = 'close';
    res.writeHead(200, headers);
    let off = 0;
    while (off < total) {
      if (this.hung) await this.whenRunning();
      if (res.destroyed || this.crashed || this.closePromise) return;
      const n = Math.min(WRITE_CHUNK, total - off);
      const ok = res.write(chunk(off, n));
      off += n;
      if (!ok) {
        await new Promise<void>((resolve) => {
          function onDrainOrClose(): void {
            res.off('drain', onDrainOrClose);
            res.off('close', onDrainOrClose);
            resolve();
          }
          res.on('drain', onDrainOrClose);
          res.on('close', onDrainOrClose);
        });
      }
    }
    res.end();
  }

  /** A watch: an ADDED event at once (as for an existing object), then MODIFIED every watchIntervalMs. */
  private watch(res: Response): void {
    if (this.listenerClosed) {
      // A watch opened during drain ends at once, as kube-apiserver ends watches when it stops serving.
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-cache, private' });
    const event = (type: string): string =>
      JSON.stringify({
        type,
        object: {
          kind: 'Pod',
          apiVersion: 'v1',
          metadata: { name: 'watched-pod', namespace: 'default', resourceVersion: String(++this.resourceVersion) },
          status: { phase: 'Running' },
        },
      }) + '\n';
    res.write(event('ADDED'));
    let timer: NodeJS.Timeout | undefined;
    if (this.opts.watchIntervalMs > 0) {
      timer = setInterval(() => {
        // Hung: the process would not run at all, so no event.
        if (!this.hung && !res.writableEnded) res.write(event('MODIFIED'));
      }, this.opts.watchIntervalMs);
      this.timers.add(timer);
    }
    const stop = (): void => {
      if (timer) {
        clearInterval(timer);
        this.timers.delete(timer);
        timer = undefined;
      }
    };
    this.watches.set(res, stop);
    res.once('close', () => {
      this.watches.delete(res);
      stop();
    });
  }
}

/**
 * The stream TLS reads and writes instead of the raw TCP socket. Handed a net.Socket, TLS and HTTP/2 would consume
 * its handle natively (HTTP/2 PINGs answered in C++), and only Node internals could stop that. Through this relay a
 * hang is public API: {@link hold} pauses the socket (Node stops reading once its buffer is full, so the TCP window
 * closes as for a stopped process) and queues what the server writes; {@link release} sends the queue and reads
 * again.
 */
class RawRelay extends Duplex {
  private held: boolean;
  private readonly queue: { chunk: Buffer; done: (err?: Error | null) => void }[] = [];

  constructor(
    private readonly raw: Socket,
    held: boolean,
  ) {
    super();
    this.held = held;
    this.on('error', function onRelayError() {
      /* the raw socket reports it */
    });
    if (held) raw.pause();
    raw.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) raw.pause();
    });
    raw.on('end', () => this.push(null));
    raw.on('close', () => this.destroy());
  }

  /** Stops reading and writing (a hang). */
  hold(): void {
    this.held = true;
    this.raw.pause();
  }

  /** Ends a {@link hold}: queued writes go out, reading resumes. */
  release(): void {
    this.held = false;
    for (const { chunk, done } of this.queue.splice(0)) this.raw.write(chunk, done);
    this.raw.resume();
  }

  override _read(): void {
    if (!this.held) this.raw.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    if (this.held) this.queue.push({ chunk, done });
    else this.raw.write(chunk, done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.raw.end(done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.raw.destroy();
    done(err);
  }
}

/**
 * Starts a kube-apiserver stand-in and resolves once it listens. Throws OptionError on invalid options; rejects
 * with the listen error (e.g. EADDRINUSE) otherwise.
 */
export async function startFakeApiServer(opts: FakeApiServerOptions): Promise<FakeApiServer> {
  const server = new FakeApiServer(opts);
  await server.listen();
  return server;
}
