/**
 * Active health checks against kube-apiserver stand-ins with real TLS on loopback (https: 200, 500, 401/403,
 * wrong CA, wrong server name, timeout, refused, keep-alive reuse; tcp mode), and the monitor's timing with an
 * injected clock (independence of backends, re-check after failures and passive reports, jitter bounds).
 */
import t, { type Test } from 'tap';
import { Writable } from 'node:stream';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createLogger, subscribeHealthLogger } from '../src/logging.js';
import { HttpsChecker, isUnauthenticated } from '../src/health/https-checker.js';
import { TcpChecker } from '../src/health/tcp-checker.js';
import { HealthMonitor } from '../src/health/health-monitor.js';
import { TLS_ERROR_PREFIX } from '../src/net-errors.js';
import { Pool } from '../src/pool/pool.js';
import { hasCode } from '../src/errors.js';
import type { CheckResult } from '../src/pool/pool.js';
import { connect } from 'node:net';
import { createTestCA, echoServer, FakeClock, startServer, waitFor } from './support/index.js';
import { flush, handleCounts, monitor, recordChecks, recordStates, ScriptedChecker, standIn, tlsFor } from './support/health-fixtures.js';

const ca = createTestCA();
const other = createTestCA({ name: 'other-ca' });
const leaf = ca.server('apiserver');
const serving = { cert: leaf.cert, key: leaf.key, caCert: ca.cert };
const node = ca.client('system:node:node-1', 'system:nodes');
t.teardown(() => {
  ca.remove();
  other.remove();
});

const host = (port: number) => ({ host: '127.0.0.1', port });

/** A backend in its own pool plus an https checker for it, closed at teardown. */
function httpsFor(tt: Test, port: number, opts: Partial<ConstructorParameters<typeof HttpsChecker>[0]> = {}) {
  const pool = new Pool();
  const backend = pool.add({ address: host(port) });
  const checker = new HttpsChecker({ backend, path: '/readyz', timeout: 1000, tls: tlsFor(ca), ...opts });
  tt.teardown(() => checker.close());
  return { pool, backend, checker };
}

function within(ms: number): AbortSignal {
  return AbortSignal.timeout(ms);
}

t.test('https: 200 is ok; the certificate is verified against the CA and the IP SAN', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const { checker } = httpsFor(tt, s.port);
  const r = await checker.check(within(2000));
  tt.same(r.ok, true);
  tt.equal((r as { status?: number }).status, 200);
  tt.ok(r.latencyMs >= 0 && r.latencyMs < 2000, 'latency measured');
});

t.test('https: keep-alive, N checks are N requests over one TLS connection', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const { checker } = httpsFor(tt, s.port);
  for (let i = 0; i < 8; i++) tt.same((await checker.check(within(2000))).ok, true, `check ${i}`);
  tt.equal(s.requests, 8, '8 requests reached the server');
  tt.equal(s.connections, 1, 'over one TCP connection');
  tt.equal(checker.connects, 1, 'the client connected once');
});

t.test('https: a kept-alive connection the server closed while idle is replaced without a failed check', async (tt) => {
  // API servers and proxies in front of them close idle connections; that must never count against the backend.
  const srv = createHttpsServer({ cert: leaf.cert, key: leaf.key, keepAliveTimeout: 1 }, (_req, res) => res.end('ok'));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  tt.teardown(() => srv.close());
  const { checker } = httpsFor(tt, (srv.address() as AddressInfo).port);
  tt.match(await checker.check(within(2000)), { ok: true });
  await waitFor(() => new Promise<boolean>((resolve) => srv.getConnections((_e, n) => resolve(n === 0))));
  tt.match(await checker.check(within(2000)), { ok: true });
  tt.equal(checker.connects, 2, 'a new connection replaced the closed one');
});

t.test('https: 500 (not ready) is a status failure carrying the failed readyz checks', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  s.setReady(false);
  const { checker } = httpsFor(tt, s.port);
  const r = await checker.check(within(2000));
  tt.match(r, { ok: false, kind: 'status', status: 500 });
  tt.match((r as { error?: string }).error, /\[-\]etcd-readiness failed/);
  // The body was read: the connection stays usable for the next check.
  s.setReady(true);
  tt.same((await checker.check(within(2000))).ok, true);
  tt.equal(s.connections, 1);
});

t.test('https: 401 without a client certificate passes as unauthenticated (alive, status kept); with --client-cert-file it is 200', async (tt) => {
  const s = await standIn(tt, { ca: serving, anonymousAuth: false });
  const anon = httpsFor(tt, s.port);
  const r = await anon.checker.check(within(2000));
  tt.match(r, { ok: true, status: 401 });
  tt.ok(isUnauthenticated(r), 'marked unauthenticated');
  anon.pool.reportCheck(anon.backend, r);
  tt.equal(anon.backend.state, 'up', 'a backend that answers 401 stays in rotation');
  const withCert = httpsFor(tt, s.port, { tls: tlsFor(ca, { cert: node.cert, key: node.key }) });
  tt.match(await withCert.checker.check(within(2000)), { ok: true, status: 200 });
});

t.test('https: a server certificate from another CA is a TLS transport failure', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const { checker } = httpsFor(tt, s.port, { tls: tlsFor(other) });
  const r = await checker.check(within(2000));
  tt.match(r, { ok: false, kind: 'transport' });
  tt.ok((r as { error: string }).error.startsWith(TLS_ERROR_PREFIX), `tls error: ${(r as { error: string }).error}`);
});

t.test('https: --tls-server-name picks the name verified; a name not in the SANs fails', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const good = httpsFor(tt, s.port, { tls: tlsFor(ca, { serverName: 'kubernetes' }) });
  tt.match(await good.checker.check(within(2000)), { ok: true });
  const bad = httpsFor(tt, s.port, { tls: tlsFor(ca, { serverName: 'not-the-apiserver.example' }) });
  const r = await bad.checker.check(within(2000));
  tt.match(r, { ok: false, kind: 'transport', error: /ERR_TLS_CERT_ALTNAME_INVALID/ });
  // A backend discovered by DNS name is verified against that name.
  const pool = new Pool();
  const named = pool.add({ address: host(s.port), serverName: 'localhost' });
  const c = new HttpsChecker({ backend: named, path: '/readyz', timeout: 1000, tls: tlsFor(ca) });
  tt.teardown(() => c.close());
  tt.match(await c.check(within(2000)), { ok: true });
});

t.test('https: --health-check-insecure skips verification', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const { checker } = httpsFor(tt, s.port, { tls: { insecure: true } });
  tt.match(await checker.check(within(2000)), { ok: true });
});

t.test('https: a hung server is a transport timeout; the next check starts a fresh connection', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const { checker } = httpsFor(tt, s.port, { timeout: 200 });
  tt.match(await checker.check(within(2000)), { ok: true });
  s.hang();
  const started = Date.now();
  const r = await checker.check(within(200));
  tt.match(r, { ok: false, kind: 'transport', error: /timeout/ });
  tt.ok(Date.now() - started < 1000, 'settled soon after the abort');
  s.resume();
  tt.match(await checker.check(within(2000)), { ok: true });
  tt.equal(checker.connects, 2, 'the timed-out connection was dropped and a new one made');
});

/**
 * A TCP front for a stand-in whose first connection never gets through (a TLS handshake stuck on the network),
 * while later connections are piped to the stand-in.
 */
async function slowFirstHandshake(tt: Test, port: number) {
  const front = await startServer((s, srv) => {
    if (srv.accepted === 1) return void s.pause();
    const up = connect({ host: '127.0.0.1', port });
    up.on('error', () => s.destroy());
    s.pipe(up).pipe(s);
    s.on('close', () => up.destroy());
  });
  tt.teardown(() => front.close());
  return front;
}

t.test('https: one slow TLS handshake is one failure: the immediate re-check gets its own connection (fall 2 stays 2)', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const front = await slowFirstHandshake(tt, s.port);
  // Checker level: the monitor aborts the slow check and starts the re-check at once.
  const { checker } = httpsFor(tt, front.port);
  const ac = new AbortController();
  const first = checker.check(ac.signal);
  await waitFor(() => front.accepted === 1, { what: 'the first connection opening' });
  ac.abort();
  const second = await checker.check(within(3000));
  tt.match(await first, { ok: false, kind: 'transport' });
  tt.match(second, { ok: true, status: 200 }, 'the re-check is not destroyed by the first check giving up');
  tt.equal(front.accepted, 2, 'on a connection of its own');

  // Monitor level, fall 2: the slow check counts once, the re-check passes, the backend never goes down.
  const front2 = await slowFirstHandshake(tt, s.port);
  const clock = new FakeClock();
  const pool = new Pool({ fall: 2 });
  const b = pool.add({ address: host(front2.port) });
  pool.reportCheck(b, { ok: true, latencyMs: 1, status: 200 });
  const states = recordStates(pool, b);
  const m = monitor(tt, { pool, tls: tlsFor(ca), clock, interval: 2000, timeout: 1000 });
  const results = recordChecks(m, b);
  m.start();
  clock.advance(0);
  await waitFor(() => front2.accepted === 1, { what: 'the slow handshake' });
  clock.advance(1000);
  await waitFor(() => results.length === 1, { what: 'the timed-out check' });
  clock.advance(0);
  await waitFor(() => results.length === 2, { what: 'the re-check' });
  tt.match(results, [
    { ok: false, kind: 'transport', error: /timeout/ },
    { ok: true, status: 200 },
  ]);
  tt.same(states, [], 'still up: one slow handshake is one failure');
  tt.equal(b.state, 'up');
});

t.test('https: refused and reset are transport failures', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const { checker } = httpsFor(tt, s.port);
  tt.match(await checker.check(within(2000)), { ok: true });
  await s.crash();
  // The kept-alive connection was reset; the retry on a fresh one is refused.
  tt.match(await checker.check(within(2000)), { ok: false, kind: 'transport', error: /refused/ });
  tt.match(await checker.check(within(2000)), { ok: false, kind: 'transport', error: /refused/ });
});

t.test('tcp: a verified TLS handshake with a CA, a plain connect without', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const pool = new Pool();
  const b = pool.add({ address: host(s.port) });
  const good = new TcpChecker({ backend: b, timeout: 1000, tls: tlsFor(ca) });
  const bad = new TcpChecker({ backend: b, timeout: 1000, tls: tlsFor(other) });
  tt.teardown(() => Promise.all([good.close(), bad.close()]));
  tt.match(await good.check(within(2000)), { ok: true });
  tt.match(await bad.check(within(2000)), { ok: false, kind: 'transport', error: /^tls: / });
  const plain = await echoServer();
  tt.teardown(() => plain.close());
  const pb = pool.add({ address: host(plain.port) });
  const bare = new TcpChecker({ backend: pb, timeout: 1000, tls: { insecure: true } });
  tt.equal(bare.handshake, false);
  tt.match(await bare.check(within(2000)), { ok: true });
  await waitFor(() => plain.sockets.size === 0, { what: 'the check connection to close' });
  // The stand-in's hang() stops reads natively: let the earlier check connections finish closing first.
  await waitFor(() => s.activeConnections === 0, { what: 'earlier check connections to close' });
  s.hang();
  tt.match(await good.check(within(150)), { ok: false, kind: 'transport', error: /timeout/ });
  // A stand-in crashed before anyone connected: its port refuses.
  const dead = await standIn(tt, { ca: serving, name: 'dead' });
  await dead.crash();
  const db = pool.add({ address: host(dead.port) });
  const refused = new TcpChecker({ backend: db, timeout: 1000, tls: tlsFor(ca) });
  tt.teardown(() => refused.close());
  tt.match(await refused.check(within(2000)), { ok: false, kind: 'transport', error: /refused/ });
});

t.test('options are validated at construction', async (tt) => {
  const pool = new Pool();
  const tls = tlsFor(ca);
  const bad: [string, object][] = [
    ['interval', { interval: 0 }],
    ['timeout', { timeout: -1 }],
    ['timeout', { interval: 500, timeout: 600 }],
    ['path', { path: 'readyz' }],
    ['mode', { mode: 'udp' }],
    ['recheckDelay', { recheckDelay: -5 }],
    ['tls', { tls: { insecure: false } }],
  ];
  for (const [name, o] of bad) {
    let err: unknown;
    try {
      new HealthMonitor({ pool, tls, ...o } as never);
    } catch (e) {
      err = e;
    }
    tt.ok(hasCode(err, 'APILB_ERR_OPTION_INVALID') && (err as Error).message.includes(name), `${name}: ${(err as Error)?.message}`);
  }
  tt.throws(() => new HealthMonitor({ tls } as never), /pool/);
  // tcp mode needs no CA.
  tt.doesNotThrow(() => new HealthMonitor({ pool, mode: 'tcp', tls: { insecure: false } }));
  const m = monitor(tt, { pool, tls });
  tt.throws(() => m.update({ interval: -1 }), /interval/);
  tt.equal(m.options.interval, 2000, 'a rejected update changes nothing');
});

/** A monitor on a fake clock with scripted checkers. */
function scripted(tt: Test, n: number, opts: { random?: () => number; interval?: number; timeout?: number; recheckDelay?: number } = {}) {
  const clock = new FakeClock();
  const pool = new Pool({ clock });
  const checkers = new Map<string, ScriptedChecker>();
  for (let i = 0; i < n; i++) pool.add({ address: host(10000 + i) });
  const m = monitor(tt, {
    pool,
    clock,
    tls: tlsFor(ca),
    random: opts.random ?? (() => 0.5),
    interval: opts.interval ?? 2000,
    timeout: opts.timeout ?? 1000,
    recheckDelay: opts.recheckDelay ?? 300,
    createChecker: (spec) => {
      const c = new ScriptedChecker(spec.backend, () => clock.now());
      checkers.set(spec.backend.id, c);
      return c;
    },
  });
  const t0 = clock.now();
  const at = (b: { id: string }) => checkers.get(b.id)!.starts.map((x) => x - t0);
  return { clock, pool, m, checkers, at, t0 };
}

/** Advances the fake clock in steps, letting promise callbacks run between timers. */
async function advance(clock: FakeClock, ms: number, step = 10): Promise<void> {
  let done = 0;
  do {
    const d = Math.min(step, ms - done);
    clock.advance(d);
    done += d;
    await flush();
  } while (done < ms);
}

t.test('monitor: first checks at once, then every interval jittered within ±10%', async (tt) => {
  const seq = [0, 0.999, 0.5, 0.25];
  let i = 0;
  const { clock, pool, m, at } = scripted(tt, 1, { random: () => seq[i++ % seq.length]! });
  m.start();
  await advance(clock, 0);
  await advance(clock, 8000, 1);
  const b = pool.backends[0]!;
  const starts = at(b);
  tt.equal(starts[0], 0, 'first check at once');
  const gaps = starts.slice(1).map((x, k) => x - starts[k]!);
  tt.same(gaps.slice(0, 4), [1800, 2200, 2000, 1900], 'interval × (0.9 + 0.2 × random)');
  for (const g of gaps) tt.ok(g >= 1800 && g <= 2200, `gap ${g} within ±10%`);
  tt.equal(b.state, 'up');
});

t.test('monitor: a failure while up is confirmed after recheckDelay (fall=2 → down), a success while down likewise', async (tt) => {
  const { clock, pool, m, checkers, at } = scripted(tt, 1);
  const b = pool.backends[0]!;
  const states = recordStates(pool, b);
  m.start();
  await advance(clock, 0);
  const c = checkers.get(b.id)!;
  c.auto = { ok: false, kind: 'transport', latencyMs: 1, error: 'connection refused' };
  await advance(clock, 2000 + 300 + 5, 1);
  tt.same(at(b), [0, 2000, 2300]);
  tt.same(states, ['up', 'down'], 'down after the re-check confirmed the failure');
  await advance(clock, 2000, 1);
  tt.same(at(b), [0, 2000, 2300, 4300], 'once down, a failing backend is checked at the interval again');
  c.auto = { ok: true, latencyMs: 1 };
  await advance(clock, 2000, 1);
  tt.same(at(b).slice(4), [6300], 'the first success...');
  tt.equal(b.state, 'down', 'is not enough (rise=2)');
  await advance(clock, 300, 1);
  tt.same(at(b).slice(4), [6300, 6600], '...is confirmed after recheckDelay');
  tt.same(states, ['up', 'down', 'up']);
});

t.test('monitor: a single slow check never flaps a backend', async (tt) => {
  const { clock, pool, m, checkers } = scripted(tt, 1);
  const b = pool.backends[0]!;
  const states = recordStates(pool, b);
  m.start();
  await advance(clock, 0);
  const c = checkers.get(b.id)!;
  c.auto = undefined; // the next check hangs until the monitor's timeout aborts it
  await advance(clock, 2000 + 1000, 1);
  tt.match(b.lastCheck, { result: 'error', error: /timeout after 1000 ms/ });
  c.auto = { ok: true, latencyMs: 1 };
  await advance(clock, 300, 1);
  tt.same(states, ['up'], 'still up');
  tt.equal(b.consecutiveFailures, 0);
});

t.test('monitor: after a timed-out check the re-check starts at once (spacing counts from the check start)', async (tt) => {
  const { clock, pool, m, checkers, at } = scripted(tt, 1);
  const b = pool.backends[0]!;
  m.start();
  await advance(clock, 0);
  checkers.get(b.id)!.auto = undefined; // hangs until the monitor's 1000 ms timeout
  await advance(clock, 2000 + 1000 + 5, 1);
  tt.same(at(b), [0, 2000, 3000], 're-check right after the timeout');
  await advance(clock, 1000, 1);
  tt.equal(b.state, 'down', 'hung backend down interval + 2 × timeout after its last good check');
});

t.test('monitor: a failed client dial (pool recheck) triggers a check at once, at most once per recheckDelay', async (tt) => {
  const { clock, pool, m, at } = scripted(tt, 1);
  const b = pool.backends[0]!;
  m.start();
  await advance(clock, 0);
  await advance(clock, 500, 1);
  pool.reportDialFailure(b, 'refused');
  await advance(clock, 0);
  tt.same(at(b), [0, 500], 'checked at once');
  pool.reportDialFailure(b, 'refused');
  pool.reportDialFailure(b, 'refused');
  await advance(clock, 0);
  tt.same(at(b), [0, 500], 'no storm of checks');
  await advance(clock, 300, 1);
  tt.same(at(b), [0, 500, 800], 'the next one recheckDelay after the last');
});

t.test('monitor: one hung backend never delays the checks of another', async (tt) => {
  const a = await standIn(tt, { ca: serving, name: 'a' });
  const h = await standIn(tt, { ca: serving, name: 'hung' });
  h.hang();
  const clock = new FakeClock();
  const pool = new Pool({ clock });
  const ba = pool.add({ address: host(a.port) });
  const bh = pool.add({ address: host(h.port) });
  const m = monitor(tt, { pool, clock, tls: tlsFor(ca), interval: 1000, timeout: 1000, random: () => 0 });
  const ra = recordChecks(m, ba);
  const rh = recordChecks(m, bh);
  m.start();
  clock.advance(0);
  await waitFor(() => ra.length === 1, { what: 'first result of the healthy backend' });
  clock.advance(900);
  await waitFor(() => ra.length === 2, { what: 'second result of the healthy backend' });
  tt.equal(rh.length, 0, 'the hung backend has no result yet: its check is still waiting for its timeout');
  clock.advance(100);
  await waitFor(() => rh.length === 1, { what: 'the hung check to time out' });
  tt.match(rh[0], { ok: false, kind: 'transport', error: /timeout/ });
});

t.test('monitor: firstRound resolves once every backend has a settled state, or at its timeout', async (tt) => {
  const { clock, m, checkers, pool } = scripted(tt, 2);
  m.start();
  const c1 = checkers.get(pool.backends[1]!.id)!;
  c1.auto = undefined;
  let done = false;
  void m.firstRound(1500).then(() => (done = true));
  await advance(clock, 0);
  tt.equal(done, false, 'one backend still has no result');
  c1.resolveNext({ ok: true, latencyMs: 1 });
  await flush();
  await flush();
  tt.equal(done, true);
  // A first failure does not settle a backend (it is still `unknown` and eligible): firstRound waits for `fall`.
  const { clock: clock3, m: m3, checkers: cs3 } = scripted(tt, 1);
  m3.start();
  for (const c of cs3.values()) c.auto = { ok: false, kind: 'status', latencyMs: 1, status: 500 };
  let done3 = false;
  void m3.firstRound(5000).then(() => (done3 = true));
  await advance(clock3, 0);
  tt.equal(done3, false, 'one failure: not settled');
  await advance(clock3, 300, 10);
  tt.equal(done3, true, 'settled (draining) after the confirming re-check');
  const { clock: clock2, m: m2, checkers: cs2 } = scripted(tt, 1);
  m2.start();
  for (const c of cs2.values()) c.auto = undefined;
  let done2 = false;
  void m2.firstRound(500).then(() => (done2 = true));
  await advance(clock2, 490, 10);
  tt.equal(done2, false);
  await advance(clock2, 20, 10);
  tt.equal(done2, true, 'resolved at the timeout');
});

t.test('monitor: backends added and deleted in the pool get and lose their loop', async (tt) => {
  const { clock, m, pool, checkers } = scripted(tt, 1);
  m.start();
  await advance(clock, 0);
  const added = pool.add({ address: host(20000) });
  await advance(clock, 0);
  tt.equal(checkers.get(added.id)!.starts.length, 1, 'new backend checked at once');
  pool.reconcile([{ address: host(20000) }]);
  const gone = [...checkers.values()].find((c) => c.backend.id !== added.id)!;
  tt.equal(gone.closed, true, "the deleted backend's checker was closed");
  tt.same(
    m.checked.map((b) => b.id),
    [added.id],
  );
});

t.test('monitor: update() applies a new interval, path and TLS without a restart', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const pool = new Pool();
  const b = pool.add({ address: host(s.port) });
  const m = monitor(tt, { pool, tls: tlsFor(other), interval: 200, timeout: 150, recheckDelay: 50 });
  const results = recordChecks(m, b);
  m.start();
  await waitFor(() => b.state === 'down', { what: 'wrong CA → down' });
  m.update({ tls: tlsFor(ca), path: '/livez' });
  await waitFor(() => b.state === 'up', { what: 'the new CA applied' });
  tt.equal(m.options.path, '/livez');
  const before = s.requests;
  m.update({ interval: 150 });
  await waitFor(() => s.requests >= before + 3, { what: 'checks at the new interval' });
  tt.ok(results.some((r) => !r.ok && r.kind === 'transport') && results.at(-1)!.ok);
});

t.test('logging: 401/403 say "counts as up" and name the credential flags (rate-limited); TLS failures name --ca-file/--tls-server-name', async (tt) => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  const log = createLogger('info', sink);
  const pool = new Pool();
  const b = pool.add({ address: host(1) });
  const { EventEmitter } = await import('node:events');
  const src = new EventEmitter<{ check: [{ backend: typeof b; result: CheckResult }] }>();
  const off = subscribeHealthLogger(log, src);
  tt.teardown(off);
  src.emit('check', { backend: b, result: { ok: true, latencyMs: 1, status: 401 } });
  src.emit('check', { backend: b, result: { ok: true, latencyMs: 1, status: 401 } });
  src.emit('check', {
    backend: b,
    result: { ok: false, kind: 'transport', latencyMs: 1, error: 'tls: unable to verify the first certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE)' },
  });
  src.emit('check', { backend: b, result: { ok: false, kind: 'transport', latencyMs: 1, error: 'connection refused' } });
  await waitFor(() => lines.length >= 2, { what: 'log lines' });
  tt.equal(lines.length, 2, 'one auth hint (rate-limited), one TLS hint, nothing for refused');
  const [auth, tls] = lines.map((l) => JSON.parse(l) as { level: string; msg: string; event: string; code: string });
  tt.match(auth, { level: 'warn', event: 'health_check_unauthenticated', code: 'APILB_ERR_HEALTH_CHECK' });
  tt.match(auth!.msg, /counts as up/);
  tt.match(auth!.msg, /--client-cert-file and --client-key-file/);
  tt.match(auth!.msg, /--kubeconfig/);
  tt.match(tls, { level: 'warn', event: 'health_check_tls' });
  tt.match(tls!.msg, /--ca-file.*--tls-server-name/);
});

t.test('close() aborts checks in flight and leaves no sockets or timers behind', async (tt) => {
  const s = await standIn(tt, { ca: serving });
  const h = await standIn(tt, { ca: serving, name: 'hung' });
  h.hang();
  await new Promise((r) => setImmediate(r));
  const before = handleCounts();
  const pool = new Pool();
  pool.add({ address: host(s.port) });
  pool.add({ address: host(h.port) });
  const m = new HealthMonitor({ pool, tls: tlsFor(ca), interval: 5000, timeout: 5000 });
  m.start();
  await m.firstRound(300);
  await waitFor(() => s.activeConnections === 1 && h.activeConnections === 1, { what: 'check connections open' });
  await m.close();
  // (The hung stand-in reads nothing, so it never notices; the healthy one sees the close.)
  await waitFor(() => s.activeConnections === 0, { what: 'check connection closed on the server' });
  // The hung stand-in still holds its end of the connection it never read: release it so the count below is ours.
  await h.close();
  await waitFor(
    () => {
      const now = handleCounts();
      return ['TCPSocketWrap', 'TLSWrap', 'Timeout'].every((k) => (now[k] ?? 0) <= (before[k] ?? 0));
    },
    { what: `handles back to ${JSON.stringify(before)} (now ${JSON.stringify(handleCounts())})` },
  );
  tt.same(pool.listenerCount('added') + pool.listenerCount('evicted') + pool.listenerCount('recheck'), 0, 'pool listeners removed');
});
