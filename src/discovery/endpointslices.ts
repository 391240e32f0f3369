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
import { createRequire } from 'node:module';
import type { Server } from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import type * as Undici from 'undici';
import type { Client } from 'undici';
import { jitter, systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { Config } from '../config/config.js';
import { loadTlsMaterial } from '../config/tls.js';
import { formatAddress, type Address } from '../config/values.js';
import { ApilbError, OptionError } from '../errors.js';
import { createLogger, type Logger } from '../logging.js';
import { AddressPolicy, canonicalAddress } from './address-policy.js';
import type { BackendSet } from './backend-set.js';
import { caFingerprints, loadStateFile, saveStateFile } from './state-file.js';
import { backendsFromSlices, implausibleReason, type EndpointSlice } from './slices.js';
import { VERSION } from '../version.js';

/**
 * undici, loaded on first use: most nodes run without discovery, and undici costs them ~20 MB of RSS (issue 18).
 * `require` keeps the constructor synchronous; undici is CommonJS.
 */
function loadUndiciClient(): typeof Client {
  return (createRequire(import.meta.url)('undici') as typeof Undici).Client;
}

/** The BackendSet source name discovery owns. */
export const ENDPOINTSLICES_SOURCE = 'endpointslices';

/** Collection path of the EndpointSlices discovery reads. */
export const ENDPOINTSLICES_PATH = '/apis/discovery.k8s.io/v1/namespaces/default/endpointslices';

/** Label selector of the `kubernetes` Service's slices (URL-encoded in requests). */
export const KUBERNETES_SERVICE_SELECTOR = 'kubernetes.io/service-name=kubernetes';

/** The pure slice translation lives in slices.ts; re-exported here for existing importers. */
export { API_PORT_NAME, backendsFromSlices, implausibleReason, type EndpointSlice, type SliceBackends } from './slices.js';

/** Discovery's phase, as metrics and /status show it. */
export type DiscoveryState = 'stopped' | 'starting' | 'listing' | 'watching' | 'backoff';

/** Every {@link DiscoveryState}, for metrics that expose one series per state. */
export const DISCOVERY_STATES: readonly DiscoveryState[] = ['stopped', 'starting', 'listing', 'watching', 'backoff'];

/** What became of the state file at startup. */
export type StateFileStatus = 'disabled' | 'missing' | 'loaded' | 'other-cluster' | 'invalid' | 'implausible';

/** Counters read at scrape time by metrics/ (plain fields; never pushed from here). */
export interface DiscoveryStats {
  /** Current phase. `backoff` means the last request failed and a retry is pending. */
  state: DiscoveryState;
  /** Epoch ms of the last successful LIST or watch event (bookmarks included); 0 = never. */
  lastSuccessTime: number;
  /** Epoch ms the applied list last changed; 0 = never (the state file's list does not count). */
  lastChangeTime: number;
  /** Backends in the discovered list in use (from the API or the state file); 0 = none yet. */
  listSize: number;
  /** Watches that ended (server timeout, connection loss, error) and were started again. */
  watchRestarts: number;
  /** Successful LISTs. */
  lists: number;
  /** Re-lists forced by 410 Gone (HTTP status or ERROR event). */
  relists: number;
  /** Failed LIST/WATCH requests (transport, TLS, HTTP status, malformed answer). */
  errors: number;
  /** Discovered lists refused as empty or implausible (the previous one stayed). */
  rejected: number;
  /** Lists applied to the pool. */
  applied: number;
  /** The resourceVersion watches resume from; '' before the first LIST and after 410. */
  resourceVersion: string;
  /** What happened to the state file at startup. */
  stateFile: StateFileStatus;
  /** Failed state-file writes. */
  stateFileErrors: number;
  /** Message of the last error; '' when none yet. */
  lastError: string;
}

/** Events of {@link EndpointSliceDiscovery}. */
export interface DiscoveryEvents {
  /** A list was applied to the BackendSet (`from`: `api` or `state-file`). */
  applied: [{ backends: Address[]; added: string[]; removed: string[]; from: 'api' | 'state-file' }];
  /** A list was refused; the previous one stays. */
  rejected: [{ reason: string }];
  /** A request failed (a retry follows after `retryInMs`). Not named `error`: nobody has to listen to it. */
  failure: [{ error: string; retryInMs: number }];
}

/** TLS material for discovery's requests. */
export interface DiscoveryTls {
  /** Cluster CA bundle (PEM). Required: discovery always verifies the API server. */
  ca: string;
  /** Client certificate (PEM); with `key`. Default none (anonymous, which RBAC normally refuses). */
  cert?: string;
  key?: string;
  /** Name the API server certificate is verified against. Default `kubernetes`. */
  serverName?: string;
  /**
   * Bearer token for each request, read per request so a rotated token file applies at once (the daemon passes
   * its credential watcher's). Default none.
   */
  token?: () => string | undefined;
}

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
  /** Default a silent logger. */
  logger?: Logger;
}

/** `gone`: 410, re-list. `relist`: the server refused the watch itself (4xx, e.g. 431 for a huge resourceVersion). */
type Outcome = 'ok' | 'error' | 'gone' | 'relist';

interface WatchEvent {
  type?: string;
  object?: EndpointSlice & { code?: number; message?: string; reason?: string };
}

const MAX_LIST_BYTES = 8 << 20;
const MAX_EVENT_BYTES = 4 << 20;

/** Follows the `kubernetes` Service's EndpointSlices into the BackendSet. */
export class EndpointSliceDiscovery extends EventEmitter<DiscoveryEvents> {
  /** Counters for metrics (see {@link DiscoveryStats}). */
  readonly stats: DiscoveryStats = {
    state: 'stopped',
    lastSuccessTime: 0,
    lastChangeTime: 0,
    listSize: 0,
    watchRestarts: 0,
    lists: 0,
    relists: 0,
    errors: 0,
    rejected: 0,
    applied: 0,
    resourceVersion: '',
    stateFile: 'disabled',
    stateFileErrors: 0,
    lastError: '',
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
  private readonly backendSet: BackendSet;
  /** Which discovered addresses may become backends (own listeners never; loopback/link-local on opt-in). */
  readonly policy: AddressPolicy;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly fingerprints: string[];
  private readonly client: Client;
  private readonly slices = new Map<string, EndpointSlice>();
  private running = false;
  private closed = false;
  private loop: Promise<void> | undefined;
  private abort: AbortController | undefined;
  private failures = 0;
  /** Re-lists forced since the last watch that delivered something (410 loops, refused watches). */
  private relistStreak = 0;
  private debounceTimer: TimerHandle | undefined;
  private pendingSince: number | undefined;
  private appliedFromApi = false;
  private appliedKey: string | undefined;
  private persistedKey: string | undefined;
  private persistChain: Promise<void> = Promise.resolve();
  private wakeSleep: (() => void) | undefined;
  private lastRejectReason: string | undefined;
  private lastRefused = '';
  private lastLoggedError: string | undefined;
  private readonly token: (() => string | undefined) | undefined;

  constructor(options: EndpointSliceDiscoveryOptions) {
    super();
    if (!options?.backendSet) throw new OptionError('backendSet', 'is required');
    if (!options.target || !Number.isInteger(options.target.port) || options.target.port < 1) {
      throw new OptionError('target', 'must be the HOST:PORT of a bound apilb listener');
    }
    if (!options.tls?.ca || caFingerprints(options.tls.ca).length === 0) {
      throw new ApilbError(
        'APILB_ERR_TLS_CONFIG',
        'EndpointSlice discovery verifies the API server: the cluster CA (certificate-authority in --kubeconfig, or --ca-file) is missing or holds no certificate',
      );
    }
    if (Boolean(options.tls.cert) !== Boolean(options.tls.key)) throw new OptionError('tls', 'needs both cert and key, or neither');
    this.backendSet = options.backendSet;
    this.target = options.target;
    this.stateDir = options.stateDir || undefined;
    this.policy = new AddressPolicy({ own: options.exclude ?? [], allowLocal: options.allowLocal ?? false });
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.log = (options.logger ?? createLogger('silent')).child({ component: 'endpointslices' });
    this.debounceMs = num('debounceMs', options.debounceMs ?? 3000, 0);
    this.maxDebounceMs = num('maxDebounceMs', options.maxDebounceMs ?? 3 * this.debounceMs, this.debounceMs);
    this.backoffBaseMs = num('backoffBaseMs', options.backoffBaseMs ?? 1000, 1);
    this.backoffMaxMs = num('backoffMaxMs', options.backoffMaxMs ?? Math.max(30_000, this.backoffBaseMs), this.backoffBaseMs);
    this.requestTimeoutMs = num('requestTimeoutMs', options.requestTimeoutMs ?? 10_000, 1);
    this.watchTimeoutSeconds = num('watchTimeoutSeconds', options.watchTimeoutSeconds ?? 300, 1);
    this.minWatchMs = num('minWatchMs', options.minWatchMs ?? 1000, 0);
    this.maxBackends = num('maxBackends', options.maxBackends ?? 64, 1);
    this.fingerprints = caFingerprints(options.tls.ca);
    this.token = options.tls.token;
    const connect: Record<string, unknown> = {
      ca: options.tls.ca,
      servername: options.tls.serverName || 'kubernetes',
      rejectUnauthorized: true,
    };
    if (options.tls.cert) {
      connect.cert = options.tls.cert;
      connect.key = options.tls.key;
    }
    const origin = `https://${formatAddress(this.target)}`;
    // One connection: a LIST, then a long watch on the same keep-alive socket; pipelining 1 keeps it strictly
    // sequential. The connect timeout covers TCP and TLS through apilb, including apilb's failover across backends.
    this.client = new (loadUndiciClient())(origin, { connect, pipelining: 1, keepAliveTimeout: 30_000, connectTimeout: this.requestTimeoutMs });
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
    this.loop = this.run().catch((err: Error) => {
      // run() handles its own errors; reaching here is a bug, but discovery must never take the daemon down.
      this.log.error({ event: 'discovery_crashed', code: 'APILB_ERR_DISCOVERY', err: err.message }, `EndpointSlice discovery stopped: ${err.message}`);
      this.stats.state = 'stopped';
    });
  }

  /**
   * Stops watching: aborts the request in flight, drops a pending (debounced) change, waits for a state-file
   * write in progress. The discovered backends stay in the pool. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return this.loop;
    this.closed = true;
    this.abort?.abort();
    this.wakeSleep?.();
    this.clock.clearTimeout(this.debounceTimer);
    this.debounceTimer = undefined;
    await this.loop;
    await this.client.destroy().catch(() => {});
    await this.persistChain;
    this.stats.state = 'stopped';
  }

  private loadState(): void {
    if (!this.stateDir) return;
    const r = loadStateFile(this.stateDir, this.fingerprints);
    const file = `${this.stateDir}/endpoints.json`;
    if (r.result === 'missing') {
      this.stats.stateFile = 'missing';
      this.log.info({ event: 'discovery_state_missing', file }, `no discovery state file ${file} yet: starting from the seeds`);
      return;
    }
    if (r.result === 'other-cluster') {
      this.stats.stateFile = 'other-cluster';
      this.log.warn(
        { event: 'discovery_state_ignored', file, reason: 'ca-mismatch', fileFingerprints: r.fileFingerprints, caFingerprints: this.fingerprints },
        `ignoring ${file}: it was written for another cluster (its CA fingerprint differs from the current CA); it will be replaced after the first successful LIST`,
      );
      return;
    }
    if (r.result === 'invalid') {
      this.stats.stateFile = 'invalid';
      this.log.warn({ event: 'discovery_state_ignored', file, reason: r.reason }, `ignoring ${file}: it ${r.reason}`);
      return;
    }
    const list = r.backends
      .map(canonicalAddress)
      .filter((a) => this.policy.refusal(a) === undefined)
      .sort(byAddress);
    const why = implausibleReason(list, this.maxBackends);
    if (why) {
      this.stats.stateFile = 'implausible';
      this.log.warn({ event: 'discovery_state_ignored', file, reason: why }, `ignoring ${file}: ${why}`);
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
    this.log.info(
      { event: 'discovery_state_loaded', file, savedAt: r.savedAt, backends: list.map(formatAddress) },
      `loaded ${list.length} API servers from ${file} (saved ${r.savedAt || 'at an unknown time'})`,
    );
    this.emit('applied', { backends: list, added: res.added, removed: res.removed, from: 'state-file' });
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      const outcome = this.stats.resourceVersion === '' ? await this.list() : await this.watch();
      if (this.closed) break;
      if (outcome === 'error') await this.backoff();
      else if (outcome === 'gone' || outcome === 'relist') {
        this.stats.relists++;
        this.stats.resourceVersion = '';
        this.relistStreak++;
        // One 410 is routine (history compacted): re-list at once. 410 again and again without a useful watch in
        // between, or a watch the server refuses outright, backs off exponentially instead of a hot loop.
        if (outcome === 'relist' || this.relistStreak > 1) await this.backoff(this.relistStreak - 1);
      }
    }
  }

  /** Sleeps `backoffBaseMs × 2^step` (default step: consecutive failures), capped at backoffMaxMs, jittered ±50%. */
  private async backoff(step?: number): Promise<void> {
    const n = step ?? this.failures++;
    const base = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** Math.min(n, 30));
    const delay = jitter(base, 0.5, this.random);
    this.stats.state = 'backoff';
    this.emit('failure', { error: this.stats.lastError, retryInMs: delay });
    await new Promise<void>((resolve) => {
      const timer = this.clock.setTimeout(() => {
        this.wakeSleep = undefined;
        resolve();
      }, delay);
      this.wakeSleep = () => {
        this.clock.clearTimeout(timer);
        this.wakeSleep = undefined;
        resolve();
      };
    });
  }

  private fail(what: string, message: string, hint?: string): 'error' {
    this.stats.errors++;
    this.stats.lastError = `${what}: ${message}`;
    const text = `EndpointSlice ${what} failed: ${message}${hint ? ` (${hint})` : ''}; keeping the current backend list`;
    // Repeats of one error go to debug: a long outage must not flood the journal at every retry.
    const level = this.lastLoggedError === this.stats.lastError ? 'debug' : 'warn';
    this.lastLoggedError = this.stats.lastError;
    this.log[level]({ event: 'discovery_error', code: 'APILB_ERR_DISCOVERY', what, err: message, failures: this.failures + 1 }, text);
    return 'error';
  }

  private succeeded(): void {
    this.stats.lastSuccessTime = this.clock.now();
    if (this.failures > 0 || this.lastLoggedError) {
      this.log.info({ event: 'discovery_recovered', after: this.failures }, 'EndpointSlice discovery works again');
    }
    this.failures = 0;
    this.lastLoggedError = undefined;
  }

  private requestHeaders(): Record<string, string> {
    const token = this.token?.();
    return { accept: 'application/json', 'user-agent': `apilb/${VERSION}`, ...(token ? { authorization: `Bearer ${token}` } : {}) };
  }

  private async list(): Promise<Outcome> {
    this.stats.state = 'listing';
    const path = `${ENDPOINTSLICES_PATH}?labelSelector=${encodeURIComponent(KUBERNETES_SERVICE_SELECTOR)}`;
    this.abort = new AbortController();
    let doc: { metadata?: { resourceVersion?: string }; items?: EndpointSlice[] };
    try {
      const res = await this.client.request({
        method: 'GET',
        path,
        headers: this.requestHeaders(),
        signal: this.abort.signal,
        headersTimeout: this.requestTimeoutMs,
        bodyTimeout: this.requestTimeoutMs,
      });
      if (res.statusCode !== 200) {
        const body = await readText(res.body, 4096).catch(() => '');
        return this.fail('LIST', `HTTP ${res.statusCode}${statusMessage(body)}`, statusHint(res.statusCode));
      }
      doc = JSON.parse(await readText(res.body, MAX_LIST_BYTES)) as typeof doc;
    } catch (err) {
      if (this.closed) return 'ok';
      return this.fail('LIST', errorMessage(err), tlsHint(err));
    }
    const rv = doc?.metadata?.resourceVersion;
    if (!doc || !Array.isArray(doc.items) || typeof rv !== 'string' || rv === '') {
      return this.fail('LIST', 'the answer is not an EndpointSliceList with a resourceVersion');
    }
    this.stats.lists++;
    this.succeeded();
    this.slices.clear();
    for (const s of doc.items) if (s?.metadata?.name) this.slices.set(s.metadata.name, s);
    this.stats.resourceVersion = rv;
    this.scheduleApply();
    return 'ok';
  }

  private async watch(): Promise<Outcome> {
    this.stats.state = 'watching';
    const timeoutSeconds = Math.max(1, Math.round(jitter(this.watchTimeoutSeconds * 1000, 0.2, this.random) / 1000));
    const q = [
      `labelSelector=${encodeURIComponent(KUBERNETES_SERVICE_SELECTOR)}`,
      'watch=1',
      'allowWatchBookmarks=true',
      `resourceVersion=${encodeURIComponent(this.stats.resourceVersion)}`,
      `timeoutSeconds=${timeoutSeconds}`,
    ];
    this.abort = new AbortController();
    const started = this.clock.now();
    let delivered = 0;
    let outcome: Outcome | undefined;
    try {
      const res = await this.client.request({
        method: 'GET',
        path: `${ENDPOINTSLICES_PATH}?${q.join('&')}`,
        headers: this.requestHeaders(),
        signal: this.abort.signal,
        headersTimeout: this.requestTimeoutMs,
        // The server ends the watch after timeoutSeconds; silence well beyond that means a dead path.
        bodyTimeout: (timeoutSeconds + 30) * 1000,
      });
      if (res.statusCode === 410) {
        await res.body.dump().catch(() => {});
        this.log.info({ event: 'discovery_relist', reason: '410' }, `watch from resourceVersion ${this.stats.resourceVersion} answered 410 Gone: re-listing`);
        this.stats.watchRestarts++;
        return 'gone';
      }
      if (res.statusCode !== 200) {
        const body = await readText(res.body, 4096).catch(() => '');
        this.stats.watchRestarts++;
        this.fail('WATCH', `HTTP ${res.statusCode}${statusMessage(body)}`, statusHint(res.statusCode));
        // A 4xx refuses this watch request itself (e.g. 431: a resourceVersion too large for the server's
        // header limit): retrying it unchanged can never work, a fresh LIST can.
        return res.statusCode >= 400 && res.statusCode < 500 ? 'relist' : 'error';
      }
      // Reachable, but the backoff only resets once the watch proves useful (an event, or a full-length watch):
      // a server that accepts watches and closes them at once must still back off exponentially.
      this.stats.lastSuccessTime = this.clock.now();
      const decoder = new StringDecoder('utf8');
      let buf = '';
      for await (const chunk of res.body) {
        buf += decoder.write(chunk as Buffer);
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line === '') continue;
          delivered++;
          outcome = this.onWatchLine(line);
          if (outcome) break;
        }
        if (outcome) break;
        if (buf.length > MAX_EVENT_BYTES) {
          outcome = this.fail('WATCH', `an event is larger than ${MAX_EVENT_BYTES} bytes`);
          break;
        }
      }
      if (outcome) res.body.destroy();
    } catch (err) {
      if (this.closed) return 'ok';
      this.stats.watchRestarts++;
      return this.fail('WATCH', errorMessage(err), tlsHint(err));
    }
    if (this.closed) return 'ok';
    this.stats.watchRestarts++;
    if (outcome) return outcome;
    if (delivered === 0 && this.clock.now() - started < this.minWatchMs) {
      // A middlebox or a broken server closing every watch at once must not become a hot loop.
      return this.fail('WATCH', 'the watch ended at once without an event');
    }
    this.succeeded();
    this.relistStreak = 0;
    this.log.debug({ event: 'discovery_watch_ended', events: delivered, resourceVersion: this.stats.resourceVersion }, 'watch ended; resuming');
    return 'ok';
  }

  /** Handles one watch event line; returns an outcome when the watch must end. */
  private onWatchLine(line: string): Outcome | undefined {
    let ev: WatchEvent;
    try {
      ev = JSON.parse(line) as WatchEvent;
    } catch {
      return this.fail('WATCH', 'the stream holds a line that is not JSON');
    }
    const obj = ev.object;
    if (ev.type === 'ERROR') {
      if (obj?.code === 410) {
        this.log.info({ event: 'discovery_relist', reason: '410-event' }, `watch reported 410 Gone (${obj.message ?? 'resourceVersion too old'}): re-listing`);
        return 'gone';
      }
      return this.fail('WATCH', `ERROR event ${obj?.code ?? ''} ${obj?.reason ?? ''}: ${obj?.message ?? ''}`.replace(/\s+/g, ' ').trim());
    }
    const rv = obj?.metadata?.resourceVersion;
    const name = obj?.metadata?.name;
    if (ev.type !== 'BOOKMARK' && ev.type !== 'ADDED' && ev.type !== 'MODIFIED' && ev.type !== 'DELETED') {
      return this.fail('WATCH', `unknown event type ${String(ev.type)}`);
    }
    if (!obj || typeof rv !== 'string' || rv === '') return this.fail('WATCH', `${ev.type} event without a resourceVersion`);
    this.succeeded();
    this.relistStreak = 0;
    switch (ev.type) {
      case 'BOOKMARK':
        this.stats.resourceVersion = rv;
        return undefined;
      case 'ADDED':
      case 'MODIFIED':
        if (name) this.slices.set(name, obj);
        break;
      case 'DELETED':
        if (name) this.slices.delete(name);
        break;
    }
    this.stats.resourceVersion = rv;
    this.scheduleApply();
    return undefined;
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
    if (skipped.length) this.log.debug({ event: 'discovery_skipped', skipped }, `left out of the discovered list: ${skipped.join('; ')}`);
    const refusedKey = refused.join('\n');
    if (refused.length && refusedKey !== this.lastRefused) {
      // Said loudly once per change: EndpointSlices naming loopback or the metadata service are misconfigured or hostile.
      this.log.warn(
        { event: 'discovery_refused', code: 'APILB_ERR_DISCOVERY', refused },
        `EndpointSlices name addresses apilb refuses as backends: ${refused.join('; ')}`,
      );
    }
    this.lastRefused = refusedKey;
    const why = implausibleReason(backends, this.maxBackends);
    if (why) {
      this.stats.rejected++;
      const reason = notReady > 0 && backends.length === 0 ? `${why} (${notReady} not ready)` : why;
      if (reason !== this.lastRejectReason) {
        this.log.warn(
          { event: 'discovery_rejected', code: 'APILB_ERR_DISCOVERY', reason, keeping: this.stats.listSize },
          `not applying the discovered list: ${reason}; keeping the last good list (${this.stats.listSize} API servers) and the seeds`,
        );
      }
      this.lastRejectReason = reason;
      this.emit('rejected', { reason });
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
    this.log.info(
      { event: 'discovery_applied', backends: backends.map(formatAddress), added: res.added, removed: res.removed },
      `API servers discovered: ${backends.map(formatAddress).join(', ')}`,
    );
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
        this.log.warn(
          { event: 'discovery_state_write_failed', code: 'APILB_ERR_DISCOVERY', dir, err: (err as Error).message },
          `cannot write the discovery state file in ${dir}: ${(err as Error).message}`,
        );
      }
    });
  }
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

function byAddress(a: Address, b: Address): number {
  const x = formatAddress(a);
  const y = formatAddress(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

function num(name: string, v: number, min: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new OptionError(name, `must be a number ≥ ${min}, got ${v}`);
  return v;
}

async function readText(body: AsyncIterable<unknown>, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    const b = c as Buffer;
    n += b.length;
    if (n > limit) throw new Error(`answer larger than ${limit} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function statusMessage(body: string): string {
  try {
    const s = JSON.parse(body) as { message?: string };
    if (s?.message) return `: ${s.message}`;
  } catch {
    // not a Status object
  }
  return '';
}

function statusHint(code: number): string | undefined {
  if (code === 401) return "the API server did not accept the kubeconfig's client certificate";
  if (code === 403) return 'the kubeconfig identity may not list/watch endpointslices in namespace default: apply contrib/rbac-endpointslices.yaml';
  return undefined;
}

function errorMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const code = e?.code && !String(e.message).includes(e.code) ? `${e.code}: ` : '';
  return `${code}${e?.message ?? String(err)}`;
}

function tlsHint(err: unknown): string | undefined {
  const code = String((err as NodeJS.ErrnoException)?.code ?? '');
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'the API server certificate does not carry the expected name: set --tls-server-name';
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code)) return 'the API server certificate does not verify against the cluster CA';
  return undefined;
}
