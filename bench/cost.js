// CPU cost per unit of work, the robust figure on a shared machine: runs short phases against each target,
// interleaved over several rounds (rotating order), and prints medians of CPU s per GB (download, upload),
// per 100k kept-alive HTTPS requests and per 100k new connections, with rates and p99, plus idle CPU.
// Faster and narrower than `npm run bench` (no nginx, no open-connection RSS points): for before/after checks
// of one change.
// Usage: node bench/cost.js [--targets apilb,haproxy,node-pipe] [--modes idle,bulk1,upload1,paced1,ka,nc] [--rounds 3]
//          [--seconds 3] [--node bundled|host|PATH] [--node-args='--flag ...'] [--apilb-args='--flag ...']
//          [--cpu-prof DIR]   (apilb under --cpu-prof, profiles in DIR)
//        targets: apilb, apilb@DIR (the build in DIR, e.g. a copy of an older dist/ in bench/.work/), haproxy,
//          node-pipe, apilb-bare (bench/bare-dataproxy.js)
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, spawnTracked, killChild, readJsonLine, makeCA, cpuSeconds, sleep, median } from './lib.js';
import { startApilb, startNodePipe, startHaproxy } from './targets.js';
import { resolveNode } from './runtime.js';

const argv = process.argv.slice(2);
const opt = (n, d) => {
  const eq = argv.find((a) => a.startsWith(`--${n}=`));
  if (eq) return eq.slice(n.length + 3);
  const i = argv.indexOf(`--${n}`);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : d;
};
const words = (s) => s.split(' ').filter(Boolean);
const targetNames = opt('targets', 'apilb,haproxy,node-pipe').split(',');
const modes = opt('modes', 'idle,bulk1,upload1,ka,nc').split(',');
const rounds = Number(opt('rounds', '3'));
const seconds = Number(opt('seconds', '3'));
const node = resolveNode(opt('node', 'bundled')).bin;
const nodeArgs = words(opt('node-args', ''));
const apilbArgs = words(opt('apilb-args', ''));
const profDir = opt('cpu-prof', '');

const dir = mkdtempSync(join(tmpdir(), 'apilb-cost-'));
const ca = await makeCA();
const server = ca.server();
const backend = spawnTracked(process.execPath, [join(ROOT, 'bench/backend.js'), '--count=3', `--cert=${server.certFile}`, `--key=${server.keyFile}`],
  { stdio: ['pipe', 'pipe', 'inherit'] });
const { ports } = await readJsonLine(backend, (j) => j.ports);

const targets = [];
for (const name of targetNames) {
  if (name === 'apilb' || name.startsWith('apilb@')) {
    // apilb@DIR: the build in DIR (a copy of dist/ from another commit, kept under the worktree so that
    // node_modules resolves), measured in the same rounds as this one: an A/B comparison sharing the noise.
    const cli = name === 'apilb' ? undefined : join(resolve(name.slice(6)), 'cli.js');
    if (profDir) mkdirSync(profDir, { recursive: true });
    const prof = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [];
    const label = cli ? `apilb@${basename(name.slice(6))}` : name;
    targets.push(await startApilb({ backends: ports, dir, caFile: ca.certFile, node, nodeArgs: [...nodeArgs, ...prof], extraArgs: apilbArgs, name: label, ...(cli ? { cli } : {}) }));
  } else if (name === 'haproxy') targets.push(await startHaproxy({ backends: ports, dir, maxconn: 9950 }));
  else {
    const script = { 'node-pipe': 'bench/pipe-proxy.js', 'apilb-bare': 'bench/bare-dataproxy.js' }[name];
    targets.push(await startNodePipe({ backends: ports, dir, name, node, nodeArgs, script }));
  }
}

async function loadgen(o) {
  const child = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify(o)], { stdio: ['pipe', 'pipe', 'pipe'] });
  try { return await readJsonLine(child, () => true, 120_000); } finally { await killChild(child); }
}

function wrk(port, newConn) {
  const r = spawnSync('wrk', ['-t1', '-c4', `-d${seconds}s`, '--latency', ...(newConn ? ['-H', 'Connection: close'] : []),
    `https://127.0.0.1:${port}/api/v1/nodes/node-1`], { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  const text = r.stdout;
  const unit = { us: 1e-3, ms: 1, s: 1000 };
  const lat = (p) => { const m = new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s)`).exec(text); return m ? Number(m[1]) * unit[m[2]] : NaN; };
  return { total: Number((/(\d+) requests in/.exec(text) ?? [])[1]), rate: Number((/Requests\/sec:\s+([\d.]+)/.exec(text) ?? [])[1]), p99: lat(99) };
}

const results = {};
const push = (t, k, v) => { ((results[t] ??= {})[k] ??= []).push(v); };
for (let r = 0; r < rounds; r++) {
  const order = targets.map((_, i) => targets[(i + r) % targets.length]);
  console.error(`round ${r + 1}/${rounds}: ${order.map((t) => t.name).join(' → ')}`);
  for (const t of order) {
    for (const mode of modes) {
      const c0 = cpuSeconds(t.pid);
      if (mode === 'idle') {
        const w0 = Date.now();
        await sleep(seconds * 1000);
        push(t.name, 'idle %core', (100 * (cpuSeconds(t.pid) - c0)) / ((Date.now() - w0) / 1000));
      } else if (mode === 'bulk1' || mode === 'upload1' || mode === 'paced1') {
        const b = await loadgen({ mode: mode === 'upload1' ? 'upload' : 'bulk', port: t.port, streams: 1, seconds, warmup: 0.5, paced: mode === 'paced1' });
        push(t.name, `${mode} MB/s`, b.mbps);
        push(t.name, `${mode} CPU s/GB`, (cpuSeconds(t.pid) - c0) / (b.total / 1e9));
      } else if (mode === 'ka' || mode === 'nc') {
        const w = wrk(t.port, mode === 'nc');
        push(t.name, `${mode} /s`, w.rate);
        push(t.name, `${mode} p99 ms`, w.p99);
        push(t.name, `${mode} CPU s/100k`, (cpuSeconds(t.pid) - c0) / (w.total / 1e5));
      }
    }
  }
}
for (const t of targets) await t.stop('SIGTERM');
backend.stdin.end();

const keys = [...new Set(Object.values(results).flatMap((o) => Object.keys(o)))];
const names = targets.map((t) => t.name);
const rows = [['metric (median)', ...names, ...names.filter((n) => n !== 'haproxy' && results.haproxy).map((n) => `${n}/haproxy`)]];
for (const k of keys) {
  const med = names.map((n) => median(results[n]?.[k] ?? []));
  const h = median(results.haproxy?.[k] ?? []);
  rows.push([k, ...med.map((v) => v.toFixed(k.includes('/s') && !k.includes('s/') ? 0 : 3)),
    ...names.filter((n) => n !== 'haproxy' && results.haproxy).map((n) => `${(median(results[n][k]) / h).toFixed(2)}×`)]);
}
const w = rows[0].map((_, i) => Math.max(...rows.map((row) => String(row[i]).length)));
console.log(rows.map((row) => row.map((c, i) => (i ? String(c).padStart(w[i]) : String(c).padEnd(w[i]))).join('  ')).join('\n'));
console.log(`load ${spawnSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).stdout.trim()}; raw: ${JSON.stringify(results)}`);
process.exit(0);
