/**
 * Drain only toward something better, and spread what can wait (issue #16): real loopback sockets, timers on a
 * fake clock. A draining backend's connections are closed after --drain-timeout only while another backend is
 * up, spread over --close-spread from a random phase; a down backend's connections still close at once.
 */
import t, { type Test } from 'tap';
import type { Socket } from 'node:net';
import { Pool } from '../src/pool/pool.js';
import type { Backend } from '../src/pool/backend.js';
import { TcpProxy, type ProxyOptions } from '../src/proxy/proxy.js';
import { parseAddress } from '../src/config/values.js';
import { FakeClock } from './support/fake-clock.js';
import { serveProxy } from './support/proxy-harness.js';
import { dial, echoServer, ended, readBytes, until, type TestServer } from './support/net.js';

const DRAIN = 10_000;

interface Harness {
  pool: Pool;
  proxy: TcpProxy;
  clock: FakeClock;
  port: number;
  backends: Backend[];
  servers: TestServer[];
}

/** A proxy over `n` echo backends (all `up`), timers on a fake clock. */
async function harness(tt: Test, n: number, opts: Partial<ProxyOptions> & { clock?: FakeClock } = {}): Promise<Harness> {
  const servers = await Promise.all(Array.from({ length: n }, (_, i) => echoServer(String.fromCharCode(97 + i))));
  for (const s of servers) tt.teardown(() => s.close());
  const clock = opts.clock ?? new FakeClock();
  const pool = new Pool({ clock });
  const backends = servers.map((s) => pool.add({ address: parseAddress(s.address) }));
  for (const b of backends) markUp(pool, b);
  const { proxy, port } = await serveProxy(tt, pool, { clock, firstByteTimeout: 0, drainTimeout: DRAIN, closeSpread: 0, ...opts });
  return { pool, proxy, clock, port, backends, servers };
}

function markUp(pool: Pool, b: Backend): void {
  for (let i = 0; i < pool.rise; i++) pool.reportCheck(b, { ok: true, latencyMs: 1 });
}

/** /readyz answers 500 `fall` times: the backend is `draining` (still serving). */
function markDraining(pool: Pool, b: Backend): void {
  for (let i = 0; i < pool.fall; i++) pool.reportCheck(b, { ok: false, kind: 'status', status: 500, latencyMs: 1 });
}

/** Opens `n` streams through the proxy; returns them with the name of the backend each reached. */
async function openStreams(h: Harness, n: number): Promise<{ s: Socket; backend: string }[]> {
  const out: { s: Socket; backend: string }[] = [];
  for (let i = 0; i < n; i++) {
    const s = await dial(h.port);
    out.push({ s, backend: (await readBytes(s, 2)).toString().trim() });
  }
  return out;
}

/** Round trip on every stream: proves each is still open and carries data. */
async function allAlive(streams: { s: Socket }[]): Promise<boolean> {
  for (const [i, { s }] of streams.entries()) {
    const msg = `ping${i}`;
    s.write(msg);
    if ((await readBytes(s, msg.length)).toString() !== msg) return false;
  }
  return true;
}

function drainClosed(h: Harness, b: Backend): number {
  return h.proxy.counters.closed.get(b.id)?.get('drain_timeout') ?? 0;
}

t.test('every backend draining past the drain timeout: every stream stays and new clients are served', async (tt) => {
  const h = await harness(tt, 2);
  const streams = await openStreams(h, 4);
  const held: string[] = [];
  h.proxy.on('drain-held', (ev) => held.push(`${ev.backend.id}:${ev.connections}`));
  for (const b of h.backends) markDraining(h.pool, b);
  tt.ok(h.pool.panic, 'panic mode: no backend is up');
  h.clock.advance(DRAIN * 5);
  tt.same(held.sort(), h.backends.map((b) => `${b.id}:2`).sort(), 'both drains held, nothing better to go to');
  tt.ok(await allAlive(streams), 'every stream still carries data');
  tt.equal(h.proxy.activeConnections, 4);
  const [fresh] = await openStreams(h, 1);
  tt.ok(fresh!.backend, 'a new client is still served (panic mode)');
  tt.equal(drainClosed(h, h.backends[0]!) + drainClosed(h, h.backends[1]!), 0, 'nothing closed for drain_timeout');

  // b comes back: a's drain starts over from a full --drain-timeout, b's is cancelled.
  markUp(h.pool, h.backends[1]!);
  h.clock.advance(DRAIN - 1);
  tt.ok(await allAlive(streams), 'the restarted timer has not expired yet');
  h.clock.advance(1);
  const onA = streams.filter((x) => x.backend === 'a').length + (fresh!.backend === 'a' ? 1 : 0);
  await until(() => drainClosed(h, h.backends[0]!) === onA, "a's streams closed once b is up");
  tt.ok(await allAlive(streams.filter((x) => x.backend === 'b')), "b's streams untouched");
  tt.equal(drainClosed(h, h.backends[1]!), 0);
  for (const x of [...streams, fresh!]) x.s.destroy();
});

t.test('one draining backend among healthy ones is drained after the timeout, spread evenly from a random phase', async (tt) => {
  const SPREAD = 1000;
  const h = await harness(tt, 2, { closeSpread: SPREAD, random: () => 0.5 });
  const [a, b] = h.backends as [Backend, Backend];
  markDraining(h.pool, b); // every stream goes to a
  const streams = await openStreams(h, 4);
  tt.same(
    streams.map((x) => x.backend),
    ['a', 'a', 'a', 'a'],
  );
  markUp(h.pool, b);
  const started: number[] = [];
  h.proxy.on('drain-timeout', (ev) => started.push(ev.connections, ev.spreadMs));
  markDraining(h.pool, a);
  h.clock.advance(DRAIN);
  tt.same(started, [4, SPREAD], 'drain-timeout event: 4 connections over 1 s');
  // slot = 1000 / 4 = 250 ms, phase 0.5 → closes due at 125, 375, 625, 875 ms after the timeout.
  const due = [125, 375, 625, 875];
  let at = 0;
  for (const [i, d] of due.entries()) {
    h.clock.advance(d - 1 - at);
    const open = streams.slice(i);
    tt.ok(await allAlive(open), `${open.length} streams open just before ${d} ms`);
    tt.equal(drainClosed(h, a), i);
    h.clock.advance(1);
    at = d;
    await until(() => drainClosed(h, a) === i + 1, `close #${i + 1} at ${d} ms`);
  }
  await Promise.all(streams.map((x) => ended(x.s)));
  tt.equal(h.clock.pending, 0, 'no timer left behind');
});

t.test('a spread under way stops when the last other backend goes down, and resumes once one is up', async (tt) => {
  const h = await harness(tt, 2, { closeSpread: 1000, random: () => 0 });
  const [a, b] = h.backends as [Backend, Backend];
  markDraining(h.pool, b);
  const streams = await openStreams(h, 4);
  markUp(h.pool, b);
  markDraining(h.pool, a);
  h.clock.advance(DRAIN); // closes due at 0, 250, 500, 750
  await until(() => drainClosed(h, a) === 1, 'first close at once (phase 0)');
  h.pool.markDown(b, 'test');
  h.clock.advance(5_000);
  tt.ok(await allAlive(streams.slice(1)), 'the other three stay while nothing is up');
  markUp(h.pool, b);
  h.clock.advance(DRAIN + 1000);
  await until(() => drainClosed(h, a) === 4, 'the rest drained after a fresh timeout');
  for (const x of streams) x.s.destroy();
});

t.test('backends removed by reload: drained toward an up backend, held while none is', async (tt) => {
  const h = await harness(tt, 2, { closeSpread: 400, random: () => 0.25 });
  const [a, b] = h.backends as [Backend, Backend];
  markDraining(h.pool, b);
  const streams = await openStreams(h, 2); // both on a
  h.pool.reconcile([{ address: b.address }]); // a removed while b is draining: nothing better exists
  h.clock.advance(DRAIN * 3);
  tt.ok(await allAlive(streams), 'held: b is not up');
  markUp(h.pool, b);
  h.clock.advance(DRAIN); // slot 200 ms, phase 0.25 → closes at 50 and 250 ms
  tt.ok(await allAlive(streams), "nothing before the first close's phase");
  h.clock.advance(50);
  await until(() => drainClosed(h, a) === 1, 'first close at 50 ms');
  tt.ok(await allAlive(streams.slice(1)), 'the second stream stays until its turn');
  h.clock.advance(200);
  await ended(streams[1]!.s);
  // Its last connection closed: the removed backend leaves the pool, its counters with it.
  await until(() => !h.pool.backends.includes(a), 'the removed backend leaves the pool with its last connection');
  tt.equal(h.proxy.counters.closed.has(a.id), false, 'no counters left behind for a deleted backend');
  for (const x of streams) x.s.destroy();
});

t.test("a down backend's connections close at once, whatever --close-spread says (time to recovery first)", async (tt) => {
  const h = await harness(tt, 2, { closeSpread: 60_000 });
  const [a, b] = h.backends as [Backend, Backend];
  markDraining(h.pool, b);
  const streams = await openStreams(h, 3);
  markUp(h.pool, b);
  h.pool.markDown(a, 'test');
  await Promise.all(streams.map((x) => ended(x.s))); // no clock advance: closed in the same tick
  tt.equal(h.proxy.counters.closed.get(a.id)?.get('backend_down'), 3);
  const [next] = await openStreams(h, 1);
  tt.equal(next!.backend, 'b', 'reconnects go to the up backend');
  next!.s.destroy();
});

t.test('connections kept on a backend that went down during panic are closed once another backend is up', async (tt) => {
  const h = await harness(tt, 2, { closeSpread: 60_000 });
  const [a, b] = h.backends as [Backend, Backend];
  markDraining(h.pool, b);
  const streams = await openStreams(h, 2); // both on a
  h.pool.markDown(a, 'test'); // b is draining: nothing eligible, panic, nowhere better
  tt.ok(h.pool.panic);
  tt.ok(await allAlive(streams), 'kept during panic');
  markUp(h.pool, b);
  await Promise.all(streams.map((x) => ended(x.s))); // no clock advance: the down path, at once
  tt.equal(h.proxy.counters.closed.get(a.id)?.get('backend_down'), 2);
});

/** A small deterministic random source (LCG), one per node. */
function seeded(seed: number): () => number {
  let x = seed;
  return () => (x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
}

t.test('a fleet of 5 nodes draining the same backend at the same instant: closes spread and interleaved', async (tt) => {
  const NODES = 5;
  const PER_NODE = 4;
  /** Fake-clock times (ms after the drain timeout) of every close across the fleet, for one configuration. */
  async function closeTimes(closeSpread: number, random: (node: number) => () => number): Promise<number[]> {
    const clock = new FakeClock();
    const fleet: { h: Harness; streams: { s: Socket }[] }[] = [];
    for (let i = 0; i < NODES; i++) {
      const h = await harness(tt, 2, { clock, closeSpread, random: random(i) });
      markDraining(h.pool, h.backends[1]!);
      const streams = await openStreams(h, PER_NODE);
      markUp(h.pool, h.backends[1]!);
      fleet.push({ h, streams });
    }
    const conns = fleet.flatMap(({ h }) => [...h.proxy.connectionsTo(h.backends[0]!)]);
    tt.equal(conns.length, NODES * PER_NODE);
    for (const { h } of fleet) markDraining(h.pool, h.backends[0]!); // every node sees /readyz 500 in the same check round
    clock.advance(DRAIN);
    // A close is a synchronous destroy of the client socket inside the timer: read them at each 1 ms step.
    const times: number[] = [];
    for (let t = 0; t <= closeSpread; t++) {
      if (t > 0) clock.advance(1);
      const done = conns.filter((c) => c.client.destroyed).length;
      while (times.length < done) times.push(t);
    }
    tt.equal(times.length, NODES * PER_NODE, 'every connection closed within the window');
    for (const { streams } of fleet) await Promise.all(streams.map((x) => ended(x.s)));
    return times;
  }
  const peak = (times: number[], ms: number) => Math.max(...times.map((t0) => times.filter((t) => t >= t0 && t < t0 + ms).length));
  const atOnce = await closeTimes(0, () => Math.random);
  tt.equal(peak(atOnce, 100), 20, 'window 0 (before): all 20 in the same tick');
  const aligned = await closeTimes(1000, () => () => 0.5);
  tt.equal(peak(aligned, 100), NODES, 'spread without per-node jitter: every node closes in step, 5 at a time');
  const jittered = await closeTimes(1000, (i) => seeded(i + 1));
  const p = peak(jittered, 100);
  tt.ok(p < NODES, `spread with a random phase per node: at most ${p} closes in any 100 ms`);
  tt.ok(Math.max(...jittered) - Math.min(...jittered) >= 700, 'the closes span the window');
});

t.test('--close-spread is validated like the other durations', async (tt) => {
  const pool = new Pool();
  tt.throws(() => new TcpProxy({ pool, closeSpread: -1 }), { code: 'APILB_ERR_OPTION_INVALID' });
  const proxy = new TcpProxy({ pool, closeSpread: 5 });
  tt.throws(() => proxy.update({ closeSpread: Number.NaN }), { code: 'APILB_ERR_OPTION_INVALID' });
  tt.equal(proxy.closeSpread, 5, 'a rejected update changes nothing');
  proxy.update({ closeSpread: 0 });
  tt.equal(proxy.closeSpread, 0);
  await proxy.close(0);
});
