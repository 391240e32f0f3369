/**
 * A rolling upgrade of the control plane under kubelet-like load, on the real daemon: three kube-apiserver
 * stand-ins with real TLS are upgraded one after another (each: /readyz 500 for `drainMs`, then the listener
 * closes and its watches end, then a new process is back on the same address), while `streams` long-lived watches
 * through apilb re-open whenever they are closed and a fresh-connection GET /version starts every `requestEveryMs`.
 * Reports where the watches live before and after rebalancing, every close → re-open gap, failed requests, and
 * whether anything moved while a backend was draining or in panic.
 */
import { request as httpsRequest } from 'node:https';
import { resolveConfig, type Layer } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon.js';
import { createLogger } from '../../src/logging.js';
import { startFakeApiServer, type FakeApiServer } from '../../src/demo/fake-apiserver.js';
import type { TestCA } from '../../src/demo/test-ca.js';
import { get, until, type ClientTls } from './failover-scenarios.js';

/** Options of {@link runRollingUpgrade}. */
export interface RollingUpgradeOptions {
  /** apilb flags on top of the scenario's (listen, admin, backends, CA, 500 ms health checks). */
  flags?: Layer;
  /** Long-lived watches. Default 60. */
  streams?: number;
  /** Default 50. */
  requestEveryMs?: number;
  /** How long each server answers /readyz 500 before it stops. Default 2000. */
  drainMs?: number;
  /** After the last server is back: wait (bounded) until every server holds at least this fraction of the watches. */
  settleShare: number;
  settleTimeoutMs: number;
}

/** What happened. */
export interface RollingUpgradeOutcome {
  /** Watches per server (in server order) when the last one was back and ready. */
  sharesBefore: number[];
  /** Watches per server once every server held `settleShare`. */
  sharesAfter: number[];
  /** Watches per server once a rebalancing round found the shares even (null: none did, or rebalancing is off). */
  sharesBalanced: number[] | null;
  /** From the last server back to that round, ms. */
  balancedMs: number | null;
  /** From the last server back to every server holding `settleShare` (null: not within the timeout). */
  settledMs: number | null;
  /** apilb_rebalance_moves_total summed over backends. */
  moves: number;
  /** Moves made while a backend was draining (with connections left) or in panic (must be 0). */
  movesWhileBlocked: number;
  requests: number;
  failedRequests: number;
  failureSamples: string[];
  /** Every watch close → re-open gap, ms. */
  reopenGapsMs: number[];
  /** The same for watches cut mid-stream: every rebalancing move, and any other cut (a server that stops ends its
   * watches cleanly, but apilb closes what is still open to it once it is down), ms. */
  cutReopenGapsMs: number[];
  /** Watch opens that failed (the stream then retried). */
  failedOpens: number;
}

interface Stream {
  server: string | null;
  closedAt: number | null;
  /** The last close cut the stream (no clean end of the response). */
  cut: boolean;
}

/** Opens one watch; resolves at its response headers with the server's name and a promise of its end (true: a
 * clean end of the response, false: cut). */
function openWatch(port: number, tls: ClientTls): Promise<{ server: string; done: Promise<boolean> }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path: '/api/v1/watch/pods', agent: false, timeout: 5000, ...tls }, (res) => {
      req.setTimeout(0);
      res.on('data', function onWatchEvent() {});
      res.on('error', function onWatchError() {});
      resolve({ server: String(res.headers['x-apiserver-name']), done: new Promise((r) => res.once('close', () => r(res.complete))) });
    });
    req.on('timeout', () => req.destroy(new Error('watch not opened within 5 s')));
    req.on('error', reject);
    req.end();
  });
}

/** Runs the scenario; everything is closed on return. */
export async function runRollingUpgrade(ca: TestCA, opts: RollingUpgradeOptions): Promise<RollingUpgradeOutcome> {
  const leaf = ca.server('apiserver');
  const client = ca.client('system:node:node-1', 'system:nodes');
  const tls: ClientTls = { ca: ca.cert, cert: client.cert, key: client.key };
  const names = ['api-1', 'api-2', 'api-3'];
  // One loopback address each (127.0.0.0/8 is all loopback): a restarted server binds its own address and port
  // again, and no client socket of this machine (they use 127.0.0.1) can have taken that pair in between.
  const hosts = ['127.0.0.41', '127.0.0.42', '127.0.0.43'];
  const start = (i: number, port = 0) =>
    startFakeApiServer({ ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert }, name: names[i]!, host: hosts[i]!, port, watchIntervalMs: 1000 });
  const servers: FakeApiServer[] = [];
  let daemon: Daemon | undefined;
  let running = true;
  const loops: Promise<void>[] = [];
  let interval: NodeJS.Timeout | undefined;
  const inflight = new Set<Promise<void>>();
  try {
    for (let i = 0; i < 3; i++) servers.push(await start(i));
    const config = resolveConfig({
      flags: {
        listen: '127.0.0.1:0',
        adminListen: '127.0.0.1:0',
        backends: servers.map((s) => s.address).join(','),
        caFile: ca.certFile,
        tlsServerName: 'localhost',
        healthCheckInterval: '500ms',
        healthCheckTimeout: '400ms',
        ...opts.flags,
      },
      env: {},
    });
    daemon = new Daemon(config, { logger: createLogger('silent') });
    const d = daemon;
    let movesWhileBlocked = 0;
    d.rebalancer?.on('move', function onMoveCheck() {
      if (d.pool.panic || d.pool.backends.some((b) => b.state === 'draining' && b.activeConnections > 0)) movesWhileBlocked++;
    });
    await d.start();
    const port = (d.listeners[0]!.address() as { port: number }).port;

    // Kubelet-like watches: re-opened at once whenever closed.
    const streams: Stream[] = [];
    const gaps: number[] = [];
    const cutGaps: number[] = [];
    let failedOpens = 0;
    for (let i = 0; i < (opts.streams ?? 60); i++) {
      const st: Stream = { server: null, closedAt: null, cut: false };
      streams.push(st);
      const first = openWatch(port, tls);
      await first;
      loops.push(
        (async () => {
          let next: Promise<{ server: string; done: Promise<boolean> }> | undefined = first;
          while (running) {
            try {
              const w = await (next ?? openWatch(port, tls));
              next = undefined;
              if (st.closedAt !== null) {
                gaps.push(Date.now() - st.closedAt);
                if (st.cut) cutGaps.push(Date.now() - st.closedAt);
              }
              st.server = w.server;
              st.cut = !(await w.done);
              st.server = null;
              st.closedAt = Date.now();
            } catch {
              next = undefined;
              if (running) failedOpens++;
            }
          }
        })(),
      );
    }

    let requests = 0;
    let failedRequests = 0;
    const samples: string[] = [];
    interval = setInterval(function startRequest() {
      requests++;
      const p: Promise<void> = get(port, '/version', tls)
        .then((r) => {
          if (r.status !== 200) throw new Error(`status ${r.status}`);
        })
        .catch((err: Error) => {
          failedRequests++;
          if (samples.length < 5) samples.push(err.message);
        })
        .finally(() => inflight.delete(p));
      inflight.add(p);
    }, opts.requestEveryMs ?? 50);

    const count = () => names.map((n) => streams.filter((s) => s.server === n).length);
    for (let i = 0; i < 3; i++) {
      const b = d.pool.get(servers[i]!.address)!;
      // In-flight requests may finish (kube-apiserver waits up to its request timeout); watches end at once.
      const stopped = servers[i]!.gracefulShutdown({ delayMs: opts.drainMs ?? 2000, drainTimeoutMs: 10_000 });
      await stopped;
      await until(() => b.state === 'down', `${names[i]} down`, 10_000);
      servers[i] = await start(i, servers[i]!.port);
      await until(() => b.state === 'up', `${names[i]} up again`, 10_000);
    }
    const backAt = Date.now();
    const sharesBefore = count();
    const total = streams.length;
    let settledMs: number | null = null;
    try {
      await until(() => count().every((n) => n >= opts.settleShare * total), 'every server to hold its share of the watches', opts.settleTimeoutMs);
      settledMs = Date.now() - backAt;
    } catch {
      // reported as null
    }
    const sharesAfter = count();
    let sharesBalanced: number[] | null = null;
    let balancedMs: number | null = null;
    const r = d.rebalancer;
    if (r && settledMs !== null) {
      // The first round after this moment that finds nothing to do (within the same 30 s bound).
      const balanced = new Promise<void>((resolve) => {
        r.on('round', function onRound(ev) {
          if (ev.outcome !== 'balanced') return;
          r.off('round', onRound);
          resolve();
        });
      });
      let done = false;
      void balanced.then(() => (done = true));
      try {
        await until(() => done, 'a balanced round', Math.max(0, opts.settleTimeoutMs - settledMs));
        sharesBalanced = count();
        balancedMs = Date.now() - backAt;
      } catch {
        // reported as null
      }
    }
    let moves = 0;
    for (const n of d.rebalancer?.moved.values() ?? []) moves += n;
    running = false;
    clearInterval(interval);
    interval = undefined;
    await Promise.all(inflight);
    return {
      sharesBefore,
      sharesAfter,
      sharesBalanced,
      balancedMs,
      settledMs,
      moves,
      movesWhileBlocked,
      requests,
      failedRequests,
      failureSamples: samples,
      reopenGapsMs: gaps,
      cutReopenGapsMs: cutGaps,
      failedOpens,
    };
  } finally {
    running = false;
    if (interval) clearInterval(interval);
    await daemon?.close(0);
    for (const s of servers) await s.close();
    await Promise.all(loops);
  }
}
