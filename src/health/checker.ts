/**
 * What the health monitor needs of a checker (https or tcp). The wording of transport failures, shared with the
 * data path, lives in ../net-errors.ts.
 */
import { describeTransportError, isLocalResourceError } from '../net-errors.js';
import type { CheckResult } from '../pool/pool.js';

/** One backend's active checker. The monitor owns timing: it aborts `signal` when the check timeout expires. */
export interface Checker {
  /**
   * Runs one check. Never rejects: failures come back as results. Must settle promptly once `signal` aborts
   * (the monitor does not wait for it anyway).
   */
  check(signal: AbortSignal): Promise<CheckResult>;
  /** Releases sockets and clients; later checks are not expected. */
  close(): Promise<void>;
}

/** Milliseconds since `start` (performance.now()), rounded to 0.1 ms. */
export function elapsed(start: number): number {
  return Math.round((performance.now() - start) * 10) / 10;
}

/**
 * The result of a check that failed in transport with `err` (begun at `start`, performance.now()): its wording, and
 * `local` when this node ran out of resources (the pool does not hold that against the backend).
 */
export function transportFailure(start: number, err: unknown): CheckResult {
  return {
    ok: false,
    kind: 'transport',
    latencyMs: elapsed(start),
    error: describeTransportError(err),
    ...(isLocalResourceError(err) ? { local: true } : {}),
  };
}
