/**
 * HTTPS check: `GET <path>` over one kept-alive undici connection per backend, verifying the server certificate
 * against the cluster CA. Thousands of nodes check every API server, so a check must be one request on an open
 * connection, not a TLS handshake each time.
 *
 * 401 and 403 count as passed (`ok` with the status kept): the API server answered, so it is alive; with the
 * default RBAC /readyz is public, so a refusal means apilb's own credentials are wrong or missing (a node still
 * bootstrapping), and that must never take every backend out of rotation. The logger and the
 * `apilb_health_check_unauthenticated_total` metric make it loud (both read the monitor's `check` events).
 */
import { Client, errors as undiciErrors } from 'undici';
import { formatAddress } from '../config/values.js';
import type { TlsMaterial } from '../config/tls.js';
import { OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import type { CheckResult } from '../pool/pool.js';
import { VERSION } from '../version.js';
import { describeTransportError, elapsed, isLocalResourceError, type Checker } from './checker.js';

/** Options of {@link HttpsChecker}. Durations in milliseconds. */
export interface HttpsCheckerOptions {
  backend: Backend;
  /** Path requested, e.g. `/readyz`. Required; must start with `/`. */
  path: string;
  /** Check timeout; also bounds connect, headers and body. Required; must be > 0. */
  timeout: number;
  /**
   * Check interval: the connection is kept alive a little longer than it, so the next check reuses it. Default
   * 2000; must be > 0.
   */
  interval?: number;
  /** CA, client identity, server name override, insecure flag. Required. */
  tls: TlsMaterial;
}

/** Largest part of a non-200 body kept for the error text (kube-apiserver lists failed checks there). */
const ERROR_BODY_BYTES = 4096;
/** Bodies are read to the end (keeps the connection reusable) up to this; past it the connection is dropped. */
const MAX_BODY_BYTES = 64 * 1024;

/** Answers that prove the backend alive although it refused apilb's credentials. */
export const UNAUTHENTICATED_STATUSES: ReadonlySet<number> = new Set([401, 403]);

/** True for a check that passed only because the backend refused apilb's credentials (401/403). */
export function isUnauthenticated(r: CheckResult): r is { ok: true; latencyMs: number; status: number } {
  return r.ok && r.status !== undefined && UNAUTHENTICATED_STATUSES.has(r.status);
}

/** The name the certificate is verified against: the override, the backend's DNS name, else none (IP SAN). */
export function checkServerName(tls: TlsMaterial, backend: Backend): string | undefined {
  return tls.serverName ?? backend.serverName;
}

/** An https checker for one backend. */
export class HttpsChecker implements Checker {
  readonly backend: Backend;
  readonly path: string;
  readonly timeout: number;
  readonly interval: number;
  private readonly tls: TlsMaterial;
  private readonly headers: Record<string, string>;
  private readonly origin: string;
  private client: Client | undefined;
  /** TCP/TLS connections opened so far (tests check keep-alive with it). */
  connects = 0;
  private closed = false;

  constructor(options: HttpsCheckerOptions) {
    if (!options?.backend) throw new OptionError('backend', 'is required');
    if (typeof options.path !== 'string' || !options.path.startsWith('/')) throw new OptionError('path', `must start with "/", got ${JSON.stringify(options.path)}`);
    if (!(options.timeout > 0)) throw new OptionError('timeout', `must be > 0, got ${options.timeout}`);
    const interval = options.interval ?? 2000;
    if (!(interval > 0)) throw new OptionError('interval', `must be > 0, got ${interval}`);
    if (!options.tls) throw new OptionError('tls', 'is required');
    this.backend = options.backend;
    this.path = options.path;
    this.timeout = options.timeout;
    this.interval = interval;
    this.tls = options.tls;
    this.headers = { accept: 'text/plain, */*', 'user-agent': `apilb/${VERSION} (health check)` };
    if (options.tls.token) this.headers.authorization = `Bearer ${options.tls.token}`;
    this.origin = `https://${formatAddress(this.backend.address)}`;
  }

  private createClient(): Client {
    const { tls } = this;
    const servername = checkServerName(tls, this.backend);
    const connect: Record<string, unknown> = { rejectUnauthorized: !tls.insecure, timeout: this.timeout };
    if (tls.ca) connect.ca = tls.ca;
    if (tls.cert) connect.cert = tls.cert;
    if (tls.key) connect.key = tls.key;
    if (servername) connect.servername = servername;
    const client = new Client(this.origin, {
      connect,
      // Outlive one jittered interval plus a check, so the next check finds the connection open.
      keepAliveTimeout: Math.ceil(this.interval * 1.1 + this.timeout + 1000),
      keepAliveMaxTimeout: Math.max(600_000, Math.ceil(this.interval * 1.1 + this.timeout + 1000)),
      headersTimeout: this.timeout,
      bodyTimeout: this.timeout,
      pipelining: 1,
    });
    const onCheckConnect = (): void => {
      this.connects++;
    };
    client.on('connect', onCheckConnect);
    return client;
  }

  async check(signal: AbortSignal): Promise<CheckResult> {
    const start = performance.now();
    if (this.closed) return { ok: false, kind: 'transport', latencyMs: 0, error: 'checker closed' };
    for (let attempt = 0; ; attempt++) {
      this.client ??= this.createClient();
      const client = this.client;
      const reused = Boolean(client.stats.connected);
      // On timeout the client is given up at once, not when this check's catch runs: the monitor starts the
      // re-check right away, and it must get a fresh connection, not this one still opening (which the catch
      // below would then destroy under it: two failures from one slow TLS handshake).
      const onCheckTimeout = (): void => {
        if (this.client === client) this.client = undefined;
      };
      signal.addEventListener('abort', onCheckTimeout, { once: true });
      try {
        const res = await client.request({ path: this.path, method: 'GET', signal, headers: this.headers });
        const text = await readBody(res.body, res.statusCode === 200 ? 0 : ERROR_BODY_BYTES);
        const latencyMs = elapsed(start);
        if (res.statusCode === 200 || UNAUTHENTICATED_STATUSES.has(res.statusCode)) return { ok: true, latencyMs, status: res.statusCode };
        const r: CheckResult = { ok: false, kind: 'status', latencyMs, status: res.statusCode };
        const detail = summarize(text);
        if (detail) r.error = detail;
        return r;
      } catch (err) {
        if (signal.aborted) {
          await this.dropClient(client);
          return { ok: false, kind: 'transport', latencyMs: elapsed(start), error: `timeout after ${this.timeout} ms` };
        }
        await this.dropClient(client);
        // A kept-alive connection the backend closed while idle is not the backend's fault: retry once, fresh.
        if (attempt === 0 && reused && isStaleConnectionError(err)) continue;
        return { ok: false, kind: 'transport', latencyMs: elapsed(start), error: describeTransportError(err), ...(isLocalResourceError(err) ? { local: true } : {}) };
      } finally {
        signal.removeEventListener('abort', onCheckTimeout);
      }
    }
  }

  private async dropClient(client: Client): Promise<void> {
    if (this.client === client) this.client = undefined;
    // A transport failure leaves the connection in an unknown state: the next check starts a fresh one.
    await client.destroy().catch(noop);
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.client;
    this.client = undefined;
    if (c) await c.destroy().catch(noop);
  }
}

/** Reads a body to its end, keeping the first `keep` bytes as text. Bodies over MAX_BODY_BYTES are cut off. */
async function readBody(body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown }, keep: number): Promise<string> {
  const kept: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    if (size < keep) kept.push(chunk.subarray(0, keep - size));
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      body.destroy();
      break;
    }
  }
  return Buffer.concat(kept).toString('utf8');
}

/** kube-apiserver's /readyz lists failed checks as `[-]name failed: ...`; keep those, else the first line. */
function summarize(text: string): string | undefined {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const failed = lines.filter((l) => l.startsWith('[-]'));
  const out = failed.length > 0 ? failed.join('; ') : lines[0];
  return out ? out.slice(0, 300) : undefined;
}

function isStaleConnectionError(err: unknown): boolean {
  const code = (err as { code?: string })?.code;
  return err instanceof undiciErrors.SocketError || code === 'ECONNRESET' || code === 'EPIPE';
}

function noop(): void {}
