/**
 * First-byte failover (issue 9): a backend that accepts but never answers costs the client a slower
 * handshake, never a failure, while another backend answers.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { connect as tlsConnect } from 'node:tls';
import { resolveConfig } from '../src/config/config.js';
import { startDaemon } from '../src/daemon.js';
import { createLogger } from '../src/logging.js';
import { bannerServer, dial, echoServer, readBytes, startServer, until, type TestServer } from './support/net.js';
import { FakeClock } from './support/fake-clock.js';
import { proxyOver as harness } from './support/proxy-harness.js';
import { createTestCA, startFakeApiServer } from './support/index.js';

/** A backend that records every byte it receives and never answers (a stopped process, seen from TCP). */
async function recordingHungServer(tt: Test): Promise<TestServer & { received: () => Buffer }> {
  const chunks: Buffer[] = [];
  const s = await startServer((sock) => sock.on('data', (c: Buffer) => chunks.push(c)));
  tt.teardown(() => s.close());
  return Object.assign(s, { received: () => Buffer.concat(chunks) });
}

/** An echo backend that records what it received. */
async function recordingEchoServer(tt: Test): Promise<TestServer & { received: () => Buffer }> {
  const chunks: Buffer[] = [];
  const s = await startServer((sock) => {
    sock.on('data', (c: Buffer) => {
      chunks.push(c);
      sock.write(c);
    });
    sock.on('end', () => sock.end());
  });
  tt.teardown(() => s.close());
  return Object.assign(s, { received: () => Buffer.concat(chunks) });
}

t.test('a hung backend is abandoned after the first-byte timeout and the opening bytes are replayed exactly once', async (t0) => {
  // The data path frees each read once written (connection.ts releaseReadBuffer); a chunk kept for replay must
  // never be. 16 KiB: the whole replay bound in one read.
  for (const size of [3000, 16384]) await t0.test(`${size}-byte opening`, (tt) => replayedOnce(tt, size));
});

async function replayedOnce(tt: Test, size: number): Promise<void> {
  const clock = new FakeClock();
  const hung = await recordingHungServer(tt);
  const good = await recordingEchoServer(tt);
  const h = await harness(tt, [hung.address, good.address], { clock, connectTimeout: 60_000 });
  const hello = randomBytes(size);
  hello[0] = 0x42; // not a TLS handshake record: the opening is complete after 5 bytes (see client-opening.ts)
  const s = await dial(h.port);
  s.write(hello);
  await until(() => hung.received().length === hello.length, 'the hung backend to receive the opening bytes');
  tt.equal(h.pool.backends[1]!.totalConnections, 0, 'no replay before the timeout');
  clock.advance(999);
  tt.equal(h.pool.backends[1]!.totalConnections, 0, 'not yet at 999 ms');
  clock.advance(1);
  const echoed = await readBytes(s, hello.length);
  tt.ok(echoed.equals(hello), 'the client gets the answer from the next backend');
  tt.ok(good.received().equals(hello), 'the next backend saw exactly the client bytes, once');
  s.write('more');
  tt.equal((await readBytes(s, 4)).toString(), 'more', 'committed connection keeps piping');
  tt.equal(h.pool.backends[0]!.connectFailures.get('first_byte_timeout'), 1, 'counted as a failed dial on the hung backend');
  tt.equal(h.proxy.counters.retries.get('first_byte_timeout'), 1, 'replay counted in retries{reason=first_byte_timeout}');
  s.destroy();
}

t.test('a slow but healthy backend (300 ms) is not abandoned with the default 1 s', async (tt) => {
  const slow = await startServer((sock) => {
    sock.once('data', (c: Buffer) => {
      setTimeout(() => sock.write(c), 300);
    });
  });
  tt.teardown(() => slow.close());
  const other = await echoServer('other');
  tt.teardown(() => other.close());
  const h = await harness(tt, [slow.address, other.address]);
  const s = await dial(h.port);
  const started = Date.now();
  s.write('ping');
  const got = (await readBytes(s, 4)).toString();
  tt.equal(got, 'ping', 'answered by the slow backend, not the other one');
  tt.ok(Date.now() - started >= 290, 'the answer came after the backend delay');
  tt.equal(h.proxy.counters.retries.get('first_byte_timeout'), undefined, 'no replay');
  s.destroy();
});

t.test('past the replay bound the connection is committed, never replayed', async (tt) => {
  const clock = new FakeClock();
  const hung = await recordingHungServer(tt);
  const good = await recordingEchoServer(tt);
  const h = await harness(tt, [hung.address, good.address], { clock, firstByteBufferBytes: 1024 });
  const s = await dial(h.port);
  s.write(randomBytes(4096));
  await until(() => hung.received().length === 4096, 'bytes forwarded to the first backend');
  clock.advance(5_000);
  tt.equal(good.received().length, 0, 'the next backend never sees a replay');
  tt.equal(h.proxy.counters.retries.get('first_byte_timeout'), undefined);
  tt.equal(h.proxy.connectionsTo(h.pool.backends[0]!).size, 1, 'still connected to the first backend');
  s.destroy();
});

t.test('server-speaks-first backends work and the timer waits for the client to speak', async (tt) => {
  const clock = new FakeClock();
  const banner = await bannerServer('220 ready\r\n');
  tt.teardown(() => banner.close());
  const h = await harness(tt, [banner.address], { clock });
  const s = await dial(h.port);
  tt.equal((await readBytes(s, 11)).toString(), '220 ready\r\n');
  s.write('QUIT');
  tt.equal((await readBytes(s, 4)).toString(), 'QUIT');
  s.destroy();

  // A client that says nothing and a backend that says nothing: no first-byte timer runs, nothing is abandoned
  // (with --client-hello-timeout off; see hostile-clients.test.ts for the idle client being closed).
  const quiet = await recordingHungServer(tt);
  const h2 = await harness(tt, [quiet.address], { clock, clientHelloTimeout: 0 });
  const q = await dial(h2.port);
  await until(() => h2.pool.backends[0]!.activeConnections === 1, 'connected');
  clock.advance(60_000);
  tt.equal(h2.pool.backends[0]!.connectFailures.size, 0, 'no first-byte timeout without client bytes');
  tt.equal(h2.proxy.activeConnections, 1);
  q.destroy();
});

t.test('firstByteTimeout 0 disables the mechanism', async (tt) => {
  const clock = new FakeClock();
  const hung = await recordingHungServer(tt);
  const good = await recordingEchoServer(tt);
  const h = await harness(tt, [hung.address, good.address], { clock, firstByteTimeout: 0 });
  const s = await dial(h.port);
  s.write('x');
  await until(() => hung.received().length === 1, 'forwarded');
  clock.advance(60_000);
  tt.equal(good.received().length, 0);
  s.destroy();
});

t.test('a backend that resets before answering is replaced transparently', async (tt) => {
  const reset = await startServer((sock) => sock.once('data', () => sock.resetAndDestroy()));
  tt.teardown(() => reset.close());
  const good = await recordingEchoServer(tt);
  const h = await harness(tt, [reset.address, good.address]);
  const s = await dial(h.port);
  s.write('hello');
  tt.equal((await readBytes(s, 5)).toString(), 'hello');
  tt.equal(good.received().toString(), 'hello');
  s.destroy();
});

/**
 * Issue 9's "done when": with default settings, a hung TLS API server among three causes 0 failed new TLS
 * connections while the health checks have not yet marked it down. Measures the handshake latency.
 */
t.test('hung API server among three: 0 failed TLS handshakes through the daemon (defaults)', async (tt) => {
  const ca = createTestCA();
  tt.teardown(() => ca.remove());
  const servers = await Promise.all([1, 2, 3].map((i) => startFakeApiServer({ ca, name: `apiserver-${i}` })));
  tt.teardown(() => Promise.all(servers.map((s) => s.close())));
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      backends: servers.map((s) => s.address),
      caFile: ca.certFile,
    },
  });
  const daemon = await startDaemon(config, { logger: createLogger('silent') });
  tt.teardown(() => daemon.close(0));
  const port = (daemon.listeners[0]!.address() as { port: number }).port;
  servers[0]!.hang();

  const handshake = (): Promise<number> =>
    new Promise((resolve, reject) => {
      const started = performance.now();
      const s = tlsConnect({ host: '127.0.0.1', port, ca: ca.cert, servername: 'kubernetes', ALPNProtocols: ['http/1.1'] });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('handshake took over 10 s (kubelet gives up)'));
      }, 10_000);
      s.once('secureConnect', () => {
        clearTimeout(timer);
        const ms = performance.now() - started;
        s.destroy();
        resolve(ms);
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  const latencies: number[] = [];
  let failures = 0;
  // Sequential connections right after the hang, before health checks can mark it down: every third one lands
  // on the hung server first.
  for (let i = 0; i < 9; i++) {
    try {
      latencies.push(await handshake());
    } catch {
      failures++;
    }
  }
  latencies.sort((a, b) => a - b);
  const p50 = latencies[Math.floor(latencies.length * 0.5)]!;
  const p99 = latencies[latencies.length - 1]!;
  tt.equal(failures, 0, 'no failed TLS connection');
  tt.ok(p99 < 2500, `added handshake latency bounded by the first-byte timeout (p50 ${p50.toFixed(1)} ms, max ${p99.toFixed(1)} ms)`);
  tt.comment(`first-byte failover: 9 handshakes, 0 failures, p50 ${p50.toFixed(1)} ms, p99/max ${p99.toFixed(1)} ms`);
  servers[0]!.resume();
});
