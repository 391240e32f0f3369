/**
 * Rebalancing decisions and the least-connections pick, as tables and fast-check properties over the pure logic
 * (src/pool/rebalance.ts, Pool.pick), plus the Rebalancer on real loopback sockets with an injected clock: a
 * connection with a request outstanding is never moved, nothing moves while a backend drains or in panic.
 */
import t from 'tap';
import fc from 'fast-check';
import type { Socket } from 'node:net';
import { Backend, type BackendState } from '../src/pool/backend.js';
import { Pool } from '../src/pool/pool.js';
import { isMovable, isUneven, planRebalance, type MoveCandidate, type RebalancePolicy } from '../src/pool/rebalance.js';
import { TcpProxy } from '../src/proxy/proxy.js';
import { Rebalancer } from '../src/proxy/rebalancer.js';
import { bindListener, createListener } from '../src/proxy/listen.js';
import { parseAddress } from '../src/config/values.js';
import { FakeClock } from './support/fake-clock.js';
import { dial, ended, readBytes, startServer, until, type TestServer } from './support/net.js';

const POLICY: RebalancePolicy = { tolerance: 0.2, maxMovesFraction: 1, minAge: 10_000, quiet: 1000 };
const NOW = 1_000_000;

interface Cand extends MoveCandidate {
  id: string;
}

/** A quiet, old connection whose last bytes came from the server. */
function cand(id: string, over: Partial<MoveCandidate> = {}): Cand {
  return { id, openedAt: NOW - 60_000, lastClientByteAt: NOW - 30_000, lastServerByteAt: NOW - 20_000, serverSpokeLast: true, ...over };
}

function backend(id: number, state: BackendState, active: number, removed = false): Backend {
  const b = new Backend({ address: { host: '127.0.0.1', port: 1000 + id } }, 0);
  b.state = state;
  b.activeConnections = active;
  b.removed = removed;
  return b;
}

t.test('isMovable: the quiet-moment rule', async (tt) => {
  const rows: { name: string; c: Partial<MoveCandidate>; movable: boolean }[] = [
    { name: 'old, quiet, server spoke last', c: {}, movable: true },
    { name: 'request outstanding: the client spoke last', c: { serverSpokeLast: false, lastClientByteAt: NOW - 5000 }, movable: false },
    { name: 'younger than the minimum age', c: { openedAt: NOW - 9999 }, movable: false },
    { name: 'exactly the minimum age', c: { openedAt: NOW - 10_000 }, movable: true },
    { name: 'server bytes too recent', c: { lastServerByteAt: NOW - 999 }, movable: false },
    { name: 'quiet exactly long enough', c: { lastServerByteAt: NOW - 1000 }, movable: true },
    { name: 'client bytes too recent (and so it spoke last)', c: { lastClientByteAt: NOW - 10, serverSpokeLast: false }, movable: false },
    { name: 'never carried a server byte', c: { lastServerByteAt: 0, serverSpokeLast: false }, movable: false },
    {
      name: 'the server spoke right after the client (a TLS ticket, an acknowledgement), nothing since',
      c: { lastClientByteAt: NOW - 5000, lastServerByteAt: NOW - 4990 },
      movable: false,
    },
    { name: 'the server spoke again on its own later (a watch event)', c: { lastClientByteAt: NOW - 5000, lastServerByteAt: NOW - 4000 }, movable: true },
    { name: 'no client byte at all, the server spoke', c: { lastClientByteAt: 0 }, movable: true },
  ];
  for (const r of rows) tt.equal(isMovable(cand('x', r.c), NOW, POLICY), r.movable, r.name);
});

t.test('planRebalance: table', async (tt) => {
  interface Row {
    name: string;
    backends: [BackendState, number, boolean?][];
    panic?: boolean;
    /** Candidates per backend index (default: `active` quiet ones). */
    cands?: Partial<MoveCandidate>[][];
    policy?: Partial<RebalancePolicy>;
    outcome: string;
    /** Moves per source backend index. */
    from: number[];
  }
  const rows: Row[] = [
    // Within 20% of the fair 20: 22/22/16.
    {
      name: 'after a rolling upgrade: 30/30/0 → 16 move, 8 from each',
      backends: [
        ['up', 30],
        ['up', 30],
        ['up', 0],
      ],
      outcome: 'moved',
      from: [8, 8, 0],
    },
    {
      name: 'within tolerance: nothing moves',
      backends: [
        ['up', 22],
        ['up', 20],
        ['up', 18],
      ],
      outcome: 'balanced',
      from: [0, 0, 0],
    },
    {
      name: 'a difference of one never moves',
      backends: [
        ['up', 1],
        ['up', 0],
      ],
      outcome: 'balanced',
      from: [0, 0],
    },
    {
      name: 'panic: nothing moves',
      backends: [
        ['down', 30],
        ['down', 0],
      ],
      panic: true,
      outcome: 'panic',
      from: [0, 0],
    },
    {
      name: 'a backend draining: nothing moves',
      backends: [
        ['up', 30],
        ['up', 0],
        ['draining', 5],
      ],
      outcome: 'draining',
      from: [0, 0, 0],
    },
    {
      name: 'a removed backend with connections drains too',
      backends: [
        ['up', 30],
        ['up', 0],
        ['up', 2, true],
      ],
      outcome: 'draining',
      from: [0, 0, 0],
    },
    // E.g. /readyz refusing apilb's credentials: draining for good, its connections closed by the drain timeout.
    {
      name: 'a draining backend with no connection left does not block',
      backends: [
        ['up', 20],
        ['up', 0],
        ['draining', 0],
      ],
      outcome: 'moved',
      from: [8, 0, 0],
    },
    {
      name: 'a down backend is left out: the others are even',
      backends: [
        ['up', 15],
        ['up', 15],
        ['down', 0],
      ],
      outcome: 'balanced',
      from: [0, 0, 0],
    },
    {
      name: 'budget: 10% of 60 connections per round',
      backends: [
        ['up', 30],
        ['up', 30],
        ['up', 0],
      ],
      policy: { maxMovesFraction: 0.1 },
      outcome: 'moved',
      from: [3, 3, 0],
    },
    {
      name: 'budget: at least one',
      backends: [
        ['up', 4],
        ['up', 0],
      ],
      policy: { maxMovesFraction: 0.01 },
      outcome: 'moved',
      from: [1, 0],
    },
    {
      name: 'every connection of the loaded backend has a request outstanding',
      backends: [
        ['up', 3],
        ['up', 0],
      ],
      cands: [[{ serverSpokeLast: false }, { serverSpokeLast: false }, { serverSpokeLast: false }], []],
      outcome: 'no_quiet_connection',
      from: [0, 0],
    },
    {
      name: 'the most loaded has nothing quiet: the next one gives',
      backends: [
        ['up', 20],
        ['up', 16],
        ['up', 0],
      ],
      cands: [Array.from({ length: 20 }, () => ({ openedAt: NOW })), Array.from({ length: 16 }, () => ({}))],
      outcome: 'moved',
      from: [0, 4, 0],
    },
  ];
  for (const r of rows) {
    const bs = r.backends.map(([s, n, removed], i) => backend(i, s, n, removed));
    const cands = new Map(bs.map((b, i) => [b, (r.cands?.[i] ?? Array.from({ length: b.activeConnections }, () => ({}))).map((o, k) => cand(`${i}.${k}`, o))]));
    const plan = planRebalance({ backends: bs, panic: r.panic ?? false, connectionsOf: (b) => cands.get(b) ?? [], now: NOW }, { ...POLICY, ...r.policy });
    tt.equal(plan.outcome, r.outcome, `${r.name}: outcome`);
    tt.same(
      bs.map((b) => plan.moves.filter((m) => m.from === b).length),
      r.from,
      `${r.name}: moves per backend`,
    );
  }
});

t.test('planRebalance: properties', async (tt) => {
  const arbCand = fc.record({
    openedAt: fc.integer({ min: NOW - 100_000, max: NOW }),
    lastClientByteAt: fc.integer({ min: 0, max: NOW }),
    lastServerByteAt: fc.integer({ min: 0, max: NOW }),
    serverSpokeLast: fc.boolean(),
  });
  const arbBackend = fc.record({
    state: fc.constantFrom<BackendState>('up', 'up', 'up', 'unknown', 'down', 'draining'),
    cands: fc.array(arbCand, { maxLength: 30 }),
  });
  const arbPolicy = fc.record({
    tolerance: fc.double({ min: 0.01, max: 1, noNaN: true }),
    maxMovesFraction: fc.double({ min: 0.01, max: 1, noNaN: true }),
    minAge: fc.integer({ min: 0, max: 60_000 }),
    quiet: fc.integer({ min: 1, max: 5000 }),
  });
  fc.assert(
    fc.property(fc.array(arbBackend, { minLength: 1, maxLength: 5 }), fc.boolean(), arbPolicy, (specs, panic, policy) => {
      const bs = specs.map((s, i) => backend(i, s.state, s.cands.length));
      const byB = new Map(bs.map((b, i) => [b, specs[i]!.cands]));
      const plan = planRebalance({ backends: bs, panic, connectionsOf: (b) => byB.get(b)!, now: NOW }, policy);
      const total = bs.filter((b) => b.eligible).reduce((a, b) => a + b.activeConnections, 0);
      if (panic || bs.some((b) => b.state === 'draining' && b.activeConnections > 0)) return plan.moves.length === 0;
      // Bounded: at most the round's share of the node's connections (at least one).
      if (plan.moves.length > Math.max(1, Math.floor(policy.maxMovesFraction * total))) return false;
      const seen = new Set<MoveCandidate>();
      const count = new Map(bs.map((b) => [b, b.activeConnections]));
      for (const m of plan.moves) {
        // Only quiet, old connections whose server spoke last; each once; from an eligible backend to another.
        if (!isMovable(m.connection, NOW, policy) || seen.has(m.connection)) return false;
        if (!byB.get(m.from)!.includes(m.connection) || !m.from.eligible || !m.to.eligible || m.from === m.to) return false;
        seen.add(m.connection);
        // Every move narrows the gap: the source had at least two more than the target.
        if (count.get(m.from)! - count.get(m.to)! < 2) return false;
        // Only a backend above the fair share gives.
        if (count.get(m.from)! <= total / bs.filter((b) => b.eligible).length) return false;
        count.set(m.from, count.get(m.from)! - 1);
        count.set(m.to, count.get(m.to)! + 1);
      }
      return true;
    }),
    { numRuns: 500 },
  );
  tt.pass('500 random pools: only movable connections, bounded, every move narrows the gap from above the fair share, nothing in panic or drain');
  tt.notOk(isUneven(24, 16, 20, 0.2), '16..24 around 20 is within 20%');
  tt.ok(isUneven(25, 15, 20, 0.2), '15..25 is not');
});

t.test('Pool.pick: least connections, ties in turn; round-robin kept as an option', async (tt) => {
  const pool = new Pool();
  const [a, b, c] = ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'].map((x) => pool.add({ address: parseAddress(x) }));
  const picks = (n: number, p = pool) => Array.from({ length: n }, () => p.pick()!.id.slice(-1)).join('');
  tt.equal(picks(6), '123123', 'all empty: ties go in turn');
  a!.activeConnections = 5;
  b!.activeConnections = 5;
  c!.activeConnections = 0;
  tt.equal(picks(3), '333', 'a backend that came back fills first');
  const dials = [pool.lease(c!), pool.lease(c!)];
  c!.activeConnections = 4;
  tt.equal(pool.pick()!, a, 'connections still dialing count: 4 + 2 dialing > 5');
  for (const d of dials) d.release(0, 0);
  tt.ok([a, b].includes(pool.pick(new Set([c!]))), 'excluded backends are skipped');
  pool.markDown(c!, 'test');
  tt.notOk(picks(4).includes('3'), 'a down backend is never picked');
  const rr = new Pool({ balance: 'round-robin' });
  for (const x of ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']) rr.add({ address: parseAddress(x) });
  rr.backends[0]!.activeConnections = 100;
  tt.equal(picks(6, rr), '123123', 'round-robin ignores load');
  tt.throws(() => new Pool({ balance: 'random' as never }), /balance/);
});

t.test('Pool.pick: property: least-connections picks a least loaded eligible backend, and every one in turn on ties', async (tt) => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          state: fc.constantFrom<BackendState>('up', 'unknown', 'down', 'draining'),
          active: fc.nat(20),
          dialing: fc.nat(3),
          excluded: fc.boolean(),
        }),
        { minLength: 1, maxLength: 6 },
      ),
      (specs) => {
        const pool = new Pool();
        const bs = specs.map((x, i) => {
          const b = pool.add({ address: { host: '127.0.0.1', port: 1 + i } });
          b.state = x.state;
          b.activeConnections = x.active;
          b.dialing = x.dialing;
          return b;
        });
        const exclude = new Set(bs.filter((_, i) => specs[i]!.excluded));
        const candidates = bs.filter((b) => b.eligible && !exclude.has(b));
        const picked = pool.pick(exclude);
        if (candidates.length === 0) return picked === undefined || !picked.eligible;
        const min = Math.min(...candidates.map((b) => b.activeConnections + b.dialing));
        if (!picked || !candidates.includes(picked) || picked.activeConnections + picked.dialing !== min) return false;
        // With loads unchanged, the tied ones come in turn: each exactly once in as many picks.
        const tied = candidates.filter((b) => b.activeConnections + b.dialing === min);
        const seen = new Set([picked]);
        for (let k = 1; k < tied.length; k++) seen.add(pool.pick(exclude)!);
        return seen.size === tied.length;
      },
    ),
    { numRuns: 500 },
  );
  tt.pass('500 random pools');
});

/**
 * A backend that greets (so the server speaks first), answers `ask\n` with `answer\n` at once, answers `watch\n`
 * with `ok\n` and keeps the socket in `watchers` (the test sends events), ignores `wait\n`, ends when the client
 * ends.
 */
function talkServer(name: string, watchers = new Set<Socket>()): Promise<TestServer> {
  return startServer((s) => {
    s.write(`${name}\n`);
    s.on('data', (d: Buffer) => {
      const text = d.toString();
      if (text.includes('ask')) s.write('answer\n');
      if (text.includes('watch')) {
        s.write('ok\n');
        watchers.add(s);
      }
    });
    s.on('end', () => s.end());
  });
}

t.test('Rebalancer on real sockets: moves only quiet connections, never one with a request outstanding', async (tt) => {
  const watchers = new Set<Socket>();
  const [sa, sb] = await Promise.all([talkServer('a', watchers), talkServer('b')]);
  tt.teardown(() => Promise.all([sa!.close(), sb!.close()]));
  const clock = new FakeClock();
  const pool = new Pool({ clock });
  const a = pool.add({ address: parseAddress(sa!.address) });
  const b = pool.add({ address: parseAddress(sb!.address) });
  pool.markDown(b, 'test: b is being upgraded');
  const proxy = new TcpProxy({ pool, firstByteTimeout: 0, clock });
  const server = createListener();
  await bindListener(server, { host: '127.0.0.1', port: 0 });
  proxy.serve(server);
  tt.teardown(() => proxy.close(0));
  const port = (server.address() as { port: number }).port;
  const rebalancer = new Rebalancer({ proxy, interval: 1000, tolerance: 0.2, maxMovesFraction: 1, minAge: 5000, quiet: 500 });
  const moves: string[] = [];
  rebalancer.on('move', (ev) => moves.push(`${ev.from.id}->${ev.to.id}`));

  // Nine clients on a: three watch (answered, then events later), three got an answer at once and nothing since,
  // three still wait for theirs.
  const watching: Socket[] = [];
  const answered: Socket[] = [];
  const waiting: Socket[] = [];
  for (let i = 0; i < 9; i++) {
    const s = await dial(port);
    tt.teardown(() => s.destroy());
    await readBytes(s, 2);
    if (i % 3 === 0) {
      s.write('watch\n');
      await readBytes(s, 3);
      watching.push(s);
    } else if (i % 3 === 1) {
      s.write('ask\n');
      await readBytes(s, 7);
      answered.push(s);
    } else {
      s.write('wait\n');
      waiting.push(s);
    }
  }
  await until(() => a.activeConnections === 9 && [...proxy.connectionsTo(a)].every((c) => c.lastClientByteAt > 0), 'nine connections on a, each spoke');
  pool.reportCheck(b, { ok: true, latencyMs: 1 });
  pool.reportCheck(b, { ok: true, latencyMs: 1 });
  tt.equal(b.state, 'up', 'b is back');

  tt.equal(rebalancer.runOnce().outcome, 'no_quiet_connection', '9/0, but every connection is younger than the minimum age');
  clock.advance(10_000);
  // A watch event, well after each watcher's request.
  for (const w of watchers) w.write('event\n');
  await until(() => [...proxy.connectionsTo(a)].filter((c) => c.lastServerByteAt === clock.now()).length === 3, 'the events relayed');
  clock.advance(1000);
  // a draining (with its nine connections): nothing moves. Then b down too: panic, nothing moves.
  pool.reportCheck(a, { ok: false, kind: 'status', status: 500, latencyMs: 1 });
  pool.reportCheck(a, { ok: false, kind: 'status', status: 500, latencyMs: 1 });
  tt.equal(a.state, 'draining');
  tt.equal(rebalancer.runOnce().outcome, 'draining', 'nothing moves while a backend drains');
  pool.markDown(b, 'test');
  tt.ok(pool.panic, 'panic');
  tt.equal(rebalancer.runOnce().outcome, 'panic', 'nothing moves in panic');
  for (const x of [a, b]) for (let i = 0; i < 2; i++) pool.reportCheck(x, { ok: true, latencyMs: 1 });
  tt.same([a.state, b.state], ['up', 'up']);
  tt.same(moves, [], 'no move so far');

  const plan = rebalancer.runOnce();
  tt.equal(plan.outcome, 'moved');
  tt.equal(plan.moves.length, 3, '9/0 would move 4; only the three watches qualify');
  for (const s of watching) {
    await ended(s);
    tt.ok(s.readableEnded, 'a watch whose server spoke last, on its own, was closed, cleanly (FIN, no reset)');
  }
  tt.same(moves, Array(3).fill(`${a.id}->${b.id}`));
  tt.equal(rebalancer.moved.get(a.id), 3, 'moves counted by source backend');
  await until(() => a.activeConnections === 6, 'six left on a');
  for (const s of waiting) tt.notOk(s.destroyed || s.readableEnded, 'a connection with a request outstanding stays open');
  for (const s of answered) tt.notOk(s.destroyed || s.readableEnded, 'an answer right after the request is not taken as the end of it: left open');
  tt.equal(proxy.counters.closed.get(a.id)?.get('rebalance'), 3, 'closed with reason rebalance');
  tt.equal(rebalancer.runOnce().outcome, 'no_quiet_connection', 'the others are never taken, however uneven');
  // A reconnect goes to b, the least loaded.
  const again = await dial(port);
  tt.teardown(() => again.destroy());
  tt.equal((await readBytes(again, 2)).toString(), 'b\n', 'the reconnect lands on the least loaded backend');
});

t.test('Rebalancer: options are validated, rounds run on the (jittered) timer and stop, counters follow the pool', async (tt) => {
  const clock = new FakeClock();
  const pool = new Pool({ clock });
  const proxy = new TcpProxy({ pool, clock });
  tt.throws(() => new Rebalancer({ proxy, tolerance: 0 }), /tolerance/);
  tt.throws(() => new Rebalancer({ proxy, maxMovesFraction: 1.5 }), /maxMovesFraction/);
  tt.throws(() => new Rebalancer({ proxy, interval: 0 }), /interval/);
  const r = new Rebalancer({ proxy, interval: 1000, random: () => 1 });
  let rounds = 0;
  r.on('round', () => rounds++);
  r.start();
  r.start();
  clock.advance(1499);
  tt.equal(rounds, 0, 'jitter +50%: not before 1500 ms');
  clock.advance(1);
  tt.equal(rounds, 1);
  clock.advance(1500);
  tt.equal(rounds, 2, 'one timer, even after start() twice');
  r.stop();
  clock.advance(10_000);
  tt.equal(rounds, 2, 'stopped');
  tt.equal(clock.pending, 0);
  const gone = pool.add({ address: parseAddress('127.0.0.1:9') });
  r.moved.set(gone.id, 2);
  pool.remove(gone);
  tt.notOk(r.moved.has(gone.id), 'a backend that left the pool takes its move counter along');
  const listeners = pool.listenerCount('evicted');
  r.close();
  tt.equal(pool.listenerCount('evicted'), listeners - 1, 'close() lets go of the pool');
  await proxy.close(0);
});

t.test('least connections counts dials: a refused dial, a retry and a close leave no count behind', async (tt) => {
  const [ok] = await Promise.all([talkServer('ok')]);
  tt.teardown(() => ok!.close());
  const pool = new Pool();
  // Nothing listens on port 1 of 127.0.0.2 (loopback): refused at once.
  const refusing = pool.add({ address: parseAddress('127.0.0.2:1') });
  const good = pool.add({ address: parseAddress(ok!.address) });
  const proxy = new TcpProxy({ pool, firstByteTimeout: 0 });
  const server = createListener();
  await bindListener(server, { host: '127.0.0.1', port: 0 });
  proxy.serve(server);
  tt.teardown(() => proxy.close(0));
  const port = (server.address() as { port: number }).port;
  const clients: Socket[] = [];
  for (let i = 0; i < 4; i++) {
    const s = await dial(port);
    clients.push(s);
    tt.equal((await readBytes(s, 3)).toString(), 'ok\n', `client ${i} answered by the good backend`);
  }
  tt.same([refusing.dialing, good.dialing, good.activeConnections], [0, 0, 4], 'no dial left counted; four open');
  for (const s of clients) s.destroy();
  await until(() => good.activeConnections === 0, 'all closed');
  tt.same([refusing.dialing, good.dialing], [0, 0], 'still nothing counted after the closes');
});
