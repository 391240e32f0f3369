// npm run bench:footprint — apilb's memory (issue 18): RSS idle with 3 TLS API servers and the default HTTPS
// checks, and with N open connections, per runtime and per set of V8 flags. RSS is robust on a shared machine
// (CPU rates are not); about 35 s per configuration and round.
//
//   node bench/footprint.js [--node=host,bundled,/path/node (default: host,bundled)] [--flags='--a=1;--b --c']
//                           [--hold=9000] [--rounds=2] [--bare]
//   node bench/footprint.js --modules [--node=...]   RSS after importing each dependency alone
//
// apilb runs with the node flags and environment of the shipped launcher (packaging/apilb), or without them with
// `--bare`. `--flags` is a ';'-separated list of sets of node flags and NAME=value environment variables added to
// those ('' = nothing added, the default); every (node, set) pair is one row.
// Idle RSS is read after 10 s of health checks (5 check rounds at the 2 s default); the held-connection RSS 1 s
// after the last connection is up (each connection: one byte through apilb and one back, as in `npm run bench`).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, spawnTracked, killChild, atExit, sleep, median, readJsonLine, makeCA, childNoFile } from './lib.js';
import { launcherSettings, startApilb } from './targets.js';
import { resolveNode } from './runtime.js';

const argv = process.argv.slice(2);
const val = (n, d) => { const a = argv.find((x) => x.startsWith(`--${n}=`)); return a ? a.slice(n.length + 3) : d; };
const nodes = val('node', process.env.APILB_BENCH_NODE || 'host,bundled').split(',').map((c) => resolveNode(c));
const flagSets = val('flags', '').split(';').map((f) => f.split(' ').filter(Boolean));
const bare = argv.includes('--bare');
/** One set's node flags and environment (NAME=value words). */
const splitSet = (set) => ({ nodeArgs: set.filter((w) => !/^[A-Z_][A-Z0-9_]*=/.test(w)),
  env: Object.fromEntries(set.filter((w) => /^[A-Z_][A-Z0-9_]*=/.test(w)).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)])) });
const rounds = Number(val('rounds', 2));
const holdWanted = Number(val('hold', 9000));
const holdN = Math.min(holdWanted, Math.floor((childNoFile() - 200) / 2));
if (holdN < holdWanted) console.error(`fd limit: holding ${holdN} connections instead of ${holdWanted}`);

/** VmRSS, RssAnon, RssFile of one process in MB. */
function rss(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number((new RegExp(`${k}:\\s+(\\d+)`).exec(s) ?? [])[1]) / 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
}
const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '–');

if (argv.includes('--modules')) {
  // One fresh process per module, RSS read 0.5 s after the import; the first row (bare node) is the baseline.
  const mods = ['', 'zod', 'yaml', 'yargs', 'pino', 'prom-client', 'undici', 'undici/lib/dispatcher/client.js',
    join(ROOT, 'dist/daemon.js')];
  const script = `const m = process.argv[1]; if (m) await import(m.startsWith('/') ? 'file://' + m : m);
    await new Promise((r) => setTimeout(r, 500));
    const s = require('fs').readFileSync('/proc/self/status', 'utf8');
    console.log(Number(/VmRSS:\\s+(\\d+)/.exec(s)[1]) / 1024, process.memoryUsage().heapUsed / 1048576);`;
  console.log(`| module | ${nodes.map((n) => `RSS MB (heap used) ${n.version}`).join(' | ')} |`);
  console.log(`| --- |${nodes.map(() => ' ---: |').join('')}`);
  for (const m of mods) {
    const cells = nodes.map((n) => {
      const xs = [];
      for (let i = 0; i < 3; i++) {
        // --input-type=module with a require shim: the script needs top-level await and fs.
        const r = spawnSync(n.bin, ['--input-type=module', '-e', `import { createRequire } from 'node:module'; const require = createRequire('${ROOT}/'); ${script}`, m],
          { cwd: ROOT, encoding: 'utf8' });
        const [a, h] = r.stdout.trim().split(' ').map(Number);
        xs.push([a, h]);
      }
      return `${f1(median(xs.map((x) => x[0])))} (${f1(median(xs.map((x) => x[1])))})`;
    });
    console.log(`| ${m ? m.replace(ROOT + '/', '') : 'bare node'} | ${cells.join(' | ')} |`);
  }
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), 'apilb-footprint-'));
atExit(() => rmSync(dir, { recursive: true, force: true }));
const ca = await makeCA();
const server = ca.server();
const backend = spawnTracked(process.execPath, [join(ROOT, 'bench/backend.js'), '--count=3', `--cert=${server.certFile}`, `--key=${server.keyFile}`],
  { stdio: ['pipe', 'pipe', 'inherit'] });
const { ports: backends } = await readJsonLine(backend, (j) => j.ports);

async function hold(port, count) {
  const child = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify({ mode: 'hold', port, count, limit: 120 })],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  const r = await readJsonLine(child, (j) => j.ready || j.error, 90_000);
  return { ...r, release: async () => { child.stdin.end(); await killChild(child); } };
}

const results = [];
for (const node of nodes) {
  for (const flags of flagSets) {
    const m = { idle: [], held: [], after: [], anonIdle: [], fileIdle: [], anonHeld: [], failed: 0 };
    for (let r = 0; r < rounds; r++) {
      const t = await startApilb({ backends, dir, caFile: ca.certFile, ...splitSet(flags), bare, node: node.bin, name: `apilb-${results.length}-${r}` });
      await sleep(10_000);
      // The idle figure is meant with all three backends checked and up: say so when they are not.
      const ready = await fetch(`http://127.0.0.1:${t.admin}/readyz`).then((r) => r.text(), (e) => e.message);
      if (!/3\/3 backends up/.test(ready)) console.error(`warning: ${node.version} ${flags.join(' ')}: /readyz says ${ready.trim()}`);
      const i = rss(t.pid);
      m.idle.push(i.rss); m.anonIdle.push(i.anon); m.fileIdle.push(i.file);
      const h = await hold(t.port, holdN);
      m.failed += h.failed ?? 0;
      await sleep(1000);
      const hr = rss(t.pid);
      m.held.push(hr.rss); m.anonHeld.push(hr.anon);
      await h.release();
      await sleep(3000);
      m.after.push(rss(t.pid).rss);
      await t.stop();
    }
    const row = { node: node.version, flags: `${bare ? '--bare' : 'launcher'}${flags.length ? ' + ' + flags.join(' ') : ''}`, ...Object.fromEntries(
      Object.entries(m).map(([k, v]) => [k, Array.isArray(v) ? median(v) : v])) };
    results.push(row);
    console.error(JSON.stringify({ ...row, rounds: m }));
  }
}
backend.stdin.end();
await killChild(backend);

const shipped = launcherSettings();
console.log(`\nlauncher (packaging/apilb): node flags ${shipped.nodeArgs.join(' ') || 'none'}; environment ${Object.entries(shipped.env).map(([k, v]) => `${k}=${v}`).join(' ') || 'none'}`);
console.log(`\nRSS in MB, median of ${rounds} round(s); ${holdN.toLocaleString('en')} held connections; git ${spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()}\n`);
console.log(`| node | flags and environment | RSS idle (anon + file) | RSS with ${holdN.toLocaleString('en')} conns (anon) | per conn (KiB) | RSS after release |`);
console.log('| --- | --- | ---: | ---: | ---: | ---: |');
for (const r of results) {
  console.log(`| ${r.node} | ${r.flags} | ${f1(r.idle)} (${f1(r.anonIdle)} + ${f1(r.fileIdle)}) | ${f1(r.held)} (${f1(r.anonHeld)}) | ` +
    `${(((r.held - r.idle) * 1024) / holdN).toFixed(1)} | ${f1(r.after)}${r.failed ? ` (${r.failed} conns failed)` : ''} |`);
}
process.exit(0);
