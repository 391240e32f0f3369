/**
 * Wiring: configuration → pool → proxy → listeners → admin → health checks; signals (SIGTERM/SIGINT drain,
 * SIGHUP reload) and systemd readiness. The CLI calls {@link startDaemon}; tests call it too, with listeners,
 * clocks and dialers injected.
 */
import type { Server } from 'node:net';
import { systemClock, type Clock } from './clock.js';
import type { Config } from './config/config.js';
import { formatAddress } from './config/values.js';
import { BackendSet } from './discovery/backend-set.js';
import { discoveryOptionsFromConfig, EndpointSliceDiscovery, type DiscoveryTuning } from './discovery/endpointslices.js';
import { AdminServer, type Readiness } from './admin/admin-server.js';
import { buildStatus } from './admin/status.js';
import { createMetrics, type Metrics } from './metrics/metrics.js';
import { createLogger, subscribeHealthLogger, subscribeLogger, type Logger } from './logging.js';
import { loadTlsMaterial } from './config/tls.js';
import { HealthMonitor } from './health/health-monitor.js';
import { Pool } from './pool/pool.js';
import { bindListener, createListener, listenerAddress } from './proxy/listen.js';
import { Proxy, type Dialer } from './proxy/proxy.js';
import { VERSION } from './version.js';

/** Dependencies a caller (tests, socket activation) can inject. */
export interface DaemonDeps {
  logger?: Logger;
  clock?: Clock;
  dial?: Dialer;
  /** Already-listening servers (socket activation, tests) used instead of binding `config.listen`. */
  listeners?: Server[];
  /** Tuning of EndpointSlice discovery (debounce, backoff, clock); default the built-in defaults and `clock`. */
  discovery?: DiscoveryTuning;
}

/** A running apilb. */
export class Daemon {
  readonly config: Config;
  readonly logger: Logger;
  readonly pool: Pool;
  /** Union of backend sources (static seeds, DNS, discovery) applied to the pool. */
  readonly backendSet: BackendSet;
  readonly proxy: Proxy;
  /** Active health checks feeding the pool (started by start(), stopped first thing in close()). */
  readonly health: HealthMonitor;
  readonly admin: AdminServer;
  readonly listeners: Server[] = [];
  /** Prometheus metrics served on GET /metrics (read from pool/proxy at scrape time). */
  readonly metrics: Metrics;
  /** Configuration reloads by result (`success`, `failure`); read by apilb_config_reloads_total. */
  readonly reloads = new Map<string, number>();
  /** Epoch ms the daemon object was created (uptime in /status). */
  readonly startedAt: number;
  /** EndpointSlice discovery, when --discover-endpointslices is set (created in start(), once listeners are bound). */
  discovery: EndpointSliceDiscovery | undefined;
  private readonly discoveryTuning: DiscoveryTuning | undefined;
  private readonly clock: Clock;
  private readonly unsubscribe: (() => void)[] = [];
  private started = false;
  private closing: Promise<void> | undefined;

  constructor(config: Config, deps: DaemonDeps = {}) {
    this.config = config;
    this.logger = deps.logger ?? createLogger(config.logLevel);
    const clock = deps.clock ?? systemClock;
    this.clock = clock;
    this.discoveryTuning = deps.discovery;
    this.startedAt = clock.now();
    this.pool = new Pool({ rise: config.rise, fall: config.fall, clock });
    this.backendSet = new BackendSet(this.pool);
    this.backendSet.set('static', config.backends.map((address) => ({ address })));
    const proxyOpts: ConstructorParameters<typeof Proxy>[0] = {
      pool: this.pool,
      connectTimeout: config.connectTimeout,
      firstByteTimeout: config.firstByteTimeout,
      maxConnections: config.maxConnections,
      drainTimeout: config.drainTimeout,
      clock,
    };
    if (deps.dial) proxyOpts.dial = deps.dial;
    this.proxy = new Proxy(proxyOpts);
    this.unsubscribe.push(subscribeLogger(this.logger, this.pool, this.proxy));
    this.health = new HealthMonitor({
      pool: this.pool,
      mode: config.healthCheckMode,
      path: config.healthCheckPath,
      interval: config.healthCheckInterval,
      timeout: config.healthCheckTimeout,
      tls: loadTlsMaterial(config),
      clock,
    });
    this.unsubscribe.push(subscribeHealthLogger(this.logger, this.health));
    this.admin = new AdminServer({ readiness: () => this.readiness() });
    if (deps.listeners) this.listeners.push(...deps.listeners);
    this.metrics = createMetrics({
      pool: this.pool,
      proxy: this.proxy,
      health: this.health,
      version: VERSION,
      counters: { reloads: this.reloads },
      readiness: () => this.readiness(),
      listeners: () => this.listeners.filter((s) => s.listening).length,
      ...(config.discoverEndpointslices ? { discovery: () => this.discovery?.stats } : {}),
    });
    this.admin.route('GET', '/metrics', async () => ({ status: 200, contentType: this.metrics.contentType, body: await this.metrics.render() }));
    this.admin.route('GET', '/status', () => ({ status: 200, body: this.status() }));
  }

  /** The GET /status document. */
  status(): ReturnType<typeof buildStatus> {
    return buildStatus({
      version: VERSION,
      pool: this.pool,
      proxy: this.proxy,
      readiness: this.readiness(),
      listeners: this.listeners.filter((s) => s.listening).map(listenerAddress),
      admin: this.adminAddress,
      startedAt: this.startedAt,
      now: this.clock.now(),
    });
  }

  /** Ready once listeners are bound and at least one backend is eligible. */
  readiness(): Readiness {
    if (!this.started) return { ready: false, reason: 'starting' };
    if (this.closing) return { ready: false, reason: 'shutting down' };
    const up = this.pool.backends.filter((b) => b.state === 'up').length;
    if (up === 0) return { ready: false, reason: `no backend is up (${this.pool.backends.length} configured)` };
    return { ready: true, reason: `${up}/${this.pool.backends.length} backends up` };
  }

  /** Binds listeners (unless handed in), the admin endpoint, and starts serving. */
  async start(): Promise<void> {
    try {
      if (this.listeners.length === 0) {
        for (const address of this.config.listen) {
          const server = createListener();
          await bindListener(server, address);
          this.listeners.push(server);
        }
      }
      for (const s of this.listeners) this.proxy.serve(s);
      if (this.config.discoverEndpointslices) {
        // Discovery's requests go through our own listener (the balanced path), so it starts once that is bound.
        this.discovery = new EndpointSliceDiscovery({
          backendSet: this.backendSet,
          logger: this.logger,
          clock: this.clock,
          ...discoveryOptionsFromConfig(this.config, this.listeners),
          ...this.discoveryTuning,
        });
        this.discovery.start();
      }
      await this.admin.listen(this.config.adminListen);
      // Ready only after a first check round: until then every backend is merely eligible.
      this.health.start();
      await this.health.firstRound(this.config.healthCheckTimeout + 500);
    } catch (err) {
      await this.close(0);
      throw err;
    }
    this.started = true;
    this.logger.info(
      {
        event: 'started',
        version: VERSION,
        listen: this.listeners.map(listenerAddress),
        admin: this.adminAddress,
        backends: this.pool.backends.map((b) => b.id),
        connectTimeoutMs: this.config.connectTimeout,
        firstByteTimeoutMs: this.config.firstByteTimeout,
      },
      `apilb ${VERSION} listening on ${this.listeners.map(listenerAddress).join(', ')} for ${this.pool.backends.length} backends`,
    );
  }

  /** The admin endpoint as `HOST:PORT` (resolved port when bound to port 0). */
  get adminAddress(): string {
    const a = this.admin.server.address();
    return a && typeof a === 'object' ? formatAddress({ host: a.address, port: a.port }) : formatAddress(this.config.adminListen);
  }

  /**
   * Graceful shutdown: stop accepting, let connections finish up to `timeoutMs` (default the configured
   * shutdown timeout), close the rest, stop the admin endpoint and timers. Idempotent.
   */
  close(timeoutMs = this.config.shutdownTimeout): Promise<void> {
    this.closing ??= (async () => {
      await this.proxy.stopAccepting();
      await this.health.close();
      // Before the drain: discovery's own watch is a connection through the proxy and would hold it open.
      await this.discovery?.close();
      this.logger.info({ event: 'shutdown', openConnections: this.proxy.activeConnections, timeoutMs }, 'shutting down: listeners closed, draining connections');
      await this.proxy.close(timeoutMs);
      await this.admin.close();
      this.metrics.close();
      for (const off of this.unsubscribe) off();
      this.logger.info({ event: 'stopped' }, 'apilb stopped');
    })();
    return this.closing;
  }
}

/** Creates and starts a daemon. Rejects (having released everything) when a listener cannot be bound. */
export async function startDaemon(config: Config, deps: DaemonDeps = {}): Promise<Daemon> {
  const d = new Daemon(config, deps);
  await d.start();
  return d;
}

/**
 * Installs SIGTERM/SIGINT (graceful shutdown; a second signal exits at once) handlers. `exit` is called with the
 * exit code; only the CLI passes `process.exit`.
 */
export function installSignalHandlers(d: Daemon, exit: (code: number) => void): () => void {
  let shuttingDown = false;
  function onStopSignal(signal: NodeJS.Signals): void {
    if (shuttingDown) {
      d.logger.warn({ event: 'signal', signal }, `${signal} again: exiting at once`);
      exit(1);
      return;
    }
    shuttingDown = true;
    d.logger.info({ event: 'signal', signal }, `${signal}: graceful shutdown (up to ${d.config.shutdownTimeout} ms)`);
    d.close().then(
      () => exit(0),
      (err: Error) => {
        d.logger.error({ event: 'shutdown_error', err: err.message }, 'error during shutdown');
        exit(1);
      },
    );
  }
  process.on('SIGTERM', onStopSignal);
  process.on('SIGINT', onStopSignal);
  return () => {
    process.off('SIGTERM', onStopSignal);
    process.off('SIGINT', onStopSignal);
  };
}
