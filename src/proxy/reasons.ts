/**
 * Every list of reasons the data path can report, each in one constant: the TypeScript type and the metric label
 * values (metrics/ exports every value at 0 so `increase()` sees the first event) are both derived from it, and a
 * test checks that every reason the code produces appears as a label.
 */

/** Why a connection ended: label values of `apilb_connections_closed_total{reason}`. */
export const CLOSE_REASONS = [
  'normal',
  'client_error',
  'client_timeout',
  'backend_error',
  'backend_down',
  'drain_timeout',
  'shutdown',
  'all_backends_failed',
  'no_backend',
  'rebalance',
] as const;
export type CloseReason = (typeof CLOSE_REASONS)[number];

/**
 * Close reasons of connections that never had a backend (the pool was empty): exported with `backend=""`, since
 * no API server is involved.
 */
export const BACKENDLESS_CLOSE_REASONS: readonly CloseReason[] = ['no_backend'];

/** Why a dial attempt failed: label values of `apilb_connect_failures_total{reason}`. */
export const DIAL_FAILURE_REASONS = ['refused', 'timeout', 'reset', 'unreachable', 'first_byte_timeout', 'local_resources', 'error'] as const;
export type DialFailureReason = (typeof DIAL_FAILURE_REASONS)[number];

/** Why apilb refused a client itself: label values of `apilb_rejected_connections_total{reason}`. */
export const REJECT_REASONS = ['max_connections', 'accept_error'] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/**
 * What made a connection try another backend (kept per reason; `apilb_retries_total` is their sum):
 * `connect_failed` (a dial failure other than a first-byte timeout), `first_byte_timeout`, `backend_down` (the pool
 * took the backend down while the connection was still dialing or waiting for its first byte: the pool's own
 * decision, never reported back to it as a failure).
 */
export const RETRY_REASONS = ['connect_failed', 'first_byte_timeout', 'backend_down'] as const;
export type RetryReason = (typeof RETRY_REASONS)[number];

/** Why a connection left a backend before committing to it: a failed dial, or its backend went down. */
export type LeaveCause = DialFailureReason | 'backend_down';

/** The retry reason a connection that left a backend for `cause` is counted under. */
export function retryReason(cause: LeaveCause): RetryReason {
  return cause === 'first_byte_timeout' || cause === 'backend_down' ? cause : 'connect_failed';
}
