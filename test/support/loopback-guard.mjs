/**
 * Loopback guard, preloaded (`--import`) into every test process (tap's `node-arg` in package.json) and, through the
 * NODE_OPTIONS it sets, into every Node.js child those processes start (apilb CLI runs, stand-ins). It enforces the
 * project rule "traffic stays on this machine": a TCP/TLS connect (net.Socket#connect, which net.connect,
 * tls.connect, http/https and undici all go through) or a UDP send/connect to an address outside 127.0.0.0/8 and
 * ::1 (also ::ffff:127.x, 0.0.0.0 and ::, which the kernel routes to this host) fails before any packet leaves:
 * the socket is destroyed with an ELOOPBACKGUARD error naming the address, the violation is printed on stderr and
 * appended to a log file shared by the process tree, and the test process that started the tree exits 1 when the
 * log is not empty, so tap fails the test file even when the code under test swallowed the error (as apilb does
 * with a failed backend dial). Host names are resolved with the socket's own lookup, then checked; Unix sockets
 * are not touched.
 *
 * Allowed without checks: processes in a network namespace other than the test process's (the namespaces and
 * containers tests create: failover-netns-child.ts, `unshare -n`), and processes started with
 * LOOPBACK_GUARD=off (only the npm registry client runs of the packaging tests set it).
 *
 * Plain JavaScript (not TypeScript): it must load in `node dist/cli.js` children that have no TypeScript loader.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import { appendFileSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const MARK = Symbol.for('apilb.loopbackGuard');
/** Error code of a refused connect. */
export const GUARD_CODE = 'ELOOPBACKGUARD';
const LOG_ENV = 'LOOPBACK_GUARD_LOG';
const NETNS_ENV = 'LOOPBACK_GUARD_NETNS';

const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('0.0.0.0', 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addAddress('::', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

/** True when `address` is an IP literal on this host (see the module comment). Host names are false. */
export function isLoopback(address) {
  const family = net.isIP(address);
  if (family === 0) return false;
  return LOOPBACK.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

function currentNetns() {
  try {
    return readlinkSync('/proc/self/ns/net');
  } catch {
    return 'unknown';
  }
}

/** The guard's error; also recorded in the shared log. */
function violation(kind, address, port) {
  const err = new Error(
    `loopback guard: ${kind} to ${address}${port === undefined ? '' : ` port ${port}`} refused in pid ${process.pid} ` +
      `(${(process.argv.slice(1).join(' ') || process.execArgv.join(' ')).slice(0, 200)}): tests must never connect to a non-loopback address; ` +
      'use a loopback stand-in or inject a dialer/resolver',
  );
  err.code = GUARD_CODE;
  const line = `${err.message}\n${(err.stack ?? '').split('\n').slice(2, 8).join('\n')}\n`;
  process.stderr.write(`${line}\n`);
  const log = process.env[LOG_ENV];
  if (log) {
    try {
      appendFileSync(log, line);
    } catch {
      // The test process already exited and removed the log: the stderr line above is all that is left.
    }
  }
  return err;
}

/** Wraps a socket's lookup so every resolved address is checked before the connect. */
function guardedLookup(original, port) {
  return function loopbackGuardLookup(host, options, callback) {
    original(host, options, (err, address, family) => {
      if (err) return callback(err, address, family);
      const list = Array.isArray(address) ? address.map((a) => a.address) : [address];
      const bad = list.find((a) => !isLoopback(a));
      if (bad !== undefined) return callback(violation(`connect (${host})`, bad, port));
      callback(err, address, family);
    });
  };
}

function install() {
  const originalConnect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function loopbackGuardConnect(...args) {
    // net.connect/tls.connect/http hand over their already normalized [options, callback] array.
    const normalized = Array.isArray(args[0]) ? args[0] : undefined;
    let options = normalized ? normalized[0] : args[0];
    if (typeof options !== 'object' || options === null) {
      options =
        typeof options === 'string' && !/^\d+$/.test(options) ? { path: options } : { port: options, host: typeof args[1] === 'string' ? args[1] : undefined };
    }
    if (!options.path && options.fd == null) {
      const host = options.host || 'localhost'; // as net does: no (or an empty) host is localhost
      if (net.isIP(host) !== 0) {
        if (!isLoopback(host)) {
          const err = violation('connect', host, options.port);
          // Like a failed connect: asynchronous, no handle, no packet. The callback is a 'connect' listener: not called.
          process.nextTick(() => this.destroy(err));
          return this;
        }
      } else if (host !== 'localhost') {
        const checked = { ...options, lookup: guardedLookup(options.lookup ?? dns.lookup, options.port) };
        if (normalized) normalized[0] = checked;
        else return originalConnect.call(this, checked, ...args.filter((a) => typeof a === 'function'));
      }
    }
    return originalConnect.apply(this, args);
  };

  const check = (kind, address, port) => {
    if (typeof address === 'string' && address !== 'localhost' && !isLoopback(address)) throw violation(kind, address, port);
  };
  const originalSend = dgram.Socket.prototype.send;
  dgram.Socket.prototype.send = function loopbackGuardSend(msg, ...rest) {
    const i = rest.findIndex((a) => typeof a === 'string');
    if (i > 0) check('UDP send', rest[i], rest[i - 1]);
    return originalSend.call(this, msg, ...rest);
  };
  const originalUdpConnect = dgram.Socket.prototype.connect;
  dgram.Socket.prototype.connect = function loopbackGuardUdpConnect(port, address, ...rest) {
    check('UDP connect', address, port);
    return originalUdpConnect.call(this, port, address, ...rest);
  };
}

/** Violations recorded so far in this process tree (one entry per refused connect, children included). */
export function violations() {
  const log = process.env[LOG_ENV];
  if (!log) return [];
  try {
    return readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('loopback guard: '));
  } catch {
    return [];
  }
}

/** Forgets the recorded violations (the guard's own test provokes some on purpose). */
export function forgetViolations() {
  const log = process.env[LOG_ENV];
  if (log) writeFileSync(log, '');
}

/** True when the guard checks this process's connects. */
export const active = (globalThis[MARK] ??= setup());

function setup() {
  if (process.env.LOOPBACK_GUARD === 'off') return false;
  const netns = currentNetns();
  if (process.env[NETNS_ENV] === undefined) {
    // The first guarded process of the tree (a tap test process): owns the log and passes the guard on.
    process.env[NETNS_ENV] = netns;
    const log = join(tmpdir(), `apilb-loopback-guard-${process.pid}.log`);
    writeFileSync(log, '');
    process.env[LOG_ENV] = log;
    const self = `--import=${import.meta.url}`;
    if (!(process.env.NODE_OPTIONS ?? '').includes(self)) process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} ${self}`.trim();
    process.on('exit', () => {
      const seen = violations();
      rmSync(log, { force: true });
      if (seen.length > 0) {
        process.stderr.write(`loopback guard: ${seen.length} connect(s) to non-loopback addresses:\n${seen.join('\n')}\n`);
        process.exitCode = 1;
      }
    });
  } else if (process.env[NETNS_ENV] !== netns) {
    return false; // a network namespace or container the tests created: its addresses are its own
  }
  install();
  return true;
}
