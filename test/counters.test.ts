/**
 * What the data path counts (issue #16): a final failure is not a retry, connections closed for lack of any
 * backend are counted, local resource failures are counted without blaming the backend, and every reason the code
 * can produce is a metric label (the reason lists and the types derive from one constant each, src/proxy/reasons.ts).
 */
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Pool } from '../src/pool/pool.js';
import { TcpProxy, type ProxyOptions } from '../src/proxy/proxy.js';
import { parseAddress } from '../src/config/values.js';
import { createMetrics } from '../src/metrics/metrics.js';
import { CLOSE_REASONS, DIAL_FAILURE_REASONS, REJECT_REASONS } from '../src/proxy/reasons.js';
import { dial, echoServer, ended, until } from './support/net.js';
import { parseExposition } from './support/prom-text.js';
import { serveProxy } from './support/proxy-harness.js';

/** A proxy over `addresses`, serving on a loopback port. */
async function proxyOver(tt: Test, addresses: string[], opts: Partial<ProxyOptions> = {}): Promise<{ pool: Pool; proxy: TcpProxy; port: number }> {
  const pool = new Pool();
  for (const a of addresses) pool.add({ address: parseAddress(a) });
  return { pool, ...(await serveProxy(tt, pool, { firstByteTimeout: 0, ...opts })) };
}

/** A dialer whose every attempt fails with `code` (no socket reaches any address). */
function failingDial(code: string): ProxyOptions['dial'] {
  return () => {
    const s = new Socket();
    process.nextTick(() => s.destroy(Object.assign(new Error(code), { code })));
    return s;
  };
}

t.test('every backend refuses: one retry per extra backend, not one per failure', async (tt) => {
  const h = await proxyOver(tt, ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], { dial: failingDial('ECONNREFUSED') });
  const s = await dial(h.port);
  await ended(s);
  await until(() => h.proxy.activeConnections === 0, 'connection finished');
  tt.equal(h.proxy.counters.retries.get('connect_failed'), 2, 'three backends tried: two retries');
  const failed = [...h.proxy.counters.closed.values()].reduce((n, m) => n + (m.get('all_backends_failed') ?? 0), 0);
  tt.equal(failed, 1, 'closed as all_backends_failed');
  for (const b of h.pool.backends) tt.equal(b.connectFailures.get('refused'), 1, `${b.id}: one refused dial`);
});

t.test('a connection closed because the pool is empty is counted as no_backend (backend="")', async (tt) => {
  const [a] = await Promise.all([echoServer('a')]);
  tt.teardown(() => a!.close());
  const h = await proxyOver(tt, [a!.address]);
  h.pool.reconcile([]);
  const s = await dial(h.port);
  await ended(s);
  await until(() => h.proxy.counters.closed.get('')?.get('no_backend') === 1, 'no_backend counted');
  tt.equal(h.proxy.counters.retries.size, 0, 'no dial, no retry');
  const metrics = createMetrics({ pool: h.pool, proxy: h.proxy, version: 't', defaultMetrics: false });
  tt.teardown(() => metrics.close());
  const m = parseExposition(await metrics.render());
  tt.equal(m.get('apilb_connections_closed_total', { backend: '', reason: 'no_backend' }), 1);
});

t.test('out of file descriptors: counted as connect_failures{reason=local_resources}, never held against the backend', async (tt) => {
  const h = await proxyOver(tt, ['127.0.0.1:1'], { dial: failingDial('EMFILE') });
  const s = await dial(h.port);
  await ended(s);
  await until(() => h.proxy.activeConnections === 0, 'connection finished');
  const b = h.pool.backends[0]!;
  tt.equal(h.proxy.counters.localDialFailures.get(b.id), 1);
  tt.equal(b.connectFailures.size, 0, 'the pool never heard of it');
  tt.equal(b.consecutiveFailures, 0);
  const metrics = createMetrics({ pool: h.pool, proxy: h.proxy, version: 't', defaultMetrics: false });
  tt.teardown(() => metrics.close());
  const m = parseExposition(await metrics.render());
  tt.equal(m.get('apilb_connect_failures_total', { backend: b.id, reason: 'local_resources' }), 1);
  tt.equal(m.get('apilb_retries_total'), 0, 'a single backend: nothing to retry on');
});

t.test('every reason the code can produce is an exported label', async (tt) => {
  const src = (f: string) => readFileSync(fileURLToPath(new URL(`../src/proxy/${f}`, import.meta.url)), 'utf8');
  const code = src('connection.ts') + src('proxy.ts');
  const errnoTable = readFileSync(fileURLToPath(new URL('../src/net-errors.ts', import.meta.url)), 'utf8');
  // Close reasons passed to destroy/fail/closeBackendConnections, dial failure reasons returned by dialReason or
  // passed to retry or in the errno table of net-errors.ts, reject reasons counted: every quoted literal in those
  // positions.
  const produced = {
    close: [...code.matchAll(/(?:destroy|fail|closeBackendConnections\([^,]+,)\s*\(?\s*'([a-z_]+)'/g)].map((m) => m[1]!),
    dial: [
      ...[...code.matchAll(/return '([a-z_]+)';|\?\? '([a-z_]+)';|retry\('([a-z_]+)'/g)].map((m) => (m[1] ?? m[2] ?? m[3])!),
      ...[...errnoTable.matchAll(/\['E[A-Z]+', '([a-z_]+)'\]/g)].map((m) => m[1]!),
    ],
    reject: [...code.matchAll(/inc\(this\.counters\.rejected, '([a-z_]+)'\)/g)].map((m) => m[1]!),
  };
  tt.ok(produced.close.length >= 3 && produced.dial.length >= 5 && produced.reject.length >= 2, 'the scan finds the reasons');
  for (const r of produced.close) tt.ok((CLOSE_REASONS as readonly string[]).includes(r), `close reason ${r} is in CLOSE_REASONS`);
  for (const r of produced.dial) tt.ok((DIAL_FAILURE_REASONS as readonly string[]).includes(r), `dial failure reason ${r} is in DIAL_FAILURE_REASONS`);
  for (const r of produced.reject) tt.ok((REJECT_REASONS as readonly string[]).includes(r), `reject reason ${r} is in REJECT_REASONS`);

  const pool = new Pool();
  const proxy = new TcpProxy({ pool });
  const b = pool.add({ address: parseAddress('127.0.0.1:6443') });
  const metrics = createMetrics({ pool, proxy, version: 't', defaultMetrics: false });
  const m = parseExposition(await metrics.render());
  metrics.close();
  await proxy.close(0);
  const labels = (name: string, label: string) => new Set(m.all(name).map((s) => s.labels[label]));
  tt.same([...labels('apilb_connections_closed_total', 'reason')].sort(), [...CLOSE_REASONS].sort(), 'every close reason, at 0');
  tt.same([...labels('apilb_connect_failures_total', 'reason')].sort(), [...DIAL_FAILURE_REASONS].sort(), 'every dial failure reason, at 0');
  tt.same([...labels('apilb_rejected_connections_total', 'reason')].sort(), [...REJECT_REASONS].sort(), 'every reject reason, at 0');
  tt.equal(m.get('apilb_connections_closed_total', { backend: b.id, reason: 'no_backend' }), undefined, 'no_backend is never per backend');
});
