/**
 * The admin HTTP endpoint (default 127.0.0.1:9643, never on the data listeners): /healthz, /readyz and whatever
 * routes the daemon registers (/metrics, /status, POST /reload). Plain node:http: a few requests a minute.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Address } from '../config/values.js';
import { bindListener } from '../proxy/listen.js';

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
}

/** The admin HTTP server. */
export class AdminServer {
  readonly server: Server;
  private readonly routes = new Map<string, AdminHandler>();

  constructor(options: AdminServerOptions) {
    this.route('GET', '/healthz', () => ({ status: 200, body: 'ok\n' }));
    this.route('GET', '/readyz', () => {
      const r = options.readiness();
      return { status: r.ready ? 200 : 503, body: `${r.ready ? 'ok' : 'not ready'}: ${r.reason}\n` };
    });
    this.server = createServer(this.onRequest.bind(this));
    // Admin clients are scrapers and humans: short timeouts keep a stuck client from holding a socket.
    this.server.requestTimeout = 10_000;
    this.server.headersTimeout = 5_000;
    this.server.keepAliveTimeout = 5_000;
  }

  /** Registers a handler for `METHOD path` (exact path match, query string ignored). */
  route(method: string, path: string, handler: AdminHandler): void {
    this.routes.set(`${method} ${path}`, handler);
  }

  /** Binds to `address`. */
  async listen(address: Address): Promise<void> {
    await bindListener(this.server as unknown as import('node:net').Server, address, 64, '--admin-listen');
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0]!;
    const method = req.method === 'HEAD' ? 'GET' : (req.method ?? 'GET');
    const handler = this.routes.get(`${method} ${path}`);
    if (!handler) {
      const known = [...this.routes.keys()].some((k) => k.endsWith(` ${path}`));
      send(res, req, { status: known ? 405 : 404, body: known ? 'method not allowed\n' : 'not found\n' });
      return;
    }
    Promise.resolve()
      .then(() => handler(req))
      .then(
        (r) => send(res, req, r),
        (err: Error) => send(res, req, { status: 500, body: `error: ${err.message}\n` }),
      );
  }

  /** Stops the server and closes idle keep-alive connections. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
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
