/**
 * Failover with default settings, measured on the real daemon: three kube-apiserver stand-ins with real TLS,
 * watches through apilb and a steady stream of new connections while one backend fails in each of the ways an
 * API server fails. Fault scripts are data (SCENARIOS); the blackhole runs inside a network namespace created
 * here, with its own packet filter, so no rule ever touches the host's.
 *
 * Claims (issue 3): 0 failed new connections when one of three crashes or shuts down gracefully; a watch stuck
 * on a hung or blackholed backend is closed within 5 s; a recovered backend takes new connections within 5 s;
 * watches on a draining backend are left alone.
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createTestCA } from './support/index.js';
import { runScenario, type Outcome, type Scenario } from './support/failover-scenarios.js';

const ca = createTestCA();
const other = createTestCA({ name: 'other-ca' });
t.teardown(() => {
  ca.remove();
  other.remove();
});

/** What a row expects. `states`: the victim's transitions from startup on, in order. */
interface Expect {
  states: string[];
  /** Failed new connections allowed (0 for crash/graceful: the claim). Default: not checked, only reported. */
  maxFailures?: number;
  /** The victim's watches are closed within this many ms of the fault. */
  streamsClosedWithinMs?: number;
  /** The victim's watches were all still open when it turned draining. */
  streamsLeftOpenWhileDraining?: boolean;
  recoveryWithinMs?: number;
  panic?: boolean;
  finalStates?: string[];
}

interface Row {
  scenario: Scenario;
  expect: Expect;
  /** Run inside a fresh network namespace (needs root and iproute2 + iptables). */
  netns?: boolean;
}

const SCENARIOS: Row[] = [
  {
    // The process dies: every connection is reset, the port refuses.
    scenario: {
      name: 'crash',
      script: [
        { do: 'crash' },
        { waitState: 'down', timeoutMs: 6000 },
        { waitVictimStreamsClosed: true, timeoutMs: 1000 },
        { waitRequests: 150, timeoutMs: 10_000 },
      ],
    },
    expect: { states: ['up', 'down'], maxFailures: 0, streamsClosedWithinMs: 1000 },
  },
  {
    // kube-apiserver's graceful termination: /readyz 500 for shutdown-delay, then the listener closes.
    scenario: {
      name: 'graceful',
      script: [
        { do: 'graceful', delayMs: 3500, drainTimeoutMs: 2000 },
        { waitState: 'draining', timeoutMs: 4000 },
        { waitState: 'down', timeoutMs: 8000 },
        { waitVictimStreamsClosed: true, timeoutMs: 3000 },
        { waitRequests: 150, timeoutMs: 10_000 },
      ],
    },
    expect: { states: ['up', 'draining', 'down'], maxFailures: 0, streamsLeftOpenWhileDraining: true },
  },
  {
    // A stopped process: the kernel still accepts, nothing is read or written; watches go silent.
    scenario: { name: 'hang', script: [{ do: 'hang' }, { waitState: 'down', timeoutMs: 6000 }, { waitVictimStreamsClosed: true, timeoutMs: 1000 }] },
    expect: { states: ['up', 'down'], streamsClosedWithinMs: 5000 },
  },
  {
    // The same on an idle node (no new connections, so no passive signal): active checks alone, the worst case.
    scenario: {
      name: 'hang, idle node',
      load: false,
      script: [{ do: 'hang' }, { waitState: 'down', timeoutMs: 6000 }, { waitVictimStreamsClosed: true, timeoutMs: 1000 }],
    },
    expect: { states: ['up', 'down'], streamsClosedWithinMs: 5000 },
  },
  {
    // The host is gone: no SYN-ACK, nothing on open connections.
    scenario: { name: 'blackhole', script: [{ do: 'blackhole' }, { waitState: 'down', timeoutMs: 6000 }, { waitVictimStreamsClosed: true, timeoutMs: 1000 }] },
    expect: { states: ['up', 'down'], streamsClosedWithinMs: 5000 },
    netns: true,
  },
  {
    scenario: {
      name: 'blackhole, idle node',
      load: false,
      script: [{ do: 'blackhole' }, { waitState: 'down', timeoutMs: 6000 }, { waitVictimStreamsClosed: true, timeoutMs: 1000 }],
    },
    expect: { states: ['up', 'down'], streamsClosedWithinMs: 5000 },
    netns: true,
  },
  {
    // One check times out, the next passes: no transition, nothing closed. (No client load: new connections
    // to a hung server would be a real failure signal of their own.)
    scenario: {
      name: 'slow check',
      load: false,
      script: [{ do: 'hang' }, { waitFailedCheck: true, timeoutMs: 4000 }, { do: 'resume' }, { waitOkChecks: 2, timeoutMs: 6000 }],
    },
    expect: { states: ['up'], maxFailures: 0, finalStates: ['up', 'up', 'up'] },
  },
  {
    // Anonymous auth off and no client certificate for apilb: the victim answers 401, so it is alive and stays up
    // (a credential problem must never take backends out of rotation; it is counted and logged instead).
    scenario: {
      name: '401',
      setup: 'anonymous-off',
      script: [
        { waitOkChecks: 3, timeoutMs: 8000 },
        { waitRequests: 50, timeoutMs: 10_000 },
      ],
    },
    expect: { states: ['up'], maxFailures: 0, finalStates: ['up', 'up', 'up'] },
  },
  {
    // apilb was given the wrong CA: every backend fails its checks, yet clients keep reaching the API (panic).
    scenario: {
      name: 'wrong CA',
      setup: 'wrong-ca',
      script: [
        { waitPanic: true, timeoutMs: 4000 },
        { waitRequests: 50, timeoutMs: 10_000 },
      ],
    },
    expect: { states: ['down'], maxFailures: 0, panic: true, finalStates: ['down', 'down', 'down'] },
  },
  {
    // Hung, marked down, then running again: it takes new connections again.
    scenario: {
      name: 'recovery',
      script: [
        { do: 'hang' },
        { waitState: 'down', timeoutMs: 6000 },
        { do: 'resume' },
        { waitState: 'up', timeoutMs: 6000 },
        { waitVictimServes: true, timeoutMs: 6000 },
      ],
    },
    expect: { states: ['up', 'down', 'up'], recoveryWithinMs: 5000 },
  },
];

const measured: Outcome[] = [];

function check(tt: Test, out: Outcome, row: Row): void {
  const e = row.expect;
  tt.same(out.states, e.states, 'victim state sequence');
  if (e.finalStates) tt.same(out.finalStates, e.finalStates, 'final states');
  if (e.maxFailures !== undefined) {
    tt.ok(
      out.failures <= e.maxFailures,
      `failed new connections: ${out.failures} of ${out.requests} (${out.failureSamples.join('; ')}); in flight at the fault: ${out.inflightFailures}`,
    );
  }
  if (row.scenario.load !== false) tt.ok(out.requests > 0, `new connections made during the scenario: ${out.requests}`);
  tt.equal(out.otherStreamsClosed, 0, 'watches on healthy backends untouched');
  if (e.streamsClosedWithinMs !== undefined || e.streamsLeftOpenWhileDraining) tt.ok(out.victimStreams >= 1, `watches on the victim: ${out.victimStreams}`);
  if (e.streamsClosedWithinMs !== undefined) {
    tt.ok(
      out.victimStreamsClosedMs !== null && out.victimStreamsClosedMs <= e.streamsClosedWithinMs,
      `victim watches closed ${out.victimStreamsClosedMs} ms after the fault (≤ ${e.streamsClosedWithinMs})`,
    );
  }
  if (e.streamsLeftOpenWhileDraining) tt.equal(out.victimStreamsOpenAtDraining, out.victimStreams, 'every victim watch still open when it turned draining');
  if (e.recoveryWithinMs !== undefined)
    tt.ok(
      out.recoveryMs !== null && out.recoveryMs <= e.recoveryWithinMs,
      `recovered backend answered ${out.recoveryMs} ms after it resumed (≤ ${e.recoveryWithinMs})`,
    );
  if (e.panic !== undefined) tt.equal(out.panicSeen, e.panic, 'panic mode');
}

/** Creates a network namespace with loopback up; throws (never skips) when that is impossible. */
function createNetns(name: string): void {
  for (const bin of ['ip', 'iptables']) {
    if (spawnSync('which', [bin]).status !== 0)
      throw new Error(`${bin} is missing: install iproute2 and iptables (the blackhole scenario must not be skipped)`);
  }
  const add = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (add.status !== 0) throw new Error(`cannot create network namespace ${name} (needs root / CAP_SYS_ADMIN): ${add.stderr.trim()}`);
  const up = spawnSync('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up'], { encoding: 'utf8' });
  if (up.status !== 0) throw new Error(`cannot bring up loopback in ${name}: ${up.stderr.trim()}`);
}

/** Runs scenarios in one child process inside network namespace `ns`; resolves with one outcome or error per name. */
function runInNetns(ns: string, list: Scenario[]): Promise<Map<string, Outcome | Error>> {
  const entry = fileURLToPath(new URL('./support/failover-netns-child.ts', import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, entry, JSON.stringify(list)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const results = new Map<string, Outcome | Error>();
      for (const line of out.split('\n')) {
        if (line.startsWith('RESULT ')) {
          const o = JSON.parse(line.slice(7)) as Outcome;
          results.set(o.name, o);
        } else if (line.startsWith('ERROR ')) {
          const e = JSON.parse(line.slice(6)) as { name: string; error: string };
          results.set(e.name, new Error(e.error));
        }
      }
      if (results.size === 0) return reject(new Error(`netns child exited ${code}: ${out.trim()} ${err.trim().slice(-2000)}`));
      resolve(results);
    });
  });
}

// Every netns row runs in one child (one namespace, one start-up), on first use.
let netnsRun: Promise<Map<string, Outcome | Error>> | undefined;
function netnsOutcome(name: string): Promise<Outcome> {
  netnsRun ??= (() => {
    const ns = `apilb-t-${process.pid}`;
    // Registered first: a namespace created by a half-failed createNetns is removed too.
    t.teardown(() => {
      spawnSync('ip', ['netns', 'del', ns]);
    });
    createNetns(ns);
    return runInNetns(
      ns,
      SCENARIOS.filter((r) => r.netns).map((r) => r.scenario),
    );
  })();
  return netnsRun.then((m) => {
    const r = m.get(name);
    if (!r) throw new Error(`the netns child reported nothing for ${name}`);
    if (r instanceof Error) throw r;
    return r;
  });
}

for (const row of SCENARIOS) {
  t.test(`failover: ${row.scenario.name}`, async (tt) => {
    let out: Outcome;
    if (row.netns) {
      out = await netnsOutcome(row.scenario.name);
    } else {
      out = await runScenario(row.scenario, ca, other);
    }
    measured.push(out);
    tt.comment(JSON.stringify(out));
    check(tt, out, row);
  });
}

t.test('measurements', async (tt) => {
  for (const o of measured) {
    tt.comment(
      `${o.name}: states=${o.states.join('>') || '-'} draining=${o.drainingMs ?? '-'}ms down=${o.downMs ?? '-'}ms ` +
        `watchesClosed=${o.victimStreamsClosedMs ?? 'open'}ms recovery=${o.recoveryMs ?? '-'}ms ` +
        `failures new=${o.failures} inflight=${o.inflightFailures} of ${o.requests}`,
    );
  }
  tt.equal(measured.length, SCENARIOS.length, 'every scenario ran');
});
