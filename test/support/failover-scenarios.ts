/**
 * Runs one failover scenario against the real daemon: three kube-apiserver stand-ins with real TLS, apilb with
 * default health settings in front, long-lived watches through it, and a steady stream of new client
 * connections. A scenario is data (a list of steps), so the same runner works in-process and inside a network
 * namespace (the blackhole case, which needs a packet filter of its own).
 */
import { execFileSync } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { resolveConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon.js';
import { createLogger } from '../../src/logging.js';
import { startFakeApiServer, type FakeApiServer } from '../../src/demo/fake-apiserver.js';
import type { TestCA } from '../../src/demo/test-ca.js';
import type { BackendState } from '../../src/pool/backend.js';
import { until } from './net.js';

/** One step of a fault script. */
export type Step =
  | { do: 'crash' | 'hang' | 'resume' | 'blackhole' | 'notReady' | 'ready' }
  | { do: 'graceful'; delayMs: number; drainTimeoutMs: number }
  /** Waits (bounded) until the victim's state is `state`. */
  | { waitState: BackendState; timeoutMs: number }
  /** Waits until the victim's next health check failed (then the next step runs at once). */
  | { waitFailedCheck: true; timeoutMs: number }
  /** Waits until the victim passed `n` more health checks. */
  | { waitOkChecks: number; timeoutMs: number }
  /** Waits until the victim answered a new client connection again. */
  | { waitVictimServes: true; timeoutMs: number }
  /** Waits until `n` more client requests completed (successfully or not). */
  | { waitRequests: number; timeoutMs: number }
  /** Waits until no backend is eligible (panic mode). */
  | { waitPanic: true; timeoutMs: number }
  /** Waits until the victim's watches through apilb are all closed. */
  | { waitVictimStreamsClosed: true; timeoutMs: number };

/** A scenario row. */
export interface Scenario {
  name: string;
  /** `anonymous-off`: the victim refuses anonymous /readyz (401). `wrong-ca`: apilb trusts another CA than all backends. */
  setup?: 'anonymous-off' | 'wrong-ca';
  script: Step[];
  /** New client connections during the scenario. Default true; false isolates active checks (an idle node). */
  load?: boolean;
}

/** What happened. Times are ms since the first fault step (rows without one: since apilb was ready, so a
 * negative time happened during its first check round). */
export interface Outcome {
  name: string;
  /** Target states of the victim's transitions from startup on. */
  states: string[];
  /** Every backend's final state. */
  finalStates: string[];
  panicSeen: boolean;
  requests: number;
  /** Failed requests that started after the first fault step (new connections: the claim is about these). */
  failures: number;
  /** Failed requests already in flight at the fault (a dying server takes its requests with it). */
  inflightFailures: number;
  failureSamples: string[];
  victimStreams: number;
  /** Victim watches still open when it turned `draining` (-1: it never did). */
  victimStreamsOpenAtDraining: number;
  /** Latest close of a victim watch (null: one stayed open, or there were none). */
  victimStreamsClosedMs: number | null;
  /** Watches on the other backends closed during the scenario (should be 0). */
  otherStreamsClosed: number;
  downMs: number | null;
  drainingMs: number | null;
  /** From the last `resume`/`ready` step to the victim answering a new connection. */
  recoveryMs: number | null;
}

interface Watch {
  server: string;
  closedAt: number | null;
  res: IncomingMessage;
}

const CONCURRENCY = 2;

/** Runs `sc`; `ca` signs the servers (and the client), `other` is the wrong CA. Everything is closed on return. */
export async function runScenario(sc: Scenario, ca: TestCA, other: TestCA, opts: { inNetns?: boolean } = {}): Promise<Outcome> {
  const leaf = ca.server('apiserver');
  const client = ca.client('system:node:node-1', 'system:nodes');
  const servers: FakeApiServer[] = [];
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  let daemon: Daemon | undefined;
  try {
    for (const name of ['victim', 'b', 'c']) {
      const s = await startFakeApiServer({
        ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert },
        name,
        watchIntervalMs: 200,
        anonymousAuth: !(sc.setup === 'anonymous-off' && name === 'victim'),
      });
      servers.push(s);
      cleanups.push(() => s.close());
    }
    const victim = servers[0]!;
    const config = resolveConfig({
      flags: {
        listen: '127.0.0.1:0',
        adminListen: '127.0.0.1:0',
        backends: servers.map((s) => s.address).join(','),
        caFile: sc.setup === 'wrong-ca' ? other.certFile : ca.certFile,
      },
      env: {},
    });
    // Constructed and started separately so transitions of the first check round are seen too.
    daemon = new Daemon(config, { logger: createLogger('silent') });
    const d = daemon;
    const vb = d.pool.get(victim.address)!;
    const states: string[] = [];
    let panicSeen = d.pool.panic;
    let downAt: number | null = null;
    let drainingAt: number | null = null;
    let drainingOpen = -1;
    const watches: Watch[] = [];
    function onTransition(ev: { backend: unknown; to: BackendState }): void {
      if (ev.backend !== vb) return;
      states.push(ev.to);
      if (ev.to === 'down' && downAt === null) downAt = Date.now();
      if (ev.to === 'draining' && drainingAt === null) drainingAt = Date.now();
      if (ev.to === 'draining' && drainingOpen < 0) drainingOpen = watches.filter((w) => w.server === 'victim' && w.closedAt === null).length;
    }
    function onPanic(ev: { active: boolean }): void {
      if (ev.active) panicSeen = true;
    }
    d.pool.on('transition', onTransition);
    d.pool.on('panic', onPanic);
    let checksOk = 0;
    let checksFailed = 0;
    d.health.on('check', function onVictimCheck(ev) {
      if (ev.backend !== vb) return;
      if (ev.result.ok) checksOk++;
      else checksFailed++;
    });
    await d.start();
    const port = (d.listeners[0]!.address() as { port: number }).port;

    // Clients trust the right CA even when apilb was given the wrong one.
    const clientTls = { ca: ca.cert, cert: client.cert, key: client.key };
    // Watches: six through apilb, two per backend by round-robin.
    for (let i = 0; i < 6; i++) watches.push(await openWatch(port, clientTls));
    cleanups.push(() => {
      for (const w of watches) w.res.destroy();
    });

    // Load: CONCURRENCY loops of fresh connections GET /version through apilb.
    let running = sc.load ?? true;
    let requests = 0;
    let completed = 0;
    let failures = 0;
    let inflightFailures = 0;
    let faultAt: number | null = null;
    const samples: string[] = [];
    const answers: { at: number; server: string }[] = [];
    const loops = Array.from({ length: CONCURRENCY }, async () => {
      while (running) {
        requests++;
        const startedAt = Date.now();
        try {
          const r = await get(port, '/version', clientTls);
          if (r.status !== 200) throw new Error(`status ${r.status}`);
          answers.push({ at: Date.now(), server: r.server });
        } catch (err) {
          if (!running) break;
          // Without a fault step (setup-only rows) every request counts as new.
          const isNew = faultAt === null || startedAt >= faultAt;
          if (isNew) failures++;
          else inflightFailures++;
          if (samples.length < 5) samples.push(`${isNew ? 'new' : 'in flight'}: ${(err as Error).message}`);
        } finally {
          completed++;
        }
      }
    });
    cleanups.push(async () => {
      running = false;
      await Promise.all(loops);
    });

    const readyAt = Date.now();
    let recoverAt: number | null = null;
    const victimWatches = () => watches.filter((w) => w.server === 'victim');
    for (const step of sc.script) {
      if ('do' in step) {
        faultAt ??= Date.now();
        switch (step.do) {
          case 'crash':
            await victim.crash();
            break;
          case 'hang':
            victim.hang();
            break;
          case 'resume':
            victim.resume();
            recoverAt = Date.now();
            break;
          case 'notReady':
            victim.setReady(false);
            break;
          case 'ready':
            victim.setReady(true);
            recoverAt = Date.now();
            break;
          case 'graceful':
            void victim.gracefulShutdown({ delayMs: step.delayMs, drainTimeoutMs: step.drainTimeoutMs });
            break;
          case 'blackhole':
            if (!opts.inNetns) throw new Error('blackhole needs a network namespace of its own (run through failover-netns-child.ts)');
            // Both directions on loopback inside our namespace: no SYN-ACK for new connections, nothing either way on open ones.
            execFileSync('iptables', ['-I', 'INPUT', '-p', 'tcp', '--dport', String(victim.port), '-j', 'DROP']);
            execFileSync('iptables', ['-I', 'INPUT', '-p', 'tcp', '--sport', String(victim.port), '-j', 'DROP']);
            break;
        }
        continue;
      }
      if ('waitState' in step) await until(() => vb.state === step.waitState, `victim ${step.waitState}`, step.timeoutMs);
      else if ('waitFailedCheck' in step) {
        const n = checksFailed;
        await until(() => checksFailed > n, 'a failed check of the victim', step.timeoutMs);
      } else if ('waitOkChecks' in step) {
        const n = checksOk;
        await until(() => checksOk >= n + step.waitOkChecks, `${step.waitOkChecks} ok checks of the victim`, step.timeoutMs);
      } else if ('waitVictimServes' in step) {
        const since = recoverAt ?? 0;
        await until(() => answers.some((a) => a.server === 'victim' && a.at >= since), 'the victim to answer a new connection', step.timeoutMs);
      } else if ('waitRequests' in step) {
        const n = completed;
        await until(() => completed >= n + step.waitRequests, `${step.waitRequests} more requests`, step.timeoutMs);
      } else if ('waitPanic' in step) {
        await until(() => d.pool.panic, 'panic mode', step.timeoutMs);
      } else if ('waitVictimStreamsClosed' in step) {
        await until(() => victimWatches().every((w) => w.closedAt !== null), 'victim watches to close', step.timeoutMs);
      }
    }
    running = false;
    await Promise.all(loops);
    const vw = victimWatches();
    const closedTimes = vw.map((w) => w.closedAt);
    const t0 = faultAt ?? readyAt;
    const firstVictimAnswer = recoverAt === null ? undefined : answers.find((a) => a.server === 'victim' && a.at >= recoverAt!);
    const outcome: Outcome = {
      name: sc.name,
      states,
      finalStates: d.pool.backends.map((b) => b.state),
      panicSeen,
      requests,
      failures,
      inflightFailures,
      failureSamples: samples,
      victimStreams: vw.length,
      victimStreamsOpenAtDraining: drainingOpen,
      victimStreamsClosedMs: closedTimes.length === 0 || closedTimes.some((x) => x === null) ? null : Math.max(...closedTimes.map((x) => x! - t0)),
      otherStreamsClosed: watches.filter((w) => w.server !== 'victim' && w.closedAt !== null).length,
      downMs: downAt === null ? null : downAt - t0,
      drainingMs: drainingAt === null ? null : drainingAt - t0,
      recoveryMs: firstVictimAnswer && recoverAt !== null ? firstVictimAnswer.at - recoverAt : null,
    };
    d.pool.off('transition', onTransition);
    d.pool.off('panic', onPanic);
    return outcome;
  } finally {
    for (const c of cleanups.reverse()) await c();
    await daemon?.close(0);
  }
}

/** Client TLS material for requests through apilb. */
export interface ClientTls {
  ca: string;
  cert: string;
  key: string;
}

function openWatch(port: number, tls: ClientTls): Promise<Watch> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path: '/api/v1/watch/pods', agent: false, ...tls }, (res) => {
      const w: Watch = { server: String(res.headers['x-apiserver-name']), closedAt: null, res };
      res.on('data', function onWatchEvent() {});
      res.on('error', function onWatchError() {});
      res.socket.once('close', function onWatchClosed() {
        w.closedAt ??= Date.now();
      });
      resolve(w);
    });
    req.on('error', reject);
    req.end();
  });
}

/** One GET /`path` on a fresh connection through apilb; rejects on any transport error or after 10 s. */
export function get(port: number, path: string, tls: ClientTls): Promise<{ status: number; server: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path, agent: false, ...tls, timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, server: String(res.headers['x-apiserver-name']) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out after 10 s')));
    req.on('error', reject);
    req.end();
  });
}

/** The one polling loop (support/net.ts), for the scenario files that import it from here. */
export { until };
