/**
 * What a socket or TLS error says, in one place for the data path and the health checkers: the errno → reason
 * table behind `apilb_connect_failures_total{reason}`, the "this node ran out of resources" test both use to keep
 * a local shortage from marking backends down, and the wording of transport failures in logs and /status.
 * Called only once an error happened, never per chunk.
 */
import type { DialFailureReason } from './proxy/reasons.js';

/** The reasons an errno code alone decides (the other dial failure reasons come from the dialer's own timers). */
export type ErrnoReason = Extract<DialFailureReason, 'refused' | 'timeout' | 'reset' | 'unreachable' | 'local_resources'>;

const ERRNO_REASONS: ReadonlyMap<string, ErrnoReason> = new Map<string, ErrnoReason>([
  ['ECONNREFUSED', 'refused'],
  ['ETIMEDOUT', 'timeout'],
  ['ECONNRESET', 'reset'],
  ['EPIPE', 'reset'],
  ['EHOSTUNREACH', 'unreachable'],
  ['ENETUNREACH', 'unreachable'],
  ['EADDRNOTAVAIL', 'unreachable'],
  // Out of file descriptors or memory on this node: not the backend's fault (never reported to the pool).
  ['EMFILE', 'local_resources'],
  ['ENFILE', 'local_resources'],
  ['ENOBUFS', 'local_resources'],
  ['ENOMEM', 'local_resources'],
]);

/** The reason an errno code stands for, or undefined for codes that say nothing specific (and no code). */
export function errnoReason(code: string | undefined): ErrnoReason | undefined {
  return code === undefined ? undefined : ERRNO_REASONS.get(code);
}

/**
 * True when a connect failed for lack of resources on this node (file descriptors, memory): that says nothing
 * about the backend, and must not mark every backend down at once. Looks at the error and at its `cause`.
 */
export function isLocalResourceError(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } } | undefined;
  return errnoReason(e?.code) === 'local_resources' || errnoReason(e?.cause?.code) === 'local_resources';
}

/** Prefix of transport errors caused by certificate verification (the logger keys its hint off it). */
export const TLS_ERROR_PREFIX = 'tls: ';

const TLS_CODES: ReadonlySet<string> = new Set([
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

/** True for codes of a failed TLS handshake or certificate verification (OpenSSL's and Node's). */
export function isTlsErrorCode(code: string | undefined): boolean {
  return code !== undefined && (TLS_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_'));
}

/**
 * What a failed TLS verification says about the server certificate, for hints: `name` when it does not carry the
 * name verified (set a server name), `chain` when it does not verify against the CA (self-signed, unknown issuer,
 * expired, ...); undefined for other failures (a handshake or protocol error, a non-TLS error). `chain` goes by the
 * code's wording (CERT, SELF_SIGNED, UNABLE_TO_VERIFY), so the server's alerts about our client certificate
 * (`ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE`, `..._CERTIFICATE_REQUIRED`) count as `chain` too.
 */
export function certificateFailure(code: string | undefined): 'name' | 'chain' | undefined {
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'name';
  return code !== undefined && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code) ? 'chain' : undefined;
}

/** Describes a transport failure in a few words: `connection refused`, `tls: ... (CODE)`, ... */
export function describeTransportError(err: unknown): string {
  const e = err as (Error & { code?: string }) | undefined;
  if (!e || typeof e !== 'object') return String(err);
  const code = e.code;
  switch (errnoReason(code)) {
    case 'refused':
      return 'connection refused';
    case 'reset':
      return code === 'EPIPE' ? 'connection reset (broken pipe)' : 'connection reset';
    case 'unreachable':
      // EADDRNOTAVAIL (no local address or port to connect from) keeps its own message.
      if (code !== 'EADDRNOTAVAIL') return 'host unreachable';
      break;
    case 'timeout':
      return e.message.startsWith('timeout') ? e.message : `timeout (${e.message})`;
  }
  if (isTlsErrorCode(code)) return `${TLS_ERROR_PREFIX}${e.message} (${code})`;
  return code ? `${e.message} (${code})` : e.message;
}
