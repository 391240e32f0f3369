/**
 * GET /status: a JSON snapshot of the daemon for humans and scripts, and its rendering as a table for
 * `apilb status`. Field names are a contract like metric names: add fields, never rename or remove them.
 */
import { get as httpGet, readBodyText } from '../node-http.js';
import type { CredentialStatus } from '../config/credentials.js';
import { formatAddress, parseAddress, type Address } from '../config/values.js';
import { ApilbError } from '../errors.js';
import type { Backend, BackendSource, BackendState } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import { connectionShare } from '../pool/rebalance.js';
import type { TcpProxy } from '../proxy/proxy.js';
import type { Readiness } from './admin-server.js';

/** The last active check of a backend. */
export interface StatusCheck {
  /** `ok`, `status` (answered, not ready) or `error` (transport failure). */
  result: 'ok' | 'status' | 'error';
  latencyMs: number;
  /** Why it failed; null when it passed. */
  error: string | null;
  /** HTTP status for https checks that got an answer; null otherwise. */
  status: number | null;
  /** ISO time the check completed. */
  at: string;
}

/** One backend in /status. */
export interface StatusBackend {
  /** `HOST:PORT`. */
  address: string;
  state: BackendState;
  /** ISO time the current state began. */
  since: string;
  /** Why the backend entered its current state. */
  reason: string;
  source: BackendSource;
  /** True when new connections may go to it (outside panic mode). */
  eligible: boolean;
  /** True once removed by reload or discovery; it leaves when its last connection closes. */
  removed: boolean;
  /** Null before the first check. */
  lastCheck: StatusCheck | null;
  activeConnections: number;
  /** Share of the node's open proxied connections, 0..1 (what rebalancing evens out). */
  connectionShare: number;
  totalConnections: number;
  /** Failed dials by reason. */
  connectFailures: Record<string, number>;
  /** Health checks by result. */
  checks: { ok: number; status: number; error: number };
  /** State changes by target state. */
  transitions: Record<string, number>;
  /** Bytes carried, including open connections: client→backend and backend→client. */
  bytes: { toBackend: number; toClient: number };
}

/** The /status document. */
export interface StatusDoc {
  version: string;
  pid: number;
  /** ISO time the daemon started. */
  startedAt: string;
  uptimeSeconds: number;
  ready: boolean;
  /** Why (not) ready. */
  readyReason: string;
  /** True while no backend is eligible and every backend is tried (panic mode). */
  panic: boolean;
  /** Client listeners as `HOST:PORT`. */
  listeners: string[];
  /** The admin endpoint as `HOST:PORT`. */
  admin: string;
  /** Open client connections (dialing or proxied). */
  activeConnections: number;
  acceptedConnections: number;
  backends: StatusBackend[];
  /**
   * Health-check credentials: what identity is presented, files that do not exist yet (a bootstrapping node),
   * reloads from disk. Null when the caller gave none.
   */
  credentials: CredentialStatus | null;
}

/** Inputs of {@link buildStatus}. */
export interface StatusInput {
  version: string;
  pool: Pool;
  proxy: TcpProxy;
  readiness: Readiness;
  listeners: string[];
  admin: string;
  /** Epoch ms the daemon started. */
  startedAt: number;
  /** Epoch ms now. */
  now: number;
  /** Default `process.pid`. */
  pid?: number;
  /** Credential watcher state; default null. */
  credentials?: CredentialStatus;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function backendStatus(b: Backend, proxy: TcpProxy, all: readonly Backend[]): StatusBackend {
  const bytes = proxy.bytesFor(b);
  const c = b.lastCheck;
  return {
    address: b.id,
    state: b.state,
    since: iso(b.since),
    reason: b.reason,
    source: b.source,
    eligible: b.eligible,
    removed: b.removed,
    lastCheck: c ? { result: c.result, latencyMs: c.latencyMs, error: c.error ?? null, status: c.status ?? null, at: iso(c.at) } : null,
    activeConnections: b.activeConnections,
    connectionShare: connectionShare(all, b),
    totalConnections: b.totalConnections,
    connectFailures: Object.fromEntries(b.connectFailures),
    checks: { ...b.checkCounts },
    transitions: Object.fromEntries(b.transitions),
    bytes: { toBackend: bytes.fromClient, toClient: bytes.toClient },
  };
}

/** Builds the /status document from the live objects. */
export function buildStatus(input: StatusInput): StatusDoc {
  return {
    version: input.version,
    pid: input.pid ?? process.pid,
    startedAt: iso(input.startedAt),
    uptimeSeconds: Math.max(0, Math.round((input.now - input.startedAt) / 1000)),
    ready: input.readiness.ready,
    readyReason: input.readiness.reason,
    panic: input.pool.panic,
    listeners: input.listeners,
    admin: input.admin,
    activeConnections: input.proxy.activeConnections,
    acceptedConnections: input.proxy.counters.accepted,
    backends: input.pool.backends.map((b) => backendStatus(b, input.proxy, input.pool.backends)),
    credentials: input.credentials ?? null,
  };
}

/** Largest /status answer `apilb status` reads (a document for 64 backends is ~100 KiB). */
export const MAX_STATUS_BYTES = 4 << 20;

// C0 controls, DEL, C1 controls (0x9b is a one-byte CSI) and the bidirectional overrides that reorder text.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
const UNSAFE_IN_JSON = /[\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

/**
 * Makes text that came from elsewhere (a backend's /readyz body, an error message, a discovered address) safe to
 * print on a terminal: every control character is shown escaped (`\x1b`, `\u202e`) instead of being sent raw.
 */
export function terminalSafe(text: string): string {
  return text.replace(UNSAFE, (c) => {
    const n = c.charCodeAt(0);
    return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
  });
}

/** JSON of `doc` with every character {@link terminalSafe} escapes written as a `\uXXXX` escape (still valid JSON). */
export function terminalSafeJson(doc: unknown): string {
  // JSON.stringify already escapes C0 controls inside strings; the ones left are its own indentation newlines.
  return JSON.stringify(doc, null, 2).replace(UNSAFE_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) + '\n';
}

/** `1h02m`, `3m05s`, `42s`: an age for humans. Negative ages (clock skew) print as `0s`. */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

/** `12.3 KiB`-style byte counts. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function table(rows: string[][]): string {
  rows = rows.map((r) => r.map(terminalSafe));
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function checkCell(c: StatusCheck | null): string {
  if (!c) return '-';
  const lat = `${c.latencyMs < 10 ? c.latencyMs.toFixed(1) : Math.round(c.latencyMs)}ms`;
  // 401/403 pass (the backend is alive), but the operator must see that apilb's credentials were refused.
  if (c.result === 'ok') return c.status === 401 || c.status === 403 ? `ok ${c.status} unauthenticated ${lat}` : `ok ${lat}`;
  if (c.result === 'status') return `${c.status ?? 'status'} ${lat}`;
  return `error ${lat}`;
}

/** Renders a /status document as the table `apilb status` prints. `now` (epoch ms) is used for ages. */
export function formatStatus(doc: StatusDoc, now: number): string {
  const head = [
    `apilb ${doc.version} (pid ${doc.pid}), up ${formatAge(doc.uptimeSeconds)}: ${doc.ready ? 'ready' : 'NOT READY'} (${doc.readyReason})`,
    `listeners: ${doc.listeners.join(', ') || '-'}   admin: ${doc.admin}   client connections: ${doc.activeConnections} open, ${doc.acceptedConnections} accepted`,
  ];
  if (doc.panic) head.push('PANIC: no backend is eligible; every backend is tried for each connection');
  if (doc.credentials?.missing.length) head.push(`CREDENTIALS: not there yet (${doc.credentials.identity} in use): ${doc.credentials.missing.join(', ')}`);
  for (let i = 0; i < head.length; i++) head[i] = terminalSafe(head[i]!);
  const rows: string[][] = [['BACKEND', 'STATE', 'FOR', 'CHECK', 'ACTIVE', 'SHARE', 'TOTAL', 'FAILED', 'IN/OUT', 'REASON']];
  for (const b of doc.backends) {
    const failed = Object.values(b.connectFailures).reduce((a, n) => a + n, 0);
    rows.push([
      b.address,
      b.removed ? `${b.state} (removed)` : b.state,
      formatAge((now - Date.parse(b.since)) / 1000),
      checkCell(b.lastCheck),
      String(b.activeConnections),
      `${Math.round(b.connectionShare * 100)}%`,
      String(b.totalConnections),
      String(failed),
      `${formatBytes(b.bytes.toBackend)} / ${formatBytes(b.bytes.toClient)}`,
      b.reason + (b.lastCheck?.error && b.lastCheck.result !== 'ok' && !b.reason.includes(b.lastCheck.error) ? ` (last check: ${b.lastCheck.error})` : ''),
    ]);
  }
  const body = doc.backends.length ? table(rows) : 'no backends';
  return `${head.join('\n')}\n\n${body}\n`;
}

/**
 * Reads GET /status from the admin endpoint at `admin` (`HOST:PORT`; a wildcard host is reached on loopback).
 * Rejects with APILB_ERR_ADMIN_UNREACHABLE when nothing answers within `timeoutMs` (default 3000; must be > 0),
 * the answer is larger than {@link MAX_STATUS_BYTES} or is not a /status document. `raw` is the document as JSON
 * with terminal control characters escaped (see {@link terminalSafeJson}), not the bytes received.
 */
export function fetchStatus(admin: string, timeoutMs = 3000): Promise<{ doc: StatusDoc; raw: string }> {
  let address: Address;
  try {
    address = parseAddress(admin);
  } catch (err) {
    return Promise.reject(new ApilbError('APILB_ERR_ADMIN_UNREACHABLE', `invalid --admin-listen "${admin}": ${(err as Error).message}`));
  }
  const host = address.host === '0.0.0.0' ? '127.0.0.1' : address.host === '::' ? '::1' : address.host;
  const url = `http://${formatAddress({ host, port: address.port })}/status`;
  return new Promise((resolve, reject) => {
    function unreachable(why: string): void {
      reject(new ApilbError('APILB_ERR_ADMIN_UNREACHABLE', `cannot read ${url}: ${why} (is apilb running, and is --admin-listen the daemon's admin address?)`));
    }
    const req = httpGet(url, { timeout: timeoutMs }, function onStatusResponse(res) {
      readBodyText(res, MAX_STATUS_BYTES).then(
        function onStatusBody(raw) {
          if (res.statusCode !== 200) return unreachable(`HTTP ${res.statusCode}`);
          try {
            const doc = JSON.parse(raw) as StatusDoc;
            if (!Array.isArray(doc.backends)) return unreachable('the answer is not an apilb /status document');
            resolve({ doc, raw: terminalSafeJson(doc) });
          } catch {
            unreachable('the answer is not JSON');
          }
        },
        function onStatusBodyError(err: Error) {
          req.destroy();
          unreachable(err.message);
        },
      );
    });
    req.on('timeout', function onStatusTimeout() {
      req.destroy(new Error(`no answer within ${timeoutMs} ms`));
    });
    req.on('error', function onStatusError(err: NodeJS.ErrnoException) {
      unreachable(err.code === 'ECONNREFUSED' ? 'connection refused' : err.message);
    });
  });
}
