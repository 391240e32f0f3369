/**
 * What `systemctl status apilb` shows and when systemd hears READY=1 (issue 14, finding 5): READY=1 only once a
 * backend is up (or, when none comes up, after a bound of rise × interval + timeout past the first health round,
 * saying so in STATUS=), and STATUS= follows health changes and reloads. The notify helper is a stand-in that
 * records its arguments, so the daemon's decisions are under test, not the datagram (test/systemd-notify.test.ts).
 */
import t, { type Test } from 'tap';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig, type ResolveInput } from '../src/config/config.js';
import { Daemon } from '../src/daemon.js';
import { createLogger } from '../src/logging.js';
import { Notifier } from '../src/systemd/notify.js';
import { startFakeApiServer, type FakeApiServer } from '../src/demo/fake-apiserver.js';
import { createTestCA } from '../src/demo/test-ca.js';
import { waitFor } from './support/index.js';

interface Harness {
  d: Daemon;
  started: Promise<void>;
  sent: () => string[];
  file: string;
  api: FakeApiServer;
  startedAt: number;
}

async function harness(t: Test, apiReady: boolean): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'apilb-status-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = createTestCA();
  t.teardown(() => ca.remove());
  const leaf = ca.server();
  const api = await startFakeApiServer({ ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert } });
  t.teardown(() => api.close());
  api.setReady(apiReady);
  const log = join(dir, 'sent');
  const helper = join(dir, 'notify');
  writeFileSync(helper, `#!/bin/sh\necho "$*" >> '${log}'\n`);
  chmodSync(helper, 0o755);
  const sent = (): string[] => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []);
  const file = join(dir, 'apilb.yaml');
  writeFileSync(
    file,
    [
      `backends: ["${api.address}"]`,
      `caFile: ${ca.certFile}`,
      'listen: ["127.0.0.1:0"]',
      'adminListen: 127.0.0.1:0',
      'healthCheckInterval: 200ms',
      'healthCheckTimeout: 200ms',
      'rise: 2',
      'fall: 1',
      'logLevel: silent',
      '',
    ].join('\n'),
  );
  const input: ResolveInput = { configFile: file, hasIPv6Loopback: false };
  const notifier = new Notifier({ env: { NOTIFY_SOCKET: '/run/systemd/notify' }, command: helper });
  const d = new Daemon(resolveConfig(input), { resolveInput: input, logger: createLogger('silent'), notifier });
  t.teardown(() => d.close(0));
  const startedAt = Date.now();
  const started = d.start();
  return { d, started, sent, file, api, startedAt };
}

t.test('READY=1 waits for a backend to come up; STATUS= follows health and reloads', async (t) => {
  const h = await harness(t, false);
  // The first round is done once the stand-in answered /readyz with 500.
  await waitFor(() => h.d.pool.backends[0]?.state !== 'unknown', { timeoutMs: 5000 });
  t.notOk(
    h.sent().some((l) => l.startsWith('READY=1')),
    'no READY=1 while no backend is up after the first round',
  );
  h.api.setReady(true);
  await h.started;
  // The send is fire-and-forget in start(); it lands once the helper ran.
  const ready = await waitFor(() => h.sent().find((l) => l.startsWith('READY=1')), { timeoutMs: 5000 });
  t.equal(ready, 'READY=1 STATUS=serving 1/1 backends up', 'READY=1 once the backend passed its checks');

  h.api.setReady(false);
  await waitFor(() => h.sent().includes('STATUS=no backend up (1 configured): forwarding to all of them (panic)'), { timeoutMs: 5000 });
  t.pass('STATUS= reports the backend going away');
  h.api.setReady(true);
  await waitFor(() => h.sent().at(-1) === 'STATUS=serving 1/1 backends up', { timeoutMs: 5000 });
  t.pass('and coming back');

  writeFileSync(h.file, 'backends: [not an address\n');
  const r = await h.d.reload();
  t.equal(r.ok, false);
  const rejected = await waitFor(() => h.sent().find((l) => l.includes('last reload rejected')), { timeoutMs: 5000 });
  t.match(rejected, /^STATUS=serving 1\/1 backends up; last reload rejected: /, 'a rejected reload shows in STATUS=');
  const n = h.sent().length;
  await h.d.close(0);
  t.equal(
    h
      .sent()
      .slice(n)
      .filter((l) => l.startsWith('STATUS=')).length,
    0,
    'no STATUS= after shutdown began',
  );
});

t.test('when no backend comes up, READY=1 follows after rise × interval + timeout, and STATUS= says so', async (t) => {
  const h = await harness(t, false);
  await h.started;
  const took = Date.now() - h.startedAt;
  // Bound: first round (≤ timeout + 500 ms) then 2 × 200 + 200 ms.
  t.comment(`READY=1 after ${took} ms with no backend up`);
  t.ok(took >= 600, 'not before the bound');
  t.ok(took < 5000, 'and not much later');
  t.equal(
    await waitFor(() => h.sent().find((l) => l.startsWith('READY=1')), { timeoutMs: 5000 }),
    'READY=1 STATUS=no backend up (1 configured): forwarding to all of them (panic)',
  );
});
