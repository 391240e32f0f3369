/**
 * The admin HTTP endpoint (default 127.0.0.1:9643, never on the data listeners): /healthz, /readyz and whatever
 * routes the daemon registers (/metrics, /status, POST /reload). Plain node:http: a few requests a minute.
 *
 * Every local process, and every web page a browser on the node opens, can send it requests. Defenses:
 * - Host check on every route (DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 still says
 *   `Host: evil.example`): only loopback names, the address the request arrived on, and `allowedHosts` pass;
 *   anything else gets 421.
 * - `POST /reload` needs a request no page can send without a CORS preflight (which this server never grants):
 *   the header `X-Apilb-Reload: 1` or `Content-Type: application/json`; anything else gets 403.
 * - At most `maxConcurrent` requests are handled at once and `maxPerSecond` per second (the rest get 503 at
 *   once), and at most 64 sockets are open; /metrics renders through {@link cachedRender}, so a scrape flood costs a few renders per second, not
 *   one per request, and cannot starve the data path of CPU.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { isIP, type Server as NetServer } from 'node:net';
import { systemClock, type Clock } from '../clock.js';
import { closeHttpServer, createAdminHttpServer } from '../node-http.js';
import type { Address } from '../config/values.js';
import { canonicalHost, classifyHost } from '../discovery/address-policy.js';
import { OptionError } from '../errors.js';
import { bindListener } from '../proxy/listen.js';

/** Header that makes `POST /reload` a non-simple request (browsers must preflight it). */
export const RELOAD_HEADER = 'x-apilb-reload';

/** A route handler; returns the status, content type and body. */
export type AdminHandler = (req: IncomingMessage) => Promise<AdminResponse> | AdminResponse;

/** What a handler answers. */
export interface AdminResponse {
  status: number;
  /** Default `text/plain; charset=utf-8`; objects are sent as JSON. */
  contentType?: string;
  body: string | object;
}

/** Readiness as the daemon reports it. */
export interface Readiness {
  ready: boolean;
  /** Why not ready (or a short summary when ready). */
  reason: string;
}

/** Options of {@link AdminServer}. */
export interface AdminServerOptions {
  /** Called for GET /readyz. */
  readiness: () => Readiness;
  /**
   * Extra names accepted in the Host header (case-insensitive, without port). Loopback names (`localhost`,
   * 127.0.0.0/8, `::1`) and the IP address a request arrived on are always accepted. Default none.
   */
  allowedHosts?: readonly string[];
  /** Requests handled at once; more get 503 at once. Default 8; must be ≥ 1. */
  maxConcurrent?: number;
  /**
   * Requests handled per second (fixed one-second windows); more get 503 at once. Default 50: a scraper sends one
   * every 15 s, an operator a few; a flood of cached-but-large /metrics answers must not fill the event loop
   * with writes. Must be ≥ 1.
   */
  maxPerSecond?: number;
  /** Default: the system clock (for the per-second window). */
  clock?: Clock;
}

/** The admin HTTP server. */
export class AdminServer {
  readonly server: Server;
  readonly maxConcurrent: number;
  readonly maxPerSecond: number;
  private readonly clock: Clock;
  private windowStart = -Infinity;
  private windowCount = 0;
  private readonly routes = new Map<string, AdminHandler>();
  private allowedHosts: Set<string>;
  private inFlight = 0;

  constructor(options: AdminServerOptions) {
    this.maxConcurrent = options.maxConcurrent ?? 8;
    if (!Number.isInteger(this.maxConcurrent) || this.maxConcurrent < 1)
      throw new OptionError('maxConcurrent', `must be an integer ≥ 1, got ${this.maxConcurrent}`);
    this.maxPerSecond = options.maxPerSecond ?? 50;
    if (!Number.isInteger(this.maxPerSecond) || this.maxPerSecond < 1)
      throw new OptionError('maxPerSecond', `must be an integer ≥ 1, got ${this.maxPerSecond}`);
    this.clock = options.clock ?? systemClock;
    this.allowedHosts = hostSet(options.allowedHosts ?? []);
    this.route('GET', '/healthz', () => ({ status: 200, body: 'ok\n' }));
    this.route('GET', '/readyz', () => {
      const r = options.readiness();
      return { status: r.ready ? 200 : 503, body: `${r.ready ? 'ok' : 'not ready'}: ${r.reason}\n` };
    });
    this.server = createAdminHttpServer(this.onRequest.bind(this));
    this.server.maxConnections = 64;
  }

  /** Registers a handler for `METHOD path` (exact path match, query string ignored). */
  route(method: string, path: string, handler: AdminHandler): void {
    this.routes.set(`${method} ${path}`, handler);
  }

  /** Binds to `address`. */
  async listen(address: Address): Promise<void> {
    await bindListener(this.server as unknown as NetServer, address, 64, '--admin-listen');
  }

  /** Replaces the extra Host names (configuration reload). */
  allowHosts(names: readonly string[]): void {
    this.allowedHosts = hostSet(names);
  }

  /** True when the Host header names this endpoint (see the module comment); a missing Host passes (not a browser). */
  hostAllowed(req: IncomingMessage): boolean {
    const header = req.headers.host;
    if (header === undefined) return true;
    const m = /^\[([^\]]+)\](?::\d+)?$|^([^:]+)(?::\d+)?$/.exec(header.trim());
    const name = (m?.[1] ?? m?.[2])?.toLowerCase();
    if (!name) return false;
    if (name === 'localhost' || this.allowedHosts.has(name)) return true;
    if (isIP(name) === 0) return false;
    const host = canonicalHost(name);
    if (classifyHost(host) === 'loopback') return true;
    const local = req.socket.localAddress;
    return local !== undefined && canonicalHost(local) === host;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    if (!this.hostAllowed(req)) {
      send(res, req, { status: 421, body: 'misdirected request: this Host is not the admin endpoint (add it with --admin-allowed-hosts)\n' });
      return;
    }
    const path = (req.url ?? '/').split('?')[0]!;
    const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET');
    const handler = this.routes.get(`${method} ${path}`);
    if (!handler) {
      const known = [...this.routes.keys()].some((k) => k.endsWith(` ${path}`));
      send(res, req, { status: known ? 405 : 404, body: known ? 'method not allowed\n' : 'not found\n' });
      return;
    }
    if (method === 'POST' && req.headers[RELOAD_HEADER] !== '1' && !/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
      // A form or fetch() with a simple content type needs no preflight: a web page could send it.
      send(res, req, { status: 403, body: `forbidden: send the header "${RELOAD_HEADER}: 1" (or Content-Type: application/json)\n` });
      return;
    }
    const now = this.clock.now();
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.windowCount = 0;
    }
    if (this.inFlight >= this.maxConcurrent || ++this.windowCount > this.maxPerSecond) {
      res.setHeader('retry-after', '1');
      send(res, req, { status: 503, body: 'busy: too many admin requests\n' });
      return;
    }
    this.inFlight++;
    Promise.resolve()
      .then(() => handler(req))
      .then(
        (r) => send(res, req, r),
        (err: Error) => send(res, req, { status: 500, body: `error: ${err.message}\n` }),
      )
      .finally(() => this.inFlight--);
  }

  /** Stops the server and closes its connections. */
  close(): Promise<void> {
    return closeHttpServer(this.server);
  }
}

/**
 * Wraps an expensive renderer (the Prometheus exposition) so a flood of requests costs a bounded amount of CPU:
 * concurrent callers always share one render in progress, and once more than `burst` calls (default 10) arrived
 * within `ttlMs` (default 1000), the rest of that window is served the last render. A scraper, or an operator
 * running curl a few times, always gets a fresh render; a flood gets at most `burst` renders per `ttlMs`.
 */
export function cachedRender(render: () => Promise<string>, options: { ttlMs?: number; burst?: number; clock?: Clock } = {}): () => Promise<string> {
  const ttl = options.ttlMs ?? 1000;
  const burst = options.burst ?? 10;
  const clock = options.clock ?? systemClock;
  let pending: Promise<string> | undefined;
  let last: { at: number; text: string } | undefined;
  let windowStart = -Infinity;
  let calls = 0;
  return () => {
    const now = clock.now();
    if (now - windowStart >= ttl) {
      windowStart = now;
      calls = 0;
    }
    calls++;
    if (pending) return pending;
    if (calls > burst && last && now - last.at < ttl) return Promise.resolve(last.text);
    pending = render().then(
      (text) => {
        last = { at: clock.now(), text };
        pending = undefined;
        return text;
      },
      (err: unknown) => {
        pending = undefined;
        throw err;
      },
    );
    return pending;
  };
}

function hostSet(names: readonly string[]): Set<string> {
  return new Set(names.map((h) => h.trim().toLowerCase()).filter((h) => h !== ''));
}

function send(res: ServerResponse, req: IncomingMessage, r: AdminResponse): void {
  const isJson = typeof r.body !== 'string';
  const body = isJson ? JSON.stringify(r.body, null, 2) + '\n' : (r.body as string);
  res.writeHead(r.status, {
    'content-type': r.contentType ?? (isJson ? 'application/json' : 'text/plain; charset=utf-8'),
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}
