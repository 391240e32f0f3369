/**
 * Parsers for the value types operators write: durations (`250ms`, `2s`, `1m`) and addresses (`HOST:PORT`,
 * `[v6]:PORT`). They return `undefined`-free results or throw a plain message; config/ turns that into a
 * ConfigError with the field's path.
 */
import { isIP } from 'node:net';

/** A parsed `HOST:PORT`. `host` holds IPv6 literals without brackets. */
export interface Address {
  host: string;
  port: number;
}

const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Parses a duration like `250ms`, `2s`, `1.5s`, `1m`, `1h` into milliseconds. `0` (bare) means zero.
 * Throws a message naming the accepted forms on anything else (negative values included).
 */
export function parseDuration(text: string): number {
  const s = String(text).trim();
  if (s === '0') return 0;
  if (s.startsWith('-')) throw new Error(`"${s}" is negative: a duration is 0 or more, like 250ms, 2s or 1m`);
  const m = DURATION_RE.exec(s);
  if (!m) throw new Error(`"${s}" is not a duration: write a number with a unit, like 250ms, 2s, 1m or 1h`);
  const ms = Number(m[1]) * UNIT_MS[m[2]!]!;
  if (!Number.isFinite(ms)) throw new Error(`"${s}" is too large`);
  return Math.round(ms);
}

/** Formats milliseconds back into the shortest exact duration string (`1500` → `1500ms`, `2000` → `2s`). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

const HOSTNAME_RE = /^(?=.{1,253}$)([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*\.?$/;

/**
 * Parses `HOST:PORT` or `[IPv6]:PORT`. HOST is an IPv4 literal, a bracketed IPv6 literal or a DNS name.
 * `allowPortZero` lets listeners ask the kernel for a free port (tests); backends never allow it.
 */
export function parseAddress(text: string, opts: { allowPortZero?: boolean } = {}): Address {
  const s = String(text).trim();
  let host: string;
  let portText: string;
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    if (end < 0 || s[end + 1] !== ':') throw new Error(`"${s}" is not HOST:PORT (IPv6 is written [::1]:6443)`);
    host = s.slice(1, end);
    portText = s.slice(end + 2);
    if (isIP(host) !== 6) throw new Error(`"${host}" in "${s}" is not an IPv6 address`);
  } else {
    const idx = s.lastIndexOf(':');
    if (idx <= 0) throw new Error(`"${s}" is not HOST:PORT (for example 10.0.0.1:6443)`);
    host = s.slice(0, idx);
    portText = s.slice(idx + 1);
    if (host.includes(':')) {
      // `fe80::1:6443` could be an address with a port or a longer address without one: ask for brackets, and
      // suggest the reading with a port unless that leaves no valid address (`::1` alone).
      const hint = isIP(host) === 6 && /^\d{1,5}$/.test(portText) ? `[${host}]:${portText}` : `[${s}]:6443`;
      throw new Error(`"${s}" looks like an IPv6 address: write it in brackets with a port, like ${hint}`);
    }
    if (isIP(host) !== 4 && /^[\d.]+$/.test(host)) throw new Error(`"${host}" in "${s}" is not a valid IPv4 address`);
    if (isIP(host) !== 4 && !HOSTNAME_RE.test(host)) throw new Error(`"${host}" in "${s}" is neither an IP address nor a host name`);
  }
  if (!/^\d{1,5}$/.test(portText)) throw new Error(`port "${portText}" in "${s}" is not a number`);
  const port = Number(portText);
  const min = opts.allowPortZero ? 0 : 1;
  if (port < min || port > 65535) throw new Error(`port ${port} in "${s}" is out of range (${min}-65535)`);
  return { host, port };
}

/** Formats an address as operators write it: `1.2.3.4:6443`, `[::1]:6443`, `api.example:6443`. */
export function formatAddress(a: Address): string {
  return isIP(a.host) === 6 ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
