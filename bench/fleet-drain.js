// node bench/fleet-drain.js — a fleet on one machine (issue #16): --nodes apilb processes (default 20), each its own
// "node" with --conns (default 25) long-lived HTTP/2 sessions (kubelet-like) through it, in front of 3 API-server
// stand-ins (src/demo fake-apiserver, each its own process). Loopback only. For each --close-spread value (default
// "0,10000": 0 is the behaviour before issue #16, every close in one tick):
//   drain: api-a gets SIGTERM with a long --shutdown-delay: /readyz turns 500 while it still serves; every apilb
//          marks it draining and, after --drain-timeout (3 s here), closes its connections, spread over the window
//          or all at once. Measured: the reconnect rate the other API servers see (peak over any 1 s and any
//          100 ms: every reconnect is a new TCP + TLS connection and a request there), and how long the move took.
//   down:  api-b is frozen (SIGSTOP: the kernel still accepts TCP); apilb marks it down and closes its connections
//          at once whatever the spread. Measured: time from the freeze to each affected client working again (MTTR).
// Options: --nodes N · --conns N · --spreads MS,MS · --drain-timeout MS
import http2 from 'node:http2';
import { join } from 'node:path';
import { ROOT, spawnTracked, killChild, atExit, readJsonLine, sleep, waitFor, median, percentile, tailStderr } from './lib.js';

/** waitFor that fails loudly: a measurement taken after a silent timeout would be wrong. */
async function until(fn, timeout, what) {
  if (!(await waitFor(fn, { timeout, interval: 20 }))) throw new Error(`fleet-drain: timed out after ${timeout} ms waiting for ${what}`);
}

const argv = process.argv.slice(2);
const val = (n, d) => { const i = argv.indexOf(`--${n}`); return i >= 0 && argv[i + 1] ? argv[i + 1] : d; };
const NODES = Number(val('nodes', 20));
const CONNS = Number(val('conns', 25));
const SPREADS = String(val('spreads', '0,10000')).split(',').map(Number);
const DRAIN_TIMEOUT = Number(val('drain-timeout', 3000));
setTimeout(() => { console.error('fleet-drain: hard time limit'); process.exit(3); }, 10 * 60_000).unref();

const { createTestCA } = await import(join(ROOT, 'dist/demo/test-ca.js'));
const { spawnFakeApiServer } = await import(join(ROOT, 'dist/demo/fake-apiserver-process.js'));
const ca = createTestCA();
atExit(() => ca.remove());

/** One kubelet-like client: an HTTP/2 session through its node's apilb, reconnecting at once when it ends. */
class Client {
  constructor(port) {
    this.port = port;
    this.server = undefined;
    this.moves = []; // { from, to, closedAt, backAt }
    this.stopped = false;
    this.connect(undefined);
  }
  connect(closedAt) {
    const from = this.server;
    this.server = undefined;
    const s = http2.connect(`https://127.0.0.1:${this.port}`, { ca: ca.cert });
    this.session = s;
    s.on('error', () => {});
    s.on('close', () => {
      if (this.stopped || this.session !== s) return;
      this.connect(performance.now());
    });
    const req = s.request({ ':path': '/version' });
    req.on('error', () => {});
    req.on('response', (h) => {
      this.server = String(h['x-apiserver-name']);
      if (closedAt !== undefined) this.moves.push({ from, to: this.server, closedAt, backAt: performance.now() });
    });
    req.resume();
    req.end();
  }
  stop() {
    this.stopped = true;
    this.session.destroy();
  }
}

async function startNode(spread, servers) {
  const args = [join(ROOT, 'dist/cli.js'), 'run', ...servers.flatMap((s) => ['--backend', s.address]), '--ca-file', ca.certFile,
    '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--health-check-interval', '2s',
    // A shared 2-core machine with 20 apilb processes: generous timeouts, so load alone marks nothing down.
    '--health-check-timeout', '2s', '--connect-timeout', '3s', '--first-byte-timeout', '3s',
    '--drain-timeout', `${DRAIN_TIMEOUT}ms`, '--close-spread', `${spread}ms`, '--log-level', 'info'];
  const child = spawnTracked(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const err = tailStderr(child);
  const started = await readJsonLine(child, (j) => j.event === 'started', 60_000).catch((e) => { throw new Error(`${e.message}\n${err()}`); });
  child.stdout.resume();
  return { child, port: Number(started.listen[0].split(':').pop()) };
}

/** Largest number of events in any window of `ms` (events sorted by time). */
function peak(times, ms) {
  let best = 0;
  for (let i = 0, j = 0; j < times.length; j++) {
    while (times[j] - times[i] >= ms) i++;
    best = Math.max(best, j - i + 1);
  }
  return best;
}

async function run(spread) {
  // Fresh API servers per run: api-a's shutdown delay outlasts the run.
  const servers = await Promise.all(['api-a', 'api-b', 'api-c'].map((name) => spawnFakeApiServer({ ca, name, watchIntervalMs: 0, shutdownDelayMs: 600_000 })));
  const nodes = [];
  for (let i = 0; i < NODES; i += 5) nodes.push(...(await Promise.all(Array.from({ length: Math.min(5, NODES - i) }, () => startNode(spread, servers)))));
  const clients = nodes.flatMap((n) => Array.from({ length: CONNS }, () => new Client(n.port)));
  await until(() => clients.every((c) => c.server), 60_000, 'every session to be open');
  await sleep(3000); // every node has had a few check rounds after the connections opened
  const [a, b] = servers;
  const churn = clients.reduce((n, c) => n + c.moves.length, 0);
  const spreadOver = Object.fromEntries(servers.map((s) => [s.name, clients.filter((c) => c.server === s.name).length]));
  console.error(`spread ${spread}: sessions per server ${JSON.stringify(spreadOver)}, reconnects before the drain ${churn}`);

  // ---- drain: api-a not ready, still serving ----
  const onA = clients.filter((c) => c.server === a.name);
  const t0 = performance.now();
  a.child.kill('SIGTERM'); // /readyz 500 for the shutdown delay, everything else still served
  await until(() => onA.every((c) => c.moves.some((m) => m.closedAt >= t0)), DRAIN_TIMEOUT + spread + 30_000, 'api-a\'s sessions to move');
  const moves = onA.map((c) => c.moves.find((m) => m.closedAt >= t0));
  const back = moves.map((m) => m.backAt).sort((x, y) => x - y);
  const drain = {
    moved: onA.length,
    firstCloseS: (Math.min(...moves.map((m) => m.closedAt)) - t0) / 1000,
    lastCloseS: (Math.max(...moves.map((m) => m.closedAt)) - t0) / 1000,
    peakReconnectsPer1s: peak(back, 1000),
    peakReconnectsPer100ms: peak(back, 100),
  };

  // ---- down: api-b freezes (api-a still draining: everything moves to api-c) ----
  const onB = clients.filter((c) => c.server === b.name);
  const t1 = performance.now();
  b.stop();
  await until(() => onB.every((c) => c.moves.some((m) => m.closedAt >= t1)), 30_000, 'api-b\'s sessions to move');
  const mttr = onB.map((c) => (c.moves.find((m) => m.closedAt >= t1).backAt - t1) / 1000).sort((x, y) => x - y);
  const down = { affected: onB.length, mttrMedianS: median(mttr), mttrP95S: percentile(mttr, 95), mttrMaxS: mttr[mttr.length - 1] };

  for (const c of clients) c.stop();
  await Promise.all(nodes.map((n) => killChild(n.child)));
  await Promise.all(servers.map((s) => s.close()));
  return { spreadMs: spread, sessionsPerServer: spreadOver, reconnectsBeforeDrain: churn, drain, down };
}

const load = (await import('node:os')).loadavg().map((x) => x.toFixed(1)).join(' ');
const results = [];
for (const spread of SPREADS) {
  const r = await run(spread);
  results.push(r);
  console.log(JSON.stringify(r));
}

const f = (x, d = 1) => x.toFixed(d);
console.log(`\n${NODES} apilb × ${CONNS} sessions, 3 API servers, --drain-timeout ${DRAIN_TIMEOUT / 1000}s, health checks every 2 s, timeout 2 s; load average before: ${load}\n`);
console.log('| --close-spread | sessions moved | closes from → to (s after /readyz 500) | peak reconnects / 1 s | peak / 100 ms | down: affected | MTTR median | p95 | max |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const r of results) {
  const d = r.drain;
  const m = r.down;
  console.log(`| ${r.spreadMs / 1000} s | ${d.moved} | ${f(d.firstCloseS)} → ${f(d.lastCloseS)} | ${d.peakReconnectsPer1s} | ${d.peakReconnectsPer100ms} | ${m.affected} | ${f(m.mttrMedianS, 2)} s | ${f(m.mttrP95S, 2)} s | ${f(m.mttrMaxS, 2)} s |`);
}
process.exit(0);
