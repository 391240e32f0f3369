/**
 * apilb watched like any node component (issue #16): journald priorities on log lines, the metrics-only listener,
 * and the gauges the self-alerts read (last reload successful, backend refusing our credentials).
 */
import t from 'tap';
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger, isJournalStream } from '../src/logging.js';
import { resolveConfig, type ResolveInput } from '../src/config/config.js';
import { Daemon, startDaemon } from '../src/daemon.js';
import { Pool } from '../src/pool/pool.js';
import { TcpProxy } from '../src/proxy/proxy.js';
import { createMetrics } from '../src/metrics/metrics.js';
import { parseAddress } from '../src/config/values.js';
import { echoServer } from './support/net.js';
import { parseExposition } from './support/prom-text.js';

function sink(): { stream: Writable; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  return { stream, lines };
}

t.test('JOURNAL_STREAM names stdout only when device and inode match', async (tt) => {
  const dir = mkdtempSync(join(tmpdir(), 'apilb-journal-'));
  const fd = openSync(join(dir, 'out'), 'w');
  tt.teardown(() => {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  const st = fstatSync(fd, { bigint: true });
  tt.equal(isJournalStream(fd, { JOURNAL_STREAM: `${st.dev}:${st.ino}` }), true, 'match');
  tt.equal(isJournalStream(fd, { JOURNAL_STREAM: `${st.dev}:${st.ino + 1n}` }), false, 'inherited by a redirected child: another inode');
  tt.equal(isJournalStream(fd, {}), false, 'not under systemd');
  tt.equal(isJournalStream(fd, { JOURNAL_STREAM: 'garbage' }), false);
});

t.test('with the syslog prefix every line starts with its <N> priority; without it, plain JSON lines', async (tt) => {
  const j = sink();
  const log = createLogger('debug', j.stream, { syslogPrefix: true });
  log.fatal('f');
  log.error('e');
  log.warn('w');
  log.info('i');
  log.debug('d');
  log.level = 'warn'; // reload changes the level: filtering still applies
  log.info('filtered');
  tt.same(
    j.lines.map((l) => l.slice(0, 3)),
    ['<2>', '<3>', '<4>', '<6>', '<7>'],
    'fatal=crit, error=err, warn=warning, info, debug',
  );
  tt.same(
    j.lines.map((l) => (JSON.parse(l.slice(3)) as { msg: string }).msg),
    ['f', 'e', 'w', 'i', 'd'],
    'the rest of the line is the JSON record',
  );
  const plain = sink();
  createLogger('info', plain.stream).error('e');
  tt.equal((JSON.parse(plain.lines[0]!) as { level: string }).level, 'error', 'a given destination gets plain JSON by default');
});

/** GET/POST on 127.0.0.1:port. */
function http(port: number, method: string, path: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, type: String(res.headers['content-type']) }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('--metrics-listen serves GET /metrics and nothing else; off by default', async (tt) => {
  const b = await echoServer('a');
  tt.teardown(() => b.close());
  const flags = { listen: ['127.0.0.1:0'], adminListen: '127.0.0.1:0', backends: [b.address], healthCheckMode: 'tcp', logLevel: 'silent' };
  const off = await startDaemon(resolveConfig({ flags, env: {} }), { logger: createLogger('silent') });
  tt.equal(off.metricsServer, undefined, 'off unless configured');
  await off.close(0);

  const d = await startDaemon(resolveConfig({ flags: { ...flags, metricsListen: '127.0.0.1:0' }, env: {} }), { logger: createLogger('silent') });
  tt.teardown(() => d.close(0));
  const port = (d.metricsServer!.server.address() as { port: number }).port;
  const m = await http(port, 'GET', '/metrics');
  tt.equal(m.status, 200);
  tt.match(m.type, /text\/plain; version=0.0.4/);
  tt.equal(parseExposition(m.body).all('apilb_build_info')[0]?.value, 1, 'the same metrics as the admin endpoint');
  tt.equal((await http(port, 'GET', '/metrics?x=1')).status, 200, 'query string ignored');
  tt.equal((await http(port, 'HEAD', '/metrics')).status, 200);
  for (const [method, path, status] of [
    ['POST', '/reload', 404],
    ['GET', '/status', 404],
    ['GET', '/readyz', 404],
    ['GET', '/healthz', 404],
    ['POST', '/metrics', 405],
    ['GET', '/metrics/../reload', 404],
  ] as const) {
    tt.equal((await http(port, method, path)).status, status, `${method} ${path} → ${status}`);
  }
  tt.equal(d.reloads.size, 0, 'no reload was triggered through it');
});

t.test('apilb_config_last_reload_successful: 0 while the latest reload is rejected, 1 once one succeeds', async (tt) => {
  const b = await echoServer('a');
  tt.teardown(() => b.close());
  const dir = mkdtempSync(join(tmpdir(), 'apilb-reload-gauge-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'apilb.yaml');
  const good = `backends: [${b.address}]\nlisten: [127.0.0.1:0]\nadminListen: 127.0.0.1:0\nhealthCheckMode: tcp\n`;
  writeFileSync(file, good);
  const input: ResolveInput = { configFile: file, env: {} };
  const d = new Daemon(resolveConfig(input), { resolveInput: input, logger: createLogger('silent') });
  tt.teardown(() => d.close(0));
  await d.start();
  const gauge = async () => parseExposition(await d.metrics.render()).get('apilb_config_last_reload_successful');
  tt.equal(await gauge(), 1, 'no reload yet');
  writeFileSync(file, good + 'connectTimeout: banana\n');
  tt.equal((await d.reload()).ok, false);
  tt.equal(await gauge(), 0, 'rejected: stays 0 while the bad file remains');
  tt.equal((await d.reload()).ok, false);
  tt.equal(await gauge(), 0);
  writeFileSync(file, good);
  tt.equal((await d.reload()).ok, true);
  tt.equal(await gauge(), 1, 'fixed');
});

t.test('apilb_backend_unauthenticated follows the latest check: 401/403 → 1, anything else → 0', async (tt) => {
  const pool = new Pool();
  const proxy = new TcpProxy({ pool });
  const b = pool.add({ address: parseAddress('127.0.0.1:6443') });
  const metrics = createMetrics({ pool, proxy, version: 't', defaultMetrics: false });
  tt.teardown(() => metrics.close());
  const value = async () => parseExposition(await metrics.render()).get('apilb_backend_unauthenticated', { backend: b.id });
  tt.equal(await value(), 0, 'no check yet');
  for (const [status, want] of [
    [401, 1],
    [500, 0],
    [403, 1],
    [200, 0],
  ] as const) {
    // As the https checker reports them: 401/403 pass (the backend answered), 500 is a status failure.
    pool.reportCheck(b, status === 500 ? { ok: false, kind: 'status', status, latencyMs: 1 } : { ok: true, latencyMs: 1, status });
    tt.equal(await value(), want, `after ${status}`);
  }
});
