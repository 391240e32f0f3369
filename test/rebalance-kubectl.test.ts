/**
 * kubectl through apilb while rebalancing moves connections (issue 20): an API server comes back after its
 * clients left, rebalancing moves quiet connections to it, and meanwhile kubectl runs requests and a
 * `kubectl get pods -w`. No kubectl call fails; the only thing kubectl sees is its watch ending (exit 0, nothing
 * on stderr) when its connection is moved, and it is started again, as a controller re-opens its watch.
 */
import t from 'tap';
import { createTestCA, KUBECTL, runKubectl, waitFor } from './support/index.js';
import { parseExposition } from './support/prom-text.js';
import { issueKeys, openWatch, requireBinary, spawnChild, startStack, type Child, type Watch } from './support/e2e.js';

const ca = createTestCA();
t.teardown(() => ca.remove());

t.test('kubectl requests and a kubectl watch during rebalancing: no error other than the watch re-opening', async (tt) => {
  if (requireBinary(tt, KUBECTL, 'kubernetes-client') === undefined) return;
  const keys = issueKeys(ca);
  const s = await startStack(tt, keys, {
    watchIntervalMs: 1000,
    flags: { healthCheckInterval: '500ms', healthCheckTimeout: '400ms', rebalanceInterval: '500ms', rebalanceMinAge: '5s', rebalanceQuiet: '500ms' },
  });
  const d = s.daemon;
  const [b1, b2, b3] = s.servers.map((x) => d.pool.get(x.address)!);
  let running = true;

  // apiserver-3 is not ready (being upgraded): every connection goes to 1 and 2.
  s.server('apiserver-3').setReady(false);
  await waitFor(() => b3!.state === 'draining', { timeoutMs: 5000, what: 'apiserver-3 draining' });

  // `kubectl get pods -w`, started again whenever it ends: the oldest connection, so the first one rebalancing takes.
  const watchRuns: { code: number | string; stderr: string }[] = [];
  let watch: Child | undefined;
  const watchLoop = (async () => {
    while (running) {
      const c = spawnChild(tt, KUBECTL, ['--kubeconfig', s.kubeconfig, 'get', 'pods', '-w']);
      watch = c;
      const code = await c.exited;
      if (running) watchRuns.push({ code, stderr: c.stderr });
    }
  })();
  await waitFor(() => watch && watch.stdout.includes('watched-pod'), { timeoutMs: 15_000, what: 'kubectl get pods -w to stream' });

  // 29 long-lived HTTP/2 watches (node clients) that re-open when closed.
  let reopened = 0;
  const current: Watch[] = [];
  const loops: Promise<void>[] = [];
  for (let i = 0; i < 29; i++) {
    current[i] = await openWatch(s.port, keys);
    loops.push(
      (async () => {
        for (;;) {
          await current[i]!.closed;
          current[i]!.session.destroy();
          if (!running) return;
          current[i] = await openWatch(s.port, keys);
          reopened++;
        }
      })(),
    );
  }
  tt.same([b1!.activeConnections >= 14, b2!.activeConnections >= 14, b3!.activeConnections], [true, true, 0], 'all on apiserver-1 and -2');

  // apiserver-3 is back; kubectl keeps running requests while rebalancing moves connections to it.
  s.server('apiserver-3').setReady(true);
  const failures: string[] = [];
  let calls = 0;
  const deadline = Date.now() + 30_000;
  // Counted at the clients: apilb's counts also hold kubectl's short connections while they close.
  const onThird = () => current.filter((w) => w.server === 'apiserver-3' && w.closedAt === null).length;
  while (Date.now() < deadline && !(onThird() >= 6 && watchRuns.length >= 1 && calls >= 10)) {
    for (const args of [
      ['get', '--raw', '/whoami'],
      ['get', 'pods'],
    ]) {
      const r = await runKubectl(s.kubeconfig, args);
      calls++;
      if (r.code !== 0 || r.stderr.trim() !== '') failures.push(`kubectl ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim()}`);
    }
  }
  // No more rounds from here on: the counts below must not move while they are read.
  d.rebalancer?.stop();
  const moves = [...(d.rebalancer?.moved.values() ?? [])].reduce((a, n) => a + n, 0);
  const third = onThird();
  const perServer = [b1, b2, b3].map((b) => b!.activeConnections).join(' / ');
  // Stop the clients before the stack's teardown stops apilb, so nothing re-opens into a closing daemon.
  running = false;
  watch?.proc.kill('SIGTERM');
  await watchLoop;
  for (const w of current) w.session.destroy();
  await Promise.allSettled(loops);
  tt.comment(
    `connections per API server: ${perServer}; node watches on apiserver-3: ${third}; ${moves} moves; ` +
      `${calls} kubectl calls, ${failures.length} failed; kubectl watch re-opened ${watchRuns.length} times; ${reopened} node watches re-opened`,
  );
  tt.ok(third >= 6, `rebalancing gave apiserver-3 at least a fifth of the 30 watches (${third})`);
  tt.ok(moves > 0, 'connections were moved');
  tt.same(failures, [], 'no kubectl call failed');
  tt.ok(watchRuns.length >= 1, 'the kubectl watch was moved at least once (and started again)');
  tt.same(
    watchRuns.filter((r) => r.code !== 0 || r.stderr.trim() !== ''),
    [],
    'every kubectl watch that ended did so cleanly: exit 0, nothing on stderr',
  );

  // What an operator sees: moves and shares in /metrics, shares in /status.
  const m = parseExposition(await d.metrics.render());
  const sum = (name: string) => m.all(name).reduce((a, x) => a + x.value, 0);
  tt.equal(sum('apilb_rebalance_moves_total'), moves, 'apilb_rebalance_moves_total counts the moves');
  const closedByRebalance = m
    .all('apilb_connections_closed_total')
    .filter((x) => x.labels.reason === 'rebalance')
    .reduce((a, x) => a + x.value, 0);
  tt.equal(closedByRebalance, moves, 'apilb_connections_closed_total{reason="rebalance"} = moves');
  tt.ok((m.get('apilb_rebalance_rounds_total', { outcome: 'moved' }) ?? 0) > 0, 'rounds that moved are counted');
  const shares = m.all('apilb_backend_connection_share').map((x) => x.value);
  tt.equal(shares.length, 3, 'one share per backend');
  const status = d.status();
  tt.same(
    status.backends.map((b) => b.connectionShare),
    status.backends.map(
      (b) =>
        b.activeConnections /
        Math.max(
          1,
          status.backends.reduce((a, x) => a + x.activeConnections, 0),
        ),
    ),
    '/status: share = active / all active',
  );
});
