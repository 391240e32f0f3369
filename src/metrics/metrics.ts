/**
 * Prometheus metrics. Every value is read from the pool, the data path and the daemon at scrape time (collect
 * callbacks); nothing here runs on the hot path. The one exception is the health-check latency histogram, which
 * is fed by the health monitor's `check` event (a few events per second at most, never per connection).
 *
 * Series are rebuilt from the live objects on each scrape, so a backend that left the pool has no series.
 * Metric names and labels are a contract (docs/observability.md): add, never rename.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from './prom.js';
import type { Backend } from '../pool/backend.js';
import { BACKEND_STATES } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import type { TcpProxy } from '../proxy/proxy.js';
import { BACKENDLESS_CLOSE_REASONS, CLOSE_REASONS, DIAL_FAILURE_REASONS, REJECT_REASONS } from '../proxy/reasons.js';
import type { Rebalancer } from '../proxy/rebalancer.js';
import { connectionShare, REBALANCE_OUTCOMES } from '../pool/rebalance.js';
import type { HealthCheckEvent, HealthCheckSource } from '../health/health-monitor.js';
import { isUnauthenticated, UNAUTHENTICATED_STATUSES } from '../health/https-checker.js';
import { DISCOVERY_STATES, type DiscoveryStats } from '../discovery/endpointslices.js';

/** Label values of `apilb_config_reloads_total{result}` that always exist (at 0 before the first reload). */
export const RELOAD_RESULTS: readonly string[] = ['success', 'failure'];

// Label values exported even at 0 (so `increase()` sees the first event) come from src/proxy/reasons.ts, where
// the data path's types are derived from the same constants.
export { CLOSE_REASONS, DIAL_FAILURE_REASONS as CONNECT_FAILURE_REASONS, REJECT_REASONS } from '../proxy/reasons.js';

/** Close reasons exported per backend (the backendless ones are exported once, with `backend=""`). */
const BACKEND_CLOSE_REASONS: readonly string[] = CLOSE_REASONS.filter((r) => !BACKENDLESS_CLOSE_REASONS.includes(r));

/** Default buckets of `apilb_health_check_duration_seconds` (seconds; the default check timeout is 1 s). */
export const HEALTH_CHECK_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** prom-client default metrics that are gauges named `*_total`: `promtool check metrics` rejects them. */
const LINT_FAILING_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** Options of {@link createMetrics}. */
export interface MetricsOptions {
  pool: Pool;
  proxy: TcpProxy;
  /** Connection rebalancing (`apilb_rebalance_*`). Default none: those counters stay at 0. */
  rebalancer?: Rebalancer;
  /** Source of `check` events for the latency histogram. Default none (attach later with `watchHealth`). */
  health?: HealthCheckSource;
  /** Value of `apilb_build_info{version}`. */
  version: string;
  /**
   * Counters kept by the daemon. `reloads`: reloads by result (`success`, `failure`). `dnsFailures`: failed or
   * empty resolutions by DNS backend name (`HOST:PORT`). `lastReloadSuccessful`: whether the latest reload was
   * applied (true before any). Default: none (reloads at 0, no DNS series, last reload successful).
   */
  counters?: { reloads?: ReadonlyMap<string, number>; dnsFailures?: ReadonlyMap<string, number>; lastReloadSuccessful?: () => boolean };
  /** The admin endpoint: bound or not (its bind is retried), and failed binds so far. Default: not bound, 0. */
  admin?: () => { listening: boolean; bindFailures: number };
  /** The metrics-only listener (--metrics-listen), when configured. */
  metricsListener?: () => { bindFailures: number };
  /** Readiness for `apilb_ready`. Default: always false. */
  readiness?: () => { ready: boolean };
  /** Number of bound client listeners for `apilb_listeners`. Default: 0. */
  listeners?: () => number;
  /** Register prom-client's process/nodejs metrics. Default true. */
  defaultMetrics?: boolean;
  /**
   * EndpointSlice discovery counters (`EndpointSliceDiscovery.stats`), read at scrape time. Default none: the
   * `apilb_discovery_*` metrics are not registered. Returning undefined (discovery not started yet) exports zeros.
   */
  discovery?: () => DiscoveryStats | undefined;
  /**
   * The credential watcher's counts (`CredentialWatcher.status`), read at scrape time. Default none: the
   * `apilb_credential_*` metrics export zeros.
   */
  credentials?: () => { reloads: number; rejected: number; missing: readonly string[] };
  /** Histogram buckets in seconds. Default {@link HEALTH_CHECK_BUCKETS}. */
  healthCheckBuckets?: readonly number[];
}

/** The metrics of one daemon. */
export interface Metrics {
  /** A private registry (never prom-client's global one), so several daemons can run in one process. */
  readonly registry: Registry;
  /** Content-Type of {@link render}'s output (Prometheus text format 0.0.4). */
  readonly contentType: string;
  /** The exposition text, read from the live objects now. */
  render(): Promise<string>;
  /** Feeds `check` events of `source` into the latency histogram; returns a function that stops it. */
  watchHealth(source: HealthCheckSource): () => void;
  /** Stops watching health sources and clears the registry. */
  close(): void;
}

type Labels = Record<string, string>;

/**
 * A counter whose value is owned elsewhere (a plain number in the pool or proxy): each scrape resets it and
 * re-adds the current totals, so it stays a real `counter` type (promtool, `rate()`) without hot-path calls.
 */
function readCounter(registry: Registry, name: string, help: string, labelNames: string[], read: () => Iterable<[Labels, number]>): Counter {
  return new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect(this: Counter) {
      this.reset();
      for (const [labels, value] of read()) this.inc(labels, value);
    },
  });
}

/** A gauge rebuilt from the live objects at each scrape. */
function readGauge(registry: Registry, name: string, help: string, labelNames: string[], read: () => Iterable<[Labels, number]>): Gauge {
  return new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect(this: Gauge) {
      this.reset();
      for (const [labels, value] of read()) this.set(labels, value);
    },
  });
}

/** Creates the registry with every apilb metric plus (by default) prom-client's process/nodejs metrics. */
export function createMetrics(options: MetricsOptions): Metrics {
  const { pool, proxy, version } = options;
  const registry = new Registry();
  let stopDefaultMetrics: (() => void) | undefined;
  if (options.defaultMetrics ?? true) {
    stopDefaultMetrics = collectDefaultMetrics({ register: registry });
    for (const name of LINT_FAILING_DEFAULTS) registry.removeSingleMetric(name);
  }
  const backends = (): readonly Backend[] => pool.backends;

  function* perBackend(fn: (b: Backend) => number): Iterable<[Labels, number]> {
    for (const b of backends()) yield [{ backend: b.id }, fn(b)];
  }
  function* perBackendMap(label: string, known: readonly string[], fn: (b: Backend) => ReadonlyMap<string, number> | undefined): Iterable<[Labels, number]> {
    for (const b of backends()) {
      const m = fn(b);
      const keys = new Set([...known, ...(m?.keys() ?? [])]);
      for (const k of keys) yield [{ backend: b.id, [label]: k }, m?.get(k) ?? 0];
    }
  }
  function* byKey(label: string, known: readonly string[], m: ReadonlyMap<string, number> | undefined): Iterable<[Labels, number]> {
    for (const k of new Set([...known, ...(m?.keys() ?? [])])) yield [{ [label]: k }, m?.get(k) ?? 0];
  }

  new Gauge({
    name: 'apilb_build_info',
    help: 'Always 1; the version label is the running apilb version.',
    labelNames: ['version'],
    registers: [registry],
  }).set({ version }, 1);

  readGauge(registry, 'apilb_backend_up', '1 when the backend is up (passed its health checks), else 0.', ['backend'], () =>
    perBackend((b) => (b.state === 'up' ? 1 : 0)),
  );
  readGauge(
    registry,
    'apilb_backend_state',
    "1 for the backend's current state (unknown, up, draining, down), 0 for the others.",
    ['backend', 'state'],
    function* () {
      for (const b of backends()) for (const s of BACKEND_STATES) yield [{ backend: b.id, state: s }, b.state === s ? 1 : 0];
    },
  );
  readGauge(registry, 'apilb_backend_state_since_timestamp_seconds', 'Unix time at which the backend entered its current state.', ['backend'], () =>
    perBackend((b) => b.since / 1000),
  );
  readCounter(registry, 'apilb_backend_transitions_total', 'State changes of the backend, by target state.', ['backend', 'to'], () =>
    perBackendMap('to', ['up', 'draining', 'down'], (b) => b.transitions),
  );
  readGauge(registry, 'apilb_panic', '1 while no backend is eligible and every backend is tried for each connection (panic mode).', [], () => [
    [{}, pool.panic ? 1 : 0],
  ]);

  readGauge(registry, 'apilb_connections_active', 'Open proxied connections per backend.', ['backend'], () => perBackend((b) => b.activeConnections));
  readGauge(
    registry,
    'apilb_backend_connection_share',
    "The backend's share of this node's open proxied connections (0..1); what rebalancing evens out.",
    ['backend'],
    () => perBackend((b) => connectionShare(pool.backends, b)),
  );
  readCounter(
    registry,
    'apilb_rebalance_moves_total',
    'Connections closed at a quiet moment to be re-opened on a less loaded backend, by the backend they left.',
    ['backend'],
    () => perBackend((b) => options.rebalancer?.moved.get(b.id) ?? 0),
  );
  readCounter(
    registry,
    'apilb_rebalance_rounds_total',
    'Rebalancing rounds, by outcome (moved, balanced, panic, draining, no_quiet_connection).',
    ['outcome'],
    () => byKey('outcome', REBALANCE_OUTCOMES, options.rebalancer?.rounds),
  );
  readCounter(registry, 'apilb_connections_total', 'Connections established to the backend (TCP handshake done).', ['backend'], () =>
    perBackend((b) => b.totalConnections),
  );
  readCounter(
    registry,
    'apilb_connect_failures_total',
    'Failed dials to the backend, by reason (local_resources: this node was out of file descriptors or memory).',
    ['backend', 'reason'],
    () =>
      perBackendMap('reason', DIAL_FAILURE_REASONS, (b) => {
        // The pool never hears of local failures (not the backend's fault); the data path counts them.
        const local = proxy.counters.localDialFailures.get(b.id);
        return local === undefined ? b.connectFailures : new Map([...b.connectFailures, ['local_resources', local]]);
      }),
  );
  readCounter(
    registry,
    'apilb_first_byte_timeouts_total',
    'Connections the backend accepted but sent nothing on within --first-byte-timeout.',
    ['backend'],
    () => perBackend((b) => b.connectFailures.get('first_byte_timeout') ?? 0),
  );
  readCounter(
    registry,
    'apilb_connections_closed_total',
    'Closed client connections, by backend and reason (normal, backend_down, drain_timeout, ...); backend="" for connections that never had one (no_backend).',
    ['backend', 'reason'],
    function* () {
      yield* perBackendMap('reason', BACKEND_CLOSE_REASONS, (b) => proxy.counters.closed.get(b.id));
      const none = proxy.counters.closed.get('');
      for (const r of BACKENDLESS_CLOSE_REASONS) yield [{ backend: '', reason: r }, none?.get(r) ?? 0];
    },
  );
  readCounter(
    registry,
    'apilb_bytes_total',
    'Bytes proxied, including open connections. direction="to_backend": client to backend; "to_client": backend to client.',
    ['backend', 'direction'],
    function* () {
      for (const b of backends()) {
        const bytes = proxy.bytesFor(b);
        yield [{ backend: b.id, direction: 'to_backend' }, bytes.fromClient];
        yield [{ backend: b.id, direction: 'to_client' }, bytes.toClient];
      }
    },
  );
  readCounter(
    registry,
    'apilb_health_checks_total',
    'Active health checks, by result (ok; status: answered not ready; error: transport failure).',
    ['backend', 'result'],
    function* () {
      for (const b of backends()) for (const r of ['ok', 'status', 'error'] as const) yield [{ backend: b.id, result: r }, b.checkCounts[r]];
    },
  );

  readGauge(registry, 'apilb_client_connections_active', 'Open client connections (dialing or proxied).', [], () => [[{}, proxy.activeConnections]]);
  readCounter(registry, 'apilb_accepted_connections_total', 'Client connections accepted.', [], () => [[{}, proxy.counters.accepted]]);
  readCounter(
    registry,
    'apilb_retries_total',
    'Dials of another backend after a failed connect or first-byte timeout, or off a backend that went down before the connection committed (a connection whose last backend failed is not a retry).',
    [],
    () => {
      let n = 0;
      for (const v of proxy.counters.retries.values()) n += v;
      return [[{}, n]];
    },
  );
  readCounter(registry, 'apilb_rejected_connections_total', 'Client connections refused by apilb itself, by reason.', ['reason'], () =>
    byKey('reason', REJECT_REASONS, proxy.counters.rejected),
  );
  readCounter(registry, 'apilb_config_reloads_total', 'Configuration reloads, by result (success, failure).', ['result'], () =>
    byKey('result', RELOAD_RESULTS, options.counters?.reloads),
  );
  readGauge(
    registry,
    'apilb_config_last_reload_successful',
    '1 when the latest configuration reload was applied (or none happened), 0 while the latest was rejected.',
    [],
    () => [[{}, (options.counters?.lastReloadSuccessful?.() ?? true) ? 1 : 0]],
  );
  readGauge(
    registry,
    'apilb_backend_unauthenticated',
    "1 when the backend's latest health check was refused for credentials (401/403), else 0.",
    ['backend'],
    () =>
      // 401/403 checks pass (the backend answered), so the result is `ok`; the status tells them apart.
      perBackend((b) => (b.lastCheck?.status !== undefined && UNAUTHENTICATED_STATUSES.has(b.lastCheck.status) ? 1 : 0)),
  );
  readCounter(
    registry,
    'apilb_dns_failures_total',
    'Failed or empty resolutions of a DNS-named backend (the last known addresses, or the name itself, stay in use).',
    ['name'],
    () => byKey('name', [], options.counters?.dnsFailures),
  );
  readGauge(registry, 'apilb_listeners', 'Client listeners bound.', [], () => [[{}, options.listeners?.() ?? 0]]);
  const admin = options.admin ?? (() => ({ listening: false, bindFailures: 0 }));
  readGauge(registry, 'apilb_admin_listening', '1 when the admin endpoint is bound, 0 while its bind is being retried.', [], () => [
    [{}, admin().listening ? 1 : 0],
  ]);
  readCounter(
    registry,
    'apilb_admin_bind_failures_total',
    'Failed binds of the admin endpoint (retried with backoff; the data path serves regardless).',
    [],
    () => [[{}, admin().bindFailures]],
  );
  const metricsListener = options.metricsListener;
  if (metricsListener) {
    readCounter(
      registry,
      'apilb_metrics_listener_bind_failures_total',
      'Failed binds of the metrics-only listener (--metrics-listen; retried with backoff; the data path serves regardless).',
      [],
      () => [[{}, metricsListener().bindFailures]],
    );
  }
  readGauge(registry, 'apilb_ready', '1 when /readyz answers 200.', [], () => [[{}, options.readiness?.().ready ? 1 : 0]]);

  // ---- EndpointSlice discovery (owner: src/discovery/endpointslices.ts; only with --discover-endpointslices) ----
  const discovery = options.discovery;
  if (discovery) {
    readGauge(
      registry,
      'apilb_discovery_state',
      '1 for the current EndpointSlice discovery phase (starting, listing, watching, backoff, stopped), 0 for the others.',
      ['state'],
      function* () {
        const s = discovery();
        for (const st of DISCOVERY_STATES) yield [{ state: st }, (s?.state ?? 'stopped') === st ? 1 : 0];
      },
    );
    readGauge(
      registry,
      'apilb_discovery_last_success_timestamp_seconds',
      'Unix time of the last successful EndpointSlice LIST or watch event; 0 = never.',
      [],
      () => [[{}, (discovery()?.lastSuccessTime ?? 0) / 1000]],
    );
    readGauge(
      registry,
      'apilb_discovery_backends',
      'API servers in the discovered list in use (from the API or the state file); the seeds are not counted.',
      [],
      () => [[{}, discovery()?.listSize ?? 0]],
    );
    readCounter(
      registry,
      'apilb_discovery_watch_restarts_total',
      'EndpointSlice watches that ended (server timeout, connection loss, error) and were started again.',
      [],
      () => [[{}, discovery()?.watchRestarts ?? 0]],
    );
    readCounter(registry, 'apilb_discovery_errors_total', 'Failed EndpointSlice LIST/WATCH requests.', [], () => [[{}, discovery()?.errors ?? 0]]);
    readCounter(registry, 'apilb_discovery_relists_total', 'EndpointSlice re-lists forced by 410 Gone.', [], () => [[{}, discovery()?.relists ?? 0]]);
    readCounter(
      registry,
      'apilb_discovery_rejected_lists_total',
      'Discovered lists not applied because they were empty or implausible (the last good list stayed).',
      [],
      () => [[{}, discovery()?.rejected ?? 0]],
    );
  }
  // ---- end of EndpointSlice discovery ----

  // ---- credentials (config/credentials.ts) ----
  readCounter(
    registry,
    'apilb_credential_reloads_total',
    'Credential files (kubeconfig, CA, client certificate/key, token) re-read after they changed on disk, by result (success: in use; failure: refused, the previous credentials stay).',
    ['result'],
    () => {
      const c = options.credentials?.();
      return [
        [{ result: 'success' }, c?.reloads ?? 0],
        [{ result: 'failure' }, c?.rejected ?? 0],
      ];
    },
  );
  readGauge(
    registry,
    'apilb_credential_files_missing',
    'Credential files named by the configuration that do not exist yet (a node still bootstrapping); their part of the credentials is not in use.',
    [],
    () => [[{}, options.credentials?.().missing.length ?? 0]],
  );

  // Ids with histogram series; a backend that left the pool gets its series removed at the next scrape.
  const observed = new Set<string>();
  const latency = new Histogram({
    name: 'apilb_health_check_duration_seconds',
    help: 'Duration of active health checks.',
    labelNames: ['backend'],
    buckets: [...(options.healthCheckBuckets ?? HEALTH_CHECK_BUCKETS)],
    registers: [registry],
    collect() {
      const live = new Set(backends().map((b) => b.id));
      for (const id of observed) {
        if (!live.has(id)) {
          latency.remove({ backend: id });
          unauthenticated.remove({ backend: id });
          observed.delete(id);
        }
      }
    },
  });
  const unauthenticated = new Counter({
    name: 'apilb_health_check_unauthenticated_total',
    help: "Health checks answered 401 or 403: the backend is alive and counts as up, but it refused apilb's credentials, so its readiness is not known.",
    labelNames: ['backend'],
    registers: [registry],
  });
  function onCheck(ev: HealthCheckEvent): void {
    // A check that finishes after its backend left the pool must not bring the series back.
    if (!pool.backends.includes(ev.backend)) return;
    observed.add(ev.backend.id);
    latency.observe({ backend: ev.backend.id }, ev.result.latencyMs / 1000);
    if (isUnauthenticated(ev.result)) unauthenticated.inc({ backend: ev.backend.id });
  }

  const unwatch = new Set<() => void>();
  function watchHealth(source: HealthCheckSource): () => void {
    source.on('check', onCheck);
    const off = () => {
      source.off('check', onCheck);
      unwatch.delete(off);
    };
    unwatch.add(off);
    return off;
  }
  if (options.health) watchHealth(options.health);

  return {
    registry,
    contentType: registry.contentType,
    render: () => registry.metrics(),
    watchHealth,
    close() {
      for (const off of [...unwatch]) off();
      stopDefaultMetrics?.();
      registry.clear();
    },
  };
}
