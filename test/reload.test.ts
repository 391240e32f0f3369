/**
 * Hot reload (Daemon.reload, POST /reload): backends added and removed without touching streams to unchanged
 * backends, removed backends drained after --drain-timeout, settings applied, invalid configurations kept out
 * (old one active, failure counted), listener changes reported as needing a restart.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig, type ResolveInput } from '../src/config/config.js';
import { diffConfig, describeChange } from '../src/config/config-diff.js';
import { formatAddress } from '../src/config/values.js';
import { Daemon } from '../src/daemon.js';
import { createTestCA } from '../src/demo/test-ca.js';
import { createLogger } from '../src/logging.js';
import { dial, echoServer, ended, readBytes, until, type TestServer } from './support/net.js';

interface Harness {
  d: Daemon;
  file: string;
  port: number;
  backends: TestServer[];
  write(lines: string[]): void;
}

/** A daemon started from a YAML file (kept as its reload source) over echo backends named b0, b1, ... */
async function harness(tt: Test, backendCount: number, lines: (b: TestServer[]) => string[]): Promise<Harness> {
  const backends = await Promise.all(Array.from({ length: backendCount }, (_, i) => echoServer(`b${i}`)));
  for (const b of backends) tt.teardown(() => b.close());
  const dir = mkdtempSync(join(tmpdir(), 'apilb-reload-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'apilb.yaml');
  const write = (l: string[]) =>
    writeFileSync(file, [...l, 'listen: ["127.0.0.1:0"]', 'adminListen: 127.0.0.1:0', 'healthCheckMode: tcp', 'logLevel: silent', ''].join('\n'));
  write(lines(backends));
  const input: ResolveInput = { configFile: file, env: {}, flags: {} };
  const d = new Daemon(resolveConfig(input), { resolveInput: input, logger: createLogger('silent') });
  await d.start();
  tt.teardown(() => d.close(0));
  return { d, file, port: (d.listeners[0]!.address() as AddressInfo).port, backends, write };
}

/** Opens a proxied stream and reads the backend's name line. */
async function stream(tt: Test, port: number): Promise<{ s: Socket; name: string }> {
  const s = await dial(port);
  tt.teardown(() => s.destroy());
  const name = (await readBytes(s, 3)).toString().trim();
  return { s, name };
}

async function echoes(s: Socket, payload: string): Promise<boolean> {
  s.write(payload);
  return (await readBytes(s, payload.length)).toString() === payload;
}

function post(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'x-apilb-reload': '1' } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('reload adds and removes backends, keeps untouched streams, drains the removed one', async (tt) => {
  const h = await harness(tt, 3, (b) => [`backends: [${b[0]!.address}, ${b[1]!.address}]`, 'drainTimeout: 400ms', 'closeSpread: 0']);
  const [b0, b1, b2] = h.backends.map((b) => b.address);
  const first = await stream(tt, h.port);
  const second = await stream(tt, h.port);
  const byName = new Map([first, second].map((x) => [x.name, x.s]));
  tt.same([...byName.keys()].sort(), ['b0', 'b1'], 'one stream to each backend');
  const kept = byName.get('b0')!;
  const dropped = byName.get('b1')!;
  const keptBackend = h.d.pool.get(b0!)!;

  h.write([`backends: [${b0}, ${b2}]`, 'drainTimeout: 400ms', 'closeSpread: 0', 'connectTimeout: 2s', 'healthCheckInterval: 3s', 'maxConnections: 50']);
  const startedAt = Date.now();
  const r = await h.d.reload();
  tt.equal(r.ok, true);
  tt.same(r.changes, [`backends: +${b2} -${b1}`, 'connectTimeout: 1s -> 2s', 'maxConnections: 10000 -> 50', 'healthCheckInterval: 2s -> 3s']);
  tt.equal(h.d.reloads.get('success'), 1, 'counted');
  tt.equal(h.d.proxy.connectTimeout, 2000, 'proxy timeout applied');
  tt.equal(h.d.proxy.maxConnections, 50);
  tt.equal(h.d.health.options.interval, 3000, 'health settings applied');
  tt.equal(h.d.config.connectTimeout, 2000, 'the active configuration is the new one');

  tt.equal(h.d.pool.get(b0!), keptBackend, 'the unchanged backend is the same object (state, counters kept)');
  tt.ok(await echoes(kept, 'still-here'), 'stream to the unchanged backend untouched');
  const removed = h.d.pool.get(b1!);
  tt.equal(removed?.removed, true, 'the removed backend is draining, not gone');
  tt.ok(await echoes(dropped, 'draining'), 'its stream keeps working while it drains');
  tt.ok(h.d.pool.get(b2!)?.eligible, 'the added backend takes connections');

  const names = new Set<string>();
  for (let i = 0; i < 4; i++) names.add((await stream(tt, h.port)).name);
  tt.same([...names].sort(), ['b0', 'b2'], 'new connections never reach the removed backend');

  await ended(dropped);
  const elapsed = Date.now() - startedAt;
  tt.ok(elapsed >= 350, `the removed backend's stream was closed after the drain timeout (${elapsed} ms)`);
  await until(() => h.d.pool.get(b1!) === undefined, 'removed backend gone once its last connection closed');
  tt.ok(await echoes(kept, 'after-drain'), 'unchanged stream still untouched');
});

t.test('invalid reload is rejected as a whole: the old configuration stays, the failure is counted', async (tt) => {
  const h = await harness(tt, 2, (b) => [`backends: [${b[0]!.address}]`]);
  const { s } = await stream(tt, h.port);
  const before = h.d.config;

  h.write([`backends: [${h.backends[1]!.address}]`, 'connectTimeout: nope']);
  const r = await h.d.reload();
  tt.equal(r.ok, false);
  tt.same(r.changes, []);
  tt.match(r.error, `${h.file}: connectTimeout: "nope" is not a duration`);
  tt.equal(h.d.reloads.get('failure'), 1);
  tt.equal(h.d.reloads.get('success'), undefined);
  tt.equal(h.d.config, before, 'old configuration active');
  tt.same(
    h.d.pool.backends.map((b) => b.id),
    [h.backends[0]!.address],
    'backends untouched although the file also changed them',
  );

  h.write([`backends: [${h.backends[1]!.address}]`, 'healthCheckTimeout: 5s']);
  const cross = await h.d.reload();
  tt.equal(cross.ok, false, 'cross-field rules apply on reload too');
  tt.match(cross.error, 'healthCheckTimeout: must not exceed healthCheckInterval');

  rmSync(h.file);
  const missing = await h.d.reload();
  tt.equal(missing.ok, false);
  tt.match(missing.error, `config: config file "${h.file}" does not exist`);
  tt.equal(h.d.reloads.get('failure'), 3);
  tt.ok(await echoes(s, 'unaffected'), 'traffic unaffected by rejected reloads');

  const admin = Number(h.d.adminAddress.split(':').pop());
  const viaHttp = await post(admin, '/reload');
  tt.equal(viaHttp.status, 400, 'POST /reload answers 400 for a rejected configuration');
  tt.match(JSON.parse(viaHttp.body), { ok: false, error: /does not exist/ });
  tt.equal(h.d.reloads.get('failure'), 4);
});

t.test('listener and admin changes are reported as needing a restart, not applied', async (tt) => {
  const h = await harness(tt, 1, (b) => [`backends: [${b[0]!.address}]`]);
  const listenBefore = h.d.config.listen;
  // The harness appends its own listen/adminListen; this file moves both (YAML: the last key would win, so
  // write them once here instead).
  writeFileSync(
    h.file,
    [
      `backends: [${h.backends[0]!.address}]`,
      'listen: ["127.0.0.1:16443"]',
      'adminListen: 127.0.0.1:19643',
      'rise: 3',
      'healthCheckMode: tcp',
      'logLevel: silent',
      'drainTimeout: 5s',
      '',
    ].join('\n'),
  );
  const r = await h.d.reload();
  tt.equal(r.ok, true, 'the rest is applied');
  tt.same(r.changes, [
    'listen: 127.0.0.1:0 -> 127.0.0.1:16443 requires restart (not applied)',
    'rise: 2 -> 3 requires restart (not applied)',
    'drainTimeout: 1m -> 5s',
    'adminListen: 127.0.0.1:0 -> 127.0.0.1:19643 requires restart (not applied)',
  ]);
  tt.equal(h.d.config.listen, listenBefore, 'active listen unchanged');
  tt.equal(formatAddress(h.d.config.adminListen), '127.0.0.1:0');
  tt.equal(h.d.config.drainTimeout, 5000);
  tt.equal(h.d.proxy.drainTimeout, 5000);
  tt.equal((h.d.listeners[0]!.address() as AddressInfo).port, h.port, 'still listening where it was');

  const admin = Number(h.d.adminAddress.split(':').pop());
  const again = await post(admin, '/reload');
  tt.equal(again.status, 200);
  tt.same(
    JSON.parse(again.body).changes,
    [
      'listen: 127.0.0.1:0 -> 127.0.0.1:16443 requires restart (not applied)',
      'rise: 2 -> 3 requires restart (not applied)',
      'adminListen: 127.0.0.1:0 -> 127.0.0.1:19643 requires restart (not applied)',
    ],
    'still pending on the next reload (compared with what is active)',
  );
  tt.equal(h.d.reloads.get('success'), 2);
});

t.test('reload re-reads certificate files that changed on disk (rotation)', async (tt) => {
  const ca = createTestCA();
  tt.teardown(() => ca.remove());
  const one = ca.client('system:node:n1', 'system:nodes');
  const two = ca.client('system:node:n1', 'system:nodes');
  const dir = mkdtempSync(join(tmpdir(), 'apilb-rotate-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pem = join(dir, 'kubelet-client-current.pem');
  writeFileSync(pem, one.cert + one.key);
  const h = await harness(tt, 1, (b) => [`backends: [${b[0]!.address}]`, `clientCertFile: ${pem}`, `clientKeyFile: ${pem}`]);
  tt.equal(h.d.health.options.tls.cert, one.cert + one.key);
  const same = await h.d.reload();
  tt.same(same, { ok: true, changes: [] }, 'nothing changed: nothing reported');
  writeFileSync(pem, two.cert + two.key);
  const rotated = await h.d.reload();
  tt.same(rotated, { ok: true, changes: ['health-check TLS material: files changed on disk, reloaded'] });
  tt.equal(h.d.health.options.tls.cert, two.cert + two.key, 'health checks use the new certificate');
});

/** The proxy settings the daemon sets from a configuration. */
function proxySettings(d: Daemon) {
  const p = d.proxy;
  return {
    connectTimeout: p.connectTimeout,
    firstByteTimeout: p.firstByteTimeout,
    maxConnections: p.maxConnections,
    drainTimeout: p.drainTimeout,
    closeSpread: p.closeSpread,
    clientHelloTimeout: p.clientHelloTimeout,
    replayBufferTotal: p.replayBufferTotal,
  };
}

/** The health-check settings the daemon sets from a configuration (TLS material aside). */
function healthSettings(d: Daemon) {
  const { mode, path, interval, timeout } = d.health.options;
  return { mode, path, interval, timeout };
}

t.test('a daemon reloaded into a configuration has the proxy and health settings of one started with it', async (tt) => {
  const settings = [
    'connectTimeout: 2s',
    'firstByteTimeout: 0',
    'maxConnections: 50',
    'drainTimeout: 5s',
    'closeSpread: 0',
    'clientHelloTimeout: 3s',
    'replayBufferTotal: 1024',
    'healthCheckPath: /livez',
    'healthCheckInterval: 3s',
    'healthCheckTimeout: 500ms',
  ];
  const started = await harness(tt, 1, (b) => [`backends: [${b[0]!.address}]`, ...settings]);
  const reloaded = await harness(tt, 1, (b) => [`backends: [${b[0]!.address}]`]);
  tt.notSame(proxySettings(reloaded.d), proxySettings(started.d), 'the defaults differ from the settings');
  tt.notSame(healthSettings(reloaded.d), healthSettings(started.d));
  reloaded.write([`backends: [${reloaded.backends[0]!.address}]`, ...settings]);
  tt.equal((await reloaded.d.reload()).ok, true);
  tt.same(proxySettings(reloaded.d), proxySettings(started.d), 'proxy: same settings after reload as at start');
  tt.same(healthSettings(reloaded.d), healthSettings(started.d), 'health checks: same settings after reload as at start');
});

t.test('reload: health checks get every setting, and only a changed mode, path or timeout replaces the checkers', async (tt) => {
  const cases: { name: string; lines: string[]; replaced: boolean; interval: number; timeout: number; path: string }[] = [
    { name: 'nothing changed', lines: [], replaced: false, interval: 2000, timeout: 1000, path: '/readyz' },
    { name: 'a proxy setting only', lines: ['connectTimeout: 2s'], replaced: false, interval: 2000, timeout: 1000, path: '/readyz' },
    { name: 'interval only (retimed, same checkers)', lines: ['healthCheckInterval: 3s'], replaced: false, interval: 3000, timeout: 1000, path: '/readyz' },
    { name: 'timeout', lines: ['healthCheckTimeout: 500ms'], replaced: true, interval: 2000, timeout: 500, path: '/readyz' },
    { name: 'path', lines: ['healthCheckPath: /livez'], replaced: true, interval: 2000, timeout: 1000, path: '/livez' },
  ];
  for (const c of cases) {
    await tt.test(c.name, async (ct) => {
      const h = await harness(ct, 1, (b) => [`backends: [${b[0]!.address}]`]);
      const backend = h.d.pool.backends[0]!;
      const before = h.d.health.checkerOf(backend);
      ct.ok(before, 'the backend has a checker');
      h.write([`backends: [${h.backends[0]!.address}]`, ...c.lines]);
      const r = await h.d.reload();
      ct.equal(r.ok, true);
      ct.equal(r.changes.length, c.lines.length, 'one change line per changed option');
      ct.equal(h.d.health.checkerOf(backend) !== before, c.replaced, c.replaced ? 'checker replaced' : 'same checker kept');
      ct.match(h.d.health.options, { interval: c.interval, timeout: c.timeout, path: c.path, mode: 'tcp' });
    });
  }
});

t.test('a daemon without a configuration source refuses to reload', async (tt) => {
  const b = await echoServer('x');
  tt.teardown(() => b.close());
  const d = new Daemon(resolveConfig({ flags: { backends: [b.address], listen: ['127.0.0.1:0'], adminListen: '127.0.0.1:0', healthCheckMode: 'tcp' } }), {
    logger: createLogger('silent'),
  });
  await d.start();
  tt.teardown(() => d.close(0));
  const r = await d.reload();
  tt.same(r, { ok: false, error: 'this daemon was started without a configuration source to reload', changes: [] });
});

t.test('diffConfig: option-by-option changes', async (tt) => {
  const base = { backends: ['10.0.0.1:6443', '10.0.0.2:6443'], healthCheckInsecure: true };
  const a = resolveConfig({ flags: base, hasIPv6Loopback: false });
  tt.same(diffConfig(a, a), []);
  const b = resolveConfig({ flags: { ...base, backends: ['10.0.0.2:6443', '10.0.0.1:6443'] }, hasIPv6Loopback: false });
  tt.same(diffConfig(a, b).map(describeChange), ['backends: reordered']);
  const c = resolveConfig({ flags: { ...base, tlsServerName: 'kubernetes', firstByteTimeout: '0' }, hasIPv6Loopback: false });
  tt.same(diffConfig(a, c).map(describeChange), ['firstByteTimeout: 1s -> 0', 'tlsServerName: (unset) -> kubernetes requires restart (not applied)']);
});
