/**
 * The metrics-only listener (`--metrics-listen`, off by default): `GET /metrics` and nothing else, so Prometheus
 * can scrape apilb on the node IP while the admin endpoint (POST /reload, /status) stays on loopback. Everything
 * else is 404 (405 for another method on /metrics): no admin route is reachable through it.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Server as NetServer } from 'node:net';
import { closeHttpServer, createAdminHttpServer } from '../node-http.js';
import type { Address } from '../config/values.js';
import { bindListener } from '../proxy/listen.js';

/** What the listener serves: the same metrics the admin endpoint's /metrics renders. */
export interface MetricsSource {
  readonly contentType: string;
  render(): Promise<string>;
}

/** An HTTP server answering GET/HEAD /metrics only. */
export class MetricsServer {
  readonly server: Server;
  private readonly source: MetricsSource;

  constructor(source: MetricsSource) {
    this.source = source;
    this.server = createAdminHttpServer(this.onRequest.bind(this));
    this.server.maxHeadersCount = 50;
  }

  /** Binds to `address`. */
  async listen(address: Address): Promise<void> {
    await bindListener(this.server as unknown as NetServer, address, 64, '--metrics-listen');
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') return void reply(res, req, 404, 'text/plain; charset=utf-8', 'not found\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return void reply(res, req, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
    }
    this.source.render().then(
      (body) => reply(res, req, 200, this.source.contentType, body),
      (err: Error) => reply(res, req, 500, 'text/plain; charset=utf-8', `error: ${err.message}\n`),
    );
  }

  /** Stops the server and closes its connections. */
  close(): Promise<void> {
    return closeHttpServer(this.server);
  }
}

function reply(res: ServerResponse, req: IncomingMessage, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(req.method === 'HEAD' ? undefined : body);
}
