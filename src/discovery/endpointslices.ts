/**
 * EndpointSlice discovery: follows the cluster's own list of API servers (the EndpointSlices of the `kubernetes`
 * Service in `default`) with LIST + WATCH, and feeds it into the BackendSet as source `endpointslices`.
 *
 * The requests go through apilb's own listener, i.e. through the balanced data path, so discovery depends on no
 * single API server: whichever backend is alive answers. TLS is verified against the cluster CA with the name
 * `kubernetes` (every API server certificate carries it), with the kubeconfig's client certificate.
 *
 * Safety rules: the static seeds stay in the pool (another source); an empty or implausible list is never applied
 * (the last good one stays); changes are debounced because API servers flap their own entry while starting;
 * watches resume from their resourceVersion, errors back off with jitter, 410 Gone re-lists; the last good list is
 * persisted to `<stateDir>/endpoints.json` and reloaded at startup unless it belongs to another cluster.
 */
import { EventEmitter } from 'node:events';
import type { Server } from 'node:net';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { Config } from '../config/config.js';
import { loadTlsMaterial } from '../config/tls.js';
import { formatAddress, type Address } from '../config/values.js';
import { ApilbError, numberOption, OptionError } from '../errors.js';
import { subscribeDiscoveryLogger, type Logger } from '../logging.js';
import { AddressPolicy, canonicalAddress } from './address-policy.js';
import type { BackendSet } from './backend-set.js';
import { ListWatch, newListWatchStats, type ListWatchState, type ListWatchStats, type ListWatchTls, type WatchChange } from './list-watch.js';
import { backendsFromSlices, compareAddresses, implausibleReason, type EndpointSlice } from './slices.js';
import { caFingerprints, loadStateFile, saveStateFile } from './state-file.js';

/** The BackendSet source name discovery owns. */
export const ENDPOINTSLICES_SOURCE = 'endpointslices';

/** Collection path of the EndpointSlices discovery reads. */
export const ENDPOINTSLICES_PATH = '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices';

/** Label selector of the `kubernetes` Service's slices (URL-encoded in requests). */
export const KUBERNETES_SERVICE_SELECTOR = 'kubernetes.io/service-name=kubernetes';

/** The pure slice translation lives in slices.ts; re-exported here for existing importers. */
export { API_PORT_NAME, backendsFromSlices, implausibleReason, type EndpointSlice, type SliceBackends } from './slices.js';

/** Discovery's phase, as metrics and /status show it (the list-watch client's phase). */
export type DiscoveryState = ListWatchState;

/** Every {@link DiscoveryState}, for metrics that expose one series per state. */
export const DISCOVERY_STATES: readonly DiscoveryState[] = ['stopped', 'starting', 'listing', 'watching', 'backoff'];

/** What became of the state file at startup. */
export type StateFileStatus = 'disabled' | 'missing' | 'loaded' | 'other-cluster' | 'invalid' | 'implausible';

/**
 * Counters read at scrape time by metrics/ (plain fields; never pushed from here). The {@link ListWatchStats}
 * part (state, lastSuccessTime, watchRestarts, lists, relists, errors, resourceVersion, lastError) is counted by
 * the list-watch client in this same object.
 */
export interface DiscoveryStats extends ListWatchStats {
  /** Epoch ms the applied list last changed; 0 = never (the state file's list does not count). */
  lastChangeTime: number;
  /** Backends in the discovered list in use (from the API or the state file); 0 = none yet. */
  listSize: number;
  /** Discovered lists refused as empty or implausible (the previous one stayed). */
  rejected: number;
  /** Lists applied to the pool. */
  applied: number;
  /** What happened to the state file at startup. */
  stateFile: StateFileStatus;
  /** Failed state-file writes. */
  stateFileErrors: number;
}

/** What became of the state file at startup, for the log (see {@link StateFileStatus}). */
export type StateFileEvent =
  | { status: 'missing'; file: string }
  | { status: 'other-cluster'; file: string; fileFingerprints: string[]; caFingerprints: string[] }
  | { status: 'invalid'; file: string; reason: string }
  | { status: 'implausible'; file: string; reason: string }
  | { status: 'loaded'; file: string; savedAt: string; backends: Address[] };

/**
 * Events of {@link EndpointSliceDiscovery}; the list-watch client's own events (request failures, recoveries,
 * re-lists) are on {@link EndpointSliceDiscovery.listWatch}. {@link subscribeDiscoveryLogger} logs both.
 */
export interface DiscoveryEvents {
  /** A list was applied to the BackendSet (`from`: `api` or `state-file`). */
  applied: [{ backends: Address[]; added: string[]; removed: string[]; from: 'api' | 'state-file' }];
  /**
   * A list was refused; the previous one (`keeping` backends) stays. `repeated`: the same reason as the last
   * refusal, with no list applied in between.
   */
  rejected: [{ reason: string; keeping: number; repeated: boolean }];
  /** A request failed (a retry follows after `retryInMs`). Not named `error`: nobody has to listen to it. */
  failure: [{ error: string; retryInMs: number }];
  /** Entries of the slices left out of the list, with why (each time a list is computed). */
  skipped: [{ skipped: string[] }];
  /** The set of addresses the address policy refused changed and is not empty. */
  refused: [{ refused: string[] }];
  /** The state file was read at startup. */
  'state-file': [StateFileEvent];
  /** Writing the state file failed (the next change tries again). */
  'state-write-failed': [{ dir: string; error: string }];
}

/** TLS material for discovery's requests (`serverName` default `kubernetes`; the CA is required). */
export type DiscoveryTls = ListWatchTls;

/** Tuning knobs (tests and the daemon's injection point). */
export interface DiscoveryTuning {
  /** Default the system clock. */
  clock?: Clock;
  /** Default Math.random (backoff and watch-timeout jitter). */
  random?: () => number;
  /** Quiet time after a change before it is applied. Default 3000 ms; 0 applies every change at once. */
  debounceMs?: number;
  /** A change is applied at the latest this long after it arrived, even if changes keep coming. Default 3 × debounceMs. */
  maxDebounceMs?: number;
  /** First retry delay after an error (doubles per failure, jittered ±50%). Default 1000 ms; must be ≥ 1. */
  backoffBaseMs?: number;
  /** Largest retry delay. Default 30000 ms; must be ≥ backoffBaseMs. */
  backoffMaxMs?: number;
  /** Timeout of a LIST and of a watch's response headers. Default 10000 ms; must be ≥ 1. */
  requestTimeoutMs?: number;
  /** Server-side watch duration (`timeoutSeconds`, jittered ±20%); the watch is then resumed. Default 300; ≥ 1. */
  watchTimeoutSeconds?: number;
  /** A watch that ends sooner than this without delivering anything counts as an error (backoff). Default 1000 ms. */
  minWatchMs?: number;
  /** Lists with more API servers are refused as implausible. Default 64; must be ≥ 1. */
  maxBackends?: number;
}

/** Options of {@link EndpointSliceDiscovery}. */
export interface EndpointSliceDiscoveryOptions extends DiscoveryTuning {
  backendSet: BackendSet;
  /** Where requests are sent: apilb's own listener (e.g. 127.0.0.1:6443). */
  target: Address;
  tls: DiscoveryTls;
  /** Directory of `endpoints.json`. Default none (nothing persisted or loaded). */
  stateDir?: string;
  /** apilb's own listeners (data and admin): never used as backends, in any spelling. Default none. */
  exclude?: readonly Address[];
  /** Accept loopback and link-local addresses from the slices (`--discovery-allow-local`). Default false. */
  allowLocal?: boolean;
  /** Subscribed to the discovery's events with {@link subscribeDiscoveryLogger}. Default none (nothing is logged). */
  logger?: Logger;
}

/** What a 403 means here, added to the error message. */
const FORBIDDEN_HINT = 'the kubeconfig identity may not list/watch endpointslices in namespace default: apply contrib/rbac-endpointslices.yaml';

/**
 * Follows the `kubernetes` Service's EndpointSlices into the BackendSet: the discovery loop on top of a
 * {@link ListWatch} client. It keeps the current slices, turns them into backends ({@link backendsFromSlices}),
 * debounces changes, applies plausible lists, persists the last good one and counts into {@link stats}. It logs
 * nothing itself: it emits events, and {@link subscribeDiscoveryLogger} turns them into log lines.
 */
export class EndpointSliceDiscovery extends EventEmitter<DiscoveryEvents> {
  /** Counters for metrics (see {@link DiscoveryStats}). */
  readonly stats: DiscoveryStats = {
    ...newListWatchStats(),
    lastChangeTime: 0,
    listSize: 0,
    rejected: 0,
    applied: 0,
    stateFile: 'disabled',
    stateFileErrors: 0,
  };
  readonly target: Address;
  readonly stateDir: string | undefined;
  readonly debounceMs: number;
  readonly maxDebounceMs: number;
  readonly backoffBaseMs: number;
  readonly backoffMaxMs: number;
  readonly requestTimeoutMs: number;
  readonly watchTimeoutSeconds: number;
  readonly minWatchMs: number;
  readonly maxBackends: number;
  /** The LIST/WATCH client (its events: request failures, recoveries, re-lists, ended watches). */
  readonly listWatch: ListWatch<EndpointSlice>;
  private readonly backendSet: BackendSet;
  /** Which discovered addresses may become backends (own listeners never; loopback/link-local on opt-in). */
  readonly policy: AddressPolicy;
  private readonly clock: Clock;
  private fingerprints: string[];
  private readonly slices = new Map<string, EndpointSlice>();
  private running = false;
  private closed = false;
  private debounceTimer: TimerHandle | undefined;
  private pendingSince: number | undefined;
  private appliedFromApi = false;
  private appliedKey: string | undefined;
  private persistedKey: string | undefined;
  private persistChain: Promise<void> = Promise.resolve();
  private lastRejectReason: string | undefined;
  private lastRefused = '';

  /** With `logger`, subscribes it ({@link subscribeDiscoveryLogger}) for the discovery's lifetime. */
  constructor(options: EndpointSliceDiscoveryOptions) {
    super();
    if (!options?.backendSet) throw new OptionError('backendSet', 'is required');
    if (!options.target || !Number.isInteger(options.target.port) || options.target.port < 1) {
      throw new OptionError('target', 'must be the HOST:PORT of a bound apilb listener');
    }
    checkDiscoveryTls(options.tls);
    this.backendSet = options.backendSet;
    this.target = options.target;
    this.stateDir = options.stateDir || undefined;
    this.policy = new AddressPolicy({ own: options.exclude ?? [], allowLocal: options.allowLocal ?? false });
    this.clock = options.clock ?? systemClock;
    this.debounceMs = numberOption('debounceMs', options.debounceMs ?? 3000, 0);
    this.maxDebounceMs = numberOption('maxDebounceMs', options.maxDebounceMs ?? 3 * this.debounceMs, this.debounceMs);
    this.backoffBaseMs = numberOption('backoffBaseMs', options.backoffBaseMs ?? 1000, 1);
    this.backoffMaxMs = numberOption('backoffMaxMs', options.backoffMaxMs ?? Math.max(30_000, this.backoffBaseMs), this.backoffBaseMs);
    this.requestTimeoutMs = numberOption('requestTimeoutMs', options.requestTimeoutMs ?? 10_000, 1);
    this.watchTimeoutSeconds = numberOption('watchTimeoutSeconds', options.watchTimeoutSeconds ?? 300, 1);
    this.minWatchMs = numberOption('minWatchMs', options.minWatchMs ?? 1000, 0);
    this.maxBackends = numberOption('maxBackends', options.maxBackends ?? 64, 1);
    this.fingerprints = caFingerprints(options.tls.ca);
    this.listWatch = new ListWatch<EndpointSlice>({
      target: this.target,
      tls: options.tls,
      path: ENDPOINTSLICES_PATH,
      labelSelector: KUBERNETES_SERVICE_SELECTOR,
      listName: 'an EndpointSliceList',
      forbiddenHint: FORBIDDEN_HINT,
      timing: this, // the validated backoff/request/watch fields above
      clock: this.clock,
      random: options.random ?? Math.random,
      stats: this.stats,
      onList: (items) => this.onList(items),
      onChange: (type, slice) => this.onChange(type, slice),
    });
    this.listWatch.on('failure', (ev) => this.emit('failure', ev));
    if (options.logger) subscribeDiscoveryLogger(options.logger, this);
  }

  /**
   * Loads the state file (synchronously, so its list is in the pool before this returns) and starts the
   * LIST/WATCH loop in the background. Idempotent.
   */
  start(): void {
    if (this.running || this.closed) return;
    this.running = true;
    this.stats.state = 'starting';
    this.loadState();
    this.listWatch.start();
  }

  /**
   * Applies rotated TLS material (the credentials watcher's `reloaded` event): new CA and client certificate
   * from the next LIST/WATCH on, without interrupting the watch in flight. Validated like at construction; an
   * unusable set throws (ApilbError/OptionError) and the old one stays. The state file is written with the new
   * CA's fingerprints from then on.
   */
  updateTls(tls: Pick<DiscoveryTls, 'ca' | 'cert' | 'key'>): void {
    checkDiscoveryTls(tls);
    this.fingerprints = caFingerprints(tls.ca);
    this.listWatch.updateTls(tls);
  }

  /**
   * Stops watching: aborts the request in flight, drops a pending (debounced) change, waits for a state-file
   * write in progress. The discovered backends stay in the pool. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return this.listWatch.close();
    this.closed = true;
    this.clock.clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    await this.listWatch.close();
    await this.persistChain;
    this.stats.state = 'stopped';
  }

  private onList(items: EndpointSlice[]): void {
    this.slices.clear();
    for (const s of items) if (s?.metadata?.name) this.slices.set(s.metadata.name, s);
    this.scheduleApply();
  }

  private onChange(type: WatchChange, slice: EndpointSlice): void {
    const name = slice.metadata?.name;
    if (name && type === 'DELETED') this.slices.delete(name);
    else if (name) this.slices.set(name, slice);
    this.scheduleApply();
  }

  private loadState(): void {
    if (!this.stateDir) return;
    const r = loadStateFile(this.stateDir, this.fingerprints);
    const file = `${this.stateDir}/endpoints.json`;
    if (r.result === 'missing') {
      this.stats.stateFile = 'missing';
      this.emit('state-file', { status: 'missing', file });
      return;
    }
    if (r.result === 'other-cluster') {
      this.stats.stateFile = 'other-cluster';
      this.emit('state-file', { status: 'other-cluster', file, fileFingerprints: r.fileFingerprints, caFingerprints: this.fingerprints });
      return;
    }
    if (r.result === 'invalid') {
      this.stats.stateFile = 'invalid';
      this.emit('state-file', { status: 'invalid', file, reason: r.reason });
      return;
    }
    const list = r.backends
      .map(canonicalAddress)
      .filter((a) => this.policy.refusal(a) === undefined)
      .sort(compareAddresses);
    const why = implausibleReason(list, this.maxBackends);
    if (why) {
      this.stats.stateFile = 'implausible';
      this.emit('state-file', { status: 'implausible', file, reason: why });
      return;
    }
    this.stats.stateFile = 'loaded';
    const key = keyOf(list);
    const res = this.backendSet.set(
      ENDPOINTSLICES_SOURCE,
      list.map((address) => ({ address, source: 'discovery' as const })),
    );
    this.appliedKey = key;
    this.persistedKey = key;
    this.stats.listSize = list.length;
    this.emit('state-file', { status: 'loaded', file, savedAt: r.savedAt, backends: list });
    this.emit('applied', { backends: list, added: res.added, removed: res.removed, from: 'state-file' });
  }

  /**
   * The first list from the API is applied at once (the pool may hold stale seeds). Later changes wait for
   * `debounceMs` of quiet (at most `maxDebounceMs`), so an API server flapping its own entry while it starts,
   * or a remove-then-add renumbering, reaches the pool as one change or not at all.
   */
  private scheduleApply(): void {
    if (!this.appliedFromApi || this.debounceMs === 0) {
      this.applyNow();
      return;
    }
    const now = this.clock.now();
    this.pendingSince ??= now;
    const delay = Math.max(0, Math.min(this.debounceMs, this.pendingSince + this.maxDebounceMs - now));
    this.clock.clearTimeout(this.debounceTimer);
    this.debounceTimer = this.clock.setTimeout(() => {
      this.debounceTimer = undefined;
      this.pendingSince = undefined;
      if (!this.closed) this.applyNow();
    }, delay);
  }

  private applyNow(): void {
    const { backends, skipped, refused, notReady } = backendsFromSlices(this.slices.values(), this.policy);
    if (skipped.length) this.emit('skipped', { skipped });
    const refusedKey = refused.join('\n');
    if (refused.length && refusedKey !== this.lastRefused) this.emit('refused', { refused });
    this.lastRefused = refusedKey;
    const why = implausibleReason(backends, this.maxBackends);
    if (why) {
      this.stats.rejected++;
      const reason = notReady > 0 && backends.length === 0 ? `${why} (${notReady} not ready)` : why;
      const repeated = reason === this.lastRejectReason;
      this.lastRejectReason = reason;
      this.emit('rejected', { reason, keeping: this.stats.listSize, repeated });
      return;
    }
    this.lastRejectReason = undefined;
    this.appliedFromApi = true;
    const key = keyOf(backends);
    if (key === this.appliedKey) return;
    const res = this.backendSet.set(
      ENDPOINTSLICES_SOURCE,
      backends.map((address) => ({ address, source: 'discovery' as const })),
    );
    this.appliedKey = key;
    this.stats.applied++;
    this.stats.listSize = backends.length;
    this.stats.lastChangeTime = this.clock.now();
    this.emit('applied', { backends, added: res.added, removed: res.removed, from: 'api' });
    this.persist(backends, key);
  }

  private persist(backends: Address[], key: string): void {
    const dir = this.stateDir;
    if (!dir) return;
    this.persistChain = this.persistChain.then(async () => {
      if (this.persistedKey === key) return;
      try {
        await saveStateFile(dir, backends, this.fingerprints, new Date(this.clock.now()));
        this.persistedKey = key;
      } catch (err) {
        this.stats.stateFileErrors++;
        this.emit('state-write-failed', { dir, error: (err as Error).message });
      }
    });
  }
}

/** Discovery always verifies: a CA with at least one certificate, and a client cert only with its key. */
function checkDiscoveryTls(tls: Partial<Pick<DiscoveryTls, 'ca' | 'cert' | 'key'>> | undefined): asserts tls is Pick<DiscoveryTls, 'ca' | 'cert' | 'key'> {
  if (!tls?.ca || caFingerprints(tls.ca).length === 0) {
    throw new ApilbError(
      'APILB_ERR_TLS_CONFIG',
      'EndpointSlice discovery verifies the API server: the cluster CA (certificate-authority in --kubeconfig, or --ca-file) is missing or holds no certificate',
    );
  }
  if (Boolean(tls.cert) !== Boolean(tls.key)) throw new OptionError('tls', 'needs both cert and key, or neither');
}

/** What {@link discoveryOptionsFromConfig} derives from the configuration. */
export type DiscoveryConfigOptions = Pick<EndpointSliceDiscoveryOptions, 'target' | 'tls' | 'stateDir' | 'exclude' | 'allowLocal'>;

/**
 * Derives target, TLS and state directory from the configuration and the bound listeners: the first listener
 * is the target (a wildcard listener is reached on loopback), every listener is excluded from the backends,
 * TLS comes from --kubeconfig / --ca-file / --client-*-file / --tls-server-name (never --health-check-insecure:
 * discovery always verifies), the state directory is --state-dir or else `$STATE_DIRECTORY` (its first entry).
 * Throws ApilbError (APILB_ERR_DISCOVERY, APILB_ERR_TLS_CONFIG, APILB_ERR_KUBECONFIG_INVALID).
 */
export function discoveryOptionsFromConfig(config: Config, listeners: readonly Server[], env: NodeJS.ProcessEnv = process.env): DiscoveryConfigOptions {
  const bound: Address[] = [];
  for (const s of listeners) {
    const a = s.address();
    if (a && typeof a === 'object') bound.push({ host: a.address, port: a.port });
  }
  const first = bound[0];
  if (!first) throw new ApilbError('APILB_ERR_DISCOVERY', "EndpointSlice discovery goes through apilb's own listener, but no TCP listener is bound");
  const host = first.host === '0.0.0.0' ? '127.0.0.1' : first.host === '::' ? '::1' : first.host;
  const m = loadTlsMaterial(config);
  if (!m.ca) {
    throw new ApilbError(
      'APILB_ERR_TLS_CONFIG',
      '--discover-endpointslices verifies the API server: the kubeconfig has no certificate-authority(-data) and no --ca-file is set',
    );
  }
  const tls: DiscoveryTls = { ca: m.ca, serverName: m.serverName || 'kubernetes' };
  if (m.cert && m.key) {
    tls.cert = m.cert;
    tls.key = m.key;
  }
  // The admin address too: its configured port, since it may be bound only later (bind retries).
  const out: DiscoveryConfigOptions = {
    target: { host, port: first.port },
    tls,
    exclude: [...bound, config.adminListen],
    allowLocal: config.discoveryAllowLocal,
  };
  const stateDir = config.stateDir ?? env.STATE_DIRECTORY?.split(':')[0];
  if (stateDir) out.stateDir = stateDir;
  return out;
}

function keyOf(list: readonly Address[]): string {
  return list.map(formatAddress).join(',');
}
