/**
 * Parsers for the value types operators write: Go durations (`250ms`, `1.5s`, `1m30s`) and addresses (`HOST:PORT`,
 * `[v6]:PORT`). They return `undefined`-free results or throw a plain message; config/ turns that into a
 * ConfigError with the field's path.
 */
import { isIP } from 'node:net';

/** A parsed `HOST:PORT`. `host` holds IPv6 literals without brackets. */
export interface Address {
  host: string;
  port: number;
}

/** Go's duration units (time.ParseDuration), in milliseconds. */
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
/** One `<number><unit>` term of a Go duration; a duration is one or more of them (`1h2m3.5s`). */
const TERM_RE = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;
/**
 * Largest duration apilb accepts: Node's timers hold at most 2³¹−1 ms (about 24.8 days); a longer one fires
 * after 1 ms instead, so `1000h` would mean "at once".
 */
export const MAX_DURATION_MS = 2 ** 31 - 1;
/** The examples every duration message names. */
const DURATION_EXAMPLES = 'like 500ms, 2s, 1.5s or 1m30s';

/**
 * Parses a Go-style duration (`time.ParseDuration`: `250ms`, `1.5s`, `1m30s`, `1h2m3.5s`; units ns, us/µs, ms,
 * s, m, h) into whole milliseconds. `0` (bare) means zero. A positive value below 1 ms counts as 1 ms (never
 * silently 0). Throws a message naming the accepted forms on anything else: negative values (`-1s`) get one
 * message in every spelling, and values above {@link MAX_DURATION_MS} are refused rather than wrapped.
 */
export function parseDuration(text: string): number {
  const s = String(text).trim();
  const negative = s.startsWith('-');
  const body = s.startsWith('-') || s.startsWith('+') ? s.slice(1) : s;
  if (body === '0') return 0;
  // `-1s`, `-1`, `-1.5m`: any negative number gets the negative message, valid duration or not.
  if (negative && /^[\d.]*[1-9]/.test(body)) throw negativeDuration(s);
  const notDuration = () => new Error(`"${s}" is not a duration: write a number with a unit, ${DURATION_EXAMPLES} (units ns, us, ms, s, m, h)`);
  if (body === '') throw notDuration();
  let ms = 0;
  let pos = 0;
  while (pos < body.length) {
    TERM_RE.lastIndex = pos;
    const m = TERM_RE.exec(body);
    if (!m) throw notDuration();
    ms += Number(m[1]) * UNIT_MS[m[2]!]!;
    pos = TERM_RE.lastIndex;
  }
  if (negative && ms > 0) throw negativeDuration(s);
  if (!Number.isFinite(ms) || ms > MAX_DURATION_MS) throw tooLongDuration(s);
  return ms > 0 && ms < 0.5 ? 1 : Math.round(ms);
}

/** The one message for a negative duration, whatever its spelling (`-1s`, `-0.5m`, YAML `-3`). */
export function negativeDuration(shown: string): Error {
  return new Error(`"${shown}" is negative: a duration is 0 or more, ${DURATION_EXAMPLES}`);
}

function tooLongDuration(shown: string): Error {
  return new Error(`"${shown}" is too long: the longest duration is ${formatDuration(MAX_DURATION_MS)} (Node's timer limit, about 24.8 days)`);
}

/**
 * Formats milliseconds as the shortest Go-style duration that parses back to the same value
 * (`1500` → `1.5s`, `90000` → `1m30s`, `250` → `250ms`, `0` → `0`).
 */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  if (ms < 1000) return `${ms}ms`;
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const rest = ms % 60_000;
  return (h ? `${h}h` : '') + (m ? `${m}m` : '') + (rest ? `${rest / 1000}s` : '');
}

const HOSTNAME_RE = /^(?=.{1,253}$)([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*\.?$/;

/**
 * Parses `HOST:PORT` or `[IPv6]:PORT`. HOST is an IPv4 literal, a bracketed IPv6 literal or a DNS name.
 * `allowPortZero` lets listeners ask the kernel for a free port (tests); backends never allow it. `allowHttpsUrl`
 * (backends) also accepts `https://HOST[:PORT]` (port 443 when absent); any other `scheme://` is refused.
 */
export function parseAddress(text: string, opts: { allowPortZero?: boolean; allowHttpsUrl?: boolean } = {}): Address {
  let s = String(text).trim();
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\//.exec(s);
  if (scheme) {
    // `https://10.0.0.1:6443` as pasted from a kubeconfig's `server:`; apilb forwards TCP, so only the address counts.
    if (!opts.allowHttpsUrl || scheme[1]!.toLowerCase() !== 'https') {
      throw new Error(`"${s}": scheme "${scheme[1]}" is not supported: write HOST:PORT${opts.allowHttpsUrl ? ' or https://HOST:PORT' : ''}`);
    }
    const rest = s.slice(scheme[0].length).replace(/\/+$/, '');
    if (rest.includes('/') || rest.includes('?') || rest.includes('@')) throw new Error(`"${s}": only https://HOST:PORT is accepted (no path, query or user)`);
    // A URL without a port means 443, as for kubectl.
    s = /^\[.*\]$/.test(rest) || (!rest.includes(':') && rest !== '') ? `${rest}:443` : rest;
  }
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
