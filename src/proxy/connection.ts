/**
 * One client connection: dial with timeout and retry across backends, optional first-byte failover with replay
 * of the client's opening bytes, then a bidirectional byte pipe that honours half-close and backpressure.
 *
 * Phases: `dialing` (client paused) → `probing` (backend connected; client bytes are forwarded and also kept for
 * replay until the backend's first byte) → `piping` (committed) → `closed`.
 */
import type { Socket } from 'node:net';
import type { Backend } from '../pool/backend.js';
import type { BackendLease } from '../pool/pool.js';
import type { Clock, TimerHandle } from '../clock.js';
import type { Dialer } from './proxy.js';
import type { CloseReason, DialFailureReason, LeaveCause } from './reasons.js';

// The reason lists live in reasons.ts (one constant each: types and metric labels derive from it).
export type { CloseReason, DialFailureReason } from './reasons.js';
import { ClientOpening } from './client-opening.js';
import { errnoReason } from '../net-errors.js';

type Phase = 'dialing' | 'probing' | 'piping' | 'closed';

// Backend→client reads (net.connect `onread`). Node's default read path allocates a new 64 KiB Buffer per read
// outside the V8 heap; at hundreds of MB/s that external memory makes V8 run a full GC every few hundred ms
// (measured: 200 full GCs in 16 s with apilb's heap, CPU per GB 3× a plain pipe). Instead:
// - idle and chatty connections read into one small buffer shared by the whole process and write a copy (small
//   reads, cheap pooled copies), so thousands of idle watch connections hold no buffer of their own;
// - a read that fills the shared buffer switches the connection to a 64 KiB buffer of its own, reused read after
//   read with zero copies while each write reaches the kernel synchronously; a write that is still pending keeps
//   its buffer and the next read gets a fresh one;
// - after a run of small reads the connection gives its own buffer back.
const READ_BUF_SMALL = 4096;
const READ_BUF_LARGE = 65536;
const SMALL_READS_BEFORE_SHRINK = 16;
const SHARED_READ_BUF = Buffer.allocUnsafeSlow(READ_BUF_SMALL);

// Client→backend reads cannot use `onread`: Node (20 and 24 alike) builds accepted sockets without it, so every
// read arrives in a fresh ArrayBuffer of its own, and V8 counts them as external memory: at upload speed it runs a
// full GC every ~50 MB (measured on Node 24: 107 mark-compacts in 9 s of 1-stream uploads, 0.93 CPU s per GB), and
// even kept-alive requests' small reads add up to one a second. Once a chunk's write has reached the kernel
// synchronously nothing references it any more, so the connection frees it at once: `ArrayBuffer.prototype
// .transfer(0)` (standard JavaScript, Node 21+) detaches it, which releases its memory and its accounting without
// waiting for a GC (uploads: 1 mark-compact, 0.50 s per GB; kept-alive requests: 16 → 1 mark-compacts, −7 % CPU).
const transferArrayBuffer = (ArrayBuffer.prototype as { transfer?: (this: ArrayBuffer, length: number) => ArrayBuffer }).transfer;

/**
 * Frees the memory of a read chunk nothing references any more (its write completed synchronously), when the
 * chunk is the whole of its own ArrayBuffer (never a view into a shared one, such as Node's Buffer pool). A no-op
 * on Node.js 20, which lacks `ArrayBuffer.prototype.transfer`. The chunk is empty afterwards.
 */
export function releaseReadBuffer(chunk: Buffer): void {
  const ab = chunk.buffer;
  if (transferArrayBuffer !== undefined && chunk.byteOffset === 0 && ab.byteLength === chunk.length && ab instanceof ArrayBuffer) {
    transferArrayBuffer.call(ab, 0);
  }
}

// After one side has fully closed, the other gets this long to finish its half before it is destroyed, so a
// client that never sends its FIN cannot pin a socket forever.
const LINGER_MS = 30_000;

/** Why a dial failed, from its errno code (the table lives in net-errors.ts, shared with the health checks). */
function dialReason(err: NodeJS.ErrnoException): DialFailureReason {
  return errnoReason(err.code) ?? 'error';
}

/**
 * The settings a Connection reads, each at the moment it needs it: the host updates them in place on a
 * configuration reload, so new values apply to the next dial, first-byte wait or client; running timers keep theirs.
 * Durations in milliseconds; see ProxyOptions for defaults and what 0 means.
 */
export interface ConnectionSettings {
  /** TCP connect timeout per attempt (> 0). */
  readonly connectTimeout: number;
  /** Time the backend has to send its first byte once the client's opening is complete; 0: no first-byte failover. */
  readonly firstByteTimeout: number;
  /** Client bytes kept for replay per connection; past it the connection commits. */
  readonly firstByteBufferBytes: number;
  /** Time the client has to complete its opening message from the first backend connect; 0: no limit. */
  readonly clientHelloTimeout: number;
  /** TCP keepalive initial delay on both sides; 0: the kernel default. */
  readonly keepAliveInitialDelay: number;
}

/**
 * Everything a Connection needs of its owner, handed in at construction (TcpProxy builds one, privately). The
 * connection holds at most one lease at a time and hands it back exactly once, through {@link detach} or
 * {@link finished}; the host keeps the pool's counters and its own index of connections per backend with it.
 */
export interface ConnectionHost {
  readonly clock: Clock;
  readonly settings: ConnectionSettings;
  /** Opens the TCP connection to a backend (net.connect unless a test injects another). */
  readonly dial: Dialer;
  /**
   * Picks the next backend for `conn`, skipping the ones it left (`left`), and takes a lease on it; undefined when
   * none is left.
   * `cause`: why the connection left its previous backend (it is then counted as a retry); undefined on the first.
   */
  attach(conn: Connection, left: ReadonlySet<Backend> | undefined, cause: LeaveCause | undefined): BackendLease | undefined;
  /** The TCP handshake with the lease's backend completed. */
  connected(lease: BackendLease): void;
  /** `conn` gives its lease back before committing to that backend (the attempt failed, or the backend went down). */
  detach(conn: Connection, lease: BackendLease): void;
  /** A dial attempt to `backend` failed (the host reports it to the pool unless the failure was local). */
  dialFailed(backend: Backend, reason: DialFailureReason, error: Error | undefined): void;
  /**
   * Takes `n` bytes from the process-wide replay budget; false (nothing taken) when it would exceed it. `force`
   * takes them regardless (bytes already read that must not be lost).
   */
  reserveReplay(n: number, force: boolean): boolean;
  /** Gives replay bytes back to the budget. */
  releaseReplay(n: number): void;
  /** The client socket failed (the host passes it on to whoever listens). */
  clientError(error: Error): void;
  /** `conn` is fully closed; `lease` is the one it still held, if any. */
  finished(conn: Connection, reason: CloseReason, lease: BackendLease | undefined): void;
}

/** A proxied client connection. Created by TcpProxy; not constructed elsewhere. */
export class Connection {
  readonly client: Socket;
  /** The backend currently dialed or committed to. */
  backend: Backend | undefined;
  upstream: Socket | undefined;
  /** Epoch ms of accept. */
  readonly openedAt: number;
  /**
   * `probing` and `piping`: the TCP handshake with {@link backend} is done (its lease is open). `dialing`:
   * connecting, or between a failed attempt and the next.
   */
  phase: Phase = 'dialing';
  private readonly host: ConnectionHost;
  /** The claim on {@link backend} while attached to it; handed back to the host exactly once. */
  private lease: BackendLease | undefined;
  /** Backends this connection left before committing; created on the first move (most connections never move). */
  private left: Set<Backend> | undefined;
  private timer: TimerHandle | undefined;
  /** Runs from the first backend connect until the client's opening message is complete (--client-hello-timeout). */
  private helloTimer: TimerHandle | undefined;
  /** Runs once one side has closed, until the other does (see LINGER_MS); cleared by finish(). */
  private lingerTimer: TimerHandle | undefined;
  /** Tracks the client's opening message; undefined once it is complete. */
  private opening: ClientOpening | undefined = new ClientOpening();
  /** Client bytes kept for replay while probing; undefined once committed or past the bound. */
  private replay: Buffer[] | undefined = [];
  private replayBytes = 0;
  private clientEnded = false;
  private clientClosed = false;
  private upstreamClosed = false;
  private clientAttached = false;
  private closeReason: CloseReason = 'normal';
  /** This connection's own read buffer in bulk mode; undefined: reads use the shared small buffer. */
  private ownReadBuf: Buffer | undefined;
  private smallReads = 0;
  /** Identifies the current dial attempt, so reads of an abandoned upstream are ignored. */
  private attempt = 0;
  /** Why the connection left its previous backend; a retry is counted only when a next backend is actually dialed. */
  private leaveCause: LeaveCause | undefined;
  // Quiet-moment bookkeeping for the rebalancer: one clock read and two number writes per read, nothing else.
  /** Epoch ms of the last bytes read from the client (0: none yet). */
  lastClientByteAt = 0;
  /** Epoch ms of the last bytes read from the backend (0: none yet). */
  lastServerByteAt = 0;
  /** True when the latest bytes went backend → client (no request waiting for its answer, as far as TCP shows). */
  serverSpokeLast = false;

  constructor(host: ConnectionHost, client: Socket, now: number) {
    this.host = host;
    this.client = client;
    this.openedAt = now;
    this.onClientData = this.onClientData.bind(this);
    this.onClientEnd = this.onClientEnd.bind(this);
    this.onClientError = this.onClientError.bind(this);
    this.onClientClose = this.onClientClose.bind(this);
    this.onClientDrain = this.onClientDrain.bind(this);
    this.onUpstreamData = this.onUpstreamData.bind(this);
    this.onUpstreamEnd = this.onUpstreamEnd.bind(this);
    this.onUpstreamError = this.onUpstreamError.bind(this);
    this.onUpstreamClose = this.onUpstreamClose.bind(this);
    this.onUpstreamDrain = this.onUpstreamDrain.bind(this);
    this.onUpstreamConnect = this.onUpstreamConnect.bind(this);
    this.onTimeout = this.onTimeout.bind(this);
    this.onHelloTimeout = this.onHelloTimeout.bind(this);
    client.setNoDelay(true);
    client.setKeepAlive(true, host.settings.keepAliveInitialDelay);
    client.on('error', this.onClientError);
    client.on('close', this.onClientClose);
  }

  /** Starts dialing the first backend. */
  start(): void {
    this.dialNext();
  }

  /** Bytes received from the client so far (live; exact after close). */
  get bytesFromClient(): number {
    return this.client.bytesRead;
  }

  /** Bytes sent to the client so far. */
  get bytesToClient(): number {
    return this.client.bytesWritten;
  }

  private dialNext(): void {
    const lease = this.host.attach(this, this.left, this.leaveCause);
    if (!lease) {
      this.fail(this.backend === undefined ? 'no_backend' : 'all_backends_failed');
      return;
    }
    const backend = lease.backend;
    this.backend = backend;
    this.lease = lease;
    const attempt = ++this.attempt;
    const up = this.host.dial(backend, {
      buffer: () => this.nextReadBuffer(),
      callback: (n, buf) => (attempt === this.attempt ? this.onUpstreamRead(n, buf as Buffer) : false),
    });
    this.upstream = up;
    this.upstreamClosed = false;
    up.on('connect', this.onUpstreamConnect);
    up.on('error', this.onUpstreamError);
    up.on('close', this.onUpstreamClose);
    this.timer = this.host.clock.setTimeout(this.onTimeout, this.host.settings.connectTimeout);
  }

  private onUpstreamConnect(): void {
    const host = this.host;
    host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    const up = this.upstream!;
    up.setNoDelay(true);
    up.setKeepAlive(true, host.settings.keepAliveInitialDelay);
    host.connected(this.lease!);
    up.on('data', this.onUpstreamData);
    up.on('end', this.onUpstreamEnd);
    up.on('drain', this.onUpstreamDrain);
    if (!this.clientAttached) {
      this.clientAttached = true;
      if (host.settings.clientHelloTimeout > 0) this.helloTimer = host.clock.setTimeout(this.onHelloTimeout, host.settings.clientHelloTimeout);
      this.client.on('data', this.onClientData);
      this.client.on('end', this.onClientEnd);
      this.client.on('drain', this.onClientDrain);
    }
    if (host.settings.firstByteTimeout === 0 || this.replay === undefined) {
      this.commit();
    } else {
      this.phase = 'probing';
      // Replay what an abandoned backend never answered; the timer restarts once the client's opening is whole.
      for (const chunk of this.replay) up.write(chunk);
      if (this.opening === undefined) this.startFirstByteTimer();
      if (this.clientEnded) up.end();
    }
    this.client.resume();
  }

  /**
   * The first-byte timer runs only once the client's opening message is complete: a TLS server answers a
   * ClientHello only when it has all of it, so silence before that is the client's doing, never the backend's.
   */
  private startFirstByteTimer(): void {
    if (this.phase === 'probing' && this.replay !== undefined && this.timer === undefined) {
      this.timer = this.host.clock.setTimeout(this.onTimeout, this.host.settings.firstByteTimeout);
    }
  }

  /** The client did not complete its opening message in time: it holds a slot for nothing. */
  private onHelloTimeout(): void {
    this.helloTimer = undefined;
    this.destroy('client_timeout');
  }

  /**
   * The backend spoke before the client's opening was complete (a server-speaks-first protocol, or an answer to a
   * short plain-text opening): the conversation is under way, so the client is not idle.
   */
  private onServerSpoke(): void {
    this.host.clock.clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
  }

  private onOpeningComplete(): void {
    this.opening = undefined;
    this.host.clock.clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
    this.startFirstByteTimer();
  }

  private onTimeout(): void {
    this.timer = undefined;
    this.retry(this.phase === 'probing' ? 'first_byte_timeout' : 'timeout', undefined);
  }

  /** The current attempt failed before committing: reports it and dials the next backend. */
  private retry(reason: DialFailureReason, err: Error | undefined): void {
    const backend = this.backend!;
    this.leaveUpstream();
    this.host.dialFailed(backend, reason, err);
    this.dialElsewhere(reason);
  }

  /** Abandons the current upstream before committing to it and gives its backend's lease back. */
  private leaveUpstream(): void {
    const up = this.upstream!;
    this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    up.removeAllListeners('data');
    up.removeListener('close', this.onUpstreamClose);
    up.removeListener('end', this.onUpstreamEnd);
    up.removeListener('drain', this.onUpstreamDrain);
    up.removeListener('connect', this.onUpstreamConnect);
    up.on('error', noop);
    up.destroy();
    this.attempt++;
    (this.left ??= new Set()).add(this.backend!);
    const lease = this.lease;
    this.lease = undefined;
    if (lease) this.host.detach(this, lease);
    this.upstream = undefined;
    this.phase = 'dialing';
  }

  /** Dials the next backend after leaving the previous one for `cause` (or finishes: the client is gone). */
  private dialElsewhere(cause: LeaveCause): void {
    this.leaveCause = cause;
    if (this.clientClosed) {
      this.finish();
      return;
    }
    // While dialing again, stop reading the client: its bytes wait in the kernel, not in our memory.
    this.client.pause();
    this.dialNext();
  }

  private commit(): void {
    this.phase = 'piping';
    this.dropReplay();
    this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Releases the replay buffer and its share of the process-wide replay budget. */
  private dropReplay(): void {
    this.host.releaseReplay(this.replayBytes);
    this.replay = undefined;
    this.replayBytes = 0;
  }

  private onClientData(chunk: Buffer): void {
    const up = this.upstream;
    this.lastClientByteAt = this.host.clock.now();
    this.serverSpokeLast = false;
    if (this.phase === 'dialing') {
      // Only reachable in the tick between a retry's pause() and the next dial: keep the bytes for replay
      // (taken from the budget unconditionally: the client cannot add more while paused).
      if (this.replay !== undefined) {
        this.replay.push(chunk);
        this.replayBytes += chunk.length;
        this.host.reserveReplay(chunk.length, true);
      }
      if (this.opening?.feed(chunk)) this.onOpeningComplete();
      this.client.pause();
      return;
    }
    if (this.phase === 'probing' && this.replay !== undefined) {
      if (this.replayBytes + chunk.length <= this.host.settings.firstByteBufferBytes && this.host.reserveReplay(chunk.length, false)) {
        this.replay.push(chunk);
        this.replayBytes += chunk.length;
      } else {
        // Past the per-connection bound, or the process-wide one (--replay-buffer-total): the connection can no
        // longer be replayed, so it commits to this backend.
        this.commit();
      }
    }
    if (this.opening?.feed(chunk)) this.onOpeningComplete();
    if (up === undefined || this.upstreamClosed) return;
    if (!up.write(chunk)) this.client.pause();
    // Committed (no replay copy) and nothing left queued: the kernel has the bytes, the chunk is garbage.
    else if (this.replay === undefined && up.writableLength === 0) releaseReadBuffer(chunk);
  }

  private onClientDrain(): void {
    this.upstream?.resume();
  }

  private onUpstreamDrain(): void {
    this.client.resume();
  }

  private onUpstreamData(chunk: Buffer): void {
    if (this.phase === 'probing') this.commit();
    if (this.helloTimer !== undefined) this.onServerSpoke();
    this.lastServerByteAt = this.host.clock.now();
    this.serverSpokeLast = true;
    if (!this.client.write(chunk)) this.upstream!.pause();
  }

  private nextReadBuffer(): Buffer {
    return this.ownReadBuf ?? SHARED_READ_BUF;
  }

  /** Backend bytes read through onread; returning false stops reading until the client drains. */
  private onUpstreamRead(n: number, buf: Buffer): boolean {
    if (this.phase === 'probing') this.commit();
    if (this.helloTimer !== undefined) this.onServerSpoke();
    this.lastServerByteAt = this.host.clock.now();
    this.serverSpokeLast = true;
    const c = this.client;
    if (buf === SHARED_READ_BUF) {
      // Every idle connection reads into the shared buffer next: never let a pending write reference it. The
      // copy comes from Node's pool (one small Buffer object; no view of the shared buffer is made).
      const copy = Buffer.allocUnsafe(n);
      buf.copy(copy, 0, 0, n);
      const ok = c.write(copy);
      if (n === buf.length) this.ownReadBuf = Buffer.allocUnsafeSlow(READ_BUF_LARGE);
      return ok;
    }
    // A full read (the usual case in bulk) writes the buffer itself: no view object per chunk.
    const ok = c.write(n === buf.length ? buf : buf.subarray(0, n));
    if (c.writableLength > 0) {
      // The write did not reach the kernel synchronously and still references `buf`: read into a fresh one.
      this.ownReadBuf = Buffer.allocUnsafeSlow(READ_BUF_LARGE);
      this.smallReads = 0;
    } else if (n < READ_BUF_SMALL) {
      if (++this.smallReads >= SMALL_READS_BEFORE_SHRINK) {
        this.ownReadBuf = undefined;
        this.smallReads = 0;
      }
    } else {
      this.smallReads = 0;
    }
    return ok;
  }

  private onClientEnd(): void {
    this.clientEnded = true;
    // Half-close: forward the client's FIN, keep relaying the backend's answer.
    if (this.upstream && !this.upstreamClosed && this.phase !== 'dialing') this.upstream.end();
  }

  private onUpstreamEnd(): void {
    if (this.phase === 'probing') this.commit();
    this.client.end();
  }

  private onClientError(err: NodeJS.ErrnoException): void {
    this.closeReason = 'client_error';
    this.host.clientError(err);
    // Propagate a reset as a reset so the API server sees what the client did.
    const up = this.upstream;
    if (up && !up.destroyed) {
      if (err.code === 'ECONNRESET' && up.readyState === 'open') up.resetAndDestroy();
      else up.destroy();
    }
  }

  private onUpstreamError(err: NodeJS.ErrnoException): void {
    // Before the backend's first byte reached the client nothing is lost by trying the next backend.
    if (this.phase === 'dialing' || (this.phase === 'probing' && this.client.bytesWritten === 0)) {
      this.retry(this.phase === 'dialing' ? dialReason(err) : 'reset', err);
      return;
    }
    if (this.closeReason === 'normal') this.closeReason = 'backend_error';
    if (err.code === 'ECONNRESET' && !this.client.destroyed) this.client.resetAndDestroy();
    else this.client.destroy();
  }

  private onClientClose(): void {
    this.clientClosed = true;
    // Nothing will be replayed for a client that is gone: give its bytes back to the budget now.
    this.dropReplay();
    if (this.phase === 'dialing' && this.upstream) {
      // The client left while we were dialing: nothing to forward.
      this.upstream.destroy();
      this.finish();
      return;
    }
    const up = this.upstream;
    if (up && !this.upstreamClosed) {
      if (!up.writableEnded) up.end();
      up.resume();
      this.linger();
    }
    this.maybeFinish();
  }

  private onUpstreamClose(): void {
    this.upstreamClosed = true;
    this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (this.phase === 'dialing' && !this.clientClosed) return; // error handler already retried
    const c = this.client;
    if (!this.clientClosed) {
      // The backend is gone: finish our half towards the client and keep reading so its FIN is seen (a paused
      // client would otherwise never close: the leak bare pipe() has).
      if (!c.writableEnded) c.end();
      c.removeListener('data', this.onClientData);
      c.on('data', noop);
      c.resume();
      this.linger();
    }
    this.maybeFinish();
  }

  /**
   * Gives the side still open {@link LINGER_MS} to finish its half, then destroys it. Only one side ever lingers
   * (the other has closed); its close finishes the connection, and finish() clears the timer. One timer and one
   * closure, made only when a side closes (held connections carry no handler for it).
   */
  private linger(): void {
    this.host.clock.clearTimeout(this.lingerTimer);
    this.lingerTimer = this.host.clock.setTimeout(() => this.onLingerTimeout(), LINGER_MS);
  }

  private onLingerTimeout(): void {
    this.lingerTimer = undefined;
    this.upstream?.destroy();
    this.client.destroy();
  }

  private maybeFinish(): void {
    if (this.clientClosed && (this.upstream === undefined || this.upstreamClosed || this.phase === 'dialing')) this.finish();
  }

  /** Ends the connection: no backend could be used. */
  private fail(reason: CloseReason): void {
    this.closeReason = reason;
    this.client.destroy();
    this.finish();
  }

  /** Closes both sides at once (backend down, drain timeout, shutdown, rebalance). */
  destroy(reason: CloseReason): void {
    if (this.phase === 'closed') return;
    // A connection still dialing, or probing with nothing from the backend yet, loses nothing by moving: when
    // its backend goes down it moves elsewhere (with replay) instead of failing the client. The pool took the
    // backend down itself: nothing is reported back to it as a dial failure.
    if (reason === 'backend_down' && this.upstream && (this.phase === 'dialing' || (this.phase === 'probing' && this.client.bytesWritten === 0))) {
      this.leaveUpstream();
      this.dialElsewhere('backend_down');
      return;
    }
    if (this.closeReason === 'normal') this.closeReason = reason;
    this.upstream?.destroy();
    this.client.destroy();
  }

  private finish(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.host.clock.clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
    this.host.clock.clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    this.dropReplay();
    const lease = this.lease;
    this.lease = undefined;
    this.host.finished(this, this.closeReason, lease);
  }
}

function noop(): void {}
