/**
 * The logger (pino, JSON to stdout for journald) and its subscriptions to pool and proxy events. Nothing here is
 * called from the hot path: per-connection lines are only subscribed at debug level.
 */
import { fstatSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import type { Backend } from './pool/backend.js';
import type { Pool, TransitionEvent } from './pool/pool.js';
import { TLS_ERROR_PREFIX } from './net-errors.js';
import type { HealthCheckEvent, HealthCheckSource } from './health/health-monitor.js';
import { isUnauthenticated } from './health/https-checker.js';
import type { CredentialReload } from './config/credentials.js';
import type { CloseEvent, DialFailureEvent, TcpProxy } from './proxy/proxy.js';
import type { Rebalancer } from './proxy/rebalancer.js';
import type { ErrorCode } from './errors.js';
import { formatAddress } from './config/values.js';
import type { DiscoveryEvents, EndpointSliceDiscovery } from './discovery/endpointslices.js';
import type { ListWatchEvents } from './discovery/list-watch.js';

export type { Logger } from 'pino';

/** The stable code (docs/errors.md) a dial failure or a close reason carries in its log line, where it has one. */
const REASON_CODES: Partial<Record<string, ErrorCode>> = {
  timeout: 'APILB_ERR_DIAL_TIMEOUT',
  first_byte_timeout: 'APILB_ERR_FIRST_BYTE_TIMEOUT',
  all_backends_failed: 'APILB_ERR_ALL_BACKENDS_FAILED',
};

/** syslog(3) priority of each pino level: what `journalctl -p` filters on. */
export const SYSLOG_PRIORITY: Readonly<Record<string, number>> = { fatal: 2, error: 3, warn: 4, info: 6, debug: 7, trace: 7 };

/**
 * True when file descriptor `fd` is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` for a
 * service whose stdout/stderr goes to journald, and the stream is ours only if `fd`'s device and inode match
 * (a child whose stdout was redirected inherits the variable but not the stream).
 */
export function isJournalStream(fd = 1, env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}

/**
 * Wraps `dest` so that each line starts with its `<N>` syslog priority: journald (SyslogLevelPrefix=yes, the
 * default) strips the prefix and files the line at that priority, so `journalctl -p err` finds errors. One
 * stream per level (multistream, dedupe: each line goes to the highest level at or below its own).
 */
function withSyslogPrefix(dest: pino.DestinationStream): pino.MultiStreamRes {
  const streams = Object.entries(SYSLOG_PRIORITY).map(([label, prio]) => {
    const prefix = `<${prio}>`;
    return { level: label as pino.Level, stream: { write: (line: string) => dest.write(prefix + line) } };
  });
  return pino.multistream(streams, { dedupe: true });
}

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** Prefix lines with `<N>` syslog priorities. Default: only when writing to stdout and stdout is the journal. */
  syslogPrefix?: boolean;
}

/**
 * Creates the process logger: JSON lines on `destination` (default stdout). `level` default `info`; `silent`
 * disables output. Under systemd with stdout connected to the journal, lines carry a `<N>` priority prefix.
 */
export function createLogger(level = 'info', destination?: pino.DestinationStream, options: LoggerOptions = {}): Logger {
  const opts: pino.LoggerOptions = {
    level,
    base: { svc: 'apilb' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    // Never log key material even if an options object slips into a log call.
    redact: { paths: ['*.key', '*.cert', '*.clientKey', '*.password', '*.token', 'tls.key', 'tls.cert'], censor: '[redacted]' },
  };
  const syslogPrefix = options.syslogPrefix ?? (destination === undefined && isJournalStream(1));
  if (syslogPrefix) return pino(opts, withSyslogPrefix(destination ?? pino.destination({ dest: 1, sync: true })));
  return destination ? pino(opts, destination) : pino(opts);
}

/**
 * Subscribes `log` to pool, proxy and (when given) rebalancer events; returns a function that unsubscribes.
 * Rebalancing logs one info line per round that moved connections (a few a minute at most), others at debug.
 */
export function subscribeLogger(log: Logger, pool: Pool, proxy: TcpProxy, rebalancer?: Rebalancer): () => void {
  function onTransitionLog(ev: TransitionEvent): void {
    const level = ev.to === 'down' || ev.to === 'draining' ? 'warn' : 'info';
    log[level](
      { event: 'backend_transition', backend: ev.backend.id, from: ev.from, to: ev.to, reason: ev.reason },
      `backend ${ev.backend.id} ${ev.from} -> ${ev.to}: ${ev.reason}`,
    );
  }
  function onPanicLog(ev: { active: boolean }): void {
    if (ev.active)
      log.error(
        { event: 'panic', active: true },
        'no backend is up: trying every backend for each connection (check the health-check settings: CA, server name, credentials)',
      );
    else log.info({ event: 'panic', active: false }, 'a backend is up again: panic mode over');
  }
  function onAddedLog(b: Backend): void {
    log.info({ event: 'backend_added', backend: b.id, source: b.source }, `backend ${b.id} added`);
  }
  function onRemovedLog(b: Backend): void {
    log.info(
      { event: 'backend_removed', backend: b.id, activeConnections: b.activeConnections },
      `backend ${b.id} removed; its ${b.activeConnections} connections drain`,
    );
  }
  function onDialFailureLog(ev: DialFailureEvent): void {
    log.warn(
      { event: 'dial_failure', code: REASON_CODES[ev.reason], backend: ev.backend.id, reason: ev.reason, err: ev.error?.message },
      `connect to ${ev.backend.id} failed: ${ev.reason}`,
    );
  }
  function onDrainTimeoutLog(ev: { backend: Backend; connections: number; spreadMs: number }): void {
    log.info(
      { event: 'drain_timeout', backend: ev.backend.id, connections: ev.connections, spreadMs: ev.spreadMs },
      `closing the ${ev.connections} connections still open to ${ev.backend.id} (draining or removed) over ${ev.spreadMs / 1000} s`,
    );
  }
  function onDrainHeldLog(ev: { backend: Backend; connections: number }): void {
    log.warn(
      { event: 'drain_held', backend: ev.backend.id, connections: ev.connections },
      `keeping ${ev.connections} connections to ${ev.backend.id} past the drain timeout: no other backend is up; they drain once one is`,
    );
  }
  let lastReject = 0;
  function onRejectLog(ev: { reason: string }): void {
    // At most one line per second: a flood of rejected connections must not become a flood of log lines.
    const now = Date.now();
    if (now - lastReject < 1000) return;
    lastReject = now;
    log.warn({ event: 'connection_rejected', reason: ev.reason }, `rejecting connections: ${ev.reason}`);
  }
  let lastAcceptError = 0;
  function onAcceptErrorLog(ev: { error: NodeJS.ErrnoException }): void {
    const now = Date.now();
    if (now - lastAcceptError < 1000) return;
    lastAcceptError = now;
    const hint = ev.error.code === 'EMFILE' ? ' (out of file descriptors: raise LimitNOFILE= or lower --max-connections)' : '';
    log.error({ event: 'accept_error', code: ev.error.code, err: ev.error.message }, `accepting a client connection failed: ${ev.error.message}${hint}`);
  }
  function onCloseLog(ev: CloseEvent): void {
    log.debug(
      {
        event: 'connection_closed',
        code: REASON_CODES[ev.reason],
        backend: ev.backend?.id,
        reason: ev.reason,
        bytesFromClient: ev.bytesFromClient,
        bytesToClient: ev.bytesToClient,
        durationMs: ev.durationMs,
      },
      'connection closed',
    );
  }
  function onClientErrorLog(ev: { error: Error }): void {
    log.debug({ event: 'client_error', err: ev.error.message }, 'client socket error');
  }
  const movedFrom = new Map<string, number>();
  function onMoveLog(ev: { from: Backend }): void {
    movedFrom.set(ev.from.id, (movedFrom.get(ev.from.id) ?? 0) + 1);
  }
  function onRebalanceRoundLog(ev: { outcome: string; moves: number }): void {
    if (ev.moves === 0) {
      log.debug({ event: 'rebalance_round', outcome: ev.outcome }, `rebalance: ${ev.outcome}`);
      return;
    }
    const from = Object.fromEntries(movedFrom);
    movedFrom.clear();
    const list = Object.entries(from)
      .map(([id, n]) => `${n} from ${id}`)
      .join(', ');
    log.info(
      { event: 'rebalance_round', outcome: ev.outcome, moves: ev.moves, from },
      `rebalance: closed ${ev.moves} quiet connections to spread them again (${list})`,
    );
  }
  // [emitter, event, handler]: subscribed together, unsubscribed together.
  type Sub = [{ on(e: string, f: never): unknown; off(e: string, f: never): unknown }, string, (ev: never) => void];
  const subs: Sub[] = [
    [pool, 'transition', onTransitionLog],
    [pool, 'panic', onPanicLog],
    [pool, 'added', onAddedLog],
    [pool, 'removed', onRemovedLog],
    [proxy, 'dial-failure', onDialFailureLog],
    [proxy, 'drain-timeout', onDrainTimeoutLog],
    [proxy, 'drain-held', onDrainHeldLog],
    [proxy, 'reject', onRejectLog],
    [proxy, 'accept-error', onAcceptErrorLog],
  ];
  if (rebalancer) subs.push([rebalancer, 'move', onMoveLog], [rebalancer, 'round', onRebalanceRoundLog]);
  // Per-connection lines only at debug: otherwise nothing listens, and the data path skips building the events.
  if (log.isLevelEnabled('debug')) subs.push([proxy, 'close', onCloseLog], [proxy, 'client-error', onClientErrorLog]);
  for (const [em, ev, fn] of subs) em.on(ev, fn as never);
  return function unsubscribeLogger() {
    for (const [em, ev, fn] of subs) em.off(ev, fn as never);
  };
}

/** Minimum time between two hint lines of one kind for one backend (a failing check repeats every few 100 ms). */
const HEALTH_HINT_INTERVAL_MS = 60_000;

/**
 * Subscribes `log` to health-check results: an actionable warning when a backend answers 401/403 (credentials)
 * or fails certificate verification (CA / server name), at most once a minute per backend and kind; every
 * result at debug level. Transitions are logged by {@link subscribeLogger}. Returns a function that unsubscribes.
 */
export function subscribeHealthLogger(log: Logger, source: HealthCheckSource, now: () => number = Date.now): () => void {
  const lastHint = new Map<string, number>();
  function hint(key: string): boolean {
    const t = now();
    const last = lastHint.get(key);
    if (last !== undefined && t - last < HEALTH_HINT_INTERVAL_MS) return false;
    lastHint.set(key, t);
    return true;
  }
  const debug = log.isLevelEnabled('debug');
  function onCheckLog(ev: HealthCheckEvent): void {
    const { backend, result: r } = ev;
    if (debug)
      log.debug(
        {
          event: 'health_check',
          backend: backend.id,
          ok: r.ok,
          kind: r.ok ? 'ok' : r.kind,
          status: 'status' in r ? r.status : undefined,
          latencyMs: r.latencyMs,
          err: r.ok ? undefined : r.error,
        },
        'health check',
      );
    if (isUnauthenticated(r)) {
      if (!hint(`auth ${backend.id}`)) return;
      const what =
        r.status === 401
          ? "refused apilb's credentials (401 Unauthorized: anonymous auth is off, or the certificate/token is not accepted)"
          : 'forbade the health check (403 Forbidden: the identity may not read the health path)';
      log.warn(
        { event: 'health_check_unauthenticated', code: 'APILB_ERR_HEALTH_CHECK', backend: backend.id, status: r.status },
        `backend ${backend.id} ${what}; it answered, so it counts as up, but apilb cannot see whether it is ready. Give apilb credentials allowed to GET the health path: ` +
          '--kubeconfig (e.g. /etc/kubernetes/kubelet.conf), or --client-cert-file and --client-key-file (e.g. /var/lib/kubelet/pki/kubelet-client-current.pem)',
      );
      return;
    }
    if (r.ok) return;
    if (r.kind === 'transport' && r.error.startsWith(TLS_ERROR_PREFIX)) {
      if (!hint(`tls ${backend.id}`)) return;
      log.warn(
        { event: 'health_check_tls', code: 'APILB_ERR_HEALTH_CHECK', backend: backend.id, err: r.error },
        `health check of ${backend.id} failed TLS verification (${r.error.slice(TLS_ERROR_PREFIX.length)}): check --ca-file (the cluster CA) and ` +
          '--tls-server-name (API server certificates carry "kubernetes", not always the IP); --health-check-insecure skips verification',
      );
    }
  }
  source.on('check', onCheckLog);
  return function unsubscribeHealthLogger() {
    source.off('check', onCheckLog);
  };
}

/** What {@link subscribeCredentialsLogger} needs of the credential watcher. */
export interface CredentialsLogSource {
  readonly missing: readonly string[];
  on(event: 'reloaded', listener: (ev: CredentialReload) => void): unknown;
  on(event: 'rejected', listener: (ev: { error: string }) => void): unknown;
  off(event: 'reloaded', listener: (ev: CredentialReload) => void): unknown;
  off(event: 'rejected', listener: (ev: { error: string }) => void): unknown;
}

/**
 * Subscribes `log` to credential changes: each reload (what changed, never a value), each refused file (the old
 * credentials stay), and files that do not exist yet (at once for the current state, and after each reload).
 */
export function subscribeCredentialsLogger(log: Logger, source: CredentialsLogSource): () => void {
  function logMissing(missing: readonly string[]): void {
    if (missing.length === 0) return;
    log.warn(
      { event: 'credentials_missing', files: missing },
      `credential files do not exist yet: ${missing.join(', ')}; running without them (health checks answered 401/403 count as up) and using them as soon as they appear`,
    );
  }
  function onCredentialsReloaded(ev: CredentialReload): void {
    log.info(
      { event: 'credentials_reloaded', changed: ev.changed, missing: ev.missing },
      `credentials reloaded from disk${ev.changed.length ? `: ${ev.changed.join(', ')} changed` : ''}; new check connections use them, old ones are closed`,
    );
    logMissing(ev.missing);
  }
  function onCredentialsRejected(ev: { error: string }): void {
    log.error(
      { event: 'credentials_rejected', code: 'APILB_ERR_TLS_CONFIG', err: ev.error },
      `a changed credential file was refused, the previous credentials stay in use: ${ev.error}`,
    );
  }
  logMissing(source.missing);
  source.on('reloaded', onCredentialsReloaded);
  source.on('rejected', onCredentialsRejected);
  return function unsubscribeCredentialsLogger() {
    source.off('reloaded', onCredentialsReloaded);
    source.off('rejected', onCredentialsRejected);
  };
}

/**
 * Subscribes `log` (as child `component: endpointslices`) to EndpointSlice discovery and its list-watch client:
 * applied lists and state-file outcomes at info; refused addresses, rejected lists, failed requests and state-file
 * writes at warn (a repeated failure or rejection at debug or not again, so a long outage does not flood the
 * journal); skipped entries, ended watches at debug. Returns a function that unsubscribes.
 */
export function subscribeDiscoveryLogger(parent: Logger, discovery: EndpointSliceDiscovery): () => void {
  const log = parent.child({ component: 'endpointslices' });
  type Events<E> = { [K in keyof E]: E[K] extends [infer A] ? (ev: A) => void : never };
  const onDiscovery: Partial<Events<DiscoveryEvents>> = {
    applied(ev) {
      if (ev.from !== 'api') return; // the state file's list is logged by its 'state-file' event
      const backends = ev.backends.map(formatAddress);
      log.info({ event: 'discovery_applied', backends, added: ev.added, removed: ev.removed }, `API servers discovered: ${backends.join(', ')}`);
    },
    rejected(ev) {
      if (ev.repeated) return;
      log.warn(
        { event: 'discovery_rejected', code: 'APILB_ERR_DISCOVERY', reason: ev.reason, keeping: ev.keeping },
        `not applying the discovered list: ${ev.reason}; keeping the last good list (${ev.keeping} API servers) and the seeds`,
      );
    },
    skipped(ev) {
      log.debug({ event: 'discovery_skipped', skipped: ev.skipped }, `left out of the discovered list: ${ev.skipped.join('; ')}`);
    },
    refused(ev) {
      // Said loudly once per change: EndpointSlices naming loopback or the metadata service are misconfigured or hostile.
      log.warn(
        { event: 'discovery_refused', code: 'APILB_ERR_DISCOVERY', refused: ev.refused },
        `EndpointSlices name addresses apilb refuses as backends: ${ev.refused.join('; ')}`,
      );
    },
    'state-file'(ev) {
      const { file } = ev;
      if (ev.status === 'missing') log.info({ event: 'discovery_state_missing', file }, `no discovery state file ${file} yet: starting from the seeds`);
      else if (ev.status === 'other-cluster')
        log.warn(
          { event: 'discovery_state_ignored', file, reason: 'ca-mismatch', fileFingerprints: ev.fileFingerprints, caFingerprints: ev.caFingerprints },
          `ignoring ${file}: it was written for another cluster (its CA fingerprint differs from the current CA); it will be replaced after the first successful LIST`,
        );
      else if (ev.status === 'invalid') log.warn({ event: 'discovery_state_ignored', file, reason: ev.reason }, `ignoring ${file}: it ${ev.reason}`);
      else if (ev.status === 'implausible') log.warn({ event: 'discovery_state_ignored', file, reason: ev.reason }, `ignoring ${file}: ${ev.reason}`);
      else
        log.info(
          { event: 'discovery_state_loaded', file, savedAt: ev.savedAt, backends: ev.backends.map(formatAddress) },
          `loaded ${ev.backends.length} API servers from ${file} (saved ${ev.savedAt || 'at an unknown time'})`,
        );
    },
    'state-write-failed'(ev) {
      log.warn(
        { event: 'discovery_state_write_failed', code: 'APILB_ERR_DISCOVERY', dir: ev.dir, err: ev.error },
        `cannot write the discovery state file in ${ev.dir}: ${ev.error}`,
      );
    },
  };
  const onListWatch: Partial<Events<ListWatchEvents>> = {
    'request-failed'(ev) {
      const text = `EndpointSlice ${ev.what} failed: ${ev.error}${ev.hint ? ` (${ev.hint})` : ''}; keeping the current backend list`;
      // Repeats of one error go to debug: a long outage must not flood the journal at every retry.
      log[ev.repeated ? 'debug' : 'warn']({ event: 'discovery_error', code: 'APILB_ERR_DISCOVERY', what: ev.what, err: ev.error, failures: ev.failures }, text);
    },
    recovered(ev) {
      log.info({ event: 'discovery_recovered', after: ev.after }, 'EndpointSlice discovery works again');
    },
    relist(ev) {
      if (ev.reason === '410')
        log.info({ event: 'discovery_relist', reason: '410' }, `watch from resourceVersion ${ev.resourceVersion} answered 410 Gone: re-listing`);
      else log.info({ event: 'discovery_relist', reason: '410-event' }, `watch reported 410 Gone (${ev.message ?? 'resourceVersion too old'}): re-listing`);
    },
    'watch-ended'(ev) {
      log.debug({ event: 'discovery_watch_ended', events: ev.events, resourceVersion: ev.resourceVersion }, 'watch ended; resuming');
    },
    crashed(ev) {
      log.error({ event: 'discovery_crashed', code: 'APILB_ERR_DISCOVERY', err: ev.error.message }, `EndpointSlice discovery stopped: ${ev.error.message}`);
    },
  };
  type Em = { on(e: string, f: never): unknown; off(e: string, f: never): unknown };
  const subs: Array<[Em, string, unknown]> = [
    ...Object.entries(onDiscovery).map(([e, f]): [Em, string, unknown] => [discovery, e, f]),
    ...Object.entries(onListWatch).map(([e, f]): [Em, string, unknown] => [discovery.listWatch, e, f]),
  ];
  for (const [em, ev, fn] of subs) em.on(ev, fn as never);
  return function unsubscribeDiscoveryLogger() {
    for (const [em, ev, fn] of subs) em.off(ev, fn as never);
  };
}
