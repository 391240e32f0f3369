/**
 * The Pool alone (no sockets): its state machine as a table of events → states, removal and draining, and
 * fast-check properties of pick(), rise/fall counting, the panic fallback and reconcile. Properties are written for
 * any fair picking policy (they check eligibility and coverage, not one order), so a change from round-robin to
 * least-connections keeps them meaningful.
 */
import t from 'tap';
import fc from 'fast-check';
import { Pool, type BackendLease, type CheckResult } from '../src/pool/pool.js';
import type { Backend, BackendSpec, BackendState } from '../src/pool/backend.js';
import { FakeClock } from './support/fake-clock.js';

const spec = (i: number): BackendSpec => ({ address: { host: `127.0.0.${i + 1}`, port: 6443 } });

/** Events of the state-machine table, as words. */
type Event = 'ok' | 'err' | 'local' | 'status' | 'dialFail' | 'dialOk' | 'markDown';

const CHECK: Record<'ok' | 'err' | 'local' | 'status', CheckResult> = {
  ok: { ok: true, latencyMs: 1, status: 200 },
  err: { ok: false, kind: 'transport', latencyMs: 1, error: 'ECONNREFUSED' },
  local: { ok: false, kind: 'transport', latencyMs: 1, error: 'EMFILE', local: true },
  status: { ok: false, kind: 'status', latencyMs: 1, status: 500 },
};

function apply(pool: Pool, b: Backend, e: Event): void {
  if (e === 'dialFail') pool.reportDialFailure(b, 'refused');
  else if (e === 'dialOk') pool.reportDialSuccess(b);
  else if (e === 'markDown') pool.markDown(b, 'operator');
  else pool.reportCheck(b, CHECK[e]);
}

interface Row {
  name: string;
  rise?: number;
  fall?: number;
  /** Events, space-separated. */
  events: string;
  /** The backend's state after each event. */
  states: string;
}

// Defaults rise 2, fall 2. `err` is a failed active check (transport), `status` a wrong answer (alive, not ready),
// `local` a check that failed for a reason of our own (EMFILE), `dialFail`/`dialOk` passive results of client dials.
const STATE_MACHINE: Row[] = [
  { name: 'unknown → up on the first passing check', events: 'ok', states: 'up' },
  { name: 'unknown stays eligible until fall failures', events: 'err err', states: 'unknown down' },
  { name: 'up → down after fall transport failures', events: 'ok err err', states: 'up up down' },
  { name: 'down → up only after rise passing checks', events: 'err err ok ok', states: 'unknown down down up' },
  { name: 'wrong status → draining (alive, not ready)', events: 'ok status status', states: 'up up draining' },
  { name: 'draining → up after rise passing checks', events: 'ok status status ok ok', states: 'up up draining draining up' },
  { name: 'draining → down on transport failures', events: 'ok status status err err', states: 'up up draining draining down' },
  { name: 'unknown → draining on wrong status', events: 'status status', states: 'unknown draining' },
  { name: 'alternating failure kinds never add up', events: 'ok status err status err', states: 'up up up up up' },
  { name: 'a passing check resets the failure streak', events: 'ok err ok err', states: 'up up up up' },
  { name: 'passive: failed dials count toward fall', events: 'ok dialFail dialFail', states: 'up up down' },
  { name: 'passive: a dial success ends a streak of failed dials', events: 'ok dialFail dialOk dialFail', states: 'up up up up' },
  { name: 'passive: a dial success does not end a streak with a failed check', events: 'ok err dialOk dialFail', states: 'up up up down' },
  { name: 'our own EMFILE is never held against the backend', events: 'ok local local local', states: 'up up up up' },
  { name: 'rise 3, fall 1', rise: 3, fall: 1, events: 'ok err ok ok ok', states: 'up down down down up' },
  { name: 'fall 3', fall: 3, events: 'ok err err err', states: 'up up up down' },
  // markDown (used by tests only) leaves the counters alone: the passing check before it still counts toward rise.
  { name: 'markDown forces down; the success streak before it counts toward rise', events: 'ok markDown ok ok', states: 'up down up up' },
  { name: 'a failed check in between restarts rise', events: 'err err ok err ok ok', states: 'unknown down down down down up' },
];

t.test('state machine: events → states', async (tt) => {
  for (const row of STATE_MACHINE) {
    const pool = new Pool({ rise: row.rise ?? 2, fall: row.fall ?? 2, clock: new FakeClock() });
    const b = pool.add(spec(0));
    const seen: string[] = [];
    const transitions: string[] = [];
    pool.on('transition', (e) => transitions.push(`${e.from}>${e.to}`));
    let prev: BackendState = b.state;
    const expectedTransitions: string[] = [];
    for (const e of row.events.split(' ') as Event[]) {
      apply(pool, b, e);
      seen.push(b.state);
      if (b.state !== prev) expectedTransitions.push(`${prev}>${b.state}`);
      prev = b.state;
    }
    tt.equal(seen.join(' '), row.states, row.name);
    tt.same(transitions, expectedTransitions, `${row.name}: one transition event per state change`);
    tt.equal(b.eligible, b.state === 'up' || b.state === 'unknown', `${row.name}: eligible iff up/unknown`);
  }
});

t.test('removal: a backend with connections drains, then leaves the pool', async (tt) => {
  const pool = new Pool({ clock: new FakeClock() });
  const [a, b] = [pool.add(spec(0)), pool.add(spec(1))];
  const events: string[] = [];
  pool.on('removed', (x) => events.push(`removed ${x.id}`));
  pool.on('evicted', (x) => events.push(`evicted ${x.id}`));
  const lease = pool.lease(a);
  lease.connected();
  pool.remove(a);
  tt.ok(a.removed && !a.eligible, 'removed: out of rotation');
  tt.same(pool.backends, [a, b], 'still in the pool while a connection is open');
  for (let i = 0; i < 4; i++) tt.equal(pool.pick(), b, 'never picked again');
  lease.release(10, 20);
  tt.same(pool.backends, [b], 'gone with its last connection');
  tt.same(events, [`removed ${a.id}`, `evicted ${a.id}`]);
  tt.same([a.bytesFromClientClosed, a.bytesToClientClosed, a.activeConnections, a.totalConnections], [10, 20, 0, 1], 'bytes and counts kept');

  pool.remove(b);
  tt.same(pool.backends, [], 'no connection: evicted at once');
  tt.equal(pool.pick(), undefined, 'an empty pool picks nothing');
  tt.notOk(pool.panic, 'an empty pool is not in panic');
});

t.test("a lease is the one owner of a backend's connection counters, and counts once", async (tt) => {
  const pool = new Pool({ clock: new FakeClock() });
  const a = pool.add(spec(0));
  const counts = () => [a.dialing, a.activeConnections, a.totalConnections, a.bytesFromClientClosed, a.bytesToClientClosed];
  // Each row: lease steps in order, then [dialing, active, total, bytes from client, bytes to client].
  const rows: { name: string; steps: ('connected' | 'release')[]; want: number[] }[] = [
    { name: 'dialing', steps: [], want: [1, 0, 0, 0, 0] },
    { name: 'abandoned dial: bytes not counted', steps: ['release'], want: [0, 0, 0, 0, 0] },
    { name: 'open', steps: ['connected'], want: [0, 1, 1, 0, 0] },
    { name: 'connected twice counts once', steps: ['connected', 'connected'], want: [0, 1, 1, 0, 0] },
    { name: 'closed', steps: ['connected', 'release'], want: [0, 0, 1, 3, 4] },
    { name: 'released twice counts once', steps: ['connected', 'release', 'release'], want: [0, 0, 1, 3, 4] },
    { name: 'connected after release changes nothing', steps: ['release', 'connected', 'release'], want: [0, 0, 0, 0, 0] },
  ];
  for (const row of rows) {
    const before = counts();
    const lease = pool.lease(a);
    tt.equal(lease.backend, a);
    for (const step of row.steps) {
      if (step === 'connected') lease.connected();
      else lease.release(3, 4);
    }
    const delta = counts().map((n, k) => n - before[k]!);
    tt.same(delta, row.want, row.name);
    lease.release(0, 0); // leave nothing dialing or open for the next row
  }
});

t.test('re-adding an address that is still draining replaces it with a fresh backend', async (tt) => {
  const pool = new Pool({ clock: new FakeClock() });
  const old = pool.add(spec(0));
  pool.reportCheck(old, CHECK.ok);
  pool.lease(old).connected();
  pool.remove(old);
  const fresh = pool.add(spec(0));
  tt.not(fresh, old);
  tt.equal(fresh.state, 'unknown');
  tt.same(pool.backends, [fresh], 'the draining one is dropped from the list');
  tt.equal(pool.add(spec(0)), fresh, 'adding a present address returns the existing backend');
});

t.test('options are validated at construction', async (tt) => {
  for (const bad of [{ rise: 0 }, { fall: -1 }, { rise: 1.5 }, { fall: Number.NaN }]) {
    tt.throws(() => new Pool(bad), { code: 'APILB_ERR_OPTION_INVALID' }, JSON.stringify(bad));
  }
});

// ---- properties ----

/** One operation on a pool of up to N backends; `i` selects a backend modulo the current count. */
type Op =
  | { kind: 'check'; i: number; r: 'ok' | 'err' | 'status' | 'local' }
  | { kind: 'dial'; i: number; ok: boolean }
  | { kind: 'conn'; i: number; open: boolean }
  | { kind: 'remove'; i: number }
  | { kind: 'add'; n: number };

const N = 6;
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('check' as const),
      i: fc.nat(N),
      r: fc.constantFrom('ok' as const, 'err' as const, 'status' as const, 'local' as const),
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('dial' as const), i: fc.nat(N), ok: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('conn' as const), i: fc.nat(N), open: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), i: fc.nat(N) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('add' as const), n: fc.nat(N - 1) }) },
);

/** Open connections of the pools under test (a connection is its lease). */
const openLeases = new WeakMap<Pool, BackendLease[]>();

function run(pool: Pool, op: Op): void {
  const live = pool.backends;
  if (op.kind === 'add') {
    pool.add(spec(op.n));
    return;
  }
  if (live.length === 0) return;
  const b = live[op.i % live.length]!;
  if (op.kind === 'check') pool.reportCheck(b, CHECK[op.r]);
  else if (op.kind === 'dial') {
    if (op.ok) pool.reportDialSuccess(b);
    else pool.reportDialFailure(b, 'refused');
  } else if (op.kind === 'conn') {
    const leases = openLeases.get(pool) ?? [];
    openLeases.set(pool, leases);
    if (op.open) {
      const l = pool.lease(b);
      l.connected();
      leases.push(l);
    } else {
      const k = leases.findIndex((l) => l.backend === b);
      if (k >= 0) leases.splice(k, 1)[0]!.release(0, 0);
    }
  } else pool.remove(b);
}

const poolArb = fc.record({
  rise: fc.integer({ min: 1, max: 3 }),
  fall: fc.integer({ min: 1, max: 3 }),
  size: fc.integer({ min: 1, max: N }),
  ops: fc.array(opArb, { maxLength: 60 }),
  excludeMask: fc.nat(2 ** N - 1),
});

function build(p: { rise: number; fall: number; size: number }): Pool {
  const pool = new Pool({ rise: p.rise, fall: p.fall, clock: new FakeClock() });
  for (let i = 0; i < p.size; i++) pool.add(spec(i));
  return pool;
}

t.test('property: pick() never returns a non-eligible backend while an eligible one can be picked', async (tt) => {
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(poolArb, (p) => {
        const pool = build(p);
        for (const op of p.ops) {
          run(pool, op);
          const exclude = new Set(pool.backends.filter((_, k) => (p.excludeMask >> k) & 1));
          const candidates = pool.backends.filter((b) => !b.removed && !exclude.has(b));
          const eligible = candidates.filter((b) => b.eligible);
          const got = pool.pick(exclude);
          if (got && (got.removed || exclude.has(got))) throw new Error(`picked ${got.id}: removed or excluded`);
          if (eligible.length > 0 && !got?.eligible) throw new Error(`picked ${got?.id} (${got?.state}) while ${eligible.map((b) => b.id)} were eligible`);
          if (pool.hasEligible && got && !got.eligible) throw new Error(`fell back to ${got.id} outside panic`);
          if (!pool.hasEligible && candidates.length > 0 && !got) throw new Error('panic: nothing picked although candidates remain');
          if (pool.panic !== (pool.backends.some((b) => !b.removed) && !pool.hasEligible)) throw new Error('panic flag disagrees with eligibility');
        }
      }),
      { numRuns: 300 },
    ),
  );
});

t.test('property: picking while excluding what was tried yields each candidate once (eligible ones, or all in panic)', async (tt) => {
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(poolArb, (p) => {
        const pool = build(p);
        for (const op of p.ops) run(pool, op);
        const live = pool.backends.filter((b) => !b.removed);
        // In panic every live backend is a fallback, in the pool's order; otherwise only eligible ones are tried.
        const expected = pool.hasEligible ? live.filter((b) => b.eligible) : live;
        const tried = new Set<Backend>();
        const order: Backend[] = [];
        for (let got = pool.pick(tried); got; got = pool.pick(tried)) {
          if (tried.has(got)) throw new Error(`${got.id} picked twice`);
          tried.add(got);
          order.push(got);
          if (order.length > live.length) throw new Error('more picks than backends');
        }
        const ids = (l: Backend[]) => l.map((b) => b.id).sort();
        if (JSON.stringify(ids(order)) !== JSON.stringify(ids(expected))) throw new Error(`tried ${ids(order)}, expected ${ids(expected)}`);
        if (!pool.hasEligible && live.length > 0) {
          // Panic order: the pool's list order, rotated (it continues where the last pick left off).
          const start = live.indexOf(order[0]!);
          const rotated = [...live.slice(start), ...live.slice(0, start)];
          if (order.some((b, k) => b !== rotated[k])) throw new Error(`panic order ${order.map((b) => b.id)} is not the list order rotated`);
        }
      }),
      { numRuns: 300 },
    ),
  );
});

t.test('property: with no connections open, consecutive picks visit every eligible backend', async (tt) => {
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(poolArb, (p) => {
        const pool = build(p);
        for (const op of p.ops) if (op.kind !== 'conn') run(pool, op);
        const eligible = pool.backends.filter((b) => b.eligible);
        const seen = new Set<Backend>();
        for (let k = 0; k < eligible.length; k++) seen.add(pool.pick()!);
        if (seen.size !== eligible.length) throw new Error(`${eligible.length} picks saw ${seen.size} of ${eligible.length} eligible backends`);
      }),
      { numRuns: 300 },
    ),
  );
});

t.test('property: rise/fall counting', async (tt) => {
  const results = fc.array(fc.constantFrom<'ok' | 'err' | 'dialFail' | 'dialOk'>('ok', 'err', 'dialFail', 'dialOk'), { maxLength: 40 });
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 4 }), results, (rise, fall, seq) => {
        const pool = new Pool({ rise, fall, clock: new FakeClock() });
        const b = pool.add(spec(0));
        let oks = 0; // trailing passing checks
        let checkFails = 0; // trailing failed checks (dial results do not interrupt them)
        let fails = 0; // trailing transport failures, checks and dials
        for (const e of seq) {
          const before = b.state;
          apply(pool, b, e);
          if (e === 'ok') {
            oks++;
            fails = checkFails = 0;
          } else if (e === 'err') {
            checkFails++;
            fails++;
            oks = 0;
          } else if (e === 'dialFail') {
            fails++;
            oks = 0;
          }
          // Safety: no transition without enough evidence.
          if (before !== 'down' && b.state === 'down' && fails < fall) throw new Error(`down after ${fails} failures (fall ${fall})`);
          if (before === 'down' && b.state === 'up' && oks < rise) throw new Error(`up after ${oks} passing checks (rise ${rise})`);
          // Liveness: enough evidence always moves it.
          if (checkFails >= fall && b.state !== 'down') throw new Error(`${checkFails} failed checks (fall ${fall}) but ${b.state}`);
          if (oks >= rise && b.state !== 'up') throw new Error(`${oks} passing checks (rise ${rise}) but ${b.state}`);
          if (oks >= 1 && before === 'unknown' && b.state !== 'up') throw new Error('the first passing check did not make it up');
        }
      }),
      { numRuns: 500 },
    ),
  );
});

t.test('property: reconcile keeps unchanged backends (same object, state, counters) and drains removed ones', async (tt) => {
  const addrs = fc.uniqueArray(fc.nat(9), { maxLength: 6 });
  tt.doesNotThrow(() =>
    fc.assert(
      fc.property(addrs, addrs, fc.array(opArb, { maxLength: 30 }), (before, after, ops) => {
        const pool = new Pool({ clock: new FakeClock() });
        pool.reconcile(before.map(spec));
        for (const op of ops) if (op.kind !== 'add' && op.kind !== 'remove') run(pool, op);
        const snap = new Map(pool.backends.map((b) => [b.id, { b, state: b.state, conns: b.activeConnections, checks: JSON.stringify(b.checkCounts) }]));
        const { added, removed } = pool.reconcile(after.map(spec));
        const wanted = new Set(after.map((i) => `127.0.0.${i + 1}:6443`));
        for (const [id, s] of snap) {
          if (wanted.has(id)) {
            const now = pool.get(id);
            if (now !== s.b || now.state !== s.state || now.activeConnections !== s.conns || JSON.stringify(now.checkCounts) !== s.checks) {
              throw new Error(`${id} changed across reconcile`);
            }
          } else {
            if (!s.b.removed || !removed.includes(s.b)) throw new Error(`${id} not removed`);
            if (s.conns > 0 !== pool.backends.includes(s.b)) throw new Error(`${id}: stays exactly while connections are open`);
          }
        }
        for (const b of added) if (snap.has(b.id) || b.state !== 'unknown') throw new Error(`${b.id} added although present, or not fresh`);
        const live = pool.backends.filter((b) => !b.removed).map((b) => b.id);
        if (live.length !== wanted.size || live.some((id) => !wanted.has(id))) throw new Error(`live ${live} ≠ wanted ${[...wanted]}`);
      }),
      { numRuns: 300 },
    ),
  );
});
