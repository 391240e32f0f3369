/**
 * Socket activation (`sd_listen_fds(3)`): listening sockets passed in by systemd (apilb.socket) or any parent
 * speaking the same protocol.
 *
 * Contract, as systemd implements it: the sockets are fds 3, 4, … 3+N-1 where N = `LISTEN_FDS`, valid only when
 * `LISTEN_PID` is our PID (otherwise they were meant for a parent that exec'd us without cleaning up);
 * `LISTEN_FDNAMES` optionally names them, colon-separated, from the socket unit's `FileDescriptorName=` (default
 * the socket unit's name, e.g. `apilb.socket`). The variables are removed from the environment once read, so a
 * process we start never mistakes our sockets for its own.
 *
 * How apilb maps them: an fd named {@link ADMIN_FD_NAME} serves the admin endpoint; every other fd is a client
 * listener, replacing `--listen` entirely (in fd order). While the socket unit holds the listeners, a restart of
 * apilb.service leaves them open: new connections wait in the kernel's accept queue until the new process accepts
 * them, instead of being refused.
 */
import { fstatSync } from 'node:fs';
import type { Server } from 'node:net';
import { ApilbError, OptionError } from '../errors.js';
import { createListener } from '../proxy/listen.js';

/** First passed fd (`SD_LISTEN_FDS_START`). */
export const LISTEN_FDS_START = 3;

/** `FileDescriptorName=` that routes a passed socket to the admin endpoint instead of the data path. */
export const ADMIN_FD_NAME = 'admin';

/** One passed socket. */
export interface ListenFd {
  /** The fd number (3 and up). */
  fd: number;
  /** Its `LISTEN_FDNAMES` entry; `unknown` when no names were passed (as `sd_listen_fds_with_names` does). */
  name: string;
}

/** A passed socket with the server now listening on it. */
export interface ActivatedListener extends ListenFd {
  server: Server;
}

/**
 * Reads the sockets passed by socket activation from `env` (default `process.env`). Returns [] when `LISTEN_PID`
 * is unset or is not `pid` (default `process.pid`), or `LISTEN_FDS` is unset or 0. Always deletes `LISTEN_PID`,
 * `LISTEN_FDS` and `LISTEN_FDNAMES` from `env`. Throws APILB_ERR_SYSTEMD when the variables are malformed, the
 * name count does not match, or a passed fd is not a socket.
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): ListenFd[] {
  const pidText = env.LISTEN_PID;
  const countText = env.LISTEN_FDS;
  const namesText = env.LISTEN_FDNAMES;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (pidText === undefined || pidText === '') return [];
  if (!/^\d+$/.test(pidText)) throw new ApilbError('APILB_ERR_SYSTEMD', `LISTEN_PID=${JSON.stringify(pidText)} is not a PID`);
  if (Number(pidText) !== pid) return [];
  if (countText === undefined || countText === '') return [];
  if (!/^\d+$/.test(countText)) throw new ApilbError('APILB_ERR_SYSTEMD', `LISTEN_FDS=${JSON.stringify(countText)} is not a count`);
  const count = Number(countText);
  if (count === 0) return [];
  let names: string[];
  if (namesText === undefined) {
    names = new Array<string>(count).fill('unknown');
  } else {
    names = namesText.split(':');
    if (names.length !== count) {
      throw new ApilbError('APILB_ERR_SYSTEMD', `LISTEN_FDNAMES has ${names.length} names for LISTEN_FDS=${count}`);
    }
  }
  const fds: ListenFd[] = [];
  for (let i = 0; i < count; i++) {
    const fd = LISTEN_FDS_START + i;
    let isSocket: boolean;
    try {
      isSocket = fstatSync(fd).isSocket();
    } catch (err) {
      throw new ApilbError('APILB_ERR_SYSTEMD', `LISTEN_FDS=${count} but fd ${fd} is not open`, { cause: err });
    }
    if (!isSocket) throw new ApilbError('APILB_ERR_SYSTEMD', `LISTEN_FDS=${count} but fd ${fd} is not a socket`);
    fds.push({ fd, name: names[i]! });
  }
  return fds;
}

/**
 * Starts a server on each passed fd. `create` makes the (not yet listening) server; default
 * {@link createListener}, the data path's listener. `backlog` (default 4096, the shipped socket unit's
 * `Backlog=`; capped by the kernel at `net.core.somaxconn`) is re-applied because listening again is how Node
 * adopts the fd, and the kernel replaces the socket's backlog with it; 0 or negative is rejected. Rejects with APILB_ERR_SYSTEMD (after closing the servers it opened) when an fd cannot be used
 * (e.g. a datagram socket).
 */
export async function listenOnFds(fds: readonly ListenFd[], create: () => Server = createListener, backlog = 4096): Promise<ActivatedListener[]> {
  if (!Number.isInteger(backlog) || backlog <= 0) {
    throw new OptionError('backlog', `must be a positive integer, got ${backlog}`);
  }
  const out: ActivatedListener[] = [];
  try {
    for (const { fd, name } of fds) {
      const server = create();
      await listenOnFd(server, fd, name, backlog);
      out.push({ fd, name, server });
    }
  } catch (err) {
    await Promise.all(out.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))));
    throw err;
  }
  return out;
}

function listenOnFd(server: Server, fd: number, name: string, backlog: number): Promise<void> {
  return new Promise((resolve, reject) => {
    function onFdListenError(err: Error): void {
      server.off('listening', onFdListening);
      reject(new ApilbError('APILB_ERR_SYSTEMD', `cannot serve on passed fd ${fd} (${name}): ${err.message}`, { cause: err }));
    }
    function onFdListening(): void {
      server.off('error', onFdListenError);
      resolve();
    }
    server.once('error', onFdListenError);
    server.once('listening', onFdListening);
    try {
      // The backlog goes in as the second argument: listen({ fd, backlog }) ignores the options' backlog for an
      // fd (Node 20 and 24 alike) and listens with 511, shrinking apilb.socket's Backlog=. listen(2) on an
      // already-listening socket just updates its backlog, so this keeps the unit's value (up to somaxconn).
      server.listen({ fd }, backlog);
    } catch (err) {
      server.off('error', onFdListenError);
      server.off('listening', onFdListening);
      reject(new ApilbError('APILB_ERR_SYSTEMD', `cannot serve on passed fd ${fd} (${name}): ${(err as Error).message}`, { cause: err }));
    }
  });
}

/** Splits passed sockets into client listeners and admin sockets (named {@link ADMIN_FD_NAME}), keeping order. */
export function splitListenFds<T extends ListenFd>(fds: readonly T[]): { listeners: T[]; admin: T[] } {
  return {
    listeners: fds.filter((f) => f.name !== ADMIN_FD_NAME),
    admin: fds.filter((f) => f.name === ADMIN_FD_NAME),
  };
}
