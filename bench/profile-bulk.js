// Profiles the data path: apilb and the bare Node pipe proxies (same backend), each under --cpu-prof while
// N streams download for S seconds (MODE=bulk, default), or wrk makes HTTPS requests over N kept-alive
// connections (MODE=keepalive) or a new connection per request (MODE=newconn); prints each profile summary and
// the CPU cost per GB / per 100k requests. TARGETS=apilb,apilb-bare,node-pipe,node-onread picks the proxies.
// Usage: [MODE=bulk|keepalive|newconn] node bench/profile-bulk.js [streams=4] [seconds=5] [outdir=bench/profiles] [node flags...]
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
  const nodeArgs = [...(process.env.NOPROF ? [] : ['--cpu-prof', `--cpu-prof-dir=${pdir}`]), ...flags];
  const t = name === 'apilb' ? await startApilb({ backends: ports, dir, caFile: ca.certFile, nodeArgs })
    : await startNodePipe({ backends: ports, dir, nodeArgs, name,
      script: { 'node-onread': 'bench/pipe-proxy-onread.js', 'apilb-bare': 'bench/bare-dataproxy.js' }[name] ?? 'bench/pipe-proxy.js' });
  await sleep(500);
  const c0 = cpuSeconds(t.pid);
  const mode = process.env.MODE ?? 'bulk';
  let summary;
  if (mode === 'bulk') {
    const lg = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify({ mode: 'bulk', port: t.port, streams: Number(streams), seconds: Number(seconds), paced: !!process.env.PACED })], { stdio: ['pipe', 'pipe', 'pipe'] });
    const r = await readJsonLine(lg, () => true, 60000);
    summary = `${r.mbps.toFixed(0)} MB/s, ${((cpuSeconds(t.pid) - c0) / (r.total / 1e9)).toFixed(2)} CPU s/GB`;
  } else {
    const text = execFileSync('wrk', ['-t1', `-c${streams}`, `-d${seconds}s`, ...(mode === 'newconn' ? ['-H', 'Connection: close'] : []),
      `https://127.0.0.1:${t.port}/api/v1/nodes/node-1`], { encoding: 'utf8' });
    const n = Number((/(\d+) requests in/.exec(text) ?? [])[1]);
    summary = `${(n / Number(seconds)).toFixed(0)} req/s, ${((cpuSeconds(t.pid) - c0) / (n / 1e5)).toFixed(2)} CPU s per 100k requests`;
  }
  await t.stop('SIGTERM');
  await sleep(300);
  console.log(`\n=== ${name} (${mode}): ${summary}`);
  const files = readdirSync(pdir).filter((f) => f.endsWith('.cpuprofile')).sort();
  if (files.length) console.log(execFileSync(process.execPath, [join(ROOT, 'bench/profile-summary.js'), join(pdir, files.at(-1)), '18']).toString());
}
backend.stdin.end();
process.exit(0);
