/**
 * Runs rebalancing rounds on a jittered timer: asks src/pool/rebalance.ts which connections to move and closes
 * them (reason `rebalance`); the clients reconnect and the pool's pick policy sends them to the least loaded
 * backend. Keeps plain counters for metrics/ and emits events; never touches metrics or the logger itself.
 */
import { EventEmitter } from 'node:events';
import { jitter, type Clock, type TimerHandle } from '../clock.js';
import { OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import { planRebalance, type RebalanceOutcome, type RebalancePlan, type RebalancePolicy } from '../pool/rebalance.js';
import type { Connection } from './connection.js';
import type { TcpProxy } from './proxy.js';

/** Options of {@link Rebalancer}. Durations in ms. */
export interface RebalancerOptions {
  proxy: TcpProxy;
  /** Time between rounds, jittered ±50% each round. Default 10000; must be > 0. */
  interval?: number;
  /** Fraction of the fair share a backend may be off by. Default 0.2; must be in (0, 1]. */
  tolerance?: number;
  /** Fraction of the node's connections moved per round at most (at least one). Default 0.1; in (0, 1]. */
  maxMovesFraction?: number;
  /** Connections younger than this are never moved. Default 30000; 0 = any age. */
  minAge?: number;
  /** Quiet time needed in both directions, the backend having spoken last. Default 1000; must be > 0. */
  quiet?: number;
  /** Default: the proxy's clock. */
  clock?: Clock;
  /** For the jitter. Default Math.random. */
  random?: () => number;
}

/** Events of {@link Rebalancer}. */
export interface RebalancerEvents {
  /** One round ran; `moves` connections were closed. */
  round: [{ outcome: RebalanceOutcome; moves: number }];
  /** A connection to `from` was closed to be re-opened elsewhere; `to` was the least loaded backend then. */
  move: [{ from: Backend; to: Backend }];
}

/** Paced, jittered rebalancing over a {@link TcpProxy}'s connections. */
export class Rebalancer extends EventEmitter<RebalancerEvents> {
  readonly proxy: TcpProxy;
  readonly interval: number;
  readonly policy: Readonly<RebalancePolicy>;
  /** Connections moved, by backend id they were moved off (read by metrics/ at scrape time). */
  readonly moved = new Map<string, number>();
  /** Rounds by outcome (read by metrics/ at scrape time). */
  readonly rounds = new Map<RebalanceOutcome, number>();
  private readonly clock: Clock;
  private readonly random: () => number;
  private timer: TimerHandle | undefined;

  constructor(options: RebalancerOptions) {
    super();
    if (!options || !options.proxy) throw new OptionError('proxy', 'is required');
    this.proxy = options.proxy;
    this.interval = atLeast('interval', options.interval ?? 10_000, 1);
    this.policy = {
      tolerance: fraction('tolerance', options.tolerance ?? 0.2),
      maxMovesFraction: fraction('maxMovesFraction', options.maxMovesFraction ?? 0.1),
      minAge: atLeast('minAge', options.minAge ?? 30_000, 0),
      quiet: atLeast('quiet', options.quiet ?? 1000, 1),
    };
    this.clock = options.clock ?? this.proxy.clock;
    this.random = options.random ?? Math.random;
    this.tick = this.tick.bind(this);
    this.onEvicted = this.onEvicted.bind(this);
    this.proxy.pool.on('evicted', this.onEvicted);
  }

  /** Starts the rounds (the first after a jittered interval). Idempotent. */
  start(): void {
    if (this.timer === undefined) this.schedule();
  }

  /** Stops the rounds (start() resumes them). */
  stop(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Stops for good and lets go of the pool. */
  close(): void {
    this.stop();
    this.proxy.pool.off('evicted', this.onEvicted);
  }

  /** A backend left the pool: its move counter goes with it (its metric series disappears). */
  private onEvicted(b: Backend): void {
    this.moved.delete(b.id);
  }

  /** Runs one round now: plans and closes. Returns the plan (for tests). */
  runOnce(): RebalancePlan<Connection> {
    const pool = this.proxy.pool;
    const plan = planRebalance({ backends: pool.backends, panic: pool.panic, connectionsOf: (b) => this.establishedOf(b), now: this.clock.now() }, this.policy);
    this.rounds.set(plan.outcome, (this.rounds.get(plan.outcome) ?? 0) + 1);
    for (const m of plan.moves) {
      this.moved.set(m.from.id, (this.moved.get(m.from.id) ?? 0) + 1);
      m.connection.destroy('rebalance');
      this.emit('move', { from: m.from, to: m.to });
    }
    this.emit('round', { outcome: plan.outcome, moves: plan.moves.length });
    return plan;
  }

  /** Established (piping) connections of `b`: the candidates; the plan decides which are movable. */
  private *establishedOf(b: Backend): Iterable<Connection> {
    for (const c of this.proxy.connectionsTo(b)) if (c.phase === 'piping' && c.backend === b) yield c;
  }

  private schedule(): void {
    // ±50% per round: nodes that saw the same backend come back at the same moment drift apart.
    this.timer = this.clock.setTimeout(this.tick, jitter(this.interval, 0.5, this.random));
  }

  private tick(): void {
    this.timer = undefined;
    this.runOnce();
    this.schedule();
  }
}

function atLeast(name: string, v: number, min: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new OptionError(name, `must be a number ≥ ${min}, got ${v}`);
  return v;
}

function fraction(name: string, v: number): number {
  if (typeof v !== 'number' || !(v > 0 && v <= 1)) throw new OptionError(name, `must be a fraction in (0, 1], got ${v}`);
  return v;
}
