/**
 * The data path: accepts clients on listeners handed in, asks the pool for a backend, reports dial results back,
 * and closes connections when their backend goes down or a drain times out. It never touches metrics or the
 * logger: it keeps plain counters and emits events that metrics/ and the logger subscribe to.
 *
 * apilb runs on every node, so whatever it does, the whole fleet does in the same second. Two rules follow:
 * - Drain only toward something better: connections of a draining or removed backend are closed after
 *   --drain-timeout only while another backend is `up`. When none is (every API server's /readyz failing while
 *   they still serve), they stay; the timer starts again once a backend is up.
 * - Spread what can wait: those closes are spread evenly over --close-spread, from a random phase per node, so
 *   the API servers see a steady trickle of reconnects instead of every kubelet at once. Connections of a `down`
 *   backend are closed at once (they are dead; time to recovery comes first).
 */
import { EventEmitter } from 'node:events';
import { connect, type Server, type Socket } from 'node:net';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { numberOption, OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import type { BackendLease, Pool, TransitionEvent } from '../pool/pool.js';
import { Connection, type ConnectionHost, type ConnectionSettings } from './connection.js';
import { retryReason, type CloseReason, type DialFailureReason, type LeaveCause, type RejectReason, type RetryReason } from './reasons.js';

/** Opens a TCP connection to a backend. Injected in tests (e.g. to simulate timeouts). */
export type Dialer = (backend: Backend, onread?: UpstreamOnRead) => Socket;

/**
 * net.connect's `onread` option: the data path reads the backend→client direction into a buffer it owns and
 * reuses, instead of a fresh 64 KiB Buffer per read. A dialer may ignore it; the socket then emits 'data'.
 */
export interface UpstreamOnRead {
  buffer: () => Uint8Array;
  callback: (bytesRead: number, buf: Uint8Array) => boolean;
}

/** Options of {@link TcpProxy}. Durations in milliseconds. */
export interface ProxyOptions {
  pool: Pool;
  /** TCP connect timeout per attempt. Default 1000; must be > 0. */
  connectTimeout?: number;
  /** Time a backend has to send its first byte once the client has spoken. Default 1000; 0 disables. */
  firstByteTimeout?: number;
  /** Client bytes kept for replay before the backend's first byte. Default 16384; past it the connection commits. */
  firstByteBufferBytes?: number;
  /**
   * Replay bytes held by all connections together. Default 16 MiB (a real ClientHello is 0.5–2 KiB: room for
   * thousands of handshakes at once); a connection whose next chunk would exceed it commits to its backend
   * without replay (it keeps working, it just loses first-byte failover). 0 = no process-wide bound.
   */
  replayBufferTotal?: number;
  /**
   * Time a client has, from its first backend connect, to send its complete opening message (a TLS
   * ClientHello); otherwise it is closed (reason `client_timeout`), so idle or stalled local sockets cannot hold
   * `maxConnections` slots. Default 10000; 0 disables.
   */
  clientHelloTimeout?: number;
  /** Client connections at once; excess ones are closed at once. Default 10000; must be ≥ 1. */
  maxConnections?: number;
  /**
   * Connections to a draining or removed backend are closed after this, and only while another backend is `up`.
   * Default 60000; 0 = at once (same condition).
   */
  drainTimeout?: number;
  /**
   * Window over which the closes of one drain are spread: evenly, from a random phase (each node its own), so
   * the fleet's reconnects arrive as a trickle. Default 30000; 0 = all at once. Never applies to a `down` backend.
   */
  closeSpread?: number;
  /** Random source in [0, 1) for the spread's phase. Default Math.random. */
  random?: () => number;
  /** TCP keepalive initial delay on both sides. Default 30000; 0 uses the kernel default. */
  keepAliveInitialDelay?: number;
  /** Default: `net.connect` with half-open allowed and Nagle off. */
  dial?: Dialer;
  /** Default: the system clock. */
  clock?: Clock;
}

/** Emitted when a connection ends. */
export interface CloseEvent {
  backend: Backend | undefined;
  reason: CloseReason;
  bytesFromClient: number;
  bytesToClient: number;
  durationMs: number;
}

/** Emitted for every failed dial (a retry follows when another backend is left). */
export interface DialFailureEvent {
  backend: Backend;
  reason: DialFailureReason;
  error?: Error;
}

/** Events of {@link TcpProxy}. */
export interface ProxyEvents {
  open: [{ backend: Backend }];
  close: [CloseEvent];
  'dial-failure': [DialFailureEvent];
  /**
   * A connection is dialing `backend` after it left its previous one for `reason`: that dial failed, or that
   * backend went down (`backend_down`) before the connection committed to it.
   */
  retry: [{ reason: LeaveCause; backend: Backend }];
  reject: [{ reason: 'max_connections' }];
  'client-error': [{ error: Error }];
  /** accept() failed (EMFILE, ENFILE, ENOBUFS...): the connection was dropped, the listener keeps serving. */
  'accept-error': [{ error: NodeJS.ErrnoException }];
  /** A drain timed out with another backend up: `connections` are closed over the next `spreadMs`. */
  'drain-timeout': [{ backend: Backend; connections: number; spreadMs: number }];
  /** A drain timed out (or a spread was under way) but no other backend is up: `connections` stay open. */
  'drain-held': [{ backend: Backend; connections: number }];
}

/** Counters read by metrics/ at scrape time. */
export interface ProxyCounters {
  accepted: number;
  rejected: Map<RejectReason, number>;
  /**
   * Dials of a next backend after a failed attempt or a move off a backend that went down, by reason (a
   * connection whose last backend failed is not a retry).
   */
  retries: Map<RetryReason, number>;
  /** Closed connections by backend id and reason; `''`: connections that never had a backend (`no_backend`). */
  closed: Map<string, Map<CloseReason, number>>;
  /** Dials that failed for lack of local resources (EMFILE...), by backend id: never reported to the pool. */
  localDialFailures: Map<string, number>;
}

/**
 * One drain in progress. `timer`: waiting for --drain-timeout. `held`: timed out, but no other backend is up.
 * `closing`: closing `queue[next..]`, connection i at `start + offset + i * slot`.
 */
interface Drain {
  phase: 'timer' | 'held' | 'closing';
  timer: TimerHandle | undefined;
  queue: Connection[];
  next: number;
  start: number;
  offset: number;
  slot: number;
}

function defaultDial(backend: Backend, onread?: UpstreamOnRead): Socket {
  return connect({ host: backend.address.host, port: backend.address.port, allowHalfOpen: true, noDelay: true, ...(onread ? { onread } : {}) });
}

/** The settings {@link TcpProxy.update} can change (a reload); the others are fixed at construction. */
type ReloadableSettings = Pick<
  ProxyOptions,
  'connectTimeout' | 'firstByteTimeout' | 'maxConnections' | 'drainTimeout' | 'closeSpread' | 'clientHelloTimeout' | 'replayBufferTotal'
>;

/** A TcpProxy's validated settings (see {@link ProxyOptions}); one object, changed in place by {@link TcpProxy.update}. */
interface ProxySettings extends ConnectionSettings {
  connectTimeout: number;
  firstByteTimeout: number;
  clientHelloTimeout: number;
  replayBufferTotal: number;
  maxConnections: number;
  drainTimeout: number;
  closeSpread: number;
}

/** TCP passthrough proxy over a {@link Pool}. */
export class TcpProxy extends EventEmitter<ProxyEvents> {
  readonly pool: Pool;
  readonly clock: Clock;
  readonly counters: ProxyCounters = { accepted: 0, rejected: new Map(), retries: new Map(), closed: new Map(), localDialFailures: new Map() };
  /** Read by every connection at each use: {@link update} changes it in place. */
  private readonly settings: ProxySettings;
  /** What connections see of this proxy (built once here, shared by every connection). */
  private readonly host: ConnectionHost;
  private replayInUse = 0;
  private readonly random: () => number;
  private readonly servers = new Set<Server>();
  private readonly all = new Set<Connection>();
  /** Connections attached to each backend (dialing or connected): to find them for closing and draining. */
  private readonly byBackend = new Map<Backend, Set<Connection>>();
  private readonly drains = new Map<Backend, Drain>();
  private closing = false;
  private idleWaiters: (() => void)[] = [];

  constructor(options: ProxyOptions) {
    super();
    if (!options || !options.pool) throw new OptionError('pool', 'is required');
    this.pool = options.pool;
    this.settings = {
      connectTimeout: numberOption('connectTimeout', options.connectTimeout ?? 1000, 1),
      firstByteTimeout: numberOption('firstByteTimeout', options.firstByteTimeout ?? 1000, 0),
      firstByteBufferBytes: numberOption('firstByteBufferBytes', options.firstByteBufferBytes ?? 16384, 0),
      replayBufferTotal: numberOption('replayBufferTotal', options.replayBufferTotal ?? 16 << 20, 0),
      clientHelloTimeout: numberOption('clientHelloTimeout', options.clientHelloTimeout ?? 10_000, 0),
      maxConnections: numberOption('maxConnections', options.maxConnections ?? 10000, 1),
      drainTimeout: numberOption('drainTimeout', options.drainTimeout ?? 60000, 0),
      closeSpread: numberOption('closeSpread', options.closeSpread ?? 30000, 0),
      keepAliveInitialDelay: numberOption('keepAliveInitialDelay', options.keepAliveInitialDelay ?? 30000, 0),
    };
    this.random = options.random ?? Math.random;
    this.clock = options.clock ?? systemClock;
    this.host = this.connectionHost(options.dial ?? defaultDial);
    this.onTransition = this.onTransition.bind(this);
    this.onRemoved = this.onRemoved.bind(this);
    this.onConnection = this.onConnection.bind(this);
    this.onAcceptError = this.onAcceptError.bind(this);
    this.onEvicted = this.onEvicted.bind(this);
    this.pool.on('transition', this.onTransition);
    this.pool.on('removed', this.onRemoved);
    this.pool.on('evicted', this.onEvicted);
  }

  // The settings, read-only; the reloadable ones change only through update() (configuration reload).
  get connectTimeout(): number {
    return this.settings.connectTimeout;
  }
  get firstByteTimeout(): number {
    return this.settings.firstByteTimeout;
  }
  get firstByteBufferBytes(): number {
    return this.settings.firstByteBufferBytes;
  }
  get replayBufferTotal(): number {
    return this.settings.replayBufferTotal;
  }
  get clientHelloTimeout(): number {
    return this.settings.clientHelloTimeout;
  }
  get maxConnections(): number {
    return this.settings.maxConnections;
  }
  get drainTimeout(): number {
    return this.settings.drainTimeout;
  }
  get closeSpread(): number {
    return this.settings.closeSpread;
  }
  get keepAliveInitialDelay(): number {
    return this.settings.keepAliveInitialDelay;
  }

  /** Replay bytes held by all connections now (see {@link ProxyOptions.replayBufferTotal}). */
  get replayBytesInUse(): number {
    return this.replayInUse;
  }

  /**
   * The one interface connections use to reach this proxy and its pool: picking, leases, the replay budget and
   * the callbacks that keep the index, the counters and the events. Private: nothing else calls these.
   */
  private connectionHost(dial: Dialer): ConnectionHost {
    const settings = this.settings;
    return {
      clock: this.clock,
      settings,
      dial,
      attach: (conn, left, cause) => {
        const backend = this.pool.pick(left);
        if (!backend) return undefined;
        if (cause !== undefined) this.countRetry(cause, backend);
        let set = this.byBackend.get(backend);
        if (!set) this.byBackend.set(backend, (set = new Set()));
        set.add(conn);
        return this.pool.lease(backend);
      },
      connected: (lease) => {
        lease.connected();
        this.pool.reportDialSuccess(lease.backend);
        if (this.listenerCount('open') > 0) this.emit('open', { backend: lease.backend });
      },
      detach: (conn, lease) => this.detach(conn, lease),
      dialFailed: (backend, reason, error) => this.reportDialFailure(backend, reason, error),
      reserveReplay: (n, force) => {
        if (!force && settings.replayBufferTotal > 0 && this.replayInUse + n > settings.replayBufferTotal) return false;
        this.replayInUse += n;
        return true;
      },
      releaseReplay: (n) => {
        this.replayInUse -= n;
      },
      clientError: (error) => {
        if (this.listenerCount('client-error') > 0) this.emit('client-error', { error });
      },
      finished: (conn, reason, lease) => this.finished(conn, reason, lease),
    };
  }

  /**
   * Applies new timeouts and limits (configuration reload), validated as a whole first: a bad value throws
   * OptionError and nothing changes. New values apply to the next dial, first-byte wait, accept and drain;
   * timers already running keep their old deadline, and open connections are never touched.
   */
  update(options: Partial<ReloadableSettings>): void {
    const next = {
      replayBufferTotal: numberOption('replayBufferTotal', options.replayBufferTotal ?? this.settings.replayBufferTotal, 0),
      clientHelloTimeout: numberOption('clientHelloTimeout', options.clientHelloTimeout ?? this.settings.clientHelloTimeout, 0),
      connectTimeout: numberOption('connectTimeout', options.connectTimeout ?? this.settings.connectTimeout, 1),
      firstByteTimeout: numberOption('firstByteTimeout', options.firstByteTimeout ?? this.settings.firstByteTimeout, 0),
      maxConnections: numberOption('maxConnections', options.maxConnections ?? this.settings.maxConnections, 1),
      drainTimeout: numberOption('drainTimeout', options.drainTimeout ?? this.settings.drainTimeout, 0),
      closeSpread: numberOption('closeSpread', options.closeSpread ?? this.settings.closeSpread, 0),
    };
    Object.assign(this.settings, next);
  }

  /** Open client connections. */
  get activeConnections(): number {
    return this.all.size;
  }

  /** Starts accepting on `server` (created with {@link createListener} or equivalent options). */
  serve(server: Server): void {
    if (this.closing) throw new OptionError('serve', 'called after close()');
    this.servers.add(server);
    server.on('connection', this.onConnection);
    server.on('error', this.onAcceptError);
  }

  /**
   * A listening server emits 'error' when accept() fails, most often EMFILE (out of file descriptors). Without a
   * listener that would crash the process and take the node off the API; the kernel's connection is dropped
   * (libuv closes it), we count it, and the listener keeps accepting once descriptors are free again.
   */
  private onAcceptError(error: NodeJS.ErrnoException): void {
    inc(this.counters.rejected, 'accept_error');
    if (this.listenerCount('accept-error') > 0) this.emit('accept-error', { error });
  }

  /** Connections currently attached to `backend` (dialing or established). */
  connectionsTo(backend: Backend): ReadonlySet<Connection> {
    return this.byBackend.get(backend) ?? new Set();
  }

  /** Bytes carried to/from `backend`, including connections still open. Read at scrape time. */
  bytesFor(backend: Backend): { fromClient: number; toClient: number } {
    let fromClient = backend.bytesFromClientClosed;
    let toClient = backend.bytesToClientClosed;
    for (const c of this.connectionsTo(backend)) {
      // Connected to it (an attached connection still dialing carried nothing to it); closed ones are counted
      // in the backend's closed bytes, by their lease.
      if (c.phase === 'probing' || c.phase === 'piping') {
        fromClient += c.bytesFromClient;
        toClient += c.bytesToClient;
      }
    }
    return { fromClient, toClient };
  }

  private onConnection(client: Socket): void {
    if (this.closing) {
      client.destroy();
      return;
    }
    if (this.all.size >= this.settings.maxConnections) {
      inc(this.counters.rejected, 'max_connections');
      client.on('error', noop);
      client.destroy();
      this.emit('reject', { reason: 'max_connections' });
      return;
    }
    this.counters.accepted++;
    const conn = new Connection(this.host, client, this.clock.now());
    this.all.add(conn);
    conn.start();
  }

  /** `conn` lets go of its lease (failed attempt, move, or close): out of the index, back to the pool. */
  private detach(conn: Connection, lease: BackendLease): void {
    this.byBackend.get(lease.backend)?.delete(conn);
    lease.release(conn.bytesFromClient, conn.bytesToClient);
  }

  /** A dial attempt failed. */
  private reportDialFailure(backend: Backend, reason: DialFailureReason, error: Error | undefined): void {
    // A first-byte timeout is a suspicion, not proof: the backend got a complete opening message and said
    // nothing, which a busy API server can do too. It asks for a health check now; the check decides.
    if (reason === 'first_byte_timeout') this.pool.reportSuspect(backend, reason);
    else if (reason !== 'local_resources') this.pool.reportDialFailure(backend, reason);
    else inc(this.counters.localDialFailures, backend.id);
    const ev: DialFailureEvent = { backend, reason };
    if (error) ev.error = error;
    this.emit('dial-failure', ev);
  }

  /** A connection that left its previous backend for `cause` now dials `next`. */
  private countRetry(cause: LeaveCause, next: Backend): void {
    inc(this.counters.retries, retryReason(cause));
    if (this.listenerCount('retry') > 0) this.emit('retry', { reason: cause, backend: next });
  }

  /** A connection is fully closed; `lease`: the one it still held. */
  private finished(conn: Connection, reason: CloseReason, lease: BackendLease | undefined): void {
    this.all.delete(conn);
    const backend = conn.backend;
    // Counted before the lease goes back: releasing a removed backend's last connection evicts it, and its
    // counters go too.
    const key = backend?.id ?? '';
    let m = this.counters.closed.get(key);
    if (!m) this.counters.closed.set(key, (m = new Map()));
    inc(m, reason);
    if (lease) this.detach(conn, lease);
    if (this.listenerCount('close') > 0) {
      this.emit('close', {
        backend,
        reason,
        bytesFromClient: conn.bytesFromClient,
        bytesToClient: conn.bytesToClient,
        durationMs: this.clock.now() - conn.openedAt,
      });
    }
    if (this.all.size === 0 && this.idleWaiters.length) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const fn of w) fn();
    }
  }

  /** Closes every connection to `backend` at once. Returns how many were closed. */
  closeBackendConnections(backend: Backend, reason: CloseReason): number {
    const set = this.byBackend.get(backend);
    if (!set || set.size === 0) return 0;
    const list = [...set];
    for (const c of list) c.destroy(reason);
    return list.length;
  }

  private onTransition(ev: TransitionEvent): void {
    const b = ev.backend;
    if (ev.to === 'down') {
      this.cancelDrain(b);
      // A dead backend's clients would wait ~45 s for their own HTTP/2 ping to give up: release them now, all at
      // once, so they reconnect through a healthy backend. With no eligible backend left (panic: e.g. a wrong CA
      // marks every backend down) there is nowhere better to go, and cutting every connection would only hurt.
      if (this.pool.hasEligible) this.closeBackendConnections(b, 'backend_down');
    } else if (ev.to === 'draining') {
      this.scheduleDrain(b);
    } else if (ev.to === 'up') {
      if (!b.removed) this.cancelDrain(b);
      // Somewhere better exists again: held drains start their timer afresh, and connections kept on a backend
      // that went down during panic (there was nowhere to move them) are released now, at once like any down.
      for (const [other, d] of this.drains) {
        if (other !== b && d.phase === 'held') this.startDrainTimer(other, d);
      }
      if (this.pool.hasEligible) {
        for (const other of this.pool.backends) if (other.state === 'down') this.closeBackendConnections(other, 'backend_down');
      }
    }
  }

  /** A backend left the pool: its closed-connection counters go with it (its metric series disappear). */
  private onEvicted(b: Backend): void {
    this.counters.closed.delete(b.id);
    this.counters.localDialFailures.delete(b.id);
    // Its index entry too, so discovery churn does not keep every Backend ever seen (kept, and left behind, only
    // when a connection is still dialing it: it was removed with no open connection).
    if (this.byBackend.get(b)?.size === 0) this.byBackend.delete(b);
    this.cancelDrain(b);
  }

  private onRemoved(b: Backend): void {
    this.scheduleDrain(b);
  }

  private scheduleDrain(b: Backend): void {
    if (this.drains.has(b)) return;
    const d: Drain = { phase: 'timer', timer: undefined, queue: [], next: 0, start: 0, offset: 0, slot: 0 };
    this.drains.set(b, d);
    this.startDrainTimer(b, d);
  }

  private startDrainTimer(b: Backend, d: Drain): void {
    d.phase = 'timer';
    this.clock.clearTimeout(d.timer);
    d.timer = undefined;
    if (this.settings.drainTimeout === 0) this.drainDue(b, d);
    else d.timer = this.clock.setTimeout(() => this.drainDue(b, d), this.settings.drainTimeout);
  }

  /** True when a backend other than `b` is `up`: only then is closing `b`'s connections a move to something better. */
  private betterThan(b: Backend): boolean {
    return this.pool.backends.some((x) => x !== b && !x.removed && x.state === 'up');
  }

  /** --drain-timeout passed: start spreading the closes, or hold them while nothing better exists. */
  private drainDue(b: Backend, d: Drain): void {
    d.timer = undefined;
    const queue = [...this.connectionsTo(b)];
    if (queue.length === 0) {
      this.drains.delete(b);
      return;
    }
    if (!this.betterThan(b)) {
      this.holdDrain(b, d, queue.length);
      return;
    }
    d.phase = 'closing';
    d.queue = queue;
    d.next = 0;
    d.start = this.clock.now();
    d.slot = this.settings.closeSpread / queue.length;
    // The phase within the first slot differs per node: a fleet's closes interleave instead of lining up.
    d.offset = this.random() * d.slot;
    this.emit('drain-timeout', { backend: b, connections: queue.length, spreadMs: this.settings.closeSpread });
    this.closeStep(b, d);
  }

  private holdDrain(b: Backend, d: Drain, connections: number): void {
    d.phase = 'held';
    if (this.listenerCount('drain-held') > 0) this.emit('drain-held', { backend: b, connections });
  }

  /** Closes every queued connection that is due, then waits for the next one (one timer per drain, not per connection). */
  private closeStep(b: Backend, d: Drain): void {
    d.timer = undefined;
    const live = this.byBackend.get(b);
    if (!this.betterThan(b)) {
      // The other backends went away while the spread was under way: the rest stay, like a held drain.
      let left = 0;
      for (let i = d.next; i < d.queue.length; i++) if (live?.has(d.queue[i]!)) left++;
      this.holdDrain(b, d, left);
      return;
    }
    const elapsed = this.clock.now() - d.start;
    while (d.next < d.queue.length && d.offset + d.next * d.slot <= elapsed) {
      const c = d.queue[d.next++]!;
      if (live?.has(c)) c.destroy('drain_timeout');
    }
    if (d.next >= d.queue.length) {
      this.drains.delete(b);
      return;
    }
    d.timer = this.clock.setTimeout(() => this.closeStep(b, d), Math.max(1, Math.ceil(d.offset + d.next * d.slot - elapsed)));
  }

  private cancelDrain(b: Backend): void {
    const d = this.drains.get(b);
    if (d) {
      this.clock.clearTimeout(d.timer);
      this.drains.delete(b);
    }
  }

  /**
   * Stops accepting: closes every listener. Resolves once the listening sockets are closed; it does not wait
   * for open connections (net.Server's close callback would).
   */
  stopAccepting(): Promise<void> {
    this.closing = true;
    for (const s of this.servers) {
      s.off('connection', this.onConnection);
      if (s.listening) s.close();
    }
    this.servers.clear();
    return new Promise((resolve) => setImmediate(resolve));
  }

  /** Resolves when no connection is open, or after `timeoutMs` (then returns false). */
  waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.all.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = this.clock.setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== onIdle);
        resolve(false);
      }, timeoutMs);
      const onIdle = () => {
        this.clock.clearTimeout(t);
        resolve(true);
      };
      this.idleWaiters.push(onIdle);
    });
  }

  /**
   * Graceful close: stop accepting, let connections finish up to `timeoutMs` (default 0 = close them at once),
   * then close the rest and release timers and pool subscriptions.
   */
  async close(timeoutMs = 0): Promise<void> {
    await this.stopAccepting();
    if (timeoutMs > 0) await this.waitIdle(timeoutMs);
    for (const c of [...this.all]) c.destroy('shutdown');
    for (const d of this.drains.values()) this.clock.clearTimeout(d.timer);
    this.drains.clear();
    this.pool.off('transition', this.onTransition);
    this.pool.off('removed', this.onRemoved);
    this.pool.off('evicted', this.onEvicted);
    if (this.all.size > 0) await this.waitIdle(5000);
  }
}

function inc<K>(m: Map<K, number>, k: K): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}

function noop(): void {}
