/**
 * Observability against a running daemon on loopback: scrape /metrics over HTTP during a failover and assert the
 * values (connections, refused dials, exact byte counts, states, transitions, closes), removed backends' series
 * disappearing, /status and /readyz, `apilb status` output, and promtool on the exposition. Plus unit tests of
 * createMetrics for what the daemon run cannot pin down deterministically (the health-check latency histogram).
 */
import t, { type Test } from 'tap';
import { CLI, runCli } from './support/cli.js';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { resolveConfig } from '../src/config/config.js';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createLogger } from '../src/logging.js';
import { createMetrics } from '../src/metrics/metrics.js';
import type { HealthCheckEvent } from '../src/health/health-monitor.js';
import type { StatusDoc } from '../src/admin/status.js';
import { Pool } from '../src/pool/pool.js';
import { TcpProxy } from '../src/proxy/proxy.js';
import { parseAddress } from '../src/config/values.js';
import { VERSION } from '../src/version.js';
import { dial, echoServer, readBytes, until, type TestServer } from './support/net.js';
import { parseExposition, promtool } from './support/prom-text.js';

function httpText(url: string): Promise<{ status: number; body: string; contentType: string }> {
  return new Promise((resolve, reject) => {
    httpGet(url, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), contentType: String(res.headers['content-type']) }),
      );
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** Opens a proxied connection and reads the backend's name line (the test backends speak first). */
async function open(port: number): Promise<{ s: Socket; name: string }> {
  const s = await dial(port);
  const banner = (await readBytes(s, 2)).toString();
  return { s, name: banner.trimEnd() };
}

/** Writes `payload` and reads its echo back. */
async function echo(s: Socket, payload: string): Promise<void> {
  s.write(payload);
  const got = (await readBytes(s, Buffer.byteLength(payload))).toString();
  if (got !== payload) throw new Error(`echo mismatch: ${JSON.stringify(got)}`);
}

/** Resolves when apilb ends or resets `s` (a half-open-capable client sees 'end', not 'close'). */
function ended(s: Socket): Promise<void> {
  return new Promise((resolve) => {
    s.once('end', () => resolve());
    s.once('close', () => resolve());
    s.on('error', () => {});
    s.resume(); // readBytes left it paused; a paused socket never reads the EOF
  });
}

async function servers(tt: Test, ...names: string[]): Promise<TestServer[]> {
  const out = await Promise.all(names.map((n) => echoServer(n)));
  for (const s of out) tt.teardown(() => s.close());
  return out;
}

async function daemon(tt: Test, backends: string[], flags: Record<string, unknown> = {}): Promise<Daemon> {
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      backends,
      healthCheckMode: 'tcp',
      // Added backends are checked at once and failures re-checked after 300 ms; no periodic round runs during
      // the test, so the counts asserted here do not race a timer.
      healthCheckInterval: '1h',
      fall: '2',
      drainTimeout: '0',
      logLevel: 'silent',
      ...flags,
    },
    env: {},
  });
  const d = await startDaemon(config, { logger: createLogger('silent') });
  tt.teardown(() => d.close(0));
  return d;
}

/** Waits until the daemon's health monitor has brought backend `id` up. */
function untilUp(d: Daemon, id: string): Promise<unknown> {
  return until(() => d.pool.get(id)?.state === 'up', `${id} to pass its first health check`);
}

t.test('a running daemon: /metrics values through a failover, /status, /readyz, apilb status, promtool', async (tt) => {
  if (!existsSync(CLI)) tt.fail(`${CLI} is missing: build first (npx tsc -p .)`);
  const [a, b, gone] = await servers(tt, 'A', 'B', 'G');
  // `gone` is closed before the daemon starts: the daemon begins with a backend that refuses everything.
  await gone!.close();
  const d = await daemon(tt, [gone!.address]);
  const admin = `http://${d.adminAddress}`;
  const port = (d.listeners[0]!.address() as AddressInfo).port;
  const scrape = async () => {
    const r = await httpText(`${admin}/metrics`);
    tt.equal(r.status, 200);
    tt.match(r.contentType, /^text\/plain; version=0\.0\.4/);
    return { text: r.body, m: parseExposition(r.body) };
  };

  // Not ready: the only backend has never passed a check.
  let ready = await httpText(`${admin}/readyz`);
  tt.equal(ready.status, 503, '/readyz is 503 with no backend up');
  tt.match(ready.body, /not ready: no backend is up/);
  let { m } = await scrape();
  tt.equal(m.get('apilb_ready'), 0);
  tt.equal(m.get('apilb_listeners'), 1);
  tt.equal(m.get('apilb_build_info', { version: VERSION }), 1);
  tt.equal(m.get('apilb_backend_up', { backend: gone!.address }), 0);
  tt.ok(m.get('process_cpu_user_seconds_total') !== undefined, 'default process metrics are registered');

  // Replace the static list: the refusing backend has no connections, so it leaves at once with its series.
  d.backendSet.set('static', [{ address: parseAddress(a!.address) }, { address: parseAddress(b!.address) }]);
  ({ m } = await scrape());
  tt.notOk(
    m.samples.some((s) => s.labels.backend === gone!.address),
    'a removed backend has no series left',
  );
  await untilUp(d, a!.address);
  await untilUp(d, b!.address);
  ready = await httpText(`${admin}/readyz`);
  tt.equal(ready.status, 200, '/readyz is 200 once a backend is up');
  tt.match(ready.body, /^ok: 2\/2 backends up/);

  // Independent record of what the data path did, from its events (not from the counters under test).
  const refused: string[] = [];
  const opened = new Map<string, number>();
  d.proxy.on('dial-failure', (ev) => refused.push(`${ev.backend.id} ${ev.reason}`));
  d.proxy.on('open', (ev) => opened.set(ev.backend.id, (opened.get(ev.backend.id) ?? 0) + 1));

  // Two clients, one per backend (round-robin), each with a payload of a distinct length.
  const c1 = await open(port);
  const c2 = await open(port);
  const byName = new Map([c1, c2].map((c) => [c.name, c.s]));
  tt.same([...byName.keys()].sort(), ['A', 'B'], 'round-robin put one client on each backend');
  const onA = byName.get('A')!;
  const onB = byName.get('B')!;
  tt.teardown(() => onB.destroy());
  await echo(onA, 'nineteen bytes to A');
  await echo(onB, 'to B');

  ({ m } = await scrape());
  tt.equal(m.get('apilb_connections_active', { backend: a!.address }), 1);
  tt.equal(m.get('apilb_connections_total', { backend: b!.address }), 1);
  tt.equal(m.get('apilb_bytes_total', { backend: a!.address, direction: 'to_backend' }), 19, 'open connections count in bytes_total');
  tt.equal(m.get('apilb_bytes_total', { backend: a!.address, direction: 'to_client' }), 2 + 19, 'banner + echo');
  tt.equal(m.get('apilb_backend_up', { backend: a!.address }), 1);
  tt.equal(m.get('apilb_ready'), 1);

  // Failover: A stops accepting (its listener closes; the established connection stays open on A's side).
  // server.close() stops listening at once; its callback would wait for the open connection, so it is not awaited.
  a!.server.close();
  tt.equal(a!.server.listening, false);
  const aClosed = ended(onA);
  const extra: Socket[] = [];
  tt.teardown(() => extra.forEach((s) => s.destroy()));
  await until(async () => {
    const c = await open(port);
    extra.push(c.s);
    tt.equal(c.name, 'B', 'every new client lands on B, even when A was tried first');
    return d.pool.get(a!.address)!.state === 'down' || extra.length >= 10;
  }, 'A to go down from refused dials');
  console.error('DBG', d.pool.get(a!.address)!.state, extra.length, refused, onA.destroyed, onA.readableFlowing, d.proxy.activeConnections);
  await aClosed;

  const fromA = refused.filter((x) => x.startsWith(`${a!.address} `));
  tt.ok(fromA.length >= 1, 'dials to A were refused');
  tt.same(new Set(fromA), new Set([`${a!.address} refused`]));
  const exposition = await scrape();
  m = exposition.m;
  tt.equal(m.get('apilb_backend_state', { backend: a!.address, state: 'down' }), 1);
  tt.equal(m.get('apilb_backend_state', { backend: a!.address, state: 'up' }), 0);
  tt.equal(m.get('apilb_backend_up', { backend: a!.address }), 0);
  tt.equal(m.get('apilb_backend_up', { backend: b!.address }), 1);
  tt.equal(m.get('apilb_backend_transitions_total', { backend: a!.address, to: 'up' }), 1);
  tt.equal(m.get('apilb_backend_transitions_total', { backend: a!.address, to: 'down' }), 1);
  tt.equal(m.get('apilb_backend_transitions_total', { backend: b!.address, to: 'down' }), 0);
  tt.equal(m.get('apilb_connect_failures_total', { backend: a!.address, reason: 'refused' }), fromA.length);
  tt.equal(m.get('apilb_connect_failures_total', { backend: a!.address, reason: 'timeout' }), 0);
  tt.equal(m.get('apilb_connect_failures_total', { backend: b!.address, reason: 'refused' }), 0);
  tt.equal(m.get('apilb_retries_total'), refused.length);
  tt.equal(m.get('apilb_connections_total', { backend: a!.address }), 1);
  tt.equal(m.get('apilb_connections_total', { backend: b!.address }), 1 + extra.length);
  tt.equal(m.get('apilb_connections_total', { backend: b!.address }), opened.get(b!.address));
  tt.equal(m.get('apilb_connections_active', { backend: a!.address }), 0);
  tt.equal(m.get('apilb_connections_active', { backend: b!.address }), 1 + extra.length);
  tt.equal(m.get('apilb_connections_closed_total', { backend: a!.address, reason: 'backend_down' }), 1, 'the client stuck on A was released');
  tt.equal(m.get('apilb_connections_closed_total', { backend: a!.address, reason: 'normal' }), 0);
  tt.equal(m.get('apilb_bytes_total', { backend: a!.address, direction: 'to_backend' }), 19, 'bytes of the closed connection stay counted');
  tt.equal(m.get('apilb_bytes_total', { backend: a!.address, direction: 'to_client' }), 21);
  tt.equal(m.get('apilb_bytes_total', { backend: b!.address, direction: 'to_backend' }), 4);
  tt.equal(m.get('apilb_bytes_total', { backend: b!.address, direction: 'to_client' }), 2 + 4 + 2 * extra.length);
  tt.equal(m.get('apilb_accepted_connections_total'), 2 + extra.length);
  tt.equal(m.get('apilb_client_connections_active'), 1 + extra.length);
  tt.equal(m.get('apilb_health_checks_total', { backend: a!.address, result: 'ok' }), d.pool.get(a!.address)!.checkCounts.ok);
  const checksB = d.pool.get(b!.address)!.checkCounts;
  tt.ok(checksB.ok >= 1);
  tt.equal(m.get('apilb_health_checks_total', { backend: b!.address, result: 'ok' }), checksB.ok);
  tt.equal(m.get('apilb_health_checks_total', { backend: b!.address, result: 'error' }), checksB.error);
  tt.equal(
    m.get('apilb_health_check_duration_seconds_count', { backend: b!.address }),
    checksB.ok + checksB.status + checksB.error,
    'one latency observation per check',
  );
  tt.ok(m.get('apilb_health_check_duration_seconds_sum', { backend: b!.address })! > 0);
  tt.equal(m.get('apilb_panic'), 0);
  tt.equal(m.get('apilb_config_reloads_total', { result: 'success' }), 0);
  for (const name of [
    'apilb_connections_total',
    'apilb_connect_failures_total',
    'apilb_bytes_total',
    'apilb_backend_transitions_total',
    'apilb_connections_closed_total',
    'apilb_retries_total',
    'apilb_health_checks_total',
    'apilb_rejected_connections_total',
    'apilb_config_reloads_total',
    'apilb_first_byte_timeouts_total',
  ]) {
    tt.equal(m.types.get(name), 'counter', `${name} is a counter`);
  }
  tt.equal(m.types.get('apilb_health_check_duration_seconds'), 'histogram');

  const lint = promtool(['check', 'metrics'], exposition.text);
  tt.equal(lint.status, 0, `promtool check metrics passes: ${lint.output}`);
  tt.equal(lint.output, '', 'promtool has no complaint');

  // /status during the failover.
  const st = JSON.parse((await httpText(`${admin}/status`)).body) as StatusDoc;
  tt.equal(st.version, VERSION);
  tt.equal(st.ready, true);
  tt.equal(st.panic, false);
  tt.same(st.listeners, [`127.0.0.1:${port}`]);
  tt.equal(st.admin, d.adminAddress);
  tt.type(st.uptimeSeconds, 'number');
  const sa = st.backends.find((x) => x.address === a!.address)!;
  const sb = st.backends.find((x) => x.address === b!.address)!;
  tt.match(sa, {
    state: 'down',
    reason: /connect failed: refused|health check failed/,
    source: 'static',
    eligible: false,
    removed: false,
    activeConnections: 0,
    totalConnections: 1,
    connectFailures: { refused: fromA.length },
    transitions: { up: 1, down: 1 },
    bytes: { toBackend: 19, toClient: 21 },
  });
  tt.ok(!Number.isNaN(Date.parse(sa.since)) && sa.since.endsWith('Z'), 'since is an ISO time');
  tt.match(sb, { state: 'up', activeConnections: 1 + extra.length, lastCheck: { result: 'ok', latencyMs: Number, error: null, status: null, at: String } });

  // `apilb status` against the running daemon: table, JSON, and an unreachable endpoint.
  const table = await runCli(['status', '--admin-listen', d.adminAddress]);
  tt.equal(table.code, 0, table.stderr);
  tt.match(table.stdout, new RegExp(`^apilb ${VERSION.replace(/\./g, '\\.')} \\(pid \\d+\\), up \\d+s: ready`));
  tt.match(table.stdout, /BACKEND\s+STATE\s+FOR\s+CHECK\s+ACTIVE\s+SHARE\s+TOTAL\s+FAILED\s+IN\/OUT\s+REASON/);
  tt.match(table.stdout, new RegExp(`${a!.address}\\s+down\\s+\\d+s\\s+\\S+ [\\d.]+ms\\s+0\\s+0%\\s+1\\s+${fromA.length}\\s+19 B / 21 B\\s+`));
  tt.match(table.stdout, new RegExp(`${b!.address}\\s+up\\s+\\d+s\\s+ok [\\d.]+ms\\s+${1 + extra.length}\\s+100%\\s+${1 + extra.length}\\s+0\\s+`));
  const json = await runCli(['status', '--json', '--admin-listen', d.adminAddress]);
  tt.equal(json.code, 0, json.stderr);
  tt.same(
    (JSON.parse(json.stdout) as StatusDoc).backends.map((x) => x.address),
    [a!.address, b!.address],
  );
  const down = await runCli(['status', '--admin-listen', a!.address]);
  tt.equal(down.code, 4, 'exit 4 (unreachable) when the admin endpoint does not answer');
  tt.match(down.stderr, /cannot read http:\/\/127\.0\.0\.1:\d+\/status: connection refused .*\[APILB_ERR_ADMIN_UNREACHABLE\]/);

  // A leaves the configuration: no connection is left on it, so its series go at once.
  d.backendSet.set('static', [{ address: parseAddress(b!.address) }]);
  ({ m } = await scrape());
  tt.notOk(
    m.samples.some((s) => s.labels.backend === a!.address),
    'no series of the removed backend A',
  );
  tt.ok(m.get('apilb_connections_total', { backend: b!.address })! >= 1, 'B keeps its series');
  const after = JSON.parse((await httpText(`${admin}/status`)).body) as StatusDoc;
  tt.same(
    after.backends.map((x) => x.address),
    [b!.address],
  );
});

t.test('a removed backend with open connections keeps its series until its last connection closes', async (tt) => {
  const [a, b] = await servers(tt, 'A', 'B');
  const d = await daemon(tt, [a!.address, b!.address], { drainTimeout: '1h' });
  const port = (d.listeners[0]!.address() as AddressInfo).port;
  const c1 = await open(port);
  const c2 = await open(port);
  tt.teardown(() => (c1.s.destroy(), c2.s.destroy()));
  const onA = c1.name === 'A' ? c1.s : c2.s;
  await echo(onA, 'abc');
  onA.resume();
  d.backendSet.set('static', [{ address: parseAddress(b!.address) }]);
  let m = parseExposition(await d.metrics.render());
  tt.equal(m.get('apilb_connections_active', { backend: a!.address }), 1, 'draining connection still counted');
  tt.equal(m.get('apilb_bytes_total', { backend: a!.address, direction: 'to_backend' }), 3);
  const st = d.status().backends.find((x) => x.address === a!.address);
  tt.match(st, { removed: true, eligible: false, activeConnections: 1 });
  onA.end();
  await until(() => !d.pool.get(a!.address), 'A to leave the pool after its last connection');
  m = parseExposition(await d.metrics.render());
  tt.notOk(
    m.samples.some((s) => s.labels.backend === a!.address),
    'series gone with the last connection',
  );
  tt.equal(m.get('apilb_connections_active', { backend: b!.address }), 1);
});

t.test('createMetrics: health-check latency histogram from check events; counters from the daemon; close()', async (tt) => {
  const pool = new Pool();
  const proxy = new TcpProxy({ pool });
  tt.teardown(() => proxy.close(0));
  const b1 = pool.add({ address: parseAddress('127.0.0.1:1001') });
  const b2 = pool.add({ address: parseAddress('127.0.0.1:1002') });
  const health = new EventEmitter<{ check: [HealthCheckEvent] }>();
  const reloads = new Map([
    ['success', 3],
    ['failure', 1],
  ]);
  const dnsFailures = new Map([['api.example:6443', 2]]);
  let listeners = 2;
  const metrics = createMetrics({
    pool,
    proxy,
    health,
    version: '9.9.9',
    counters: { reloads, dnsFailures },
    readiness: () => ({ ready: true }),
    listeners: () => listeners,
    defaultMetrics: false,
  });
  tt.equal(health.listenerCount('check'), 1);

  health.emit('check', { backend: b1, result: { ok: true, latencyMs: 3 } });
  health.emit('check', { backend: b1, result: { ok: false, kind: 'transport', latencyMs: 700, error: 'ECONNREFUSED' } });
  health.emit('check', { backend: b2, result: { ok: true, latencyMs: 40 } });
  let m = parseExposition(await metrics.render());
  const h = 'apilb_health_check_duration_seconds';
  tt.equal(m.get(`${h}_count`, { backend: b1.id }), 2);
  tt.ok(Math.abs(m.get(`${h}_sum`, { backend: b1.id })! - 0.703) < 1e-9, 'sum of latencies in seconds');
  tt.equal(m.get(`${h}_bucket`, { backend: b1.id, le: '0.005' }), 1);
  tt.equal(m.get(`${h}_bucket`, { backend: b1.id, le: '0.5' }), 1);
  tt.equal(m.get(`${h}_bucket`, { backend: b1.id, le: '1' }), 2);
  tt.equal(m.get(`${h}_bucket`, { backend: b1.id, le: '+Inf' }), 2);
  tt.equal(m.get(`${h}_count`, { backend: b2.id }), 1);
  tt.equal(m.get('apilb_config_reloads_total', { result: 'success' }), 3);
  tt.equal(m.get('apilb_config_reloads_total', { result: 'failure' }), 1);
  tt.equal(m.get('apilb_build_info', { version: '9.9.9' }), 1);
  tt.equal(m.get('apilb_dns_failures_total', { name: 'api.example:6443' }), 2);
  tt.equal(m.get('apilb_listeners'), 2);
  tt.equal(m.get('apilb_ready'), 1);
  tt.equal(m.get('apilb_rejected_connections_total', { reason: 'max_connections' }), 0);

  // Values follow their sources between scrapes (read at scrape time, nothing cached).
  reloads.set('success', 4);
  listeners = 1;
  b2.connectFailures.set('first_byte_timeout', 2);
  proxy.counters.rejected.set('max_connections', 5);
  pool.markDown(b1, 'test');
  pool.markDown(b2, 'test');
  m = parseExposition(await metrics.render());
  tt.equal(m.get('apilb_config_reloads_total', { result: 'success' }), 4);
  tt.equal(m.get('apilb_listeners'), 1);
  tt.equal(m.get('apilb_first_byte_timeouts_total', { backend: b2.id }), 2);
  tt.equal(m.get('apilb_connect_failures_total', { backend: b2.id, reason: 'first_byte_timeout' }), 2);
  tt.equal(m.get('apilb_rejected_connections_total', { reason: 'max_connections' }), 5);
  tt.equal(m.get('apilb_panic'), 1, 'every backend down: panic');
  tt.equal(m.get('apilb_backend_state_since_timestamp_seconds', { backend: b1.id }), b1.since / 1000);

  // b1 leaves: its histogram series go at the next scrape, and a late check result does not bring them back.
  pool.reconcile([{ address: b2.address }]);
  health.emit('check', { backend: b1, result: { ok: true, latencyMs: 1 } });
  m = parseExposition(await metrics.render());
  tt.notOk(
    m.samples.some((s) => s.labels.backend === b1.id),
    'no series of the removed backend',
  );
  tt.equal(m.get(`${h}_count`, { backend: b2.id }), 1);

  const lint = promtool(['check', 'metrics'], await metrics.render());
  tt.equal(lint.status, 0, lint.output);

  metrics.close();
  tt.equal(health.listenerCount('check'), 0, 'close() unsubscribes from the health monitor');
  tt.equal(await metrics.render(), '\n', 'close() empties the registry');
});

t.test('watchHealth attaches a health monitor created after the metrics', async (tt) => {
  const pool = new Pool();
  const proxy = new TcpProxy({ pool });
  tt.teardown(() => proxy.close(0));
  const b = pool.add({ address: parseAddress('127.0.0.1:1001') });
  const metrics = createMetrics({ pool, proxy, version: '1', defaultMetrics: false });
  tt.teardown(() => metrics.close());
  const health = new EventEmitter<{ check: [HealthCheckEvent] }>();
  const off = metrics.watchHealth(health);
  health.emit('check', { backend: b, result: { ok: true, latencyMs: 20 } });
  off();
  health.emit('check', { backend: b, result: { ok: true, latencyMs: 20 } });
  const m = parseExposition(await metrics.render());
  tt.equal(m.get('apilb_health_check_duration_seconds_count', { backend: b.id }), 1, 'events after off() are ignored');
  tt.equal(health.listenerCount('check'), 0);
});

t.test('two daemons in one process keep separate registries', async (tt) => {
  const [a] = await servers(tt, 'A');
  const d1 = await daemon(tt, [a!.address]);
  const d2 = await daemon(tt, [a!.address]);
  const c = await open((d1.listeners[0]!.address() as AddressInfo).port);
  tt.teardown(() => c.s.destroy());
  const m1 = parseExposition(await d1.metrics.render());
  const m2 = parseExposition(await d2.metrics.render());
  tt.equal(m1.get('apilb_connections_total', { backend: a!.address }), 1);
  tt.equal(m2.get('apilb_connections_total', { backend: a!.address }), 0);
});
