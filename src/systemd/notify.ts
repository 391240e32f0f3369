/**
 * systemd readiness and watchdog notifications (`sd_notify(3)`) without native code.
 *
 * Why `systemd-notify` and not a socket of our own: the protocol is one datagram on an `AF_UNIX`/`SOCK_DGRAM`
 * socket, and Node can open neither (`dgram` is UDP only, `net` is stream only); a native addon would need a
 * compiler or prebuilt binaries on every node. `systemd-notify(1)` ships with systemd itself, so it is present
 * wherever `NOTIFY_SOCKET` is set. Its known weakness is attribution: systemd maps a message to a unit through the
 * sender's cgroup, looked up from the sender's PID, and a short-lived sender may be gone before that lookup. Since
 * systemd 246, `systemd-notify` (without `--no-block`) follows its message with a `BARRIER=1` datagram carrying a
 * pipe and waits until systemd has processed both, so the sender is alive during the lookup (systemd#2739 fixed
 * by sd_notify_barrier). Because the sender is a child of apilb, not the main process, the unit needs
 * `NotifyAccess=all`. We deliberately do not pass `--pid=$MAINPID`: spoofing another PID in SCM_CREDENTIALS needs
 * CAP_SYS_ADMIN (the hardened unit has no capabilities, so systemd-notify falls back to its own PID anyway) and it
 * would add a `MAINPID=` field. On systemd < 246 messages can be lost; docs/install.md tells such hosts to use
 * `Type=exec` without `WatchdogSec=`.
 */
import { spawn } from 'node:child_process';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { ApilbError, OptionError } from '../errors.js';

/** How a {@link Notifier} is built; every field is optional. */
export interface NotifierOptions {
  /** Environment holding `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`. Default `process.env` (not modified). */
  env?: NodeJS.ProcessEnv;
  /** The notify helper to run. Default `systemd-notify`, looked up in `PATH`. */
  command?: string;
  /** Our PID, compared with `WATCHDOG_PID`. Default `process.pid`. */
  pid?: number;
  /** Timer source for the watchdog loop. Default {@link systemClock} (unref'd timers). */
  clock?: Clock;
  /**
   * Time one helper run may take before it is killed and the send fails, in ms. Default 10000 (systemd-notify
   * itself gives the barrier 5 s). 0 or negative is rejected.
   */
  timeout?: number;
  /** Called with every failed send (an APILB_ERR_SYSTEMD error), e.g. to log it. Default: ignored. */
  onError?: (err: ApilbError) => void;
}

/**
 * Sends `sd_notify` messages to systemd. When `NOTIFY_SOCKET` is unset (not started by systemd with
 * `Type=notify`) every method is a no-op that resolves to false at once. Messages are sent one at a time in call
 * order. Sends never reject (a daemon fires them and moves on; an unhandled rejection would kill it): they resolve
 * to true once systemd has processed the message, or to false after passing the error to `onError`.
 */
export class Notifier {
  /** The notify socket (`/run/systemd/notify` or an abstract `@name`), undefined when not under systemd. */
  readonly socket: string | undefined;
  /**
   * Watchdog ping interval in ms: half of `WATCHDOG_USEC`, when `WATCHDOG_PID` is absent or our PID. 0: systemd
   * expects no pings.
   */
  readonly watchdogInterval: number;
  private readonly command: string;
  private readonly clock: Clock;
  private readonly timeout: number;
  private readonly onError: (err: ApilbError) => void;
  private readonly env: NodeJS.ProcessEnv;
  private queue: Promise<void> = Promise.resolve();
  private timer: TimerHandle | undefined;
  private pinging = false;
  private closed = false;
  /** Set by {@link stopping}: from then on a helper killed by a signal is expected, not a failure. */
  private stopSent = false;

  constructor(opts: NotifierOptions = {}) {
    const env = opts.env ?? process.env;
    const timeout = opts.timeout ?? 10_000;
    if (!Number.isFinite(timeout) || timeout <= 0) throw new OptionError('timeout', `must be a positive number of ms, got ${timeout}`);
    this.timeout = timeout;
    this.command = opts.command ?? 'systemd-notify';
    this.clock = opts.clock ?? systemClock;
    const onError = opts.onError;
    // A throwing callback must not turn a send into a rejection (see the class comment).
    this.onError = (err) => {
      try {
        onError?.(err);
      } catch {
        /* the caller's problem; sends still resolve */
      }
    };
    const socket = env.NOTIFY_SOCKET;
    this.socket = socket === undefined || socket === '' ? undefined : socket;
    this.watchdogInterval = this.socket ? watchdogIntervalFrom(env, opts.pid ?? process.pid) : 0;
    // The helper gets only what it needs: NOTIFY_SOCKET plus PATH to be found. LISTEN_* and the like stay out.
    this.env = { NOTIFY_SOCKET: this.socket, PATH: env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' };
  }

  /** True when running under systemd with a notify socket. */
  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** `READY=1` (plus `STATUS=` when given): listeners are up and the first health round is done. */
  ready(status?: string): Promise<boolean> {
    return this.send(status === undefined ? ['READY=1'] : ['READY=1', statusField(status)]);
  }

  /**
   * `STOPPING=1` (plus `STATUS=`): shutdown has begun. Stops the watchdog loop. When systemd stops the unit it
   * sends SIGTERM to every process of the cgroup, and keeps doing so while new ones appear, so a helper started
   * now (or still running) may be killed on its way: from this call on, a helper that dies by a signal makes the
   * send resolve false without calling `onError` (systemd knows we are stopping; nothing was lost).
   */
  stopping(status?: string): Promise<boolean> {
    this.stopWatchdog();
    this.stopSent = true;
    return this.send(status === undefined ? ['STOPPING=1'] : ['STOPPING=1', statusField(status)]);
  }

  /** `STATUS=text`, shown by `systemctl status`. Newlines become spaces. */
  status(text: string): Promise<boolean> {
    return this.send([statusField(text)]);
  }

  /** One `WATCHDOG=1` keep-alive ping. */
  watchdog(): Promise<boolean> {
    return this.send(['WATCHDOG=1']);
  }

  /**
   * Pings `WATCHDOG=1` every {@link watchdogInterval} ms until {@link stopping}, {@link stopWatchdog} or
   * {@link close}. Returns false (and does nothing) when systemd expects no pings. A ping still in flight when
   * the next is due is not doubled up.
   */
  startWatchdog(): boolean {
    if (this.watchdogInterval <= 0 || this.closed) return false;
    if (this.timer !== undefined) return true;
    const tick = (): void => {
      this.timer = this.clock.setTimeout(tick, this.watchdogInterval);
      if (this.pinging) return;
      this.pinging = true;
      void this.watchdog().finally(() => {
        this.pinging = false;
      });
    };
    tick();
    return true;
  }

  /** Stops the watchdog loop (no-op when not running). */
  stopWatchdog(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Stops the watchdog loop and waits for messages already queued; later calls are no-ops. */
  async close(): Promise<void> {
    this.stopWatchdog();
    this.closed = true;
    await this.queue;
  }

  /**
   * Sends raw `KEY=VALUE` assignments in one datagram. Resolves to true when systemd has processed the message;
   * to false (after `onError` got an APILB_ERR_SYSTEMD error) when the helper cannot run, fails or times out, or
   * a field is malformed: a value with a newline would inject another assignment; to false without `onError`
   * when the helper was killed by a signal after {@link stopping}.
   */
  send(fields: readonly string[]): Promise<boolean> {
    if (!this.socket || this.closed) return Promise.resolve(false);
    for (const f of fields) {
      if (!/^[A-Z_][A-Z0-9_]*=/.test(f) || /[\n\0]/.test(f)) {
        this.onError(new ApilbError('APILB_ERR_SYSTEMD', `invalid sd_notify field ${JSON.stringify(f)}`));
        return Promise.resolve(false);
      }
    }
    const next = this.queue
      .then(() => this.runHelper(fields))
      .then(
        (delivered) => delivered,
        (err: ApilbError) => {
          this.onError(err);
          return false;
        },
      );
    this.queue = next.then(() => {});
    return next;
  }

  /** Runs the helper once: true when it succeeded, false when it was killed by a signal after {@link stopping}. */
  private runHelper(fields: readonly string[]): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.command, [...fields], { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      let settled = false;
      const timer = this.clock.setTimeout(onHelperTimeout, this.timeout);
      const fail = (why: string, cause?: unknown): void => {
        if (settled) return;
        settled = true;
        this.clock.clearTimeout(timer);
        reject(new ApilbError('APILB_ERR_SYSTEMD', `sd_notify ${fields.join(' ')} failed: ${why}`, { cause }));
      };
      function onHelperTimeout(): void {
        child.kill('SIGKILL');
        fail('systemd-notify did not finish in time');
      }
      function onHelperStderr(chunk: Buffer): void {
        if (stderr.length < 2000) stderr += chunk.toString();
      }
      const onHelperError = (err: NodeJS.ErrnoException): void => {
        fail(err.code === 'ENOENT' ? `${this.command} not found in PATH` : err.message, err);
      };
      const onHelperClose = (code: number | null, signal: NodeJS.Signals | null): void => {
        if (code === 0) {
          if (settled) return;
          settled = true;
          this.clock.clearTimeout(timer);
          resolve(true);
        } else if (signal !== null && this.stopSent && !settled) {
          settled = true;
          this.clock.clearTimeout(timer);
          resolve(false);
        } else {
          fail(`${this.command} exited with ${code ?? signal}${stderr ? `: ${stderr.trim()}` : ''}`);
        }
      };
      child.stderr.on('data', onHelperStderr);
      child.once('error', onHelperError);
      child.once('close', onHelperClose);
    });
  }
}

/** `WATCHDOG_USEC/2` in ms when the watchdog is meant for `pid` (or `WATCHDOG_PID` is absent); 0 otherwise. */
export function watchdogIntervalFrom(env: NodeJS.ProcessEnv, pid: number): number {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isInteger(usec) || usec <= 0) return 0;
  const forPid = env.WATCHDOG_PID;
  if (forPid !== undefined && forPid !== '' && Number(forPid) !== pid) return 0;
  return Math.max(1, Math.floor(usec / 2000));
}

function statusField(text: string): string {
  return 'STATUS=' + text.replace(/[\r\n\0]+/g, ' ');
}
