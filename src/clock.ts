/**
 * Time as an injectable dependency: components take a Clock so tests can drive timers deterministically.
 */

/** Opaque timer handle returned by {@link Clock.setTimeout}. */
export type TimerHandle = { unref?: () => unknown } | number | object;

/** What components need of time. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
}

/** The real clock. Timers are unref'd: apilb's liveness comes from its sockets, never from a pending timer. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout(handle) {
    if (handle !== undefined) clearTimeout(handle as NodeJS.Timeout);
  },
};

/** Returns `ms` jittered uniformly by ±`fraction` (default ±10%). 0 stays 0. */
export function jitter(ms: number, fraction = 0.1, random: () => number = Math.random): number {
  if (ms <= 0) return 0;
  return Math.max(1, Math.round(ms * (1 - fraction + 2 * fraction * random())));
}
