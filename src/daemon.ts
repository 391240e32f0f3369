/**
 * Wiring: configuration → pool → proxy → listeners → admin → health checks; signals (SIGTERM/SIGINT drain,
 * SIGHUP reload) and systemd readiness. The CLI calls {@link startDaemon}; tests call it too, with listeners,
 * clocks and dialers injected.
 */
import type { AddressInfo, Server } from 'node:net';
import { systemClock, type Clock, type TimerHandle } from './clock.js';
import { resolveConfig, type Config, type ResolveInput } from './config/config.js';
import { describeChange, diffConfig } from './config/config-diff.js';
import { formatAddress, type Address } from './config/values.js';
import type { BackendSpec } from './pool/backend.js';
import { BackendSet } from './discovery/backend-set.js';
import { Notifier } from './systemd/notify.js';
import { DnsDiscovery, isDnsName, subscribeDnsLogger, type Resolver } from './discovery/dns.js';
import { discoveryOptionsFromConfig, EndpointSliceDiscovery, type DiscoveryTuning } from './discovery/endpointslices.js';
import { AdminServer, cachedRender, type Readiness } from './admin/admin-server.js';
import { MetricsServer } from './admin/metrics-server.js';
import { AddressPolicy, canonicalHost, classifyHost } from './discovery/address-policy.js';
import { buildStatus } from './admin/status.js';
import { createMetrics, type Metrics } from './metrics/metrics.js';
import { createLogger, subscribeCredentialsLogger, subscribeHealthLogger, subscribeLogger, type Logger } from './logging.js';
import { CredentialWatcher, sameMaterial } from './config/credentials.js';
import type { TlsMaterial } from './config/tls.js';
import { HealthMonitor, type HealthMonitorUpdate } from './health/health-monitor.js';
import { isUnauthenticated } from './health/https-checker.js';
import { Pool, type TransitionEvent } from './pool/pool.js';
import { bindListener, createListener, listenerAddress } from './proxy/listen.js';
import { TcpProxy, type Dialer } from './proxy/proxy.js';
import { Rebalancer } from './proxy/rebalancer.js';
import { connectionsForFdLimit, readOpenFileLimit } from './proxy/fd-limit.js';
import { VERSION } from './version.js';

/**
 * Drain of a stop under socket activation, in ms: enough for ordinary requests in flight to finish, short enough
 * that the connections queued meanwhile in the socket systemd holds wait well under 2 s for the next process
 * (which starts only once this one has exited). Long-lived connections (watches) are closed after it; clients
 * reconnect.
 */
export const HANDOFF_DRAIN_MS = 250;

/** Dependencies a caller (tests, socket activation) can inject. */
export interface DaemonDeps {
  logger?: Logger;
  clock?: Clock;
  dial?: Dialer;
  /** Already-listening servers (socket activation, tests) used instead of binding `config.listen`. */
  listeners?: Server[];
  /**
   * The listening sockets are held by systemd (apilb.socket) and survive this process. Then a stop does not
   * wait out `shutdownTimeout`: it stops accepting, gives requests in flight {@link HANDOFF_DRAIN_MS} to finish,
   * closes the rest (long-lived watches) and exits, so systemd starts the next process within about a second;
   * clients reconnect into the held socket's queue, which that process drains. Default false: a stop drains for
   * up to `shutdownTimeout` (nobody would accept the reconnects meanwhile).
   */
  handoff?: boolean;
  /** Tuning of EndpointSlice discovery (debounce, backoff, clock); default the built-in defaults and `clock`. */
  discovery?: DiscoveryTuning;
  /**
   * systemd notifications (READY=1 after the first health round, STOPPING=1, WATCHDOG=1). Default: one built
   * from the process environment, a no-op when NOTIFY_SOCKET is unset.
   */
  notifier?: Notifier;
  /** Resolver of DNS-named backends. Default `dns.promises.lookup(host, { all: true })`. */
  resolver?: Resolver;
  /** This process's open-file limit (caps --max-connections, see proxy/fd-limit.ts). Default: read from /proc. */
  openFileLimit?: number;
  /**
   * The flags, environment and file the configuration was resolved from; {@link Daemon.reload} resolves them
   * again (re-reading the file). Default: none, and reload is refused.
   */
  resolveInput?: ResolveInput;
}

/** Result of {@link Daemon.reload}. */
export interface ReloadResult {
  /** False when the new configuration was rejected (the old one stays active). */
  ok: boolean;
  /** Why it was rejected. */
  error?: string;
  /** One line per changed option; changes that need a restart say so and were not applied. */
  changes: string[];
}

/** A running apilb. */
export class Daemon {
  /** The active configuration (replaced by a successful {@link reload}; restart-only options keep their old value). */
  get config(): Config {
    return this.current;
  }
  readonly logger: Logger;
  readonly pool: Pool;
  /** Union of backend sources (static seeds, DNS, discovery) applied to the pool. */
  readonly backendSet: BackendSet;
  readonly proxy: TcpProxy;
  /** Moves long-lived connections towards even shares (undefined with --rebalance=false); runs once started. */
  readonly rebalancer: Rebalancer | undefined;
  /** Health-check credentials, followed as their files change (a change replaces every checker). */
  readonly credentials: CredentialWatcher;
  /** Active health checks feeding the pool (started by start(), stopped first thing in close()). */
  readonly health: HealthMonitor;
  readonly admin: AdminServer;
  /** GET /metrics only, on --metrics-listen; undefined when that is unset. */
  readonly metricsServer: MetricsServer | undefined;
  readonly listeners: Server[] = [];
  /** Prometheus metrics served on GET /metrics (read from pool/proxy at scrape time). */
  readonly metrics: Metrics;
  /** Configuration reloads by result (`success`, `failure`); read by apilb_config_reloads_total. */
  readonly reloads = new Map<string, number>();
  /** False while the latest reload was rejected (apilb_config_last_reload_successful). */
  /** Epoch ms the daemon object was created (uptime in /status). */
  readonly startedAt: number;
  /** DNS-named backends, one BackendSet source per name (IP literals are the `static` source). */
  readonly dns: DnsDiscovery;
  /** Failed or empty DNS resolutions by name (`HOST:PORT`); for a metrics counter. */
  readonly dnsFailures = new Map<string, number>();
  private current: Config;
  private readonly resolveInput: ResolveInput | undefined;
  private reloading: Promise<ReloadResult> = Promise.resolve({ ok: true, changes: [] });
  /** EndpointSlice discovery, when --discover-endpointslices is set (created in start(), once listeners are bound). */
  discovery: EndpointSliceDiscovery | undefined;
  private readonly discoveryTuning: DiscoveryTuning | undefined;
  private readonly clock: Clock;
  private readonly unsubscribe: (() => void)[] = [];
  private started = false;
  private closing: Promise<void> | undefined;
  /** See {@link DaemonDeps.handoff}. */
  readonly handoff: boolean;
  /** The last STATUS= text sent to systemd (not resent when unchanged). */
  private sentStatus: string | undefined;
  /** Why the last reload was rejected; cleared by a successful one. Shown in STATUS=. */
  private reloadError: string | undefined;
  /** systemd readiness/watchdog; a no-op outside systemd. */
  readonly notifier: Notifier;
  /** Client connections the open-file limit allows (--max-connections is capped at it); undefined = no cap. */
  readonly fdConnectionCap: number | undefined;
  /** Failed binds of the admin endpoint (it is retried; see bindRetrying). */
  adminBindFailures = 0;
  /** Failed binds of the metrics-only listener (--metrics-listen), retried like the admin endpoint's. */
  metricsBindFailures = 0;
  /** Pending bind retries (admin endpoint, metrics listener), by {@link RetriedBind.event}. */
  private readonly bindRetries = new Map<RetriedBind['event'], TimerHandle>();
  /** apilb's own listeners, never backends (see guardOwnListeners). */
  private readonly ownListeners = new AddressPolicy({ allowLocal: true });

  constructor(config: Config, deps: DaemonDeps = {}) {
    this.current = config;
    this.resolveInput = deps.resolveInput;
    this.handoff = deps.handoff ?? false;
    this.logger = deps.logger ?? createLogger(config.logLevel);
    const clock = deps.clock ?? systemClock;
    this.clock = clock;
    this.discoveryTuning = deps.discovery;
    this.startedAt = clock.now();
    this.pool = new Pool({ rise: config.rise, fall: config.fall, balance: config.balance, clock });
    this.backendSet = new BackendSet(this.pool);
    const { literals, names } = splitBackends(config.backends);
    this.backendSet.set('static', literals);
    this.dns = new DnsDiscovery({
      backendSet: this.backendSet,
      names,
      refresh: config.dnsRefresh,
      ...(config.tlsServerName ? { serverName: config.tlsServerName } : {}),
      ...(deps.resolver ? { resolver: deps.resolver } : {}),
      clock,
      failures: this.dnsFailures,
    });
    this.unsubscribe.push(subscribeDnsLogger(this.logger, this.dns));
    const fdLimit = deps.openFileLimit ?? readOpenFileLimit();
    this.fdConnectionCap = fdLimit === undefined ? undefined : connectionsForFdLimit(fdLimit);
    this.proxy = new TcpProxy({ pool: this.pool, clock, ...(deps.dial ? { dial: deps.dial } : {}), ...this.proxyOptionsFrom(config) });
    if (config.rebalance) {
      this.rebalancer = new Rebalancer({
        proxy: this.proxy,
        interval: config.rebalanceInterval,
        tolerance: config.rebalanceTolerance / 100,
        maxMovesFraction: config.rebalanceMaxMovesPercent / 100,
        minAge: config.rebalanceMinAge,
        quiet: config.rebalanceQuiet,
        clock,
      });
    }
    this.unsubscribe.push(subscribeLogger(this.logger, this.pool, this.proxy, this.rebalancer));
    this.notifier =
      deps.notifier ??
      new Notifier({
        clock,
        onError: (err) => this.logger.warn({ event: 'systemd_notify_failed', err: err.message }, err.message),
      });
    this.credentials = new CredentialWatcher({ config, clock });
    this.unsubscribe.push(subscribeCredentialsLogger(this.logger, this.credentials));
    this.health = new HealthMonitor({ pool: this.pool, clock, ...healthOptionsFrom(config, this.credentials.material) });
    this.credentials.on('reloaded', (ev) => {
      try {
        this.health.update({ tls: ev.material });
      } catch (err) {
        this.logger.error(
          { event: 'credentials_rejected', code: 'APILB_ERR_TLS_CONFIG', err: (err as Error).message },
          `new credentials not applied: ${(err as Error).message}`,
        );
      }
      // Discovery's own connection follows a rotated CA or client certificate too (its token is read per request).
      const m = ev.material;
      if (this.discovery && m.ca && (ev.changed.includes('CA') || ev.changed.includes('client certificate'))) {
        try {
          this.discovery.updateTls({ ca: m.ca, ...(m.cert && m.key ? { cert: m.cert, key: m.key } : {}) });
        } catch (err) {
          this.logger.error(
            { event: 'credentials_rejected', component: 'discovery', code: 'APILB_ERR_TLS_CONFIG', err: (err as Error).message },
            `new credentials not applied to EndpointSlice discovery: ${(err as Error).message}`,
          );
        }
      }
    });
    // A 401/403 may mean an exec credential was revoked or expired early: the plugin runs again (rate-limited).
    this.health.on('check', (ev) => {
      if (isUnauthenticated(ev.result)) this.credentials.onUnauthenticated();
    });
    this.unsubscribe.push(subscribeHealthLogger(this.logger, this.health));
    this.admin = new AdminServer({ readiness: () => this.readiness(), allowedHosts: (config.adminAllowedHosts ?? '').split(',') });
    if (deps.listeners) this.listeners.push(...deps.listeners);
    this.metrics = createMetrics({
      pool: this.pool,
      proxy: this.proxy,
      health: this.health,
      ...(this.rebalancer ? { rebalancer: this.rebalancer } : {}),
      version: VERSION,
      counters: { reloads: this.reloads, dnsFailures: this.dnsFailures, lastReloadSuccessful: () => this.reloadError === undefined },
      readiness: () => this.readiness(),
      listeners: () => this.listeners.filter((s) => s.listening).length,
      admin: () => ({ listening: this.admin.server.listening, bindFailures: this.adminBindFailures }),
      ...(config.metricsListen ? { metricsListener: () => ({ bindFailures: this.metricsBindFailures }) } : {}),
      ...(config.discoverEndpointslices ? { discovery: () => this.discovery?.stats } : {}),
      credentials: () => this.credentials.status(),
    });
    // One shared, flood-bounded renderer for the admin /metrics and the metrics-only listener.
    const renderMetrics = cachedRender(() => this.metrics.render());
    this.metricsServer = config.metricsListen ? new MetricsServer({ contentType: this.metrics.contentType, render: renderMetrics }) : undefined;
    this.admin.route('GET', '/metrics', async () => ({ status: 200, contentType: this.metrics.contentType, body: await renderMetrics() }));
    this.admin.route('GET', '/status', () => ({ status: 200, body: this.status() }));
    this.admin.route('POST', '/reload', async () => {
      const r = await this.reload();
      return { status: r.ok ? 200 : 400, body: r };
    });
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
      credentials: this.credentials.status(),
    });
  }

  /** The proxy's settings from a configuration, at start and on reload. */
  private proxyOptionsFrom(config: Config): ProxySettings {
    return {
      connectTimeout: config.connectTimeout,
      firstByteTimeout: config.firstByteTimeout,
      maxConnections: this.maxConnections(config),
      drainTimeout: config.drainTimeout,
      closeSpread: config.closeSpread,
      clientHelloTimeout: config.clientHelloTimeout,
      replayBufferTotal: config.replayBufferTotal,
    };
  }

  /**
   * --max-connections capped at what the open-file limit allows: past it accept() fails and libuv drops the
   * clients silently, so apilb refuses the excess itself (counted, logged). Warns when it caps.
   */
  private maxConnections(config: Config): number {
    const cap = this.fdConnectionCap;
    if (cap === undefined || config.maxConnections <= cap) return config.maxConnections;
    this.logger.warn(
      { event: 'max_connections_capped', requested: config.maxConnections, cap },
      `--max-connections ${config.maxConnections} needs about ${2 * config.maxConnections} file descriptors, more than the open-file limit allows: capped at ${cap} (raise LimitNOFILE= to allow more)`,
    );
    return cap;
  }

  /** Ready once listeners are bound and at least one backend is eligible. */
  readiness(): Readiness {
    if (!this.started) return { ready: false, reason: 'starting' };
    if (this.closing) return { ready: false, reason: 'shutting down' };
    const up = this.pool.backends.filter((b) => b.state === 'up').length;
    if (up === 0) return { ready: false, reason: `no backend is up (${this.pool.backends.length} configured)` };
    return { ready: true, reason: `${up}/${this.pool.backends.length} backends up` };
  }

  /**
   * The `STATUS=` line `systemctl status` shows: current backend health, panic, and a rejected reload (until the
   * next successful one).
   */
  systemdStatus(): string {
    const total = this.pool.backends.length;
    const up = this.pool.backends.filter((b) => b.state === 'up').length;
    let text = up > 0 ? `serving ${up}/${total} backends up` : `no backend up (${total} configured)`;
    if (up === 0 && this.pool.panic) text += ': forwarding to all of them (panic)';
    if (this.reloadError !== undefined) text += `; last reload rejected: ${this.reloadError.slice(0, 200)}`;
    return text;
  }

  /** Sends STATUS= when the text changed (health transitions, reloads); a no-op outside systemd. */
  private reportStatus(): void {
    if (!this.started || this.closing) return;
    const text = this.systemdStatus();
    if (text === this.sentStatus) return;
    this.sentStatus = text;
    void this.notifier.status(text);
  }

  /**
   * Resolves once a backend is up, or after `ms` (whichever first). Backs READY=1: see {@link start}.
   */
  private firstUp(ms: number): Promise<void> {
    if (this.pool.backends.some((b) => b.state === 'up')) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.clock.clearTimeout(timer);
        this.pool.off('transition', onTransition);
        resolve();
      };
      const onTransition = ({ to }: TransitionEvent): void => {
        if (to === 'up') done();
      };
      const timer = this.clock.setTimeout(done, ms);
      this.pool.on('transition', onTransition);
    });
  }

  /**
   * Binds listeners (unless handed in), the admin endpoint, and starts serving. Resolves after the first health
   * round; under systemd (NOTIFY_SOCKET) also only once a backend is up or rise × interval + timeout more have
   * passed, and then sends READY=1.
   */
  async start(): Promise<void> {
    try {
      // DNS names are resolved before binding, so the first client already finds every record in the pool.
      await this.dns.start();
      if (this.listeners.length === 0) {
        for (const address of this.config.listen) {
          const server = createListener();
          await bindListener(server, address);
          this.listeners.push(server);
        }
      }
      for (const s of this.listeners) this.proxy.serve(s);
      this.guardOwnListeners();
      if (this.config.discoverEndpointslices) {
        // Discovery's requests go through our own listener (the balanced path), so it starts once that is bound.
        const fromConfig = discoveryOptionsFromConfig(this.config, this.listeners);
        this.discovery = new EndpointSliceDiscovery({
          backendSet: this.backendSet,
          logger: this.logger,
          clock: this.clock,
          ...fromConfig,
          // The bearer token follows its file like the health checks' credentials.
          tls: { ...fromConfig.tls, token: () => this.credentials.material.token },
          ...this.discoveryTuning,
        });
        this.discovery.start();
      }
      await this.bindRetrying(this.adminBind(), 0);
      if (this.config.metricsListen && this.metricsServer) await this.bindRetrying(this.metricsBind(this.config.metricsListen, this.metricsServer), 0);
      // Ready only after a first check round: until then every backend is merely eligible.
      this.health.start();
      this.credentials.start();
      await this.health.firstRound(this.config.healthCheckTimeout + 500);
      // Under systemd, READY=1 (below) promises a backend to forward to. When none passed the first round, give
      // one the time a recovering API server needs to be confirmed (rise checks), then report ready anyway: a
      // start that fails would only restart apilb, and kubelet must come up even while the control plane is
      // away. STATUS= then says "no backend up … (panic)". Connections are served meanwhile.
      if (this.notifier.enabled) await this.firstUp(this.config.rise * this.config.healthCheckInterval + this.config.healthCheckTimeout);
    } catch (err) {
      await this.close(0);
      throw err;
    }
    this.started = true;
    this.rebalancer?.start();
    for (const w of this.config.warnings ?? []) this.logger.warn({ event: 'config_warning' }, w);
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
    // Type=notify: systemd starts kubelet (After=apilb.service) only once listeners are bound and a backend is
    // up (or the bound above has passed).
    this.sentStatus = this.systemdStatus();
    void this.notifier.ready(this.sentStatus);
    this.notifier.startWatchdog();
    const onHealthChange = (): void => this.reportStatus();
    this.pool.on('transition', onHealthChange);
    this.pool.on('panic', onHealthChange);
    this.unsubscribe.push(() => {
      this.pool.off('transition', onHealthChange);
      this.pool.off('panic', onHealthChange);
    });
  }

  /**
   * No source (static seeds, DNS answers, discovery) may make apilb connect to itself: that loops, each
   * connection opening another until descriptors run out. Own listeners: the bound data listeners and the admin
   * endpoint (its configured port now, its bound one once bound). Refusals are logged once.
   */
  private guardOwnListeners(): void {
    for (const s of this.listeners) {
      const a = s.address();
      if (a && typeof a === 'object') this.ownListeners.addOwn({ host: a.address, port: a.port });
    }
    this.ownListeners.addOwn(this.config.adminListen);
    this.backendSet.guard(this.ownListeners);
    if (this.backendSet.refused.length) {
      this.logger.warn(
        { event: 'backend_is_self', code: 'APILB_ERR_CONFIG_INVALID', refused: this.backendSet.refused },
        `left out backends that are apilb's own listeners (connecting would loop): ${this.backendSet.refused.join(', ')}`,
      );
    }
  }

  /**
   * Binds a listener that is not on the data path (the admin endpoint, the metrics listener). A failure never
   * stops apilb: the data path must serve whatever happens to those ports (any local user can hold 127.0.0.1:9643
   * first; a node exporter may hold the metrics port). It is logged as an error, counted and retried with backoff,
   * 1 s doubling to 60 s, until it works or apilb stops.
   */
  private async bindRetrying(b: RetriedBind, attempt: number): Promise<void> {
    this.bindRetries.delete(b.event);
    if (this.closing) return;
    try {
      await b.listen();
    } catch (err) {
      b.failed();
      const delay = bindRetryDelay(attempt);
      const e = err as Error & { code?: string };
      this.logger.error(
        { event: `${b.event}_bind_failed`, code: e.code, err: e.message, attempt: attempt + 1, retryInMs: delay },
        `${b.what} NOT available (${e.message}); ${b.meanwhile} and retries in ${delay / 1000} s`,
      );
      this.bindRetries.set(
        b.event,
        this.clock.setTimeout(() => void this.bindRetrying(b, attempt + 1), delay),
      );
      return;
    }
    if (attempt > 0) {
      const where = b.address();
      this.logger.warn({ event: `${b.event}_bound`, [b.event]: where, failures: attempt }, `${b.what} listening on ${where} after ${attempt} failed binds`);
    }
    b.bound?.();
  }

  /** The admin endpoint's bind (counted in apilb_admin_bind_failures_total); once bound, its port is apilb's own. */
  private adminBind(): RetriedBind {
    return {
      event: 'admin',
      what: 'admin endpoint',
      meanwhile: 'apilb keeps serving clients without /metrics, /status and /reload',
      listen: () => this.admin.listen(this.config.adminListen),
      address: () => this.adminAddress,
      failed: () => void this.adminBindFailures++,
      bound: () => {
        const where = formatAddress(this.config.adminListen);
        const bound = { host: this.config.adminListen.host, port: (this.admin.server.address() as AddressInfo).port };
        this.discovery?.policy.addOwn(bound);
        this.ownListeners.addOwn(bound);
        this.backendSet.guard(this.ownListeners);
        if (classifyHost(canonicalHost(this.config.adminListen.host)) !== 'loopback') {
          this.logger.warn(
            { event: 'admin_not_loopback', admin: where },
            `the admin endpoint listens on ${where}, not on loopback: anyone who can reach it reads /status and /metrics and can POST /reload; bind it to 127.0.0.1 or firewall it`,
          );
        }
      },
    };
  }

  /** The metrics-only listener's bind (--metrics-listen; counted in apilb_metrics_listener_bind_failures_total). */
  private metricsBind(address: Address, server: MetricsServer): RetriedBind {
    return {
      event: 'metrics',
      what: 'metrics listener',
      meanwhile: "apilb keeps serving clients (the admin endpoint's /metrics still answers)",
      listen: () => server.listen(address),
      address: () => formatAddress(address),
      failed: () => void this.metricsBindFailures++,
    };
  }

  /**
   * Re-resolves the configuration from the startup flags and environment and re-reads the file (SIGHUP,
   * POST /reload). An invalid result is rejected as a whole: nothing changes, the error is logged and counted.
   * A valid one is applied without touching connections to unchanged backends: backends (static and DNS;
   * removed ones drain and are closed after --drain-timeout), proxy timeouts and limits, health-check settings,
   * DNS refresh, log level, shutdown timeout. Listener, admin and the other `RESTART_REQUIRED` (config-diff.ts) changes are
   * reported as needing a restart and not applied. Concurrent calls run one after another.
   */
  reload(): Promise<ReloadResult> {
    const run = this.reloading.then(() => this.reloadNow());
    this.reloading = run.catch(() => ({ ok: false, changes: [] }));
    return run;
  }

  private async reloadNow(): Promise<ReloadResult> {
    const fail = (error: string): ReloadResult => {
      this.reloads.set('failure', (this.reloads.get('failure') ?? 0) + 1);
      this.reloadError = error;
      this.reportStatus();
      this.logger.error(
        { event: 'reload_rejected', code: 'APILB_ERR_RELOAD_REJECTED', err: error },
        `configuration reload rejected, the previous configuration stays active: ${error}`,
      );
      return { ok: false, error, changes: [] };
    };
    if (!this.resolveInput) return fail('this daemon was started without a configuration source to reload');
    if (this.closing) return fail('shutting down');
    const prev = this.current;
    let next: Config;
    let tls: TlsMaterial | undefined;
    const changes = (() => {
      try {
        next = resolveConfig(this.resolveInput!);
        return diffConfig(prev, next);
      } catch (err) {
        return err as Error;
      }
    })();
    if (changes instanceof Error) return fail(changes.message);
    // Discovery reads the kubeconfig once at start: with it on, a new kubeconfig needs a restart too.
    for (const c of changes) if (c.key === 'kubeconfig' && this.discovery) c.applies = false;
    const changed = (key: keyof Config) => changes.some((c) => c.key === key && c.applies);
    // Everything that can still fail is done before anything is applied.
    try {
      // Re-read the TLS material even when no option changed: a reload then also picks up rotated certificate
      // files. The server name is restart-only, so the active one stays inside the new material.
      const fresh = this.credentials.reconfigure({ ...next!, tlsServerName: prev.tlsServerName });
      if (!sameMaterial(fresh, this.health.options.tls)) tls = fresh;
      // The monitor compares each setting with its own: it replaces or retimes checkers only for what changed
      // (unchanged material is passed as the same object, so it keeps its checkers).
      this.health.update(healthOptionsFrom(next!, tls ?? this.health.options.tls));
    } catch (err) {
      return fail((err as Error).message);
    }
    const effective: Config = { ...next! };
    for (const c of changes) if (!c.applies) Object.assign(effective, { [c.key]: prev[c.key] });
    this.current = effective;
    this.proxy.update(this.proxyOptionsFrom(effective));
    if (changed('logLevel')) this.logger.level = effective.logLevel;
    if (changed('adminAllowedHosts')) this.admin.allowHosts((effective.adminAllowedHosts ?? '').split(','));
    const { literals, names } = splitBackends(effective.backends);
    // Reconcile keeps unchanged backends (and their connections); removed ones drain like `draining`.
    if (changed('backends')) this.backendSet.set('static', literals);
    if (changed('backends') || changed('dnsRefresh')) await this.dns.update(names, { refresh: effective.dnsRefresh });
    const lines = changes.map(describeChange);
    if (tls && !(['caFile', 'clientCertFile', 'clientKeyFile', 'kubeconfig', 'healthCheckInsecure'] as const).some(changed)) {
      lines.push('health-check TLS material: files changed on disk, reloaded');
    }
    this.reloads.set('success', (this.reloads.get('success') ?? 0) + 1);
    this.reloadError = undefined;
    this.reportStatus();
    const pending = changes.filter((c) => !c.applies);
    this.logger.info(
      { event: 'reloaded', changes: lines },
      lines.length ? `configuration reloaded: ${lines.join('; ')}` : 'configuration reloaded: no changes',
    );
    if (pending.length) {
      this.logger.warn(
        { event: 'reload_restart_required', keys: pending.map((c) => c.key) },
        `configuration changes that require a restart were NOT applied: ${pending.map((c) => c.key).join(', ')} (restart apilb to apply them)`,
      );
    }
    return { ok: true, changes: lines };
  }

  /** The admin endpoint as `HOST:PORT` (resolved port when bound to port 0). */
  get adminAddress(): string {
    const a = this.admin.server.address();
    return a && typeof a === 'object' ? formatAddress({ host: a.address, port: a.port }) : formatAddress(this.config.adminListen);
  }

  /**
   * How long a stop lets connections finish: with {@link handoff} {@link HANDOFF_DRAIN_MS} (or the shutdown
   * timeout when that is shorter), else the configured shutdown timeout.
   */
  get stopDrainMs(): number {
    return this.handoff ? Math.min(HANDOFF_DRAIN_MS, this.config.shutdownTimeout) : this.config.shutdownTimeout;
  }

  /**
   * Shutdown: stop accepting, let connections finish up to `timeoutMs` (default {@link stopDrainMs}), close the
   * rest, stop the admin endpoint and timers. Idempotent.
   */
  close(timeoutMs = this.stopDrainMs): Promise<void> {
    this.closing ??= (async () => {
      void this.notifier.stopping(
        this.handoff ? `closing connections after ${timeoutMs} ms; clients reconnect to the next apilb` : `draining connections (up to ${timeoutMs} ms)`,
      );
      this.rebalancer?.close();
      await this.proxy.stopAccepting();
      // Before health stops and before the drain: discovery's own watch is a connection through the proxy and
      // would hold the drain open, and no list may be applied while the pool is no longer checked.
      await this.discovery?.close();
      this.dns.close();
      this.credentials.close();
      await this.health.close();
      this.logger.info(
        { event: 'shutdown', openConnections: this.proxy.activeConnections, timeoutMs },
        'shutting down: listeners closed, draining connections',
      );
      await this.proxy.close(timeoutMs);
      for (const t of this.bindRetries.values()) this.clock.clearTimeout(t);
      this.bindRetries.clear();
      await this.admin.close();
      await this.metricsServer?.close();
      this.metrics.close();
      for (const off of this.unsubscribe) off();
      await this.notifier.close();
      this.logger.info({ event: 'stopped' }, 'apilb stopped');
    })();
    return this.closing;
  }
}

/** A listener off the data path whose bind is retried (see Daemon.bindRetrying). */
interface RetriedBind {
  /** Names the log events (`<event>_bind_failed`, `<event>_bound`) and the address field of the latter. */
  event: 'admin' | 'metrics';
  /** What it is, in messages. */
  what: string;
  /** What apilb does while it is not bound, in the error message. */
  meanwhile: string;
  listen(): Promise<void>;
  /** Its address once bound, for the recovery message. */
  address(): string;
  /** Counts a failed bind. */
  failed(): void;
  /** Runs once it is bound. */
  bound?(): void;
}

/** Backoff between retried binds of the admin endpoint and the metrics listener: 1 s doubling to 60 s. */
function bindRetryDelay(attempt: number): number {
  return Math.min(60_000, 1000 * 2 ** Math.min(attempt, 6));
}

/** What {@link Daemon} sets on its proxy from the configuration (at start and on reload). */
type ProxySettings = Required<Parameters<TcpProxy['update']>[0]>;

/** The health-check settings of a configuration, checking with `tls` (at start and on reload). */
function healthOptionsFrom(config: Config, tls: TlsMaterial): Required<Pick<HealthMonitorUpdate, 'mode' | 'path' | 'interval' | 'timeout' | 'tls'>> {
  return { mode: config.healthCheckMode, path: config.healthCheckPath, interval: config.healthCheckInterval, timeout: config.healthCheckTimeout, tls };
}

/** IP-literal backends go to the pool as they are ('static' source); DNS names are expanded by DnsDiscovery. */
function splitBackends(backends: readonly Address[]): { literals: BackendSpec[]; names: Address[] } {
  return {
    literals: backends.filter((a) => !isDnsName(a)).map((address) => ({ address })),
    names: backends.filter(isDnsName),
  };
}

/** Creates and starts a daemon. Rejects (having released everything) when a listener cannot be bound. */
export async function startDaemon(config: Config, deps: DaemonDeps = {}): Promise<Daemon> {
  const d = new Daemon(config, deps);
  await d.start();
  return d;
}

/**
 * Installs SIGTERM/SIGINT (graceful shutdown; a second signal exits at once with code 1) and SIGHUP
 * (configuration reload) handlers. `exit` is called with the exit code; only the CLI passes `process.exit`.
 * Returns a function that removes the handlers.
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
    d.logger.info(
      { event: 'signal', signal, drainMs: d.stopDrainMs },
      d.handoff
        ? `${signal}: stopping; connections still open after ${d.stopDrainMs} ms are closed (the listening sockets stay with systemd; clients reconnect to the next apilb)`
        : `${signal}: graceful shutdown (up to ${d.stopDrainMs} ms)`,
    );
    d.close().then(
      () => exit(0),
      (err: Error) => {
        d.logger.error({ event: 'shutdown_error', err: err.message }, 'error during shutdown');
        exit(1);
      },
    );
  }
  function onReloadSignal(): void {
    d.logger.info({ event: 'signal', signal: 'SIGHUP' }, 'SIGHUP: reloading configuration');
    // reload() logs and counts its own outcome; it never rejects for a bad configuration.
    d.reload().catch((err: Error) => d.logger.error({ event: 'reload_error', err: err.message }, 'error during reload'));
  }
  process.on('SIGTERM', onStopSignal);
  process.on('SIGINT', onStopSignal);
  process.on('SIGHUP', onReloadSignal);
  return () => {
    process.off('SIGTERM', onStopSignal);
    process.off('SIGINT', onStopSignal);
    process.off('SIGHUP', onReloadSignal);
  };
}
