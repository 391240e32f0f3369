/**
 * Typed errors with stable codes. Every code here is documented in docs/errors.md; a test keeps both in sync.
 * Operators grep logs and scripts branch on `code`, so codes are a contract: add, never rename.
 */

/** Every stable error code apilb can report, with a one-line meaning. */
export const ERROR_CODES = {
  APILB_ERR_CONFIG_INVALID: 'the configuration (flags, environment or file) is invalid',
  APILB_ERR_OPTION_INVALID: 'an options object passed to a component is invalid (a programming error)',
  APILB_ERR_ADDRESS_IN_USE: 'a listen address is already in use',
  APILB_ERR_LISTEN_FAILED: 'a listener could not be bound for another reason',
  APILB_ERR_DIAL_TIMEOUT: 'a backend did not complete the TCP handshake within --connect-timeout',
  APILB_ERR_FIRST_BYTE_TIMEOUT: 'a backend accepted but sent nothing within --first-byte-timeout',
  APILB_ERR_ALL_BACKENDS_FAILED: 'every eligible backend failed for one client connection',
  APILB_ERR_TLS_CONFIG: 'TLS material (CA, client certificate, key or token) is missing, unreadable or unusable',
  APILB_ERR_KUBECONFIG_INVALID: 'the kubeconfig cannot be used for health-check credentials',
  APILB_ERR_HEALTH_CHECK: 'an active health check failed',
  APILB_ERR_RELOAD_REJECTED: 'a reloaded configuration was rejected; the previous one stays active',
  APILB_ERR_DISCOVERY: 'EndpointSlice discovery failed; the last known backend list stays in use',
  APILB_ERR_SYSTEMD: 'systemd integration (socket activation or notify) failed',
  APILB_ERR_ADMIN_UNREACHABLE: 'the admin endpoint could not be reached (apilb status)',
} as const;

/** A stable error code string, e.g. `APILB_ERR_CONFIG_INVALID`. */
export type ErrorCode = keyof typeof ERROR_CODES;

/**
 * Exit codes of the `apilb` command, one per kind of failure and the same for every subcommand (run,
 * check-config, status, demo). Documented in docs/errors.md (a test keeps both in sync).
 */
export const EXIT_CODES = {
  /** Success (check-config: the configuration is valid). */
  ok: 0,
  /** A failure while running (unexpected errors included). */
  runtime: 1,
  /** Invalid configuration, credentials or usage: fix the input, retrying will not help. */
  config: 2,
  /** A listen address (--listen, --admin-listen) cannot be bound. */
  listen: 3,
  /** `apilb status`: the admin endpoint did not answer. */
  unreachable: 4,
} as const;

/** Which exit code each error code ends the process with (codes not listed: `runtime`). */
const EXIT_BY_CODE: Partial<Record<ErrorCode, keyof typeof EXIT_CODES>> = {
  APILB_ERR_CONFIG_INVALID: 'config',
  APILB_ERR_TLS_CONFIG: 'config',
  APILB_ERR_KUBECONFIG_INVALID: 'config',
  APILB_ERR_ADDRESS_IN_USE: 'listen',
  APILB_ERR_LISTEN_FAILED: 'listen',
  APILB_ERR_ADMIN_UNREACHABLE: 'unreachable',
};

/** The process exit code for `err` (see {@link EXIT_CODES}). */
export function exitCodeOf(err: unknown): number {
  return EXIT_CODES[(err instanceof ApilbError && EXIT_BY_CODE[err.code]) || 'runtime'];
}

/** One problem found while validating configuration: where it is and why it is wrong. */
export interface ConfigIssue {
  /** Dotted path of the offending field, e.g. `backends.1` or `healthCheckInterval`. */
  path: string;
  /** Human-readable reason, e.g. `must be a duration like 250ms, 2s or 1m`. */
  reason: string;
}

/** Base class of every error apilb raises on purpose. */
export class ApilbError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ApilbError';
    this.code = code;
  }
}

/** Raised when configuration fails validation; carries every issue found, not just the first. */
export class ConfigError extends ApilbError {
  /** All problems found, each with its path and reason. */
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[], source = 'configuration') {
    super('APILB_ERR_CONFIG_INVALID', `invalid ${source}:\n` + issues.map((i) => `  - ${i.path}: ${i.reason}`).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

/** Raised by constructors when an options object is invalid (programming error, not operator input). */
export class OptionError extends ApilbError {
  constructor(option: string, reason: string) {
    super('APILB_ERR_OPTION_INVALID', `option ${option} ${reason}`);
    this.name = 'OptionError';
  }
}

/**
 * Returns `v` when it is a finite number ≥ `min`, else throws an {@link OptionError} naming `name`: the one check
 * of numeric constructor options (validated once, at construction).
 */
export function numberOption(name: string, v: number, min: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new OptionError(name, `must be a number ≥ ${min}, got ${v}`);
  return v;
}

/** True when `err` is an ApilbError with the given code. */
export function hasCode(err: unknown, code: ErrorCode): boolean {
  return err instanceof ApilbError && err.code === code;
}
