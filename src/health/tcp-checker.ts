/**
 * TCP check: connect, and with a CA also complete a verified TLS handshake, then close. For API servers whose
 * health endpoint is unreachable to apilb; it cannot see "answers but not ready", only "reachable".
 */
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { tlsClientOptions, type TlsMaterial } from '../config/tls.js';
import { OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import type { CheckResult } from '../pool/pool.js';
import { elapsed, transportFailure, type Checker } from './checker.js';
import { checkServerName } from './https-checker.js';

/** Options of {@link TcpChecker}. */
export interface TcpCheckerOptions {
  backend: Backend;
  /** Used only for the error text (the monitor enforces it). Required; must be > 0. */
  timeout: number;
  /** With `ca` set, a TLS handshake verified against it follows the connect. Required. */
  tls: TlsMaterial;
}

/** A tcp checker for one backend. */
export class TcpChecker implements Checker {
  readonly backend: Backend;
  readonly timeout: number;
  private readonly tls: TlsMaterial;
  private readonly open = new Set<Socket>();
  private closed = false;

  constructor(options: TcpCheckerOptions) {
    if (!options?.backend) throw new OptionError('backend', 'is required');
    if (!(options.timeout > 0)) throw new OptionError('timeout', `must be > 0, got ${options.timeout}`);
    if (!options.tls) throw new OptionError('tls', 'is required');
    this.backend = options.backend;
    this.timeout = options.timeout;
    this.tls = options.tls;
  }

  /** True when checks include a TLS handshake (a CA is configured). */
  get handshake(): boolean {
    return this.tls.ca !== undefined;
  }

  check(signal: AbortSignal): Promise<CheckResult> {
    const start = performance.now();
    if (this.closed) return Promise.resolve({ ok: false, kind: 'transport', latencyMs: 0, error: 'checker closed' });
    return new Promise<CheckResult>((resolve) => {
      const sockets: Socket[] = [];
      let settled = false;
      const finish = (r: CheckResult): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onCheckAbort);
        resolve(r);
        // Not from inside a TLS callback (a verify error is emitted from the handshake callback).
        setImmediate(() => {
          for (const s of sockets) {
            s.destroy();
            this.open.delete(s);
          }
        });
      };
      const fail = (err: unknown): void => finish(transportFailure(start, err));
      const track = (s: Socket): void => {
        sockets.push(s);
        this.open.add(s);
        s.on('error', fail);
      };
      const timeout = this.timeout;
      function onCheckAbort(): void {
        finish({ ok: false, kind: 'transport', latencyMs: elapsed(start), error: `timeout after ${timeout} ms` });
      }
      if (signal.aborted) return onCheckAbort();
      signal.addEventListener('abort', onCheckAbort);
      const { host, port } = this.backend.address;
      if (!this.handshake) {
        const raw = netConnect({ host, port, noDelay: true });
        track(raw);
        raw.once('connect', () => finish({ ok: true, latencyMs: elapsed(start) }));
        return;
      }
      const opts: ConnectionOptions = { host, port, ALPNProtocols: ['http/1.1'], ...tlsClientOptions(this.tls, checkServerName(this.tls, this.backend)) };
      const secure: TLSSocket = tlsConnect(opts);
      track(secure);
      secure.once('secureConnect', () => finish({ ok: true, latencyMs: elapsed(start) }));
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.open) s.destroy();
    this.open.clear();
  }
}
