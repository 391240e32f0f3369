/**
 * Rebalancing decisions: which open connections to move (close, so the client reconnects through the pick policy)
 * so that long-lived connections spread evenly over the eligible backends again, e.g. after a rolling upgrade left
 * the last-upgraded API server with none. Pure: it reads backends and per-connection timestamps and returns a plan;
 * src/proxy/rebalancer.ts runs it on a timer and closes what it returns. Knows nothing about sockets.
 */
import type { Backend } from './backend.js';

/** What the decision needs to know about one open connection (src/proxy/connection.ts keeps these fields). */
export interface MoveCandidate {
  /** Epoch ms the client connection was accepted. */
  readonly openedAt: number;
  /** Epoch ms of the last bytes read from the client; 0: none. */
  readonly lastClientByteAt: number;
  /** Epoch ms of the last bytes read from the backend; 0: none. */
  readonly lastServerByteAt: number;
  /** True when the latest bytes went backend → client. */
  readonly serverSpokeLast: boolean;
}

/** Limits of one round. Durations in ms, fractions in 0..1. */
export interface RebalancePolicy {
  /** Shares are even enough when every eligible backend is within this fraction of the fair share (e.g. 0.2). */
  tolerance: number;
  /** At most this fraction of the node's connections move per round; at least one does when any should. */
  maxMovesFraction: number;
  /** A connection younger than this is never moved. 0: any age. */
  minAge: number;
  /** A connection is moved only after this long without bytes either way, the last ones from the backend. */
  quiet: number;
}

/** Why a round moved nothing (label values of the rebalancer's round counter; one list for types and labels). */
export const REBALANCE_OUTCOMES = ['moved', 'balanced', 'panic', 'draining', 'no_quiet_connection'] as const;
/** One of {@link REBALANCE_OUTCOMES}. */
export type RebalanceOutcome = (typeof REBALANCE_OUTCOMES)[number];

/** One planned move. */
export interface Move<C> {
  connection: C;
  from: Backend;
  /** The least loaded backend when the plan was made; the reconnect goes wherever the pick policy sends it. */
  to: Backend;
}

/** The result of {@link planRebalance}. */
export interface RebalancePlan<C> {
  outcome: RebalanceOutcome;
  moves: Move<C>[];
}

/** Inputs of {@link planRebalance}. */
export interface RebalanceInput<C extends MoveCandidate> {
  backends: readonly Backend[];
  panic: boolean;
  /** Established connections of `b` that could be moved (the caller filters out ones still dialing). */
  connectionsOf: (b: Backend) => Iterable<C>;
  now: number;
}

/**
 * True when `c` may be closed now: old enough, quiet for `policy.quiet` in both directions, and the backend spoke
 * last, on its own: at least `policy.quiet` after the client's last bytes. A client that sent bytes and got nothing
 * back yet may be waiting for an answer (a request in flight), so such a connection is never moved. Bytes the
 * server sends right after the client's are not taken as an answer: they may be a reaction of the protocol below
 * the request (TLS 1.3 sends its session tickets just after the client's first request arrived; HTTP/2
 * acknowledges SETTINGS and PINGs), so a connection is moved only once the server spoke again later (a watch event,
 * a bookmark). A connection that never carried server bytes is not moved either.
 */
export function isMovable(c: MoveCandidate, now: number, policy: RebalancePolicy): boolean {
  if (now - c.openedAt < policy.minAge) return false;
  if (!c.serverSpokeLast || c.lastServerByteAt === 0) return false;
  if (c.lastServerByteAt - c.lastClientByteAt < policy.quiet) return false;
  return now - c.lastServerByteAt >= policy.quiet;
}

/**
 * True while shares are uneven: the most and least loaded differ by at least 2 (moving one helps) and one of them
 * is outside fair share ± tolerance.
 */
export function isUneven(max: number, min: number, fair: number, tolerance: number): boolean {
  return max - min >= 2 && (max > fair * (1 + tolerance) || min < fair * (1 - tolerance));
}

/**
 * True while `b` drains: `draining` or removed, with connections left. Its clients are about to reconnect anyway,
 * and shares measured now would be wrong a moment later. One whose connections are all gone (its drain timeout
 * closed them, or it never had any) no longer counts: a backend that stays `draining` for good (e.g. its /readyz
 * refuses apilb's credentials) must not stop rebalancing forever.
 */
export function isDraining(b: Backend): boolean {
  return (b.state === 'draining' || b.removed) && b.activeConnections > 0;
}

/**
 * Plans one round. Nothing moves in panic or while any backend drains ({@link isDraining}).
 * Backends that are down are left out (they take no connections); shares are over the eligible ones. Each move
 * takes the oldest movable connection of the most loaded backend that still has one (and is above the fair share)
 * and counts it towards the least loaded, until shares are within the tolerance or the round's budget is spent.
 */
export function planRebalance<C extends MoveCandidate>(input: RebalanceInput<C>, policy: RebalancePolicy): RebalancePlan<C> {
  if (input.panic) return { outcome: 'panic', moves: [] };
  if (input.backends.some(isDraining)) return { outcome: 'draining', moves: [] };
  const eligible = input.backends.filter((b) => b.eligible);
  if (eligible.length < 2) return { outcome: 'balanced', moves: [] };
  const count = new Map<Backend, number>(eligible.map((b) => [b, b.activeConnections]));
  let total = 0;
  for (const n of count.values()) total += n;
  const fair = total / eligible.length;
  const budget = Math.max(1, Math.floor(policy.maxMovesFraction * total));
  const pools = new Map<Backend, C[]>();
  const moves: Move<C>[] = [];
  const exhausted = new Set<Backend>();
  let blocked = false;
  while (moves.length < budget) {
    let to = eligible[0]!;
    let from: Backend | undefined;
    for (const b of eligible) {
      if (count.get(b)! < count.get(to)!) to = b;
      if (!exhausted.has(b) && (from === undefined || count.get(b)! > count.get(from)!)) from = b;
    }
    // Only a backend above the fair share gives: one with nothing movable must not make another one give more.
    if (from === undefined || count.get(from)! <= fair || !isUneven(count.get(from)!, count.get(to)!, fair, policy.tolerance)) break;
    let list = pools.get(from);
    if (!list) {
      list = [...input.connectionsOf(from)].filter((c) => isMovable(c, input.now, policy)).sort((a, b) => a.openedAt - b.openedAt);
      // Popped from the end: oldest last.
      list.reverse();
      pools.set(from, list);
    }
    const c = list.pop();
    if (c === undefined) {
      exhausted.add(from);
      blocked = true;
      continue;
    }
    moves.push({ connection: c, from, to });
    count.set(from, count.get(from)! - 1);
    count.set(to, count.get(to)! + 1);
  }
  if (moves.length > 0) return { outcome: 'moved', moves };
  return { outcome: blocked ? 'no_quiet_connection' : 'balanced', moves: [] };
}

/**
 * Each backend's share of the node's open proxied connections, 0..1 (all 0 when none is open). Read by metrics/
 * and /status; the same counts {@link planRebalance} balances.
 */
export function connectionShare(backends: readonly Backend[], b: Backend): number {
  let total = 0;
  for (const x of backends) total += x.activeConnections;
  return total === 0 ? 0 : b.activeConnections / total;
}
