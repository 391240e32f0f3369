// node bench/scale.js — fleet-scale simulation for docs/scale.md, loopback only, about a minute.
// 1) API-server-side CPU of health checks from --nodes (default 1000) nodes at --interval (default 2000 ms),
//    one check per node per interval against one API-server stand-in (src/demo fake-apiserver, its own process):
//    apilb-style (kept-alive TLS, one GET /readyz per check) vs HAProxy-style (new TCP + TLS handshake per check,
//    with and without TLS session resumption) vs plain TCP connect checks; extrapolated to 5,000 nodes × 3 API servers.
// 2) Reconnect storm: when one of 3 API servers dies, the connections it held (--nodes × --conns-per-node / 3)
//    reconnect to the 2 survivors, all at once (no jitter) or spread over --spread ms (jittered detection):
//    connection rate and latency the survivors see.
// Options: --nodes N · --interval MS · --seconds S (per check style, default 8) · --conns-per-node N (default 3) · --quick
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { ROOT, spawnTracked, killChild, atExit, readJsonLine, makeCA, cpuSeconds, rssMB, sleep } from './lib.js';

const argv = process.argv.slice(2);
const val = (n, d) => { const i = argv.indexOf(`--${n}`); return i >= 0 && argv[i + 1] ? Number(argv[i + 1]) : d; };
const quick = argv.includes('--quick');
const nodes = val('nodes', 1000);
const intervalMs = val('interval', 2000);
const seconds = val('seconds', quick ? 3 : 8);
const connsPerNode = val('conns-per-node', 3);
const spread = val('spread', 2000);
setTimeout(() => { console.error('scale: hard time limit'); process.exit(3); }, 8 * 60_000).unref();

const dir = mkdtempSync(join(tmpdir(), 'apilb-scale-'));
atExit(() => rmSync(dir, { recursive: true, force: true }));
const ca = await makeCA();
const leaf = ca.server('kube-apiserver');
writeFileSync(join(dir, 'ca.crt'), ca.cert);
writeFileSync(join(dir, 'apiserver.crt'), leaf.cert);
writeFileSync(join(dir, 'apiserver.key'), leaf.key);

async function apiserver(name) {
  const child = spawnTracked(process.execPath, [join(ROOT, 'dist/demo/fake-apiserver-main.js'), '--ca-dir', dir, '--port', '0', '--name', name],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  const { port } = await readJsonLine(child, (j) => j.port, 15000);
  return { child, port, pid: child.pid };
}
function client(opts) {
  return spawnTracked(process.execPath, [join(ROOT, 'bench/scale-client.js'), JSON.stringify({ ...opts, ca: join(dir, 'ca.crt') })],
    { stdio: ['pipe', 'pipe', 'pipe'] });
}

// ---- 1: health-check cost ---------------------------------------------------------------------------------------
const checkRows = [];
for (const style of ['keepalive', 'resume', 'handshake', 'tcp']) {
  const srv = await apiserver('apiserver-0');
  await sleep(300);
  const rss0 = rssMB(srv.pid);
  const c = client({ mode: 'checks', port: srv.port, nodes, intervalMs, seconds, style });
  const lines = [];
  c.stdout.setEncoding('utf8');
  let buf = '';
  const got = new Promise((resolve) => c.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) { const j = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1); lines.push(j); if (lines.length === 1) resolve(); }
  }));
  await got; // measuring started
  const cpu0 = cpuSeconds(srv.pid);
  const cl0 = cpuSeconds(c.pid);
  const w0 = Date.now();
  const res = await new Promise((resolve) => { const t = setInterval(() => { if (lines.length > 1) { clearInterval(t); resolve(lines[1]); } }, 20); });
  const secs = (Date.now() - w0) / 1000;
  const cpu = cpuSeconds(srv.pid) - cpu0;
  const clientCpu = cpuSeconds(c.pid) - cl0;
  const rss = rssMB(srv.pid);
  await killChild(c);
  await killChild(srv.child, 'SIGKILL');
  const perCheckMs = (cpu / res.checks) * 1000;
  checkRows.push({ style, checks: res.checks, rate: res.rate, expected: nodes / (intervalMs / 1000), errors: res.errors,
    serverCores: cpu / secs, perCheckMs, p50: res.p50, p99: res.p99, clientCores: clientCpu / secs, rssDelta: rss - rss0,
    fleetCores: perCheckMs / 1000 * (5000 / (intervalMs / 1000)) });
  console.error(`checks ${style}: ${res.rate.toFixed(0)}/s, server ${(cpu / secs).toFixed(3)} cores, ${perCheckMs.toFixed(3)} ms CPU/check`);
}

// ---- 2: reconnect storm -----------------------------------------------------------------------------------------
const stormRows = [];
const moving = Math.round((nodes * connsPerNode) / 3);
for (const spreadMs of [0, spread]) {
  const survivors = [await apiserver('apiserver-1'), await apiserver('apiserver-2')];
  await sleep(300);
  const cpu0 = survivors.reduce((a, s) => a + cpuSeconds(s.pid), 0);
  const w0 = Date.now();
  const c = client({ mode: 'storm', ports: survivors.map((s) => s.port), conns: moving, spreadMs });
  const r = await readJsonLine(c, () => true, 120_000);
  const cpu = survivors.reduce((a, s) => a + cpuSeconds(s.pid), 0) - cpu0;
  await killChild(c);
  for (const s of survivors) await killChild(s.child, 'SIGKILL');
  stormRows.push({ spreadMs, moving, ...r, peakRate: r.peakPer100ms * 10, survivorCpu: cpu, wall: (Date.now() - w0) / 1000 });
  console.error(`storm spread ${spreadMs} ms: peak ${r.peakPer100ms * 10}/s, p99 ${r.p99?.toFixed(1)} ms, errors ${r.errors}`);
}

// ---- report -----------------------------------------------------------------------------------------------------
const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '–');
const names = { keepalive: 'apilb: kept-alive TLS, GET /readyz', resume: 'new TCP + resumed TLS + GET', handshake: 'new TCP + full TLS handshake + GET', tcp: 'TCP connect only' };
const t1 = ['| check style | checks/s done (target) | API-server CPU, cores | CPU per check (ms) | p50 / p99 check latency (ms) | API-server RSS growth (MB) | extrapolated: cores per API server at 5,000 nodes |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...checkRows.map((r) => `| ${names[r.style]} | ${f(r.rate, 0)} (${f(r.expected, 0)}) | ${f(r.serverCores, 3)} | ${f(r.perCheckMs, 3)} | ${f(r.p50, 1)} / ${f(r.p99, 1)} | ${f(r.rssDelta, 1)} | ${f(r.fleetCores, 2)} |`)].join('\n');
const t2 = ['| reconnects spread over | connections moved | peak rate at survivors (conn/s, 100 ms buckets) | p50 / p99 connect+first response (ms) | all done after (ms) | errors | survivors CPU (s) |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...stormRows.map((r) => `| ${r.spreadMs ? `${r.spreadMs} ms (jitter)` : '0 (all at once)'} | ${r.moving} | ${r.peakRate} | ${f(r.p50, 1)} / ${f(r.p99, 1)} | ${f(r.lastMs, 0)} | ${r.errors} | ${f(r.survivorCpu, 2)} |`)].join('\n');
const text = `Measured ${new Date().toISOString()} on ${cpus().length} × ${cpus()[0]?.model}, node ${process.version}: \`node bench/scale.js${argv.length ? ' ' + argv.join(' ') : ''}\`
(${nodes} simulated nodes, check interval ${intervalMs} ms, ${seconds} s per style; the load generator is one Node process
on the same machine).

${t1}

${t2}
`;
console.log('\n' + text);
writeFileSync(join(ROOT, 'bench/SCALE-RESULTS.md'), `# Fleet-scale simulation (bench/scale.js)\n\n${text}\n\`\`\`json\n${JSON.stringify({ checkRows, stormRows }, null, 1)}\n\`\`\`\n`);
process.exit(0);
