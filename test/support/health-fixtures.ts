/**
 * Helpers for health-check tests: TLS material from a test CA, kube-apiserver stand-ins and monitors closed by
 * the test's teardown, a scripted checker for timing tests, and a count of the process's live handles.
 */
import type { Test } from 'tap';
import type { TlsMaterial } from '../../src/config/tls.js';
import type { Checker } from '../../src/health/checker.js';
import { HealthMonitor, type HealthMonitorOptions } from '../../src/health/health-monitor.js';
import type { Backend } from '../../src/pool/backend.js';
import type { CheckResult, Pool } from '../../src/pool/pool.js';
import { startFakeApiServer, type FakeApiServer, type FakeApiServerOptions } from '../../src/demo/fake-apiserver.js';
import type { TestCA } from '../../src/demo/test-ca.js';

/** TLS material trusting `ca` (optionally with a client identity / server name). */
export function tlsFor(ca: TestCA | string, extra: Partial<TlsMaterial> = {}): TlsMaterial {
  return { ca: typeof ca === 'string' ? ca : ca.cert, insecure: false, ...extra };
}

/** Starts a stand-in closed at teardown. */
export async function standIn(t: Test, opts: FakeApiServerOptions): Promise<FakeApiServer> {
  const s = await startFakeApiServer(opts);
  t.teardown(() => s.close());
  return s;
}

/** A monitor closed at teardown (not started). */
export function monitor(t: Test, opts: HealthMonitorOptions): HealthMonitor {
  const m = new HealthMonitor(opts);
  t.teardown(() => m.close());
  return m;
}

/** A checker whose results the test hands out; records when (clock time) each check started. */
export class ScriptedChecker implements Checker {
  readonly starts: number[] = [];
  closed = false;
  private pending: ((r: CheckResult) => void)[] = [];
  /** Result given to checks at once when set; otherwise checks wait for resolveNext(). */
  auto: CheckResult | undefined = { ok: true, latencyMs: 1 };

  constructor(
    readonly backend: Backend,
    private readonly now: () => number,
  ) {}

  check(signal: AbortSignal): Promise<CheckResult> {
    this.starts.push(this.now());
    if (this.auto) return Promise.resolve(this.auto);
    return new Promise((resolve) => {
      this.pending.push(resolve);
      signal.addEventListener('abort', () => resolve({ ok: false, kind: 'transport', latencyMs: 0, error: 'aborted' }));
    });
  }

  /** Settles the oldest waiting check. */
  resolveNext(r: CheckResult): void {
    this.pending.shift()?.(r);
  }

  get waiting(): number {
    return this.pending.length;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Live handles by type (TCPSocketWrap, TLSWrap, Timeout, ...), from process.getActiveResourcesInfo(). */
export function handleCounts(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of process.getActiveResourcesInfo()) out[k] = (out[k] ?? 0) + 1;
  return out;
}

/** Lets pending promise callbacks and I/O callbacks run (after FakeClock.advance fired timers). */
export function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Every `check` event of `m` for `b`, in order. */
export function recordChecks(m: HealthMonitor, b?: Backend): CheckResult[] {
  const out: CheckResult[] = [];
  m.on('check', function onRecordedCheck(ev) {
    if (!b || ev.backend === b) out.push(ev.result);
  });
  return out;
}

/** Target states of the pool transitions of `b` (or of every backend), in order. */
export function recordStates(pool: Pool, b?: Backend): string[] {
  const out: string[] = [];
  pool.on('transition', function onRecordedTransition(ev) {
    if (!b || ev.backend === b) out.push(ev.to);
  });
  return out;
}
