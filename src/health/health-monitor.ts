/**
 * Active health checking: one independent check loop per backend (a hung backend never delays the others),
 * results reported into the pool, which owns the state machine. After a result that disagrees with the backend's
 * state (a failure while up, a success while down), and when the data path reports a failed dial (pool
 * `recheck`), the next check starts `recheckDelay` after the previous one started instead of a full interval
 * later, so with the defaults a hung backend is `down` at most interval × 1.1 + 2 × timeout = 4.2 s after it
 * stopped answering (sooner when clients dial it: failed dials count too), not after `fall` intervals.
 */
import { EventEmitter } from 'node:events';
import { jitter, systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { TlsMaterial } from '../config/tls.js';
import { numberOption, OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import type { CheckResult, Pool } from '../pool/pool.js';
import type { Checker } from './checker.js';
import { HttpsChecker } from './https-checker.js';
import { TcpChecker } from './tcp-checker.js';

/** `https`: GET `path`, expect 200. `tcp`: connect (and TLS handshake with a CA). */
export type HealthCheckMode = 'https' | 'tcp';

/** What a checker factory gets. */
export interface CheckerSpec {
  backend: Backend;
  mode: HealthCheckMode;
  path: string;
  interval: number;
  timeout: number;
  tls: TlsMaterial;
}

/** Options of {@link HealthMonitor}. Durations in milliseconds; validated at construction (OptionError). */
export interface HealthMonitorOptions {
  pool: Pool;
  /** Default `https`. */
  mode?: HealthCheckMode;
  /** Path of https checks. Default `/readyz`; must start with `/`. */
  path?: string;
  /** Time between checks of one backend after a success, jittered ±10%. Default 2000; must be > 0. */
  interval?: number;
  /** Time one check may take (connect + TLS + response). Default 1000; must be > 0 and ≤ interval. */
  timeout?: number;
  /** CA, client identity, server name, insecure flag. Required. https without a CA needs `insecure: true`. */
  tls: TlsMaterial;
  /**
   * Spacing of confirming re-checks (after a result that disagrees with the state, or a passive failure report),
   * counted from the start of the previous check. Default 300; 0 = at once.
   */
  recheckDelay?: number;
  /** Default: the system clock. Drives intervals, re-checks and check timeouts. */
  clock?: Clock;
  /** Source of jitter in [0, 1). Default Math.random. */
  random?: () => number;
  /** Builds a backend's checker. Default: HttpsChecker or TcpChecker by `mode` (tests inject fakes). */
  createChecker?: (spec: CheckerSpec) => Checker;
}

/** Options {@link HealthMonitor.update} can change at run time. */
export type HealthMonitorUpdate = Partial<Pick<HealthMonitorOptions, 'mode' | 'path' | 'interval' | 'timeout' | 'tls' | 'recheckDelay'>>;

/** One active health check result, emitted (`check` event) after it was reported into the pool. */
export interface HealthCheckEvent {
  backend: Backend;
  result: CheckResult;
}

/** Anything that emits `check` events: the health monitor; an EventEmitter in tests. Metrics and logs take one. */
export interface HealthCheckSource {
  on(event: 'check', listener: (ev: HealthCheckEvent) => void): unknown;
  off(event: 'check', listener: (ev: HealthCheckEvent) => void): unknown;
}

/** Events of {@link HealthMonitor}. */
export interface HealthMonitorEvents {
  check: [HealthCheckEvent];
}

type Settings = Required<Pick<HealthMonitorOptions, 'mode' | 'path' | 'interval' | 'timeout' | 'tls' | 'recheckDelay'>>;

/** One backend's loop. */
interface Slot {
  backend: Backend;
  checker: Checker;
  timer: TimerHandle | undefined;
  /** When the pending timer fires (clock ms). */
  dueAt: number;
  running: AbortController | undefined;
  /** Bumped whenever the checker is replaced or the slot is dropped: results of older runs are discarded. */
  generation: number;
  /** A re-check was asked for while a check ran. */
  recheckWanted: boolean;
  lastStart: number;
  results: number;
  lastResult: CheckResult | undefined;
}

function validate(o: HealthMonitorOptions | Settings, base?: Settings): Settings {
  const s: Settings = {
    mode: o.mode ?? base?.mode ?? 'https',
    path: o.path ?? base?.path ?? '/readyz',
    interval: o.interval ?? base?.interval ?? 2000,
    timeout: o.timeout ?? base?.timeout ?? 1000,
    tls: (o.tls ?? base?.tls)!,
    recheckDelay: o.recheckDelay ?? base?.recheckDelay ?? 300,
  };
  if (s.mode !== 'https' && s.mode !== 'tcp') throw new OptionError('mode', `must be https or tcp, got ${JSON.stringify(s.mode)}`);
  if (typeof s.path !== 'string' || !s.path.startsWith('/')) throw new OptionError('path', `must start with "/", got ${JSON.stringify(s.path)}`);
  if (!Number.isFinite(s.interval) || s.interval <= 0) throw new OptionError('interval', `must be a number > 0, got ${s.interval}`);
  if (!Number.isFinite(s.timeout) || s.timeout <= 0) throw new OptionError('timeout', `must be a number > 0, got ${s.timeout}`);
  if (s.timeout > s.interval) throw new OptionError('timeout', `must not exceed interval (${s.interval}), got ${s.timeout}`);
  numberOption('recheckDelay', s.recheckDelay, 0);
  if (!s.tls || typeof s.tls !== 'object') throw new OptionError('tls', 'is required (TLS material from loadTlsMaterial)');
  if (s.mode === 'https' && !s.tls.ca && !s.tls.insecure) {
    throw new OptionError('tls', 'needs a CA to verify API servers in https checks, or insecure: true (--health-check-insecure)');
  }
  return s;
}

function defaultChecker(spec: CheckerSpec): Checker {
  if (spec.mode === 'tcp') return new TcpChecker({ backend: spec.backend, timeout: spec.timeout, tls: spec.tls });
  return new HttpsChecker({ backend: spec.backend, path: spec.path, timeout: spec.timeout, interval: spec.interval, tls: spec.tls });
}

/** Runs active checks for every backend of a pool. */
export class HealthMonitor extends EventEmitter<HealthMonitorEvents> {
  readonly pool: Pool;
  private settings: Settings;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly createChecker: (spec: CheckerSpec) => Checker;
  private readonly slots = new Map<Backend, Slot>();
  private readonly closing = new Set<Promise<void>>();
  private started = false;
  private closed = false;
  private roundWaiters = new Set<() => void>();

  constructor(options: HealthMonitorOptions) {
    super();
    if (!options || !options.pool) throw new OptionError('pool', 'is required');
    this.pool = options.pool;
    this.settings = validate(options);
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    if (typeof this.random !== 'function') throw new OptionError('random', 'must be a function');
    this.createChecker = options.createChecker ?? defaultChecker;
    this.onAdded = this.onAdded.bind(this);
    this.onEvicted = this.onEvicted.bind(this);
    this.onRecheck = this.onRecheck.bind(this);
  }

  /** The current settings (after {@link update}). */
  get options(): Readonly<Settings> {
    return this.settings;
  }

  /** Backends with a check loop. */
  get checked(): Backend[] {
    return [...this.slots.keys()];
  }

  /** The checker of `backend` (tests inspect connection counts through it). */
  checkerOf(backend: Backend): Checker | undefined {
    return this.slots.get(backend)?.checker;
  }

  /** Starts a check loop for every backend in the pool (first checks at once) and follows pool changes. */
  start(): void {
    if (this.closed) throw new OptionError('start', 'called after close()');
    if (this.started) return;
    this.started = true;
    this.pool.on('added', this.onAdded);
    this.pool.on('evicted', this.onEvicted);
    this.pool.on('recheck', this.onRecheck);
    for (const b of this.pool.backends) this.onAdded(b);
  }

  /**
   * Resolves once every backend being checked has a settled state (a result, and out of `unknown`: up after its
   * first success, down/draining after `fall` failures), or after `timeoutMs` (0 = only what is already known),
   * or when the monitor closes. Call after {@link start}. Never rejects. Waiting for settled states rather than
   * first results keeps clients from connecting in the window where a failing backend is still eligible and
   * then having their connections closed when it turns down a re-check later.
   */
  firstRound(timeoutMs: number): Promise<void> {
    if (this.closed || this.allHaveResults()) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.clock.clearTimeout(timer);
        this.roundWaiters.delete(done);
        resolve();
      };
      const timer = this.clock.setTimeout(done, Math.max(0, timeoutMs));
      this.roundWaiters.add(done);
    });
  }

  /**
   * Applies new settings without a restart (configuration reload). Validated as a whole first: a bad value
   * throws OptionError and nothing changes. A new mode, path, timeout or TLS material replaces every checker
   * (a fresh connection with the new identity) and checks at once; a new interval or recheckDelay applies from
   * the next scheduled check.
   */
  update(partial: HealthMonitorUpdate): void {
    const next = validate(partial as Settings, this.settings);
    const prev = this.settings;
    this.settings = next;
    const recreate = next.mode !== prev.mode || next.path !== prev.path || next.timeout !== prev.timeout || next.tls !== prev.tls;
    const retime = next.interval !== prev.interval || next.recheckDelay !== prev.recheckDelay;
    if (!this.started || this.closed) return;
    for (const slot of this.slots.values()) {
      if (recreate) {
        this.stopSlot(slot);
        slot.checker = this.newChecker(slot.backend);
        this.schedule(slot, 0);
      } else if (retime && slot.timer !== undefined && !slot.running) {
        this.schedule(slot, this.nextDelay(slot, slot.lastResult));
      }
    }
  }

  /** Stops every loop, aborts checks in flight and closes checkers (sockets, undici clients). Idempotent. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.pool.off('added', this.onAdded);
      this.pool.off('evicted', this.onEvicted);
      this.pool.off('recheck', this.onRecheck);
      for (const slot of this.slots.values()) this.dropSlot(slot);
      this.slots.clear();
      for (const w of [...this.roundWaiters]) w();
    }
    await Promise.all([...this.closing]);
  }

  private newChecker(backend: Backend): Checker {
    const s = this.settings;
    return this.createChecker({ backend, mode: s.mode, path: s.path, interval: s.interval, timeout: s.timeout, tls: s.tls });
  }

  private onAdded(backend: Backend): void {
    if (this.closed || this.slots.has(backend)) return;
    const slot: Slot = {
      backend,
      checker: this.newChecker(backend),
      timer: undefined,
      dueAt: 0,
      running: undefined,
      generation: 0,
      recheckWanted: false,
      lastStart: Number.NEGATIVE_INFINITY,
      results: 0,
      lastResult: undefined,
    };
    this.slots.set(backend, slot);
    this.schedule(slot, 0);
  }

  private onEvicted(backend: Backend): void {
    const slot = this.slots.get(backend);
    if (!slot) return;
    this.slots.delete(backend);
    this.dropSlot(slot);
    this.notifyRound();
  }

  /** A passive failure (failed client dial): check now, but at most once per recheckDelay per backend. */
  private onRecheck(backend: Backend): void {
    const slot = this.slots.get(backend);
    if (!slot || this.closed) return;
    if (slot.running) {
      slot.recheckWanted = true;
      return;
    }
    const now = this.clock.now();
    const delay = Math.max(0, slot.lastStart + this.settings.recheckDelay - now);
    if (slot.timer !== undefined && slot.dueAt <= now + delay) return;
    this.schedule(slot, delay);
  }

  private schedule(slot: Slot, ms: number): void {
    if (slot.timer !== undefined) this.clock.clearTimeout(slot.timer);
    slot.dueAt = this.clock.now() + ms;
    slot.timer = this.clock.setTimeout(() => {
      slot.timer = undefined;
      void this.run(slot);
    }, ms);
  }

  /**
   * A result that disagrees with the backend's state is confirmed quickly (recheckDelay), so `fall` failures or
   * `rise` successes take about one check each plus recheckDelay. Once the state agrees (up and passing, or
   * down/draining and still failing) checks go back to the jittered interval: a backend that stays dead for hours
   * must not get a check every few hundred milliseconds from every node.
   */
  private nextDelay(slot: Slot, result: CheckResult | undefined): number {
    const s = slot.backend.state;
    const settled = result === undefined || (result.ok ? s === 'up' : result.kind === 'transport' ? s === 'down' : s === 'draining' || s === 'down');
    return settled ? jitter(this.settings.interval, 0.1, this.random) : this.recheckIn(slot);
  }

  /**
   * Re-checks are spaced recheckDelay from the start of the previous check: after a refused connection (a few
   * ms) that is about recheckDelay; after a timeout the re-check starts at once, so a hung backend is confirmed
   * `2 × timeout` after its first missed check, not `2 × timeout + recheckDelay`.
   */
  private recheckIn(slot: Slot): number {
    return Math.max(0, slot.lastStart + this.settings.recheckDelay - this.clock.now());
  }

  private async run(slot: Slot): Promise<void> {
    if (this.closed || slot.running || this.slots.get(slot.backend) !== slot) return;
    const generation = slot.generation;
    const { timeout } = this.settings;
    const ac = new AbortController();
    slot.running = ac;
    slot.recheckWanted = false;
    slot.lastStart = this.clock.now();
    let onAbort: (() => void) | undefined;
    // The check must end at `timeout` whatever the checker does: the abort wins the race.
    const timedOut = new Promise<CheckResult>((resolve) => {
      onAbort = () => resolve({ ok: false, kind: 'transport', latencyMs: timeout, error: `timeout after ${timeout} ms` });
      ac.signal.addEventListener('abort', onAbort);
    });
    const timer = this.clock.setTimeout(() => ac.abort(), timeout);
    let result: CheckResult;
    try {
      result = await Promise.race([slot.checker.check(ac.signal), timedOut]);
    } catch (err) {
      result = { ok: false, kind: 'transport', latencyMs: 0, error: (err as Error)?.message ?? String(err) };
    } finally {
      this.clock.clearTimeout(timer);
      if (onAbort) ac.signal.removeEventListener('abort', onAbort);
    }
    if (slot.running === ac) slot.running = undefined;
    if (this.closed || slot.generation !== generation || this.slots.get(slot.backend) !== slot) return;
    slot.results++;
    slot.lastResult = result;
    this.pool.reportCheck(slot.backend, result);
    this.emit('check', { backend: slot.backend, result });
    this.notifyRound();
    if (this.closed || slot.generation !== generation || slot.timer !== undefined) return;
    this.schedule(slot, slot.recheckWanted ? this.recheckIn(slot) : this.nextDelay(slot, result));
  }

  /** Aborts a check in flight and cancels the timer, keeping the slot. */
  private stopSlot(slot: Slot): void {
    slot.generation++;
    if (slot.timer !== undefined) this.clock.clearTimeout(slot.timer);
    slot.timer = undefined;
    slot.running?.abort();
    slot.running = undefined;
    this.track(slot.checker.close());
  }

  private dropSlot(slot: Slot): void {
    this.stopSlot(slot);
  }

  private track(p: Promise<void>): void {
    const q = p.catch(() => undefined).finally(() => this.closing.delete(q));
    this.closing.add(q);
  }

  private allHaveResults(): boolean {
    for (const slot of this.slots.values()) if (slot.results === 0 || slot.backend.state === 'unknown') return false;
    return true;
  }

  private notifyRound(): void {
    if (this.roundWaiters.size === 0 || !this.allHaveResults()) return;
    for (const w of [...this.roundWaiters]) w();
  }
}
