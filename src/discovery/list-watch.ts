/**
 * A small Kubernetes LIST + WATCH client for one collection: LIST, then WATCH from the list's resourceVersion
 * (bookmarks on), resumed whenever the server ends a watch; 410 Gone (HTTP status or ERROR event) and a watch the
 * server refuses (4xx) re-list; errors back off exponentially with jitter. It knows nothing about what the objects
 * mean: it hands the list and each change to its owner, reports what happened as events (the owner's logger
 * subscribes to them) and counts into a plain stats object read at scrape time.
 */
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import { StringDecoder } from 'node:string_decoder';
import type * as Undici from 'undici';
import type { Client } from 'undici';
import { jitter, type Clock } from '../clock.js';
import { tlsClientOptions } from '../config/tls.js';
import { formatAddress, type Address } from '../config/values.js';
import { certificateFailure } from '../net-errors.js';
import { readBodyText } from '../node-http.js';
import { VERSION } from '../version.js';

/**
 * undici, loaded on first use: most nodes run without discovery, and undici costs them ~20 MB of RSS (issue 18).
 * `require` keeps the constructor synchronous; undici is CommonJS.
 */
function loadUndiciClient(): typeof Client {
  return (createRequire(import.meta.url)('undici') as typeof Undici).Client;
}

/** The client's phase. `starting` is set by the owner before {@link ListWatch.start}. */
export type ListWatchState = 'stopped' | 'starting' | 'listing' | 'watching' | 'backoff';

/** What the client counts (plain fields, updated in place; the owner may hand in a larger object). */
export interface ListWatchStats {
  /** Current phase. `backoff` means the last request failed and a retry is pending. */
  state: ListWatchState;
  /** Epoch ms of the last successful LIST or watch event (bookmarks included); 0 = never. */
  lastSuccessTime: number;
  /** Watches that ended (server timeout, connection loss, error) and were started again. */
  watchRestarts: number;
  /** Successful LISTs. */
  lists: number;
  /** Re-lists forced by 410 Gone (HTTP status or ERROR event) or a refused watch. */
  relists: number;
  /** Failed LIST/WATCH requests (transport, TLS, HTTP status, malformed answer). */
  errors: number;
  /** The resourceVersion watches resume from; '' before the first LIST and after 410. */
  resourceVersion: string;
  /** Message of the last error; '' when none yet. */
  lastError: string;
}

/** Fresh {@link ListWatchStats}: stopped, nothing counted yet. */
export function newListWatchStats(): ListWatchStats {
  return { state: 'stopped', lastSuccessTime: 0, watchRestarts: 0, lists: 0, relists: 0, errors: 0, resourceVersion: '', lastError: '' };
}

/** The part of a Kubernetes object the client reads. */
export interface KubeObject {
  metadata?: { name?: string; resourceVersion?: string };
}

/** A watch event that changes the collection (bookmarks only move the resourceVersion). */
export type WatchChange = 'ADDED' | 'MODIFIED' | 'DELETED';

/** TLS material and credentials of the client's requests. */
export interface ListWatchTls {
  /** CA bundle (PEM) the server is verified against. Required. */
  ca: string;
  /** Client certificate (PEM); with `key`. Default none. */
  cert?: string;
  key?: string;
  /** Name the server certificate is verified against. Default `kubernetes`. */
  serverName?: string;
  /** Bearer token for each request, read per request so a rotated token file applies at once. Default none. */
  token?: () => string | undefined;
}

/** Timing of the client, validated by its owner (see DiscoveryTuning for meaning and defaults). */
export interface ListWatchTiming {
  backoffBaseMs: number;
  backoffMaxMs: number;
  requestTimeoutMs: number;
  watchTimeoutSeconds: number;
  minWatchMs: number;
}

/** Options of {@link ListWatch}. */
export interface ListWatchOptions<T extends KubeObject> {
  /** HOST:PORT requests are sent to (over TLS). */
  target: Address;
  tls: ListWatchTls;
  /** Collection path, e.g. `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices`. */
  path: string;
  /** Label selector (unencoded). */
  labelSelector: string;
  timing: ListWatchTiming;
  clock: Clock;
  /** Backoff and watch-timeout jitter. */
  random: () => number;
  /** Called with the items of each successful LIST (the collection as a whole). */
  onList: (items: T[]) => void;
  /** Called for each ADDED, MODIFIED or DELETED watch event that carries a resourceVersion. */
  onChange: (type: WatchChange, object: T) => void;
  /** Where to count. Default a fresh object (see {@link ListWatch.stats}). */
  stats?: ListWatchStats;
  /** Hint added to a 403 answer's message (what RBAC the identity lacks). Default none. */
  forbiddenHint?: string;
  /** What a LIST must answer, for the error message, e.g. `an EndpointSliceList`. */
  listName: string;
}

/** Events of {@link ListWatch}. None is named `error`: nobody has to listen. */
export interface ListWatchEvents {
  /**
   * A request failed. `failures`: consecutive failures, this one included. `repeated`: same message as the last
   * failure, with no success in between (loggers say it once).
   */
  'request-failed': [{ what: 'LIST' | 'WATCH'; error: string; hint: string | undefined; failures: number; repeated: boolean }];
  /** A request succeeded after failures (`after`: how many in a row). */
  recovered: [{ after: number }];
  /** 410 Gone: `410` as the watch's HTTP status, `410-event` as an ERROR event; a LIST follows. */
  relist: [{ reason: '410' | '410-event'; resourceVersion: string; message: string | undefined }];
  /** A watch ended normally (server timeout) and is resumed. */
  'watch-ended': [{ events: number; resourceVersion: string }];
  /** A retry follows after `retryInMs`. */
  failure: [{ error: string; retryInMs: number }];
  /** The loop itself threw (a bug); the client stopped. */
  crashed: [{ error: Error }];
}

/** `gone`: 410, re-list. `relist`: the server refused the watch itself (4xx, e.g. 431 for a huge resourceVersion). */
type Outcome = 'ok' | 'error' | 'gone' | 'relist';

interface WatchEvent<T> {
  type?: string;
  object?: T & { code?: number; message?: string; reason?: string };
}

const MAX_LIST_BYTES = 8 << 20;
const MAX_EVENT_BYTES = 4 << 20;

/** LIST + WATCH of one collection over one keep-alive connection; see the module comment. */
export class ListWatch<T extends KubeObject> extends EventEmitter<ListWatchEvents> {
  /** Counters for metrics (see {@link ListWatchStats}). */
  readonly stats: ListWatchStats;
  private readonly opts: ListWatchOptions<T>;
  private client: Client;
  private readonly origin: string;
  private closed = false;
  private loop: Promise<void> | undefined;
  private abort: AbortController | undefined;
  private failures = 0;
  /** Re-lists forced since the last watch that delivered something (410 loops, refused watches). */
  private relistStreak = 0;
  private wakeSleep: (() => void) | undefined;
  /** The last failure's `what: message` since the last success; undefined after a success. */
  private lastFailure: string | undefined;

  constructor(options: ListWatchOptions<T>) {
    super();
    this.opts = options;
    this.stats = options.stats ?? newListWatchStats();
    this.origin = `https://${formatAddress(options.target)}`;
    this.client = this.newClient(options.tls);
  }

  /**
   * One connection: a LIST, then a long watch on the same keep-alive socket; pipelining 1 keeps it strictly
   * sequential. The connect timeout covers TCP and TLS through apilb, including apilb's failover across backends.
   */
  private newClient(tls: Pick<ListWatchTls, 'ca' | 'cert' | 'key' | 'serverName'>): Client {
    const { ca, cert, key, serverName } = tls;
    const connect = tlsClientOptions({ ca, cert, key, insecure: false }, serverName || 'kubernetes');
    return new (loadUndiciClient())(this.origin, {
      connect,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connectTimeout: this.opts.timing.requestTimeoutMs,
    });
  }

  /**
   * Uses new trust and client credentials (rotated files) from the next request on. The request in flight (a
   * watch, typically) keeps its connection, which was authenticated with the old ones and stays valid; the old
   * client closes once it is done, so a rotation costs no re-list.
   */
  updateTls(tls: Pick<ListWatchTls, 'ca' | 'cert' | 'key'>): void {
    if (this.closed) return;
    const old = this.client;
    const serverName = this.opts.tls.serverName;
    this.client = this.newClient({ ...tls, ...(serverName ? { serverName } : {}) });
    void old.close().catch(() => {});
  }

  /** Starts the LIST/WATCH loop in the background. Idempotent. */
  start(): void {
    if (this.loop || this.closed) return;
    this.loop = this.run().catch((err: Error) => {
      // run() handles its own errors; reaching here is a bug, but discovery must never take the daemon down.
      this.emit('crashed', { error: err });
      this.stats.state = 'stopped';
    });
  }

  /** Aborts the request in flight, ends the loop and closes the connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return this.loop;
    this.closed = true;
    this.abort?.abort();
    this.wakeSleep?.();
    await this.loop;
    await this.client.destroy().catch(() => {});
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      const outcome = this.stats.resourceVersion === '' ? await this.list() : await this.watch();
      if (this.closed) break;
      if (outcome === 'error') await this.backoff();
      else if (outcome === 'gone' || outcome === 'relist') {
        this.stats.relists++;
        this.stats.resourceVersion = '';
        this.relistStreak++;
        // One 410 is routine (history compacted): re-list at once. 410 again and again without a useful watch in
        // between, or a watch the server refuses outright, backs off exponentially instead of a hot loop.
        if (outcome === 'relist' || this.relistStreak > 1) await this.backoff(this.relistStreak - 1);
      }
    }
  }

  /** Sleeps `backoffBaseMs × 2^step` (default step: consecutive failures), capped at backoffMaxMs, jittered ±50%. */
  private async backoff(step?: number): Promise<void> {
    const { backoffBaseMs, backoffMaxMs } = this.opts.timing;
    const n = step ?? this.failures++;
    const base = Math.min(backoffMaxMs, backoffBaseMs * 2 ** Math.min(n, 30));
    const delay = jitter(base, 0.5, this.opts.random);
    this.stats.state = 'backoff';
    this.emit('failure', { error: this.stats.lastError, retryInMs: delay });
    await new Promise<void>((resolve) => {
      const timer = this.opts.clock.setTimeout(() => {
        this.wakeSleep = undefined;
        resolve();
      }, delay);
      this.wakeSleep = () => {
        this.opts.clock.clearTimeout(timer);
        this.wakeSleep = undefined;
        resolve();
      };
    });
  }

  private fail(what: 'LIST' | 'WATCH', message: string, hint?: string): 'error' {
    this.stats.errors++;
    this.stats.lastError = `${what}: ${message}`;
    const repeated = this.lastFailure === this.stats.lastError;
    this.lastFailure = this.stats.lastError;
    this.emit('request-failed', { what, error: message, hint, failures: this.failures + 1, repeated });
    return 'error';
  }

  private succeeded(): void {
    this.stats.lastSuccessTime = this.opts.clock.now();
    if (this.failures > 0 || this.lastFailure) this.emit('recovered', { after: this.failures });
    this.failures = 0;
    this.lastFailure = undefined;
  }

  private requestHeaders(): Record<string, string> {
    const token = this.opts.tls.token?.();
    return { accept: 'application/json', 'user-agent': `apilb/${VERSION}`, ...(token ? { authorization: `Bearer ${token}` } : {}) };
  }

  private statusHint(code: number): string | undefined {
    if (code === 401) return "the API server did not accept the kubeconfig's client certificate";
    if (code === 403) return this.opts.forbiddenHint;
    return undefined;
  }

  private async list(): Promise<Outcome> {
    this.stats.state = 'listing';
    const { requestTimeoutMs } = this.opts.timing;
    const path = `${this.opts.path}?labelSelector=${encodeURIComponent(this.opts.labelSelector)}`;
    this.abort = new AbortController();
    let doc: { metadata?: { resourceVersion?: string }; items?: T[] };
    try {
      const res = await this.client.request({
        method: 'GET',
        path,
        headers: this.requestHeaders(),
        signal: this.abort.signal,
        headersTimeout: requestTimeoutMs,
        bodyTimeout: requestTimeoutMs,
      });
      if (res.statusCode !== 200) {
        const body = await readBodyText(res.body, 4096).catch(() => '');
        return this.fail('LIST', `HTTP ${res.statusCode}${statusMessage(body)}`, this.statusHint(res.statusCode));
      }
      doc = JSON.parse(await readBodyText(res.body, MAX_LIST_BYTES)) as typeof doc;
    } catch (err) {
      if (this.closed) return 'ok';
      return this.fail('LIST', errorMessage(err), tlsHint(err));
    }
    const rv = doc?.metadata?.resourceVersion;
    if (!doc || !Array.isArray(doc.items) || typeof rv !== 'string' || rv === '') {
      return this.fail('LIST', `the answer is not ${this.opts.listName} with a resourceVersion`);
    }
    this.stats.lists++;
    this.succeeded();
    this.stats.resourceVersion = rv;
    this.opts.onList(doc.items);
    return 'ok';
  }

  private async watch(): Promise<Outcome> {
    this.stats.state = 'watching';
    const { clock, timing } = this.opts;
    const timeoutSeconds = Math.max(1, Math.round(jitter(timing.watchTimeoutSeconds * 1000, 0.2, this.opts.random) / 1000));
    const q = [
      `labelSelector=${encodeURIComponent(this.opts.labelSelector)}`,
      'watch=1',
      'allowWatchBookmarks=true',
      `resourceVersion=${encodeURIComponent(this.stats.resourceVersion)}`,
      `timeoutSeconds=${timeoutSeconds}`,
    ];
    this.abort = new AbortController();
    const started = clock.now();
    let delivered = 0;
    let outcome: Outcome | undefined;
    try {
      const res = await this.client.request({
        method: 'GET',
        path: `${this.opts.path}?${q.join('&')}`,
        headers: this.requestHeaders(),
        signal: this.abort.signal,
        headersTimeout: timing.requestTimeoutMs,
        // The server ends the watch after timeoutSeconds; silence well beyond that means a dead path.
        bodyTimeout: (timeoutSeconds + 30) * 1000,
      });
      if (res.statusCode === 410) {
        await res.body.dump().catch(() => {});
        this.emit('relist', { reason: '410', resourceVersion: this.stats.resourceVersion, message: undefined });
        this.stats.watchRestarts++;
        return 'gone';
      }
      if (res.statusCode !== 200) {
        const body = await readBodyText(res.body, 4096).catch(() => '');
        this.stats.watchRestarts++;
        this.fail('WATCH', `HTTP ${res.statusCode}${statusMessage(body)}`, this.statusHint(res.statusCode));
        // A 4xx refuses this watch request itself (e.g. 431: a resourceVersion too large for the server's
        // header limit): retrying it unchanged can never work, a fresh LIST can.
        return res.statusCode >= 400 && res.statusCode < 500 ? 'relist' : 'error';
      }
      // Reachable, but the backoff only resets once the watch proves useful (an event, or a full-length watch):
      // a server that accepts watches and closes them at once must still back off exponentially.
      this.stats.lastSuccessTime = clock.now();
      const decoder = new StringDecoder('utf8');
      let buf = '';
      for await (const chunk of res.body) {
        buf += decoder.write(chunk as Buffer);
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line === '') continue;
          delivered++;
          outcome = this.onWatchLine(line);
          if (outcome) break;
        }
        if (outcome) break;
        if (buf.length > MAX_EVENT_BYTES) {
          outcome = this.fail('WATCH', `an event is larger than ${MAX_EVENT_BYTES} bytes`);
          break;
        }
      }
      if (outcome) res.body.destroy();
    } catch (err) {
      if (this.closed) return 'ok';
      this.stats.watchRestarts++;
      return this.fail('WATCH', errorMessage(err), tlsHint(err));
    }
    if (this.closed) return 'ok';
    this.stats.watchRestarts++;
    if (outcome) return outcome;
    if (delivered === 0 && clock.now() - started < timing.minWatchMs) {
      // A middlebox or a broken server closing every watch at once must not become a hot loop.
      return this.fail('WATCH', 'the watch ended at once without an event');
    }
    this.succeeded();
    this.relistStreak = 0;
    this.emit('watch-ended', { events: delivered, resourceVersion: this.stats.resourceVersion });
    return 'ok';
  }

  /** Handles one watch event line; returns an outcome when the watch must end. */
  private onWatchLine(line: string): Outcome | undefined {
    let ev: WatchEvent<T>;
    try {
      ev = JSON.parse(line) as WatchEvent<T>;
    } catch {
      return this.fail('WATCH', 'the stream holds a line that is not JSON');
    }
    const obj = ev.object;
    if (ev.type === 'ERROR') {
      if (obj?.code === 410) {
        this.emit('relist', { reason: '410-event', resourceVersion: this.stats.resourceVersion, message: obj.message });
        return 'gone';
      }
      return this.fail('WATCH', `ERROR event ${obj?.code ?? ''} ${obj?.reason ?? ''}: ${obj?.message ?? ''}`.replace(/\s+/g, ' ').trim());
    }
    const rv = obj?.metadata?.resourceVersion;
    if (ev.type !== 'BOOKMARK' && ev.type !== 'ADDED' && ev.type !== 'MODIFIED' && ev.type !== 'DELETED') {
      return this.fail('WATCH', `unknown event type ${String(ev.type)}`);
    }
    if (!obj || typeof rv !== 'string' || rv === '') return this.fail('WATCH', `${ev.type} event without a resourceVersion`);
    this.succeeded();
    this.relistStreak = 0;
    this.stats.resourceVersion = rv;
    if (ev.type !== 'BOOKMARK') this.opts.onChange(ev.type, obj);
    return undefined;
  }
}

function statusMessage(body: string): string {
  try {
    const s = JSON.parse(body) as { message?: string };
    if (s?.message) return `: ${s.message}`;
  } catch {
    // not a Status object
  }
  return '';
}

function errorMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const code = e?.code && !String(e.message).includes(e.code) ? `${e.code}: ` : '';
  return `${code}${e?.message ?? String(err)}`;
}

function tlsHint(err: unknown): string | undefined {
  switch (certificateFailure((err as NodeJS.ErrnoException | undefined)?.code)) {
    case 'name':
      return 'the API server certificate does not carry the expected name: set --tls-server-name';
    case 'chain':
      return 'the API server certificate does not verify against the cluster CA';
  }
  return undefined;
}
