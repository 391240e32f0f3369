// Profiles the bulk data path: apilb and the bare Node pipe proxy (same backend), each under --cpu-prof while
// N streams download for S seconds; prints both profile summaries and CPU s/GB.
// Usage: node bench/profile-bulk.js [streams=4] [seconds=5] [outdir=bench/profiles] [extra node flags...]
import { mkdtempSync, mkdirSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { ROOT, spawnTracked, killChild, readJsonLine, makeCA, cpuSeconds, sleep } from './lib.js';
import { startApilb, startNodePipe } from './targets.js';

const [streams = '4', seconds = '5', outdir = join(ROOT, 'bench/profiles'), ...flags] = process.argv.slice(2);
const dir = mkdtempSync(join(tmpdir(), 'apilb-prof-'));
const ca = await makeCA();
const server = ca.server();
const backend = spawnTracked(process.execPath, [join(ROOT, 'bench/backend.js'), '--count=3', `--cert=${server.certFile}`, `--key=${server.keyFile}`], { stdio: ['pipe', 'pipe', 'inherit'] });
const { ports } = await readJsonLine(backend, (j) => j.ports);
for (const name of (process.env.TARGETS ?? 'apilb,node-pipe,node-onread').split(',')) {
  const pdir = join(outdir, `bulk-${name}`);
  mkdirSync(pdir, { recursive: true });
  const nodeArgs = ['--cpu-prof', `--cpu-prof-dir=${pdir}`, ...flags];
  const t = name === 'apilb' ? await startApilb({ backends: ports, dir, caFile: ca.certFile, nodeArgs })
    : await startNodePipe({ backends: ports, dir, nodeArgs, name, script: name === 'node-onread' ? 'bench/pipe-proxy-onread.js' : 'bench/pipe-proxy.js' });
  await sleep(500);
  const c0 = cpuSeconds(t.pid);
  const lg = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify({ mode: 'bulk', port: t.port, streams: Number(streams), seconds: Number(seconds) })], { stdio: ['pipe', 'pipe', 'pipe'] });
  const r = await readJsonLine(lg, () => true, 60000);
  const cpu = cpuSeconds(t.pid) - c0;
  await t.stop('SIGTERM');
  await sleep(300);
  console.log(`\n=== ${name}: ${r.mbps.toFixed(0)} MB/s, ${(cpu / (r.total / 1e9)).toFixed(2)} CPU s/GB`);
  const files = readdirSync(pdir).filter((f) => f.endsWith('.cpuprofile')).sort();
  if (files.length) console.log(execFileSync(process.execPath, [join(ROOT, 'bench/profile-summary.js'), join(pdir, files.at(-1)), '18']).toString());
}
backend.stdin.end();
process.exit(0);
