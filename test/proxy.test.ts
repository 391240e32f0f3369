/**
 * Data path on real loopback sockets: round-robin, connect failover table, bit-exact bulk both ways, half-close,
 * resets, max-connections and leaks.
 */
import { spawnDaemon } from './support/cli.js';
import t, { type Test } from 'tap';
import { randomBytes, createHash } from 'node:crypto';
import { connect, Socket } from 'node:net';
import { Pool } from '../src/pool/pool.js';
import { TcpProxy, type ProxyOptions } from '../src/proxy/proxy.js';
import { releaseReadBuffer } from '../src/proxy/connection.js';
import { bindListener, createListener } from '../src/proxy/listen.js';
import { parseAddress } from '../src/config/values.js';
import { hasCode } from '../src/errors.js';
import { createMetrics } from '../src/metrics/metrics.js';
import type { Backend } from '../src/pool/backend.js';
import { FakeClock } from './support/fake-clock.js';
import { parseExposition } from './support/prom-text.js';
import { proxyOver } from './support/proxy-harness.js';
import { closed, dial, echoServer, ended, readAll, readBytes, silentServer, startServer, until, type TestServer } from './support/net.js';

/** The shared harness with first-byte failover off (test/first-byte.test.ts covers it). */
function harness(tt: Test, backends: string[], opts: Partial<ProxyOptions> = {}): ReturnType<typeof proxyOver> {
  return proxyOver(tt, backends, { firstByteTimeout: 0, ...opts });
}

async function servers(tt: Test, ...list: Promise<TestServer>[]): Promise<TestServer[]> {
  const out = await Promise.all(list);
  for (const s of out) tt.teardown(() => s.close());
  return out;
}

/** Opens a connection through the proxy, reads the backend's name line, closes. */
async function whoAnswers(port: number): Promise<string> {
  const s = await dial(port);
  const line = (await readBytes(s, 1)).toString();
  s.destroy();
  return line.split('\n')[0]!;
}

t.test('round-robin over all backends in order', async (tt) => {
  const [a, b, c] = await servers(tt, echoServer('a'), echoServer('b'), echoServer('c'));
  const h = await harness(tt, [a!.address, b!.address, c!.address]);
  const seen: string[] = [];
  for (let i = 0; i < 6; i++) seen.push(await whoAnswers(h.port));
  tt.same(seen, ['a', 'b', 'c', 'a', 'b', 'c']);
  await until(() => h.proxy.activeConnections === 0, 'connections to close');
  tt.same(
    h.pool.backends.map((x) => x.totalConnections),
    [2, 2, 2],
  );
});

t.test('connect failover table', async (tt) => {
  const cases: { name: string; backends: ('refuse' | 'hang' | 'ok')[]; expect: 'ok' | 'closed'; failures: Record<string, number> }[] = [
    { name: 'refusing backend is skipped', backends: ['refuse', 'ok'], expect: 'ok', failures: { refused: 1 } },
    { name: 'backend that times out on connect is skipped', backends: ['hang', 'ok'], expect: 'ok', failures: { timeout: 1 } },
    { name: 'all backends down closes the client', backends: ['refuse', 'refuse', 'hang'], expect: 'closed', failures: { refused: 2, timeout: 1 } },
  ];
  for (const c of cases) {
    await tt.test(c.name, async (t2) => {
      const [ok] = await servers(t2, echoServer('ok'));
      // A refusing address: a server we close before use is forbidden (port reuse), so we use port 1 on
      // loopback, where nothing listens. A connect timeout is simulated by the injected dialer.
      const addrs = c.backends.map((k, i) => (k === 'ok' ? ok!.address : k === 'refuse' ? `127.0.0.${i + 2}:1` : `127.0.0.${i + 20}:2`));
      const h = await harness(t2, addrs, {
        connectTimeout: 200,
        dial: (b) => {
          // 'hang' backends: a socket that never connects (no SYN-ACK), like a blackholed address.
          if (b.address.port === 2) return new Socket({ allowHalfOpen: true });
          return connect({ host: b.address.host, port: b.address.port, allowHalfOpen: true });
        },
      });
      const s = await dial(h.port);
      if (c.expect === 'ok') {
        s.write('ping');
        const got = (await readBytes(s, 7)).toString();
        t2.equal(got, 'ok\nping', 'the client is served by the healthy backend without noticing');
        s.destroy();
      } else {
        const data = await readAll(s);
        t2.equal(data.length, 0, 'closed without data');
      }
      const failures: Record<string, number> = {};
      for (const b of h.pool.backends) for (const [r, n] of b.connectFailures) failures[r] = (failures[r] ?? 0) + n;
      t2.same(failures, c.failures, 'each failed backend tried once and reported to the pool');
      await until(() => h.proxy.activeConnections === 0, 'connection to finish');
      if (c.expect === 'closed') t2.equal(h.proxy.counters.closed.size > 0, true);
    });
  }
});

t.test('bit-exact bulk both ways on 4 concurrent streams', async (tt) => {
  const [a, b] = await servers(tt, echoServer(), echoServer());
  const h = await harness(tt, [a!.address, b!.address]);
  const size = 8 * 1024 * 1024;
  const results = await Promise.all(
    [0, 1, 2, 3].map(async () => {
      const payload = randomBytes(size);
      const s = await dial(h.port);
      const reading = readAll(s);
      s.end(payload);
      const back = await reading;
      s.destroy();
      return { sent: createHash('sha256').update(payload).digest('hex'), got: createHash('sha256').update(back).digest('hex'), len: back.length };
    }),
  );
  for (const r of results) {
    tt.equal(r.len, size);
    tt.equal(r.got, r.sent, 'echoed bytes identical');
  }
  await until(() => h.proxy.activeConnections === 0, 'connections to close');
  const total = h.pool.backends.reduce((n, x) => n + h.proxy.bytesFor(x).fromClient, 0);
  tt.equal(total, 4 * size, 'bytes counted exactly at close');
});

t.test('half-close: client ends its write side and still gets the full response', async (tt) => {
  // Backend answers only after the client's FIN: reads everything, then writes its length and a tail.
  const [srv] = await servers(
    tt,
    startServer((s) => {
      let n = 0;
      s.on('data', (c: Buffer) => (n += c.length));
      s.on('end', () => {
        s.write(`got ${n}`);
        setImmediate(() => s.end(' bye'));
      });
    }),
  );
  const h = await harness(tt, [srv!.address]);
  const s = await dial(h.port);
  const reply = readAll(s);
  s.end(Buffer.alloc(100_000, 1));
  tt.equal((await reply).toString(), 'got 100000 bye');
  await closed(s);
});

t.test('half-close the other way: backend ends first, client keeps sending', async (tt) => {
  let received = 0;
  let backendSawEnd = false;
  const [srv] = await servers(
    tt,
    startServer((s) => {
      s.end('hello');
      s.on('data', (c: Buffer) => (received += c.length));
      s.on('end', () => (backendSawEnd = true));
    }),
  );
  const h = await harness(tt, [srv!.address]);
  const s = await dial(h.port);
  const got = await readAll(s); // backend's FIN arrives
  tt.equal(got.toString(), 'hello');
  s.end(Buffer.alloc(5000, 2));
  await until(() => backendSawEnd, 'backend to see the client FIN');
  tt.equal(received, 5000, 'client bytes after the backend FIN still delivered');
  await closed(s);
  await until(() => h.proxy.activeConnections === 0, 'no leaked connection');
});

t.test('backend closes first while the client is paused: no leaked socket', async (tt) => {
  const [srv] = await servers(
    tt,
    startServer((s) => {
      s.write(Buffer.alloc(4 * 1024 * 1024, 3)); // more than the socket buffers: the proxy sees backpressure
      s.end();
    }),
  );
  const h = await harness(tt, [srv!.address]);
  const s = await dial(h.port);
  await until(() => h.proxy.activeConnections === 1, 'connection open');
  const data = await readAll(s);
  tt.equal(data.length, 4 * 1024 * 1024);
  s.end();
  await until(() => h.proxy.activeConnections === 0, 'proxy connection gone after both FINs');
});

t.test("a normal close leaves no timer behind (the side that closes second cancels the first one's linger)", async (tt) => {
  const clock = new FakeClock();
  const [srv] = await servers(tt, echoServer());
  const h = await harness(tt, [srv!.address], { clock });
  for (const closer of ['client', 'backend'] as const) {
    const s = await dial(h.port);
    s.write('hello, world');
    tt.equal((await readBytes(s, 12)).toString(), 'hello, world');
    if (closer === 'client') s.end();
    else for (const b of srv!.sockets) b.end();
    await readAll(s);
    s.end();
    await until(() => h.proxy.activeConnections === 0, `connection closed by the ${closer} to finish`);
    tt.equal(clock.pending, 0, `${closer} closed first: no linger or other timer left`);
  }
});

t.test('client reset mid-stream resets the backend side and nothing crashes', async (tt) => {
  let backendClosed = false;
  let backendErr = '';
  const [srv] = await servers(
    tt,
    startServer((s) => {
      s.on('error', (e: NodeJS.ErrnoException) => (backendErr = e.code ?? ''));
      s.on('close', () => (backendClosed = true));
      s.write('x');
    }),
  );
  const h = await harness(tt, [srv!.address]);
  const s = await dial(h.port);
  await readBytes(s, 1);
  s.resetAndDestroy();
  await until(() => backendClosed, 'backend side closed');
  tt.equal(backendErr, 'ECONNRESET', 'the reset is propagated as a reset');
  await until(() => h.proxy.activeConnections === 0, 'proxy connection cleaned up');
  // The proxy still serves.
  const s2 = await dial(h.port);
  tt.equal((await readBytes(s2, 1)).toString(), 'x');
  s2.destroy();
});

t.test('backend reset mid-stream closes the client side too', async (tt) => {
  const [srv] = await servers(
    tt,
    startServer((s) => {
      s.write('y', () => setImmediate(() => s.resetAndDestroy()));
    }),
  );
  const h = await harness(tt, [srv!.address]);
  const s = await dial(h.port);
  // The backend's reset reaches the client as a reset (the proxy propagates it; Node.js 24) or as EOF (Node.js 20's
  // resetAndDestroy() after a write sends a FIN): either way after the data, and the proxy keeps nothing open.
  let data = '';
  let ending = '';
  s.on('data', (c: Buffer) => (data += c.toString()));
  s.on('end', () => {
    ending ||= 'end';
    s.end();
  });
  s.on('error', (e: NodeJS.ErrnoException) => (ending ||= e.code ?? 'error'));
  await closed(s);
  tt.equal(data, 'y', 'bytes before the reset delivered');
  tt.ok(['end', 'ECONNRESET'].includes(ending), `client connection ended (${ending})`);
  await until(() => h.proxy.activeConnections === 0, 'cleaned up');
});

t.test('slow reader: backpressure bounds memory', async (tt) => {
  const total = 64 * 1024 * 1024;
  let backendSocket: Socket | undefined;
  const [srv] = await servers(
    tt,
    startServer((s) => {
      backendSocket = s;
      const chunk = Buffer.alloc(1024 * 1024, 7);
      let sent = 0;
      function pump(): void {
        while (sent < total) {
          sent += chunk.length;
          if (!s.write(chunk)) return void s.once('drain', pump);
        }
        s.end();
      }
      pump();
    }),
  );
  const h = await harness(tt, [srv!.address]);
  const s = await dial(h.port);
  s.pause();
  await until(() => h.proxy.activeConnections === 1, 'connected');
  // The backend pushes against a client that reads nothing: the proxy must stop reading the backend, so the
  // backend's own writes back up.
  const before = process.memoryUsage().rss;
  await until(() => backendSocket?.writableNeedDrain, 'backpressure to reach the backend');
  const conn = [...h.proxy.connectionsTo(h.pool.backends[0]!)][0]!;
  tt.ok(conn.client.writableLength < 2 * 1024 * 1024, `client write buffer bounded (${conn.client.writableLength} bytes)`);
  tt.ok(process.memoryUsage().rss - before < 32 * 1024 * 1024, 'no unbounded buffering');
  const all = await readAll(s.resume());
  tt.equal(all.length, total, 'everything arrives once the reader reads');
});

t.test('max-connections: excess connections are closed at once and counted', async (tt) => {
  const [srv] = await servers(tt, echoServer());
  const h = await harness(tt, [srv!.address], { maxConnections: 2 });
  const a = await dial(h.port);
  const b = await dial(h.port);
  await until(() => h.proxy.activeConnections === 2, 'two connections');
  const c = await dial(h.port);
  const data = await readAll(c);
  tt.equal(data.length, 0, 'third connection closed');
  tt.equal(h.proxy.counters.rejected.get('max_connections'), 1);
  a.destroy();
  await until(() => h.proxy.activeConnections === 1, 'one closed');
  const d = await dial(h.port);
  d.write('z');
  tt.equal((await readBytes(d, 1)).toString(), 'z', 'capacity freed is reused');
  b.destroy();
  d.destroy();
});

t.test('client that leaves while the backend is still dialing is released at the dial timeout', async (tt) => {
  // The client is paused until a backend connects (pauseOnConnect), so its FIN is seen only when the dial
  // ends: bounded by --connect-timeout per backend. Driven by a fake clock, no waiting.
  const clock = new FakeClock();
  let dialed = 0;
  const h = await harness(tt, ['127.0.0.1:9'], {
    connectTimeout: 10_000,
    clock,
    dial: () => {
      dialed++;
      return new Socket({ allowHalfOpen: true });
    },
  });
  const s = await dial(h.port);
  await until(() => dialed === 1, 'dial started');
  s.destroy();
  tt.equal(h.proxy.activeConnections, 1, 'still dialing');
  clock.advance(10_000);
  await until(() => h.proxy.activeConnections === 0, 'connection released');
  tt.equal(clock.pending, 0, 'no timer left behind');
  tt.equal(h.pool.backends[0]!.connectFailures.get('timeout'), 1);
});

t.test("a reload's connect timeout applies to the next dial; a dial already running keeps its own", async (tt) => {
  const clock = new FakeClock();
  const dialedAt: number[] = [];
  const h = await harness(tt, ['127.0.0.1:9'], {
    connectTimeout: 10_000,
    clock,
    dial: () => {
      dialedAt.push(clock.now());
      return new Socket({ allowHalfOpen: true }); // never connects
    },
  });
  const b = h.pool.backends[0]!;
  const early = await dial(h.port);
  await until(() => dialedAt.length === 1, 'first dial started');
  h.proxy.update({ connectTimeout: 2000 });
  tt.equal(h.proxy.connectTimeout, 2000);
  const late = await dial(h.port);
  await until(() => dialedAt.length === 2, 'second dial started');
  clock.advance(2000);
  await ended(late);
  tt.same([b.connectFailures.get('timeout'), h.proxy.activeConnections], [1, 1], 'the new dial timed out at 2 s; the earlier one still waits');
  clock.advance(8000);
  await ended(early);
  await until(() => h.proxy.activeConnections === 0, 'both closed');
  tt.equal(b.connectFailures.get('timeout'), 2, 'the earlier dial timed out at its own 10 s');
  tt.equal(b.dialing, 0, 'no dial left counted');
});

t.test('backend down closes its connections; others untouched', async (tt) => {
  const [a, b] = await servers(tt, echoServer('a'), echoServer('b'));
  const h = await harness(tt, [a!.address, b!.address]);
  const s1 = await dial(h.port);
  await readBytes(s1, 2);
  const s2 = await dial(h.port);
  await readBytes(s2, 2);
  h.pool.markDown(h.pool.backends[0]!, 'test');
  const got = await readAll(s1.resume()); // the proxy's FIN arrives at once
  tt.equal(got.length, 0);
  s1.destroy();
  s2.write('still');
  tt.equal((await readBytes(s2, 5)).toString(), 'still', 'connection to the healthy backend alive');
  tt.equal(h.proxy.counters.closed.get(a!.address)?.get('backend_down'), 1);
  s2.destroy();
});

t.test('listener errors name the address', async (tt) => {
  const holder = createListener();
  await bindListener(holder, { host: '127.0.0.1', port: 0 });
  tt.teardown(() => new Promise<void>((r) => holder.close(() => r())));
  const port = (holder.address() as { port: number }).port;
  const err = await bindListener(createListener(), { host: '127.0.0.1', port }).catch((e: unknown) => e);
  tt.ok(hasCode(err, 'APILB_ERR_ADDRESS_IN_USE'));
  tt.match((err as Error).message, `127.0.0.1:${port}: address already in use`);
});

t.test('invalid options throw typed errors at construction', async (tt) => {
  const pool = new Pool();
  tt.throws(() => new TcpProxy({ pool, connectTimeout: 0 }), { code: 'APILB_ERR_OPTION_INVALID' });
  tt.throws(() => new TcpProxy({ pool, maxConnections: -1 }), { code: 'APILB_ERR_OPTION_INVALID' });
  tt.throws(() => new Pool({ rise: 0 }), { code: 'APILB_ERR_OPTION_INVALID' });
});

t.test('no handles left after close', async (tt) => {
  const handles = () => (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
  const baseline = handles();
  const srv = await echoServer();
  const pool = new Pool();
  pool.add({ address: parseAddress(srv.address) });
  const proxy = new TcpProxy({ pool });
  const server = createListener();
  await bindListener(server, { host: '127.0.0.1', port: 0 });
  proxy.serve(server);
  const port = (server.address() as { port: number }).port;
  const socks = await Promise.all([dial(port), dial(port), dial(port)]);
  for (const s of socks) s.write('hi');
  await Promise.all(socks.map((s) => readBytes(s, 2)));
  socks[0]!.end();
  socks[1]!.destroy();
  await proxy.close(0);
  for (const s of socks) s.destroy();
  await srv.close();
  await until(() => handles() <= baseline, `handles back to ${baseline} (now ${handles()})`);
  tt.equal(proxy.activeConnections, 0);
});

t.test('a connection not yet committed moves when its backend goes down, and the pool hears of no dial failure', async (tt) => {
  // `dialing`: the first backend never completes the handshake (injected dialer); `probing`: it accepted but says
  // nothing (a silent server) while the client waits for its first byte. Either way the pool took the backend
  // down itself: the move is a retry (reason backend_down), not a failure reported back to the pool.
  const rows: { phase: 'dialing' | 'probing'; ready: (b: Backend) => boolean }[] = [
    { phase: 'dialing', ready: (b) => b.dialing === 1 },
    { phase: 'probing', ready: (b) => b.activeConnections === 1 },
  ];
  for (const row of rows) {
    await tt.test(row.phase, async (t2) => {
      const hung = await silentServer();
      t2.teardown(() => hung.close());
      const [good] = await servers(t2, echoServer());
      const h = await harness(t2, [hung.address, good!.address], {
        firstByteTimeout: 60_000,
        connectTimeout: 60_000,
        dial: (b, onread) => {
          if (row.phase === 'dialing' && b.address.port === hung.port) return new Socket({ allowHalfOpen: true });
          return connect({ host: b.address.host, port: b.address.port, allowHalfOpen: true, ...(onread ? { onread } : {}) });
        },
      });
      const [down, up] = [h.pool.backends[0]!, h.pool.backends[1]!];
      const heard: string[] = [];
      h.pool.on('recheck', (b) => heard.push(`recheck ${b.id}`));
      h.proxy.on('dial-failure', (ev) => heard.push(`dial-failure ${ev.backend.id} ${ev.reason}`));
      const s = await dial(h.port);
      s.write('hello');
      await until(() => row.ready(down), `${row.phase} the first backend`);
      h.pool.markDown(down, 'test');
      t2.equal((await readBytes(s, 5)).toString(), 'hello', 'the client lands on the other backend and never notices');
      t2.same([up.activeConnections, up.totalConnections], [1, 1], 'connected to the other backend');
      t2.same([down.dialing, down.activeConnections], [0, 0], "the down backend's lease is given back");
      t2.same(heard, [], 'no dial failure reported, no re-check asked for');
      t2.same([...down.connectFailures], [], 'nothing counted against the down backend');
      t2.equal(down.consecutiveFailures, 0, 'no failure toward --fall');
      t2.same([...h.proxy.counters.retries], [['backend_down', 1]], 'one retry, counted under backend_down');
      t2.equal(h.proxy.counters.closed.get(hung.address)?.get('backend_down'), undefined, 'not counted as a closed connection');
      const metrics = createMetrics({ pool: h.pool, proxy: h.proxy, version: 't', defaultMetrics: false });
      t2.teardown(() => metrics.close());
      const m = parseExposition(await metrics.render());
      t2.same(
        m.all('apilb_connect_failures_total').filter((x) => x.value !== 0),
        [],
        'no connect_failures series above 0 (and no reason="closed" at all)',
      );
      t2.notOk(
        m.all('apilb_connect_failures_total').some((x) => x.labels['reason'] === 'closed'),
        'reason="closed" is not a dial failure reason',
      );
      t2.equal(m.get('apilb_retries_total'), 1);
      s.destroy();
    });
  }
});

t.test('when the last eligible backend goes down (panic) its connections are kept', async (tt) => {
  const [a, b] = await servers(tt, echoServer('a'), echoServer('b'));
  const h = await harness(tt, [a!.address, b!.address]);
  const s1 = await dial(h.port);
  await readBytes(s1, 2);
  h.pool.markDown(h.pool.backends[1]!, 'test');
  h.pool.markDown(h.pool.backends[0]!, 'test');
  tt.ok(h.pool.panic, 'panic mode');
  s1.write('alive');
  tt.equal((await readBytes(s1, 5)).toString(), 'alive', 'nowhere better to go: the connection stays');
  const s2 = await dial(h.port);
  tt.ok((await readBytes(s2, 2)).toString().endsWith('\n'), 'new clients are still served in panic mode');
  s1.destroy();
  s2.destroy();
});

t.test('closed-connection counters of a backend leave with it', async (tt) => {
  const [a] = await servers(tt, echoServer('a'));
  const h = await harness(tt, [a!.address]);
  const s = await dial(h.port);
  await readBytes(s, 2);
  s.destroy();
  await until(() => h.proxy.counters.closed.get(a!.address)?.get('normal') === 1, 'close counted');
  h.pool.reconcile([]);
  tt.equal(h.proxy.counters.closed.has(a!.address), false);
});

t.test('backend→client bytes stay exact with many concurrent streams, fast and slow readers (reused read buffers)', async (tt) => {
  const size = 3 * 1024 * 1024;
  const payloads = new Map<number, Buffer>();
  let next = 0;
  const [src] = await servers(
    tt,
    startServer((s) => {
      const id = next++;
      const data = randomBytes(size);
      payloads.set(id, data);
      s.write(Buffer.from([id]));
      s.end(data);
    }),
  );
  const h = await harness(tt, [src!.address]);
  const results = await Promise.all(
    Array.from({ length: 8 }, async (_, i) => {
      const s = await dial(h.port);
      const chunks: Buffer[] = [];
      const slow = i % 2 === 1;
      await new Promise<void>((resolve, reject) => {
        s.on('data', (c: Buffer) => {
          chunks.push(c);
          if (slow) {
            // A slow reader: stop for a few event-loop turns so the proxy's writes to it back up.
            s.pause();
            setImmediate(() => setImmediate(() => s.resume()));
          }
        });
        s.on('end', () => resolve());
        s.on('error', reject);
      });
      s.destroy();
      const all = Buffer.concat(chunks);
      return { id: all[0]!, body: all.subarray(1) };
    }),
  );
  for (const r of results) {
    const want = payloads.get(r.id)!;
    tt.equal(r.body.length, size);
    tt.ok(r.body.equals(want), `stream ${r.id} bit-exact`);
  }
});

t.test('client→backend bytes stay exact with concurrent uploads, fast and slow backends (read buffers freed after synchronous writes)', async (tt) => {
  // Uploads are read into a fresh buffer per read, which the connection frees as soon as its write reached the
  // kernel (releaseReadBuffer). A buffer freed while a write still referenced it would corrupt or drop bytes here;
  // slow backends make writes back up, and first-byte failover on keeps the first chunks for replay.
  const size = 3 * 1024 * 1024;
  for (const row of [
    { name: 'committed at connect (first-byte failover off)', opts: { firstByteTimeout: 0 } },
    { name: 'probing first (first-byte failover on, the sink never speaks)', opts: { firstByteTimeout: 5000 } },
  ]) {
    await tt.test(row.name, async (t2) => {
      let next = 0;
      const [sink] = await servers(
        t2,
        startServer((s) => {
          const slow = next++ % 2 === 1;
          const hash = createHash('sha256');
          let n = 0;
          s.on('data', (c: Buffer) => {
            hash.update(c);
            n += c.length;
            if (slow) {
              s.pause();
              setImmediate(() => setImmediate(() => s.resume()));
            }
          });
          s.on('end', () => s.end(`${n} ${hash.digest('hex')}`));
        }),
      );
      const h = await proxyOver(t2, [sink!.address], row.opts);
      const results = await Promise.all(
        Array.from({ length: 6 }, async () => {
          const payload = randomBytes(size);
          const s = await dial(h.port);
          const reading = readAll(s);
          // 64 KiB writes as fast as the path takes them, like a client uploading.
          for (let off = 0; off < size; off += 65536) {
            if (!s.write(payload.subarray(off, off + 65536))) await new Promise((r) => s.once('drain', r));
          }
          s.end();
          const answer = (await reading).toString();
          s.destroy();
          return { want: `${size} ${createHash('sha256').update(payload).digest('hex')}`, answer };
        }),
      );
      for (const r of results) t2.equal(r.answer, r.want, 'the backend got every byte, in order');
    });
  }
});

t.test('releaseReadBuffer frees only a chunk that is the whole of its own ArrayBuffer', async (tt) => {
  const canTransfer = typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === 'function';
  const cases: { name: string; make: () => Buffer; freed: boolean }[] = [
    { name: 'a 64 KiB read buffer of its own', make: () => Buffer.from(new ArrayBuffer(65536)), freed: canTransfer },
    { name: 'a 517-byte read (a ClientHello) of its own', make: () => Buffer.from(new ArrayBuffer(517)), freed: canTransfer },
    { name: 'a view into a larger buffer (other views may share it)', make: () => Buffer.from(new ArrayBuffer(131072), 0, 65536), freed: false },
    { name: 'a view at an offset', make: () => Buffer.from(new ArrayBuffer(131072), 65536, 65536), freed: false },
    { name: 'a pooled small Buffer', make: () => Buffer.from('pooled'), freed: false },
  ];
  for (const c of cases) {
    const chunk = c.make();
    const ab = chunk.buffer;
    const before = ab.byteLength;
    releaseReadBuffer(chunk);
    tt.equal(ab.byteLength === 0, c.freed, `${c.name}: ${c.freed ? 'freed (detached)' : 'untouched'}`);
    if (!c.freed) tt.equal(ab.byteLength, before, `${c.name}: its memory is intact`);
  }
});

t.test('out of file descriptors (EMFILE): apilb survives, blames no backend, and serves again when fds are free', async (tt) => {
  // A real apilb process with a file-descriptor limit of 64: 80 admin clients exhaust it, so accept() and every
  // dial to the backend (client dials and health checks every 200 ms) fail with EMFILE for a while. (Data-path
  // clients no longer can: --max-connections is capped below the descriptor limit, see hostile-clients.test.ts.)
  const [srv] = await servers(tt, echoServer());
  const { readdirSync } = await import('node:fs');
  const child = spawnDaemon(
    tt,
    [
      '--listen',
      '127.0.0.1:0',
      '--admin-listen',
      '127.0.0.1:0',
      '--backend',
      srv!.address,
      '--health-check-mode',
      'tcp',
      '--health-check-interval',
      '200ms',
      '--health-check-timeout',
      '100ms',
      '--log-level',
      'info',
    ],
    { wrapper: ['sh', '-c', 'ulimit -n 64 && exec "$0" "$@"'], stderr: 'inherit' },
  );
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  let exited = false;
  child.once('exit', () => (exited = true));
  const started = await until(() => /"event":"started".*?"listen":\["127\.0\.0\.1:(\d+)"\].*?"admin":"([\d.:]+)"/.exec(out), 'apilb started', 15_000);
  const port = Number(started[1]);
  const admin = started[2]!;
  const socks: Socket[] = [];
  for (let i = 0; i < 80; i++) {
    const s = connect({ port: Number(admin.split(':').pop()), host: '127.0.0.1' });
    s.on('error', () => {});
    socks.push(s);
  }
  // Node.js 24 accepts a burst of clients before dialing their backends, so its descriptors churn (accepted, dial
  // fails with EMFILE, client closed) and a health check can slip into a free slot. Idle connections to the admin
  // endpoint hold one descriptor each while they stay open: the shortage then lasts, whatever the runtime's order.
  for (let i = 0; i < 64; i++) {
    const s = connect({ port: Number(admin.split(':').pop()), host: '127.0.0.1' });
    s.on('error', () => {});
    socks.push(s);
  }
  const fds = () => readdirSync(`/proc/${child.pid}/fd`).length;
  await until(() => fds() >= 62, 'apilb to run out of file descriptors', 10_000);
  // The fault script: hold the shortage for 5 health-check intervals, then release it.
  await new Promise((r) => setTimeout(r, 1000));
  for (const s of socks) s.destroy();
  tt.notOk(exited, 'still running');
  const served = async (): Promise<boolean> => {
    const s = await dial(port).catch(() => undefined);
    if (!s) return false;
    s.on('error', () => {});
    s.write('ok?');
    const got = await Promise.race([
      readBytes(s, 3).then(
        (b) => b.toString(),
        () => '',
      ),
      new Promise<string>((r) => setTimeout(() => r(''), 500)),
    ]);
    s.destroy();
    return got === 'ok?';
  };
  await until(served, 'a new client to be served', 10_000);
  tt.pass('serves again');
  const metrics = await until(
    async () => {
      const body = await fetch(`http://${admin}/metrics`).then(
        (r) => r.text(),
        () => '',
      );
      return body.includes('apilb_backend_up') ? body : undefined;
    },
    'metrics',
    5000,
  );
  const errors = Number(/apilb_health_checks_total\{backend="[^"]+",result="error"\} (\d+)/.exec(metrics)?.[1] ?? 0);
  tt.ok(errors > 0, `health checks failed locally during the shortage (${errors})`);
  tt.match(metrics, /apilb_backend_up\{backend="[^"]+"\} 1/, 'the backend stayed up');
  tt.notMatch(out, /"to":"down"/, 'never marked down for a shortage on this node');
});
