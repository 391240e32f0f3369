/**
 * File descriptors bound how many connections apilb can really hold. When accept() fails for lack of them, libuv
 * accepts and closes the pending connections itself (its EMFILE trick) without telling Node: the clients are
 * dropped with no error event, nothing counted, nothing logged. So apilb never lets it come to that: the
 * connection limit is capped at what the descriptor limit allows, and the excess is refused by apilb itself,
 * counted (`rejected{reason=max_connections}`) and logged.
 */
import { readFileSync } from 'node:fs';

/**
 * Descriptors kept aside for everything that is not a proxied connection: listeners, health checks (one per
 * backend), admin sockets (at most 64), discovery, the journal, stdio, libuv's own.
 */
export const FD_RESERVE = 192;

/** The soft RLIMIT_NOFILE of this process from /proc/self/limits; undefined when unknown or unlimited. */
export function readOpenFileLimit(read: () => string = () => readFileSync('/proc/self/limits', 'utf8')): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(read());
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Client connections `limit` descriptors can hold: each takes two (client and backend) besides {@link FD_RESERVE}. */
export function connectionsForFdLimit(limit: number): number {
  return Math.max(1, Math.floor((limit - FD_RESERVE) / 2));
}
