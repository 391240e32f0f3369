/**
 * A stand-in for kube-apiserver's EndpointSlice API, enough for discovery tests: a {@link FakeCluster} holds the
 * `kubernetes` Service's slices (like etcd), and any number of {@link ApiStandIn} HTTPS servers (like API
 * servers) serve LIST and streaming WATCH from it with real TLS (server certificate from the test CA, client
 * certificates required). Tests push changes, compact history (410 Gone), fail or break watches.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { LeafCert } from '../../src/demo/test-ca.js';

const PATH = '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices';
const SELECTOR = 'kubernetes.io/service-name=kubernetes';

/** One endpoint of a slice. */
export interface FakeEndpoint {
  ip: string;
  /** Default true; null leaves the condition unset (which the API defines as ready). */
  ready?: boolean | null;
}

interface Slice {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; labels: Record<string, string>; resourceVersion: string };
  addressType: string;
  endpoints: { addresses: string[]; conditions: { ready?: boolean } }[];
  ports: { name: string; port: number; protocol: string }[];
}

interface Watcher {
  res: ServerResponse;
  server: string;
  timer: NodeJS.Timeout | undefined;
}

/** A request a stand-in received. */
export interface SeenRequest {
  server: string;
  kind: 'list' | 'watch';
  /** resourceVersion query parameter ('' when absent). */
  resourceVersion: string;
  /** Client certificate CN. */
  cn: string;
}

/** The shared state of every stand-in: slices, resourceVersions, history, open watches. */
export class FakeCluster {
  private rv = 1000;
  /** Watches from a resourceVersion below this get 410 Gone. */
  private compactedRv = 0;
  private readonly slices = new Map<string, Slice>();
  private readonly history: { rv: number; line: string }[] = [];
  private readonly watchers = new Set<Watcher>();
  /** Every LIST and WATCH received, in order. */
  readonly requests: SeenRequest[] = [];
  /** Answer 410 as an ERROR event inside a 200 stream (true) or as the HTTP status (false, default). */
  goneAsEvent = false;
  /** The next N watch requests are answered 500. */
  failWatches = 0;
  /** The next N LIST requests are answered 500. */
  failLists = 0;
  /** Answer every LIST with this HTTP status (e.g. 403); 0 = normal. */
  listStatus = 0;
  /** Answer every WATCH with this HTTP status (e.g. 410 forever); 0 = normal. */
  watchStatus = 0;
  /** resourceVersion LISTs report instead of the real one (e.g. 20 KB of digits); undefined = the real one. */
  listResourceVersion: string | undefined;

  /** Current resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  /** Open watch streams. */
  get openWatches(): number {
    return this.watchers.size;
  }

  /** Creates or replaces slice `name` (ADDED / MODIFIED to every open watch). */
  setSlice(name: string, endpoints: FakeEndpoint[], port: number, addressType = 'IPv4'): void {
    const type = this.slices.has(name) ? 'MODIFIED' : 'ADDED';
    const slice: Slice = {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': 'kubernetes' }, resourceVersion: String(++this.rv) },
      addressType,
      endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: e.ready === null ? {} : { ready: e.ready ?? true } })),
      ports: [{ name: 'https', port, protocol: 'TCP' }],
    };
    this.slices.set(name, slice);
    this.publish(type, slice);
  }

  /** Deletes slice `name` (DELETED). */
  deleteSlice(name: string): void {
    const s = this.slices.get(name);
    if (!s) return;
    this.slices.delete(name);
    s.metadata.resourceVersion = String(++this.rv);
    this.publish('DELETED', s);
  }

  /** Sends a BOOKMARK at the current resourceVersion to every open watch. */
  bookmark(): void {
    const line =
      JSON.stringify({
        type: 'BOOKMARK',
        object: { kind: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1', metadata: { resourceVersion: String(this.rv) } },
      }) + '\n';
    for (const w of this.watchers) w.res.write(line);
  }

  /** Forgets history: watches resuming from any resourceVersion older than the current one get 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv;
    this.history.length = 0;
  }

  /** Sends an ERROR event with code 410 into every open watch and ends them (what etcd compaction looks like). */
  expireWatches(): void {
    this.compact();
    for (const w of [...this.watchers]) {
      w.res.end(JSON.stringify({ type: 'ERROR', object: goneStatus() }) + '\n');
      this.drop(w);
    }
  }

  /** Ends every open watch normally (like the server-side timeout). */
  endWatches(): void {
    for (const w of [...this.watchers]) {
      w.res.end();
      this.drop(w);
    }
  }

  /** Destroys every open watch's connection (a broken path). */
  breakWatches(): void {
    for (const w of [...this.watchers]) {
      w.res.socket?.destroy();
      this.drop(w);
    }
  }

  private publish(type: string, slice: Slice): void {
    const line = JSON.stringify({ type, object: slice }) + '\n';
    this.history.push({ rv: this.rv, line });
    for (const w of this.watchers) w.res.write(line);
  }

  private drop(w: Watcher): void {
    if (w.timer) clearTimeout(w.timer);
    this.watchers.delete(w);
  }

  /** Serves one request of stand-in `server`. */
  handle(server: string, req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://x');
    res.setHeader('x-apiserver', server);
    if (url.pathname === '/readyz' || url.pathname === '/healthz' || url.pathname === '/livez' || url.pathname === '/whoami') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(url.pathname === '/whoami' ? server : 'ok');
      return;
    }
    if (url.pathname !== PATH || req.method !== 'GET') {
      sendStatus(res, 404, 'NotFound', `the server could not find ${url.pathname}`);
      return;
    }
    if (url.searchParams.get('labelSelector') !== SELECTOR) {
      sendStatus(res, 400, 'BadRequest', `unexpected labelSelector ${url.searchParams.get('labelSelector')}`);
      return;
    }
    const cn = (req.socket as TLSSocket).getPeerCertificate?.()?.subject?.CN ?? '';
    const watch = url.searchParams.get('watch') === '1' || url.searchParams.get('watch') === 'true';
    const rvParam = url.searchParams.get('resourceVersion') ?? '';
    this.requests.push({ server, kind: watch ? 'watch' : 'list', resourceVersion: rvParam, cn: String(cn) });
    if (!watch) {
      if (this.listStatus) return sendStatus(res, this.listStatus, 'Forbidden', 'endpointslices.discovery.k8s.io is forbidden');
      if (this.failLists > 0) {
        this.failLists--;
        return sendStatus(res, 500, 'InternalError', 'injected list failure');
      }
      const body = JSON.stringify({
        kind: 'EndpointSliceList',
        apiVersion: 'discovery.k8s.io/v1',
        metadata: { resourceVersion: this.listResourceVersion ?? String(this.rv) },
        items: [...this.slices.values()],
      });
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      return;
    }
    if (this.watchStatus) return sendStatus(res, this.watchStatus, 'Expired', 'injected watch status');
    if (this.failWatches > 0) {
      this.failWatches--;
      return sendStatus(res, 500, 'InternalError', 'injected watch failure');
    }
    const from = Number(rvParam || this.rv);
    if (from < this.compactedRv) {
      if (!this.goneAsEvent) return sendStatus(res, 410, 'Expired', `too old resource version: ${from} (${this.compactedRv})`);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ type: 'ERROR', object: goneStatus() }) + '\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.flushHeaders();
    for (const h of this.history) if (h.rv > from) res.write(h.line);
    const w: Watcher = { res, server, timer: undefined };
    const timeout = Number(url.searchParams.get('timeoutSeconds') ?? 0);
    if (timeout > 0) {
      w.timer = setTimeout(() => {
        res.end();
        this.drop(w);
      }, timeout * 1000);
    }
    this.watchers.add(w);
    res.on('close', () => this.drop(w));
  }
}

function goneStatus(): object {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'too old resource version', reason: 'Expired', code: 410 };
}

function sendStatus(res: ServerResponse, code: number, reason: string, message: string): void {
  const body = JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
  res.writeHead(code, { 'content-type': 'application/json' }).end(body);
}

/** One fake API server. */
export interface ApiStandIn {
  name: string;
  host: string;
  port: number;
  /** `HOST:PORT`. */
  address: string;
  server: Server;
  /** Stops listening and destroys every connection. */
  close(): Promise<void>;
}

/** Options of {@link startApiStandIn}. */
export interface StandInOptions {
  /** Name reported in `x-apiserver` and /whoami. */
  name: string;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0 (a free port). */
  port?: number;
  /** Server certificate and key (from createTestCA().server()). */
  tls: LeafCert;
  /** CA that client certificates must chain to (PEM). */
  ca: string;
}

/** Starts one HTTPS stand-in serving `cluster`. Client certificates are required. */
export async function startApiStandIn(cluster: FakeCluster, opts: StandInOptions): Promise<ApiStandIn> {
  const sockets = new Set<Socket>();
  const server = createServer({ key: opts.tls.key, cert: opts.tls.cert, ca: opts.ca, requestCert: true, rejectUnauthorized: true }, (req, res) =>
    cluster.handle(opts.name, req, res),
  );
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', () => {});
  // Real API servers keep idle connections open far longer than node's 5 s default; tests hold connections
  // through apilb across a debounce and must only see them close when apilb closes them.
  server.keepAliveTimeout = 0;
  server.requestTimeout = 0;
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as { port: number }).port;
  return {
    name: opts.name,
    host,
    port,
    address: `${host}:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        if (!server.listening) return resolve();
        server.close(() => resolve());
      }),
  };
}

/**
 * Starts one stand-in per host (e.g. 127.0.0.2, 127.0.0.3, ...) all on the same port, like API servers on
 * different machines all listening on 6443. The port is picked by the kernel for the first host; if another host
 * has it taken already, the whole set is started again on a fresh port.
 */
export async function startApiStandIns(cluster: FakeCluster, hosts: string[], opts: Omit<StandInOptions, 'name' | 'host' | 'port'>): Promise<ApiStandIn[]> {
  for (let attempt = 0; ; attempt++) {
    const started: ApiStandIn[] = [];
    try {
      for (const host of hosts) {
        const s = await startApiStandIn(cluster, { ...opts, name: host, host, port: started[0]?.port ?? 0 });
        started.push(s);
      }
      return started;
    } catch (err) {
      await Promise.all(started.map((s) => s.close()));
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 5) throw err;
    }
  }
}

/** Starts one more stand-in on `host` at the port the others use. */
export function addApiStandIn(cluster: FakeCluster, host: string, port: number, opts: Omit<StandInOptions, 'name' | 'host' | 'port'>): Promise<ApiStandIn> {
  return startApiStandIn(cluster, { ...opts, name: host, host, port });
}
