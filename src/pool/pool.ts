/**
 * The pool: the one place that decides each backend's state from active checks and passive dial results,
 * and picks backends (least connections or round-robin). It knows nothing about sockets; it emits events the data path, metrics
 * and logger subscribe to.
 */
import { EventEmitter } from 'node:events';
import { systemClock, type Clock } from '../clock.js';
import { OptionError } from '../errors.js';
import { Backend, type BackendSpec, type BackendState, type CheckRecord } from './backend.js';

/** Options of {@link Pool}. */
export interface PoolOptions {
  /** Consecutive successful checks that make a backend `up` (from `down`/`draining`). Default 2; must be ≥ 1. */
  rise?: number;
  /** Consecutive failures that make a backend `down` (transport) or `draining` (wrong status). Default 2; ≥ 1. */
  fall?: number;
  /** Default: the system clock. */
  clock?: Clock;
  /** How {@link Pool.pick} chooses among eligible backends. Default `least-connections`. */
  balance?: BalancePolicy;
}

/**
 * Pick policies. `least-connections`: the eligible backend with the fewest open and dialing connections, ties
 * round-robin, so a backend that just came back fills first. `round-robin`: in turn, regardless of load.
 */
export const BALANCE_POLICIES = ['least-connections', 'round-robin'] as const;
/** One of {@link BALANCE_POLICIES}. */
export type BalancePolicy = (typeof BALANCE_POLICIES)[number];

/** Emitted on every state change. */
export interface TransitionEvent {
  backend: Backend;
  from: BackendState;
  to: BackendState;
  reason: string;
}

/** Result of one active check as reported by health/. */
export type CheckResult =
  | { ok: true; latencyMs: number; status?: number }
  | { ok: false; kind: 'transport'; latencyMs: number; error: string; local?: boolean }
  | { ok: false; kind: 'status'; latencyMs: number; status: number; error?: string };

/**
 * Events: `transition` (TransitionEvent), `recheck` (Backend: a passive failure wants a check now),
 * `panic` ({ active: boolean }), `added` (Backend), `removed` (Backend: out of rotation, its connections drain),
 * `evicted` (Backend: gone from the pool; whoever keeps per-backend state drops it). See {@link Pool.remove}.
 */
export interface PoolEvents {
  transition: [TransitionEvent];
  recheck: [Backend];
  panic: [{ active: boolean }];
  added: [Backend];
  removed: [Backend];
  evicted: [Backend];
}

/**
 * One connection's claim on a backend, handed out by {@link Pool.lease}: the only thing that changes the
 * backend's `dialing`, `activeConnections`, `totalConnections` and closed-bytes counters. A lease starts dialing
 * (counted by least-connections), becomes open with {@link connected}, and ends with {@link release}; a second
 * release, or a connected() after release, changes nothing.
 */
export class BackendLease {
  readonly backend: Backend;
  private state: 'dialing' | 'open' | 'released' = 'dialing';
  private readonly onLastRelease: (b: Backend) => void;

  /** @param onLastRelease called when the last open lease of a removed backend is released. */
  constructor(backend: Backend, onLastRelease: (b: Backend) => void) {
    this.backend = backend;
    this.onLastRelease = onLastRelease;
    backend.dialing++;
  }

  /** The TCP handshake completed: the backend has one more open connection. */
  connected(): void {
    if (this.state !== 'dialing') return;
    this.state = 'open';
    const b = this.backend;
    b.dialing--;
    b.activeConnections++;
    b.totalConnections++;
  }

  /**
   * Gives the backend back: a dial abandoned, or an open connection closed with the bytes it carried (the bytes
   * count only for an open lease). A removed backend leaves the pool when its last open connection is released.
   */
  release(bytesFromClient: number, bytesToClient: number): void {
    const b = this.backend;
    if (this.state === 'dialing') {
      b.dialing--;
    } else if (this.state === 'open') {
      b.activeConnections--;
      b.bytesFromClientClosed += bytesFromClient;
      b.bytesToClientClosed += bytesToClient;
      if (b.removed && b.activeConnections === 0) this.onLastRelease(b);
    }
    this.state = 'released';
  }
}

/** Backends, their state machine, and picking. */
export class Pool extends EventEmitter<PoolEvents> {
  readonly rise: number;
  readonly fall: number;
  readonly balance: BalancePolicy;
  private readonly clock: Clock;
  private list: Backend[] = [];
  private cursor = 0;
  private panicking = false;
  /** Backends whose current failure streak includes a failed active check (see reportDialSuccess). */
  private readonly checkFailedInStreak = new WeakSet<Backend>();
  /** One function for every lease (not one closure per lease): a removed backend's last connection closed. */
  private readonly evictDrained = (b: Backend): void => this.evict(b);

  constructor(options: PoolOptions = {}) {
    super();
    this.rise = positiveInt('rise', options.rise ?? 2);
    this.fall = positiveInt('fall', options.fall ?? 2);
    this.clock = options.clock ?? systemClock;
    this.balance = options.balance ?? 'least-connections';
    if (!BALANCE_POLICIES.includes(this.balance))
      throw new OptionError('balance', `must be one of ${BALANCE_POLICIES.join(', ')}, got ${String(this.balance)}`);
  }

  /** Every backend, including removed ones still draining. */
  get backends(): readonly Backend[] {
    return this.list;
  }

  /** True when no backend is eligible and picks fall back to trying every backend. */
  get panic(): boolean {
    return this.panicking;
  }

  /**
   * True when at least one backend takes new connections (`up`/`unknown`, not removed). Computed, not cached:
   * it is current even inside a `transition` listener, before `panic` is updated.
   */
  get hasEligible(): boolean {
    return this.list.some((b) => b.eligible);
  }

  /** Looks a backend up by `HOST:PORT`. */
  get(id: string): Backend | undefined {
    return this.list.find((b) => b.id === id);
  }

  /** Adds a backend (state `unknown`, eligible until its first result). Returns the existing one if present. */
  add(spec: BackendSpec): Backend {
    const b = new Backend(spec, this.clock.now());
    const existing = this.get(b.id);
    if (existing && !existing.removed) return existing;
    if (existing) this.evict(existing);
    this.list.push(b);
    this.emit('added', b);
    this.updatePanic();
    return b;
  }

  /**
   * Makes the pool hold exactly `specs` (by address): new ones are added, missing ones removed (they drain),
   * unchanged ones are left alone with their state and connections.
   */
  reconcile(specs: readonly BackendSpec[]): { added: Backend[]; removed: Backend[] } {
    const wanted = new Map(specs.map((s) => [new Backend(s, 0).id, s]));
    const added: Backend[] = [];
    const removed: Backend[] = [];
    for (const b of [...this.list]) {
      if (!b.removed && !wanted.has(b.id)) {
        this.remove(b);
        removed.push(b);
      }
    }
    for (const [id, spec] of wanted) {
      const cur = this.get(id);
      if (!cur || cur.removed) added.push(this.add(spec));
    }
    return { added, removed };
  }

  /**
   * Takes a backend out of rotation (event `removed`): it stays in {@link backends}, marked `removed`, while its
   * connections drain, and is evicted (event `evicted`) once the last one's lease is released — at once when it
   * has none. The pair: `removed` = no new connections, existing ones drain; `evicted` = gone for good.
   */
  remove(b: Backend): void {
    if (b.removed) return;
    b.removed = true;
    this.emit('removed', b);
    if (b.activeConnections === 0) this.evict(b);
    this.updatePanic();
  }

  /** Drops a backend from the pool for good (event `evicted`): a removed one drained, or add() replaces it. */
  private evict(b: Backend): void {
    const i = this.list.indexOf(b);
    if (i < 0) return;
    this.list.splice(i, 1);
    if (this.cursor > i) this.cursor--;
    this.emit('evicted', b);
  }

  /**
   * Picks a backend among eligible ones (`up`/`unknown`), skipping `exclude`: with `least-connections` the one
   * with the fewest open plus dialing connections (ties in round-robin order), with `round-robin` the next one in
   * turn. When none is eligible at all (panic), every non-removed backend is tried in order: a wrong CA or a broken
   * check must not take the node off the API. Returns undefined when every candidate is excluded.
   */
  pick(exclude?: ReadonlySet<Backend>): Backend | undefined {
    const list = this.list;
    const n = list.length;
    if (n === 0) return undefined;
    const least = this.balance === 'least-connections';
    let best = -1;
    let bestLoad = Infinity;
    let fallback: Backend | undefined;
    for (let k = 0; k < n; k++) {
      const i = (this.cursor + k) % n;
      const b = list[i]!;
      if (b.removed || exclude?.has(b)) continue;
      if (b.eligible) {
        // Strictly fewer: the first in rotation order wins a tie, and the cursor moves past it.
        const load = b.activeConnections + b.dialing;
        if (load < bestLoad) {
          best = i;
          bestLoad = load;
          if (!least) break;
        }
        continue;
      }
      fallback ??= b;
    }
    if (best >= 0) {
      this.cursor = (best + 1) % n;
      return list[best];
    }
    if (fallback && !this.hasEligible) {
      this.cursor = (list.indexOf(fallback) + 1) % n;
      return fallback;
    }
    return undefined;
  }

  /**
   * The data path starts dialing `b`: returns the lease through which it reports the connection (counted as
   * dialing by least-connections until {@link BackendLease.connected}) and gives it back.
   */
  lease(b: Backend): BackendLease {
    return new BackendLease(b, this.evictDrained);
  }

  /**
   * A dial reached the backend: a streak made only of failed dials ends. A streak that includes a failed
   * active check is left alone: a hung process's kernel still completes TCP handshakes, so a dial success
   * proves less than a check failure does, and resetting on it would keep a hung backend out of `down` for
   * as long as clients keep dialing it.
   */
  reportDialSuccess(b: Backend): void {
    if (b.lastFailureKind === 'transport' && b.state !== 'down' && !this.checkFailedInStreak.has(b)) b.consecutiveFailures = 0;
  }

  /**
   * A client dial failed (refused, timeout, reset, no first byte): counts as one transport failure toward
   * `fall` and asks health/ for an immediate re-check.
   */
  reportDialFailure(b: Backend, reason: string): void {
    b.connectFailures.set(reason, (b.connectFailures.get(reason) ?? 0) + 1);
    this.recordFailure(b, 'transport', `connect failed: ${reason}`);
    this.emit('recheck', b);
  }

  /**
   * The data path suspects `b` without proof (a first-byte timeout: any client can make one look likely):
   * counted under `reason` and an immediate re-check is asked for, but nothing counts toward `fall`.
   */
  reportSuspect(b: Backend, reason: string): void {
    b.connectFailures.set(reason, (b.connectFailures.get(reason) ?? 0) + 1);
    this.emit('recheck', b);
  }

  /** Feeds one active check result into the state machine. */
  reportCheck(b: Backend, r: CheckResult): void {
    const rec: CheckRecord = { result: r.ok ? 'ok' : r.kind === 'status' ? 'status' : 'error', latencyMs: r.latencyMs, at: this.clock.now() };
    if ('status' in r && r.status !== undefined) rec.status = r.status;
    if (!r.ok && r.error) rec.error = r.error;
    b.lastCheck = rec;
    b.checkCounts[rec.result]++;
    // Out of file descriptors or memory here: recorded and counted, but not held against the backend.
    if (!r.ok && r.kind === 'transport' && r.local) return;
    if (r.ok) {
      this.checkFailedInStreak.delete(b);
      b.consecutiveFailures = 0;
      b.lastFailureKind = undefined;
      b.consecutiveSuccesses++;
      // From unknown one success is enough: the backend was eligible already and startup must be fast.
      if (b.state === 'unknown' || (b.state !== 'up' && b.consecutiveSuccesses >= this.rise)) {
        this.transition(b, 'up', b.state === 'unknown' ? 'first check passed' : `${b.consecutiveSuccesses} checks passed`);
      }
      return;
    }
    const reason = r.kind === 'status' ? `health check answered ${r.status}${r.error ? `: ${r.error}` : ''}` : `health check failed: ${r.error}`;
    this.recordFailure(b, r.kind, reason);
    if (r.kind === 'transport') this.checkFailedInStreak.add(b);
  }

  /** Forces a state (operator action, tests). */
  markDown(b: Backend, reason: string): void {
    this.transition(b, 'down', reason);
  }

  private recordFailure(b: Backend, kind: 'transport' | 'status', reason: string): void {
    b.consecutiveSuccesses = 0;
    // A different failure kind starts a new streak: "answers 500" and "unreachable" are different diagnoses.
    if (b.lastFailureKind !== kind) {
      b.consecutiveFailures = 0;
      this.checkFailedInStreak.delete(b);
    }
    b.lastFailureKind = kind;
    b.consecutiveFailures++;
    if (b.consecutiveFailures < this.fall) return;
    if (kind === 'transport' && b.state !== 'down') this.transition(b, 'down', reason);
    else if (kind === 'status' && (b.state === 'up' || b.state === 'unknown')) this.transition(b, 'draining', reason);
  }

  private transition(b: Backend, to: BackendState, reason: string): void {
    const from = b.state;
    if (from === to) return;
    b.state = to;
    b.since = this.clock.now();
    b.reason = reason;
    b.transitions.set(to, (b.transitions.get(to) ?? 0) + 1);
    this.emit('transition', { backend: b, from, to, reason });
    this.updatePanic();
  }

  private updatePanic(): void {
    const now = this.list.some((b) => !b.removed) && !this.hasEligible;
    if (now !== this.panicking) {
      this.panicking = now;
      this.emit('panic', { active: now });
    }
  }
}

function positiveInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new OptionError(name, `must be an integer ≥ 1, got ${v}`);
  return v;
}
