/**
 * What the health monitor needs of a checker (https or tcp), and the shared wording of transport failures so
 * logs and /status read the same whichever mode found them.
 */
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

/** Prefix of transport errors caused by certificate verification (the logger keys its hint off it). */
export const TLS_ERROR_PREFIX = 'tls: ';

const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
  'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
]);

/** Describes a transport failure in a few words: `connection refused`, `tls: ... (CODE)`, ... */
export function describeTransportError(err: unknown): string {
  const e = err as (Error & { code?: string }) | undefined;
  if (!e || typeof e !== 'object') return String(err);
  const code = e.code;
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'ECONNRESET':
      return 'connection reset';
    case 'EPIPE':
      return 'connection reset (broken pipe)';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'host unreachable';
    case 'ETIMEDOUT':
      return e.message.startsWith('timeout') ? e.message : `timeout (${e.message})`;
  }
  if (code && (TLS_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_'))) return `${TLS_ERROR_PREFIX}${e.message} (${code})`;
  return code ? `${e.message} (${code})` : e.message;
}

const LOCAL_RESOURCE_CODES = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);

/**
 * True when a connect failed for lack of resources on this node (file descriptors, memory): that says nothing
 * about the backend, and must not mark every backend down at once.
 */
export function isLocalResourceError(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } } | undefined;
  return LOCAL_RESOURCE_CODES.has(e?.code ?? '') || LOCAL_RESOURCE_CODES.has(e?.cause?.code ?? '');
}

/** Milliseconds since `start` (performance.now()), rounded to 0.1 ms. */
export function elapsed(start: number): number {
  return Math.round((performance.now() - start) * 10) / 10;
}
