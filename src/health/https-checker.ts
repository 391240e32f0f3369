/**
 * HTTPS check: `GET <path>` over one kept-alive connection per backend (node:https with a one-socket keep-alive
 * agent), verifying the server certificate against the cluster CA. Thousands of nodes check every API server, so
 * a check must be one request on an open connection, not a TLS handshake each time.
 *
 * 401 and 403 count as passed (`ok` with the status kept): the API server answered, so it is alive; with the
 * default RBAC /readyz is public, so a refusal means apilb's own credentials are wrong or missing (a node still
 * bootstrapping), and that must never take every backend out of rotation. The logger and the
 * `apilb_health_check_unauthenticated_total` metric make it loud (both read the monitor's `check` events).
 *
 * Why node:https and not undici: apilb runs on every node, and undici's import plus its WebAssembly HTTP parser
 * cost 20-26 MB of RSS (bench/RESULTS.md, issue 18); node:https uses the parser built into Node.
 */
import { Agent, request as httpsRequest, type AgentOptions } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { tlsClientOptions, type TlsMaterial } from '../config/tls.js';
import { OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import type { CheckResult } from '../pool/pool.js';
import { VERSION } from '../version.js';
import { errnoReason } from '../net-errors.js';
import { elapsed, transportFailure, type Checker } from './checker.js';

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
  private agent: Agent | undefined;
  /** TCP/TLS connections opened so far (tests check keep-alive with it). */
  connects = 0;
  private closed = false;

  constructor(options: HttpsCheckerOptions) {
    if (!options?.backend) throw new OptionError('backend', 'is required');
    if (typeof options.path !== 'string' || !options.path.startsWith('/'))
      throw new OptionError('path', `must start with "/", got ${JSON.stringify(options.path)}`);
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
  }

  private createAgent(): Agent {
    const opts: AgentOptions = {
      keepAlive: true,
      maxSockets: 1,
      maxFreeSockets: 1,
      // Idle timeout of the kept-alive socket: outlive one jittered interval plus a check, so the next check
      // finds the connection open.
      timeout: Math.ceil(this.interval * 1.1 + this.timeout + 1000),
      ...tlsClientOptions(this.tls, checkServerName(this.tls, this.backend)),
    };
    return new Agent(opts);
  }

  async check(signal: AbortSignal): Promise<CheckResult> {
    const start = performance.now();
    if (this.closed) return { ok: false, kind: 'transport', latencyMs: 0, error: 'checker closed' };
    for (let attempt = 0; ; attempt++) {
      this.agent ??= this.createAgent();
      const agent = this.agent;
      const state = { reused: false };
      // On timeout the agent is given up at once, not when this check's catch runs: the monitor starts the
      // re-check right away, and it must get a fresh connection, not this one still opening (which the catch
      // below would then destroy under it: two failures from one slow TLS handshake).
      const onCheckTimeout = (): void => {
        if (this.agent === agent) this.agent = undefined;
      };
      signal.addEventListener('abort', onCheckTimeout, { once: true });
      try {
        const res = await this.request(agent, signal, state);
        const status = res.statusCode ?? 0;
        const text = await readBody(res, status === 200 ? 0 : ERROR_BODY_BYTES);
        const latencyMs = elapsed(start);
        if (status === 200 || UNAUTHENTICATED_STATUSES.has(status)) return { ok: true, latencyMs, status };
        const r: CheckResult = { ok: false, kind: 'status', latencyMs, status };
        const detail = summarize(text);
        if (detail) r.error = detail;
        return r;
      } catch (err) {
        this.dropAgent(agent);
        if (signal.aborted) return { ok: false, kind: 'transport', latencyMs: elapsed(start), error: `timeout after ${this.timeout} ms` };
        // A kept-alive connection the backend closed while idle is not the backend's fault: retry once, fresh.
        if (attempt === 0 && state.reused && isStaleConnectionError(err)) continue;
        return transportFailure(start, err);
      } finally {
        signal.removeEventListener('abort', onCheckTimeout);
      }
    }
  }

  /** One GET; resolves with the response (headers read), rejects on any transport error, abort or timeout. */
  private request(agent: Agent, signal: AbortSignal, state: { reused: boolean }): Promise<IncomingMessage> {
    const { host, port } = this.backend.address;
    return new Promise((resolve, reject) => {
      // `timeout` bounds connect and every wait for bytes (the monitor's abort bounds the whole check).
      const req = httpsRequest({ host, port, path: this.path, method: 'GET', agent, signal, timeout: this.timeout, headers: this.headers }, resolve);
      const onCheckSocket = (): void => {
        state.reused = req.reusedSocket;
        if (!req.reusedSocket) this.connects++;
      };
      const onCheckSocketTimeout = (): void => {
        req.destroy(Object.assign(new Error(`timeout: no answer within ${this.timeout} ms`), { code: 'ETIMEDOUT' }));
      };
      req.on('socket', onCheckSocket);
      req.on('timeout', onCheckSocketTimeout);
      req.on('error', reject);
      req.end();
    });
  }

  private dropAgent(agent: Agent): void {
    if (this.agent === agent) this.agent = undefined;
    // A transport failure leaves the connection in an unknown state: the next check starts a fresh one.
    agent.destroy();
  }

  async close(): Promise<void> {
    this.closed = true;
    const a = this.agent;
    this.agent = undefined;
    a?.destroy();
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
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const failed = lines.filter((l) => l.startsWith('[-]'));
  const out = failed.length > 0 ? failed.join('; ') : lines[0];
  return out ? out.slice(0, 300) : undefined;
}

function isStaleConnectionError(err: unknown): boolean {
  return errnoReason((err as { code?: string })?.code) === 'reset';
}
