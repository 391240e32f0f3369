/**
 * End to end with Prometheus itself (the Debian `prometheus` binary): it scrapes a real apilb's admin /metrics
 * every second while apilb fronts three kube-apiserver stand-ins; the test reads back through Prometheus' HTTP API
 * the `apilb_backend_up` samples it stored, before and after one API server crashes.
 */
import t from 'tap';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { createTestCA, waitFor } from './support/index.js';
import { issueKeys, listeningPorts, requireBinary, startPrometheus, startStack, type PromSeries } from './support/e2e.js';

const ca = createTestCA({ name: 'apilb-e2e-prom-ca' });
t.teardown(() => ca.remove());
const keys = issueKeys(ca);

/** backend label → stored sample values, oldest first. */
function byBackend(series: PromSeries[]): Record<string, string[]> {
  return Object.fromEntries(series.map((s) => [s.metric.backend!, (s.values ?? (s.value ? [s.value] : [])).map(([, v]) => v)]));
}

t.test('Prometheus scrapes apilb: apilb_backend_up stored as 1 for three backends, then 0 for a crashed one', async (tt) => {
  const binary = requireBinary(tt, 'prometheus', 'prometheus');
  if (!binary) return;
  // Shorter checks than the defaults only so the crashed backend is marked down within about a second.
  const s = await startStack(tt, keys, { flags: { healthCheckInterval: '500ms', healthCheckTimeout: '400ms' } });
  const dir = join(s.dir, 'prometheus');
  mkdirSync(dir);
  const prom = await startPrometheus(tt, binary, dir, [s.daemon.adminAddress]);
  // The port came from its log; the /proc fallback (for versions that log only `:0`) must find the same socket.
  tt.ok(listeningPorts(prom.child.proc.pid!).includes(Number(new URL(prom.url).port)), `prometheus listens on ${prom.url}`);
  const backends = s.servers.map((x) => x.address).sort();
  const [victim] = s.servers;
  const up = (): Promise<PromSeries[]> => prom.query('apilb_backend_up{job="apilb"}');

  // A few scrapes: every stored sample of every backend is 1.
  await waitFor(
    async () => {
      const stored = byBackend(await prom.query('apilb_backend_up{job="apilb"}[1m]'));
      return Object.keys(stored).length === 3 && Object.values(stored).every((v) => v.length >= 3);
    },
    { timeoutMs: 10_000, intervalMs: 200, what: 'three scrapes of apilb_backend_up for three backends' },
  );
  const healthy = byBackend(await prom.query('apilb_backend_up{job="apilb"}[1m]'));
  tt.same(Object.keys(healthy).sort(), backends, 'one series per configured backend, labelled by address');
  tt.ok(
    Object.values(healthy).every((v) => v.every((x) => x === '1')),
    `every stored sample is 1: ${JSON.stringify(healthy)}`,
  );
  tt.same(
    (await prom.query('up{job="apilb"}')).map((r) => r.value?.[1]),
    ['1'],
    'Prometheus scrapes /metrics successfully',
  );

  await victim!.crash();
  await waitFor(() => s.daemon.pool.get(victim!.address)?.state === 'down', { timeoutMs: 10_000, what: 'apilb to mark the crashed server down' });
  const downAt = performance.now();
  await waitFor(async () => byBackend(await up())[victim!.address]?.[0] === '0', {
    timeoutMs: 5000,
    intervalMs: 100,
    what: 'Prometheus to store 0 for the crashed server',
  });
  const seenMs = performance.now() - downAt;
  const now = byBackend(await up());
  tt.same(now, Object.fromEntries(backends.map((b) => [b, [b === victim!.address ? '0' : '1']])), 'latest values: 0 for the crashed server, 1 for the others');
  const stored = byBackend(await prom.query('apilb_backend_up{job="apilb"}[1m]'));
  const v = stored[victim!.address]!;
  tt.match(v.join(''), /^1+0+$/, `the crashed server's stored history: 1s, then 0s (${v.join(',')})`);
  for (const b of backends.filter((x) => x !== victim!.address))
    tt.ok(
      stored[b]!.every((x) => x === '1'),
      `${b} stayed 1`,
    );
  const state = await prom.query(`apilb_backend_state{job="apilb",backend="${victim!.address}",state="down"}`);
  tt.same(
    state.map((r) => r.value?.[1]),
    ['1'],
    'apilb_backend_state{state="down"} is 1 for it',
  );
  tt.comment(
    `prometheus: ${Object.values(stored).reduce((a, x) => a + x.length, 0)} samples stored; the 0 was queryable ${seenMs.toFixed(0)} ms after apilb marked the backend down`,
  );

  // Stopped here (and not only by the teardown) to check it exits cleanly and leaves no process behind.
  prom.child.proc.kill('SIGTERM');
  await waitFor(() => prom.child.done, { timeoutMs: 10_000, what: 'prometheus to exit' });
  tt.equal(await prom.child.exited, 0, 'prometheus exited 0 on SIGTERM');
  tt.throws(() => process.kill(prom.child.proc.pid!, 0), { code: 'ESRCH' }, 'no prometheus process left');
});
