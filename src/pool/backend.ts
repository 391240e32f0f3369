/**
 * One backend (API server) and its counters. Only the Pool changes `state`; the data path and the health
 * checkers report into the Pool, never into a Backend directly.
 */
import { formatAddress, type Address } from '../config/values.js';

/**
 * `unknown`: no result yet (eligible). `up`: healthy (eligible). `draining`: answers but is not ready, no new
 * connections, existing ones finish (or are closed after the drain timeout). `down`: transport failures,
 * every connection to it is closed at once.
 */
export type BackendState = 'unknown' | 'up' | 'draining' | 'down';

/** All states, for metrics that expose one series per state. */
export const BACKEND_STATES: readonly BackendState[] = ['unknown', 'up', 'draining', 'down'];

/** Where a backend came from. */
export type BackendSource = 'static' | 'dns' | 'discovery';

/** The last active check's outcome, as /status shows it. */
export interface CheckRecord {
  /** `ok`: expected answer; `status`: answered, wrong status (not ready); `error`: transport failure. */
  result: 'ok' | 'status' | 'error';
  /** HTTP status for https checks that got an answer. */
  status?: number;
  latencyMs: number;
  error?: string;
  /** Epoch ms of completion. */
  at: number;
}

/** How to create a backend. */
export interface BackendSpec {
  address: Address;
  /** Name used for TLS verification (DNS backends: their host name). Default: none (use the IP). */
  serverName?: string;
  /** Default `static`. */
  source?: BackendSource;
}

/** A backend and its live counters (read at scrape time by metrics/, never pushed from the hot path). */
export class Backend {
  /** `HOST:PORT` as operators write it; the identity and the metrics label. */
  readonly id: string;
  readonly address: Address;
  readonly serverName: string | undefined;
  readonly source: BackendSource;
  state: BackendState = 'unknown';
  /** Epoch ms when the current state began. */
  since: number;
  /** True once removed by reload/discovery; it drains and then leaves the pool. */
  removed = false;
  lastCheck: CheckRecord | undefined;
  /** Last transition reason, for /status. */
  reason = 'startup';
  consecutiveSuccesses = 0;
  consecutiveFailures = 0;
  /** Consecutive failures, kind of the latest one decides down vs draining. */
  lastFailureKind: 'transport' | 'status' | undefined;
  // The five connection counters below change only through a BackendLease (Pool.lease): one owner.
  /** Open connections to it (TCP handshake done, not yet closed). */
  activeConnections = 0;
  /** Connections dialing it (not yet connected); least-connections counts them so a burst does not pile up. */
  dialing = 0;
  /** Connections ever established to it. */
  totalConnections = 0;
  /** Bytes of connections already closed (open ones are added by the data path at read time). */
  bytesFromClientClosed = 0;
  bytesToClientClosed = 0;
  /** Failed dials by reason (refused, timeout, reset, unreachable, first_byte_timeout, other). */
  readonly connectFailures = new Map<string, number>();
  /** Health checks by result. */
  readonly checkCounts = { ok: 0, status: 0, error: 0 };
  /** Transitions by target state. */
  readonly transitions = new Map<BackendState, number>();

  constructor(spec: BackendSpec, now: number) {
    this.address = spec.address;
    this.id = formatAddress(spec.address);
    this.serverName = spec.serverName;
    this.source = spec.source ?? 'static';
    this.since = now;
  }

  /** Eligible for new connections in normal (non-panic) operation. */
  get eligible(): boolean {
    return !this.removed && (this.state === 'up' || this.state === 'unknown');
  }
}
