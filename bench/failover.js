// npm run bench:failover — what a kubelet-like client sees when one of three API servers fails, through
// apilb (defaults), HAProxy with kubeadm's documented config (with and without on-marked-down
// shutdown-sessions) and nginx with kubespray's config. Scenarios: crash (SIGKILL), hang (SIGSTOP), blackhole
// (packets to/from the server dropped), graceful shutdown (SIGTERM: /readyz 500 for 3 s, then close), recovery
// (crash, then restart on the same port).
//
// The client: GETs every 50 ms over 2 kept-alive TLS connections (5 s timeout), a new TLS connection every
// 100 ms (3 s timeout), and 6 watches. Measured per run: failed requests, the time from the fault to the last
// failure, the time until every watch stuck on the failed server is released, and (recovery) the time from the
// restart until a new connection reaches the restarted server.
//
// As root the whole benchmark re-executes itself in a network namespace it creates (private loopback; the
// blackhole is an nftables drop rule there). Options: --cap SECONDS (longest wait for a stuck watch, default 38:
// above the 35 s timeout of the kubeadm HAProxy config) · --scenarios a,b · --lbs a,b · --no-netns · --quick.
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { ROOT, spawnTracked, killChild, atExit, sleep, readJsonLine, makeCA, waitFor, median } from './lib.js';
import { startApilb, startHaproxy, startNginx, apilbAvailable, haveNginxStream } from './targets.js';

const argv = process.argv.slice(2);
const flag = (n) => argv.includes(`--${n}`);
const val = (n, d) => { const i = argv.indexOf(`--${n}`); return i >= 0 && argv[i + 1] ? argv[i + 1] : d; };
const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

// ---- network namespace wrapper --------------------------------------------------------------------------------
if (!process.env.APILB_BENCH_NETNS && !flag('no-netns')) {
  const ns = `apilb-bench-${process.pid}`;
  const ok = process.getuid?.() === 0 && have('ip')
    && spawnSync('ip', ['netns', 'add', ns]).status === 0
    && spawnSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']).status === 0;
  if (ok) {
    const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, process.argv[1], ...argv],
      { stdio: 'inherit', env: { ...process.env, APILB_BENCH_NETNS: ns }, timeout: 15 * 60_000, killSignal: 'SIGINT' });
    spawnSync('ip', ['netns', 'del', ns]);
    process.exit(r.status ?? 1);
  }
  spawnSync('ip', ['netns', 'del', ns]);
  console.error(`\n!!! could not create a network namespace (need root and iproute2): running on the host loopback, blackhole skipped\n`);
}

const quick = flag('quick');
const CAP = Number(val('cap', quick ? 12 : 38)) * 1000;
const RECOVERY_CAP = 25_000;
const nftOk = !!process.env.APILB_BENCH_NETNS && (have('nft') || installNft());
const scenarios = val('scenarios', 'crash,hang,blackhole,graceful,recovery').split(',')
  .filter((s) => s !== 'blackhole' || nftOk || (console.error('\n!!! blackhole skipped: needs root, a network namespace and nft\n'), false));
const warnings = [];
const t0 = Date.now();
setTimeout(() => { console.error('bench:failover: hard time limit reached'); process.exit(3); }, 14 * 60_000).unref();

function installNft() {
  if (process.getuid?.() !== 0 || !have('apt-get')) return false;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'nftables'], { stdio: 'ignore', env, timeout: 300_000 });
  return have('nft');
}

// ---- backends: the fake kube-apiserver (src/demo) as processes ---------------------------------------------------
const mainJs = join(ROOT, 'dist/demo/fake-apiserver-main.js');
if (!existsSync(mainJs)) { console.error(`${mainJs} missing: run npm run build`); process.exit(2); }
const dir = mkdtempSync(join(tmpdir(), 'apilb-failover-'));
atExit(() => rmSync(dir, { recursive: true, force: true }));
const ca = await makeCA();
const serverCert = ca.server('kube-apiserver');
const clientCert = ca.client ? ca.client('system:node:node-1', 'system:nodes') : undefined;
writeFileSync(join(dir, 'ca.crt'), ca.cert);
writeFileSync(join(dir, 'apiserver.crt'), serverCert.cert);
writeFileSync(join(dir, 'apiserver.key'), serverCert.key);

async function startApiServer(name, port = 0) {
  const child = spawnTracked(process.execPath, [mainJs, '--ca-dir', dir, '--port', String(port), '--name', name,
    '--shutdown-delay-ms', '3000', '--watch-interval-ms', '1000'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const { port: p } = await readJsonLine(child, (j) => j.port, 15000);
  return { name, port: p, child };
}

function nft(args) {
  const r = spawnSync('nft', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nft ${args.join(' ')}: ${r.stderr}`);
}
function blackhole(port) {
  nft(['add', 'table', 'inet', 'apilbbh']);
  nft(['add', 'chain', 'inet', 'apilbbh', 'out', '{ type filter hook output priority 0; }']);
  nft(['add', 'rule', 'inet', 'apilbbh', 'out', 'tcp', 'dport', String(port), 'drop']);
  nft(['add', 'rule', 'inet', 'apilbbh', 'out', 'tcp', 'sport', String(port), 'drop']);
}
function unblackhole() { spawnSync('nft', ['delete', 'table', 'inet', 'apilbbh']); }
if (nftOk) atExit(unblackhole);

// ---- the kubelet-like client ------------------------------------------------------------------------------------
function tlsOpts() {
  return { ca: ca.cert, servername: 'kubernetes', ...(clientCert ? { cert: clientCert.cert, key: clientCert.key } : {}) };
}

const inflight = new Set();
/** One GET; resolves {ok, server, ms, err}. Never rejects. */
function get(port, path, agent, timeoutMs) {
  return new Promise((resolve) => {
    const start = Date.now();
    let done = false;
    const finish = (r) => { if (!done) { done = true; clearTimeout(timer); resolve({ ...r, t: start, ms: Date.now() - start }); } };
    const req = https.request({ host: '127.0.0.1', port, path, agent, ...tlsOpts() }, (res) => {
      res.on('data', () => {});
      res.on('end', () => finish({ ok: res.statusCode === 200, server: res.headers['x-apiserver-name'], err: res.statusCode === 200 ? undefined : `HTTP ${res.statusCode}` }));
      res.on('error', (e) => finish({ ok: false, err: e.code ?? e.message }));
    });
    const timer = setTimeout(() => { req.destroy(new Error('timeout')); finish({ ok: false, err: 'timeout' }); }, timeoutMs);
    req.on('error', (e) => finish({ ok: false, err: e.code ?? e.message }));
    inflight.add(req);
    req.on('close', () => inflight.delete(req));
    req.end();
  });
}

class Client {
  constructor(port) {
    this.port = port;
    this.kept = [];    // results of the kept-alive request loop
    this.fresh = [];   // results of the new-connection prober
    this.watches = []; // {server, openedAt, releasedAt, how}
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 2, ...tlsOpts() });
    this.timers = [];
    this.pending = new Set();
  }
  start() {
    this.timers.push(setInterval(() => this.track(get(this.port, '/whoami', this.agent, 5000).then((r) => this.kept.push(r))), 50));
    this.timers.push(setInterval(() => this.track(get(this.port, '/whoami', false, 3000).then((r) => this.fresh.push(r))), 100));
  }
  track(p) { this.pending.add(p); p.finally(() => this.pending.delete(p)); }
  openWatches(n) {
    for (let i = 0; i < n; i++) {
      const w = { server: undefined, openedAt: Date.now(), releasedAt: undefined, how: undefined, lastEventAt: undefined };
      this.watches.push(w);
      const req = https.request({ host: '127.0.0.1', port: this.port, path: '/api/v1/namespaces/default/pods?watch=true', agent: false, ...tlsOpts() }, (res) => {
        w.server = res.headers['x-apiserver-name'];
        res.on('data', () => { w.lastEventAt = Date.now(); });
        res.on('end', () => release('end'));
        res.on('error', () => release('error'));
        res.on('close', () => release('close'));
      });
      const release = (how) => { if (w.releasedAt === undefined) { w.releasedAt = Date.now(); w.how = how; } };
      req.on('error', () => release('error'));
      w.req = req;
      req.end();
    }
  }
  async stop() {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    for (const w of this.watches) w.req.destroy();
    for (const r of inflight) r.destroy();
    this.agent.destroy();
    await Promise.race([Promise.allSettled([...this.pending]), sleep(2000)]);
  }
}

// ---- load balancers -------------------------------------------------------------------------------------------
const LBS = {
  apilb: (backends) => startApilb({ backends, dir, caFile: join(dir, 'ca.crt'), name: 'apilb' }),
  'haproxy-kubeadm': (backends) => startHaproxy({ backends, dir, name: 'haproxy-kubeadm', variant: 'kubeadm', maxconn: 4000 }),
  'haproxy-kubeadm+shutdown-sessions': (backends) => startHaproxy({ backends, dir, name: 'haproxy-kubeadm-ss', variant: 'kubeadm-shutdown', maxconn: 4000 }),
  'nginx-kubespray': (backends) => startNginx({ backends, dir, name: 'nginx-kubespray', variant: 'kubespray', connections: 16384 }),
};
const lbNames = val('lbs', Object.keys(LBS).join(',')).split(',').filter((n) => {
  if (!LBS[n]) { warnings.push(`unknown lb ${n}`); return false; }
  if (n === 'apilb' && !apilbAvailable()) { warnings.push('apilb: dist/cli.js run not available, skipped'); return false; }
  if (n.startsWith('haproxy') && !have('haproxy')) { warnings.push(`${n}: haproxy not installed, skipped (npm run bench installs it)`); return false; }
  if (n.startsWith('nginx') && !(have('nginx') && haveNginxStream())) { warnings.push(`${n}: nginx stream not installed, skipped`); return false; }
  return true;
});

// ---- one run ----------------------------------------------------------------------------------------------------
async function runOne(lbName, scenario) {
  const servers = [];
  const tStart = Date.now();
  let lb;
  let client;
  try {
    for (let i = 0; i < 3; i++) servers.push(await startApiServer(`apiserver-${i}`));
    lb = await LBS[lbName](servers.map((s) => s.port));
    client = new Client(lb.port);
    client.start();
    // Warm-up: every server reachable through the LB (bounded), then the watches.
    const tw = Date.now();
    // (kept and fresh together: with least_conn the server holding a kept-alive connection gets no new ones)
    await waitFor(() => new Set([...client.kept, ...client.fresh].filter((r) => r.ok).map((r) => r.server)).size === 3, { timeout: 15000, interval: 100 });
    if (process.env.BENCH_DEBUG) console.error('warm-up', Date.now() - tw, 'ms', client.fresh.length, JSON.stringify(client.fresh.slice(0, 5)));
    client.openWatches(6);
    await waitFor(() => client.watches.every((w) => w.server), { timeout: 5000 });
    await sleep(1000);
    // The victim: a server carrying one of the kept-alive request connections (as a kubelet's one connection
    // carries its requests) and, among those, the most watches (so there is a stream to get stuck).
    const keptOn = new Set(client.kept.slice(-20).filter((r) => r.ok).map((r) => r.server));
    const count = (s) => client.watches.filter((w) => w.server === s.name && w.releasedAt === undefined).length + (keptOn.has(s.name) ? 100 : 0);
    const victim = [...servers].sort((a, b) => count(b) - count(a))[0];
    const victimWatches = client.watches.filter((w) => w.server === victim.name && w.releasedAt === undefined);
    if (process.env.BENCH_DEBUG) console.error('watches', JSON.stringify(client.watches.map((w) => [w.server, w.releasedAt])), 'victim', victim.name);
    const preFailures = client.kept.filter((r) => !r.ok).length + client.fresh.filter((r) => !r.ok).length;

    const tFault = Date.now();
    const setup = (tFault - tStart) / 1000;
    let tRestart;
    if (scenario === 'crash' || scenario === 'recovery') victim.child.kill('SIGKILL');
    else if (scenario === 'hang') victim.child.kill('SIGSTOP');
    else if (scenario === 'blackhole') blackhole(victim.port);
    else if (scenario === 'graceful') victim.child.kill('SIGTERM');

    if (scenario === 'recovery') {
      await new Promise((r) => victim.child.once('exit', r).exitCode !== null && r());
      await sleep(6000); // long enough for every LB to have marked it down
      const again = await startApiServer(victim.name, victim.port);
      servers.push(again);
      tRestart = Date.now();
      await waitFor(() => client.fresh.some((r) => r.ok && r.server === victim.name && r.t >= tRestart), { timeout: RECOVERY_CAP, interval: 50 });
    } else {
      // Until every stuck watch is released and failures have stopped for 2 s, at least 4 s, at most CAP.
      const deadline = tFault + CAP;
      while (Date.now() < deadline) {
        const released = victimWatches.every((w) => w.releasedAt !== undefined);
        const lastFail = Math.max(0, ...[...client.kept, ...client.fresh].filter((r) => !r.ok && r.t + r.ms >= tFault).map((r) => r.t + r.ms));
        if (released && Date.now() - tFault > 4000 && Date.now() - Math.max(lastFail, tFault) > 2000) break;
        await sleep(100);
      }
    }
    const tEnd = Date.now();
    await client.stop();
    const after = (rs) => rs.filter((r) => r.t + r.ms >= tFault && r.t + r.ms <= tEnd);
    const keptF = after(client.kept).filter((r) => !r.ok);
    const freshF = after(client.fresh).filter((r) => !r.ok);
    const lastFailAt = Math.max(...[...keptF, ...freshF].map((r) => r.t + r.ms), -Infinity);
    const releaseTimes = victimWatches.map((w) => (w.releasedAt === undefined ? Infinity : w.releasedAt - tFault));
    const recovered = tRestart ? client.fresh.find((r) => r.ok && r.server === victim.name && r.t >= tRestart) : undefined;
    const errs = {};
    for (const r of [...keptF, ...freshF]) errs[r.err] = (errs[r.err] ?? 0) + 1;
    return {
      lb: lbName, scenario,
      keptFailed: keptF.length, keptTotal: after(client.kept).length,
      freshFailed: freshF.length, freshTotal: after(client.fresh).length,
      errorWindow: Number.isFinite(lastFailAt) ? (lastFailAt - tFault) / 1000 : 0,
      watchesOnVictim: victimWatches.length,
      watchRelease: releaseTimes.length ? Math.max(...releaseTimes) / 1000 : NaN,
      watchReleaseHow: [...new Set(victimWatches.map((w) => w.how ?? 'stuck'))].join('/'),
      recovery: tRestart ? (recovered ? (recovered.t + recovered.ms - tRestart) / 1000 : Infinity) : undefined,
      observed: (tEnd - tFault) / 1000, setup,
      preFailures, errors: errs,
    };
  } finally {
    if (client) await client.stop().catch(() => {});
    if (scenario === 'blackhole') unblackhole();
    if (lb) await lb.stop('SIGKILL');
    for (const s of servers) { try { s.child.kill('SIGCONT'); } catch { /* gone */ } await killChild(s.child, 'SIGKILL'); }
  }
}

// ---- main -------------------------------------------------------------------------------------------------------
console.error(`failover benchmark: ${lbNames.join(', ')} × ${scenarios.join(', ')} (stuck-watch cap ${CAP / 1000} s)` +
  (process.env.APILB_BENCH_NETNS ? ` in netns ${process.env.APILB_BENCH_NETNS}` : ''));
const results = [];
for (const scenario of scenarios) {
  for (const lbName of lbNames) {
    process.stderr.write(`  ${scenario} · ${lbName} ... `);
    try {
      const r = await runOne(lbName, scenario);
      results.push(r);
      process.stderr.write(`failed ${r.keptFailed}+${r.freshFailed}, window ${r.errorWindow.toFixed(1)} s, watch ${fmtS(r.watchRelease)}` +
        (r.recovery !== undefined ? `, recovery ${fmtS(r.recovery)}` : '') + ` (setup ${r.setup.toFixed(1)} s, observed ${r.observed.toFixed(1)} s, total ${Math.round((Date.now() - t0) / 1000)} s)\n`);
    } catch (e) {
      process.stderr.write(`ERROR ${e.message}\n`);
      results.push({ lb: lbName, scenario, error: e.message });
    }
  }
}

function fmtS(s) { return s === undefined ? '' : Number.isNaN(s) ? 'n/a' : s === Infinity ? `> ${CAP / 1000} s` : `${s.toFixed(1)} s`; }
const fmtWin = (r) => (r.keptFailed + r.freshFailed ? `${r.errorWindow.toFixed(1)} s` : 'no errors');
const METRICS = [
  ['failed requests: kept-alive / new-connection', (r) => `${r.keptFailed}/${r.keptTotal} · ${r.freshFailed}/${r.freshTotal}`],
  ['last failure after the fault', fmtWin],
  ['stuck watch released after', (r) => (r.watchesOnVictim ? (r.watchRelease === Infinity ? `never (> ${CAP / 1000} s)` : `${r.watchRelease.toFixed(1)} s`) : 'n/a'), (s) => s !== 'recovery'],
  ['restarted server gets traffic after', (r) => (r.recovery === Infinity ? `> ${RECOVERY_CAP / 1000} s` : `${r.recovery.toFixed(1)} s`), (s) => s === 'recovery'],
];
const header = ['scenario', 'what the client sees', ...lbNames];
const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => ' --- ').join('|')}|`];
for (const s of scenarios) {
  for (const [label, get, when] of METRICS) {
    if (when && !when(s)) continue;
    lines.push(`| ${s} | ${label} | ${lbNames.map((l) => {
      const r = results.find((x) => x.lb === l && x.scenario === s);
      return !r ? '–' : r.error ? `error: ${r.error.slice(0, 60)}` : get(r);
    }).join(' | ')} |`);
  }
}
const md = lines.join('\n');
console.log('\n' + md + '\n');
for (const w of warnings) console.log('WARNING: ' + w);

const out = join(ROOT, 'bench/FAILOVER.md');
if (!flag('no-write')) {
  writeFileSync(out, `# apilb failover benchmark (MTTR as a kubelet-like client sees it)

Generated by \`bench/failover.js\` (\`npm run bench:failover${argv.length ? ' -- ' + argv.join(' ') : ''}\`), ${new Date().toISOString()},
${cpus().length} CPUs (${cpus()[0]?.model}), node ${process.version}, ${(/HAProxy version (\S+)/.exec(spawnSync('haproxy', ['-v'], { encoding: 'utf8' }).stdout ?? '') ?? [])[1]?.replace(/^/, 'HAProxy ') ?? 'haproxy absent'}, ${(spawnSync('nginx', ['-v'], { encoding: 'utf8' }).stderr ?? '').trim() || 'nginx absent'}${process.env.APILB_BENCH_NETNS ? ', in a private network namespace' : ''}.

Three fake kube-apiservers (\`src/demo/fake-apiserver\`, each its own process, TLS, \`--shutdown-delay-ms 3000\`)
behind each load balancer. The client, through the LB: GET /whoami every 50 ms on 2 kept-alive TLS connections
(5 s timeout), a new TLS connection every 100 ms (3 s timeout), 6 watches. 1 s after everything is up, the server
fails that carries one of the kept-alive connections (and the most watches). "last failure after the fault" =
time from the fault to the end of the last failed request; "stuck watch released" = time until the last watch
on the failed server ended (then a client can re-watch elsewhere); "restarted server gets traffic" = time from
the restart until a new connection reaches it.

- crash: SIGKILL · hang: SIGSTOP (the kernel still accepts connections) · blackhole: nftables drops every packet
  to and from its port · graceful: SIGTERM (/readyz 500 for 3 s, then the listener closes, watches end) ·
  recovery: SIGKILL, 6 s later restarted on the same port.
- apilb: defaults (\`--ca-file\` for its HTTPS /readyz checks). HAProxy: the kubeadm HA documentation config
  (HTTPS GET /healthz checks, inter 2s fall 3 rise 2, timeout client/server 35s), also with
  \`on-marked-down shutdown-sessions\`. nginx: kubespray's nginx-proxy stream config (least_conn, passive
  max_fails=1 fail_timeout=10s, proxy_connect_timeout 1s, proxy_timeout 5m).

${md}

${warnings.map((w) => `**Warning:** ${w}\n`).join('')}
Raw results:

\`\`\`json
${JSON.stringify(results, null, 1)}
\`\`\`
`);
  console.log(`wrote ${out}`);
}
process.exit(0);
