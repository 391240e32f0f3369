/**
 * The data path: accepts clients on listeners handed in, asks the pool for a backend, reports dial results back,
 * and closes connections when their backend goes down or a drain times out. It never touches metrics or the
 * logger: it keeps plain counters and emits events that metrics/ and the logger subscribe to.
 */
import { EventEmitter } from 'node:events';
import { connect, type Server, type Socket } from 'node:net';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { OptionError } from '../errors.js';
import type { Backend } from '../pool/backend.js';
import type { Pool, TransitionEvent } from '../pool/pool.js';
import { Connection, type CloseReason, type DialFailureReason } from './connection.js';

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

/** Options of {@link Proxy}. Durations in milliseconds. */
export interface ProxyOptions {
  pool: Pool;
  /** TCP connect timeout per attempt. Default 1000; must be > 0. */
  connectTimeout?: number;
  /** Time a backend has to send its first byte once the client has spoken. Default 1000; 0 disables. */
  firstByteTimeout?: number;
  /** Client bytes kept for replay before the backend's first byte. Default 16384; past it the connection commits. */
  firstByteBufferBytes?: number;
  /** Client connections at once; excess ones are closed at once. Default 10000; must be ≥ 1. */
  maxConnections?: number;
  /** Connections to a draining or removed backend are closed after this. Default 60000; 0 = at once. */
  drainTimeout?: number;
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

/** Events of {@link Proxy}. */
export interface ProxyEvents {
  open: [{ backend: Backend }];
  close: [CloseEvent];
  'dial-failure': [DialFailureEvent];
  retry: [{ reason: DialFailureReason; backend: Backend }];
  reject: [{ reason: 'max_connections' }];
  'client-error': [{ error: Error }];
  /** accept() failed (EMFILE, ENFILE, ENOBUFS...): the connection was dropped, the listener keeps serving. */
  'accept-error': [{ error: NodeJS.ErrnoException }];
  'drain-timeout': [{ backend: Backend; closed: number }];
}

/** Counters read by metrics/ at scrape time. */
export interface ProxyCounters {
  accepted: number;
  rejected: Map<string, number>;
  retries: Map<string, number>;
  /** Closed connections by backend id and reason. */
  closed: Map<string, Map<CloseReason, number>>;
}

function defaultDial(backend: Backend, onread?: UpstreamOnRead): Socket {
  return connect({ host: backend.address.host, port: backend.address.port, allowHalfOpen: true, noDelay: true, ...(onread ? { onread } : {}) });
}

/** TCP passthrough proxy over a {@link Pool}. */
export class Proxy extends EventEmitter<ProxyEvents> {
  readonly pool: Pool;
  /** Changed only through {@link update} (configuration reload). */
  connectTimeout: number;
  /** Changed only through {@link update}. */
  firstByteTimeout: number;
  readonly firstByteBufferBytes: number;
  /** Changed only through {@link update}. */
  maxConnections: number;
  /** Changed only through {@link update}. */
  drainTimeout: number;
  readonly keepAliveInitialDelay: number;
  readonly dial: Dialer;
  readonly clock: Clock;
  readonly counters: ProxyCounters = { accepted: 0, rejected: new Map(), retries: new Map(), closed: new Map() };
  private readonly servers = new Set<Server>();
  private readonly all = new Set<Connection>();
  private readonly byBackend = new Map<Backend, Set<Connection>>();
  private readonly connectedTo = new WeakMap<Connection, Backend>();
  private readonly drainTimers = new Map<Backend, TimerHandle>();
  private closing = false;
  private idleWaiters: (() => void)[] = [];

  constructor(options: ProxyOptions) {
    super();
    if (!options || !options.pool) throw new OptionError('pool', 'is required');
    this.pool = options.pool;
    this.connectTimeout = num('connectTimeout', options.connectTimeout ?? 1000, 1);
    this.firstByteTimeout = num('firstByteTimeout', options.firstByteTimeout ?? 1000, 0);
    this.firstByteBufferBytes = num('firstByteBufferBytes', options.firstByteBufferBytes ?? 16384, 0);
    this.maxConnections = num('maxConnections', options.maxConnections ?? 10000, 1);
    this.drainTimeout = num('drainTimeout', options.drainTimeout ?? 60000, 0);
    this.keepAliveInitialDelay = num('keepAliveInitialDelay', options.keepAliveInitialDelay ?? 30000, 0);
    this.dial = options.dial ?? defaultDial;
    this.clock = options.clock ?? systemClock;
    this.onTransition = this.onTransition.bind(this);
    this.onRemoved = this.onRemoved.bind(this);
    this.onConnection = this.onConnection.bind(this);
    this.onAcceptError = this.onAcceptError.bind(this);
    this.onDeleted = this.onDeleted.bind(this);
    this.pool.on('transition', this.onTransition);
    this.pool.on('removed', this.onRemoved);
    this.pool.on('deleted', this.onDeleted);
  }

  /**
   * Applies new timeouts and limits (configuration reload), validated as a whole first: a bad value throws
   * OptionError and nothing changes. New values apply to the next dial, first-byte wait, accept and drain;
   * timers already running keep their old deadline, and open connections are never touched.
   */
  update(options: Partial<Pick<ProxyOptions, 'connectTimeout' | 'firstByteTimeout' | 'maxConnections' | 'drainTimeout'>>): void {
    const next = {
      connectTimeout: num('connectTimeout', options.connectTimeout ?? this.connectTimeout, 1),
      firstByteTimeout: num('firstByteTimeout', options.firstByteTimeout ?? this.firstByteTimeout, 0),
      maxConnections: num('maxConnections', options.maxConnections ?? this.maxConnections, 1),
      drainTimeout: num('drainTimeout', options.drainTimeout ?? this.drainTimeout, 0),
    };
    this.connectTimeout = next.connectTimeout;
    this.firstByteTimeout = next.firstByteTimeout;
    this.maxConnections = next.maxConnections;
    this.drainTimeout = next.drainTimeout;
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
      if (this.connectedTo.get(c) === backend) {
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
    if (this.all.size >= this.maxConnections) {
      inc(this.counters.rejected, 'max_connections');
      client.on('error', noop);
      client.destroy();
      this.emit('reject', { reason: 'max_connections' });
      return;
    }
    this.counters.accepted++;
    const conn = new Connection(this, client, this.clock.now());
    this.all.add(conn);
    conn.start();
  }

  /** @internal Connection started dialing `backend`. */
  attach(conn: Connection, backend: Backend): void {
    let set = this.byBackend.get(backend);
    if (!set) this.byBackend.set(backend, (set = new Set()));
    set.add(conn);
  }

  /** @internal Connection's TCP handshake with `backend` completed. */
  connected(conn: Connection, backend: Backend): void {
    this.connectedTo.set(conn, backend);
    this.pool.reportDialSuccess(backend);
    this.pool.acquire(backend);
    if (this.listenerCount('open') > 0) this.emit('open', { backend });
  }

  /** @internal Connection let go of `backend` (failed attempt or close). */
  detach(conn: Connection, backend: Backend): void {
    this.byBackend.get(backend)?.delete(conn);
    if (this.connectedTo.get(conn) === backend) {
      this.connectedTo.delete(conn);
      this.pool.release(backend, conn.bytesFromClient, conn.bytesToClient);
    }
  }

  /** @internal A dial attempt failed. */
  reportDialFailure(backend: Backend, reason: DialFailureReason, error: Error | undefined): void {
    if (reason !== 'local_resources') this.pool.reportDialFailure(backend, reason);
    inc(this.counters.retries, reason === 'first_byte_timeout' ? 'first_byte_timeout' : 'connect_failed');
    const ev: DialFailureEvent = { backend, reason };
    if (error) ev.error = error;
    this.emit('dial-failure', ev);
    this.emit('retry', { reason, backend });
  }

  /** @internal */
  clientError(error: Error): void {
    if (this.listenerCount('client-error') > 0) this.emit('client-error', { error });
  }

  /** @internal Connection is fully closed. */
  finished(conn: Connection, reason: CloseReason): void {
    this.all.delete(conn);
    const backend = conn.backend;
    if (backend) {
      this.detach(conn, backend);
      let m = this.counters.closed.get(backend.id);
      if (!m) this.counters.closed.set(backend.id, (m = new Map()));
      m.set(reason, (m.get(reason) ?? 0) + 1);
    }
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
      // A dead backend's clients would wait ~45 s for their own HTTP/2 ping to give up: release them now so
      // they reconnect through a healthy backend. With no eligible backend left (panic: e.g. a wrong CA marks
      // every backend down) there is nowhere better to go, and cutting every connection would only hurt.
      if (this.pool.hasEligible) this.closeBackendConnections(b, 'backend_down');
    } else if (ev.to === 'draining') {
      this.scheduleDrain(b);
    } else if (ev.to === 'up' && !b.removed) {
      this.cancelDrain(b);
    }
  }

  /** A backend left the pool: its closed-connection counters go with it (its metric series disappear). */
  private onDeleted(b: Backend): void {
    this.counters.closed.delete(b.id);
  }

  private onRemoved(b: Backend): void {
    this.scheduleDrain(b);
  }

  private scheduleDrain(b: Backend): void {
    if (this.drainTimers.has(b)) return;
    const fire = () => {
      this.drainTimers.delete(b);
      const closed = this.closeBackendConnections(b, 'drain_timeout');
      if (closed > 0) this.emit('drain-timeout', { backend: b, closed });
    };
    if (this.drainTimeout === 0) {
      fire();
      return;
    }
    this.drainTimers.set(b, this.clock.setTimeout(fire, this.drainTimeout));
  }

  private cancelDrain(b: Backend): void {
    const t = this.drainTimers.get(b);
    if (t !== undefined) {
      this.clock.clearTimeout(t);
      this.drainTimers.delete(b);
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
    for (const t of this.drainTimers.values()) this.clock.clearTimeout(t);
    this.drainTimers.clear();
    this.pool.off('transition', this.onTransition);
    this.pool.off('removed', this.onRemoved);
    this.pool.off('deleted', this.onDeleted);
    if (this.all.size > 0) await this.waitIdle(5000);
  }
}

function num(name: string, v: number, min: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new OptionError(name, `must be a number ≥ ${min}, got ${v}`);
  return v;
}

function inc(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}

function noop(): void {}
