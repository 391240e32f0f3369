// Repeats bulk phases on one long-lived proxy process (paced ~200 MB/s, 4 full-speed streams, alternating) and
// prints CPU s/GB and RSS after each, for apilb, its bare data path (bench/bare-dataproxy.js) and the Node pipe: shows how stable the per-byte cost
// of one process is over time. PIN=N pins the proxies to CPU N (run the script itself with `taskset -c M`);
// NODE_ARGS='...' adds node flags; APILB_BENCH_NODE=host|bundled|PATH picks the runtime. Usage: node bench/repeat-bulk.js
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { ROOT, spawnTracked, readJsonLine, makeCA, sleep, cpuSeconds, rssMB, processTree } from './lib.js';
import { startApilb, startNodePipe } from './targets.js';
import { resolveNode } from './runtime.js';
import { spawnSync } from 'node:child_process';
const dir = mkdtempSync(join(tmpdir(), 'sq-'));
const ca = await makeCA(); const server = ca.server();
const backend = spawnTracked(process.execPath, [join(ROOT, 'bench/backend.js'), '--count=3', `--cert=${server.certFile}`, `--key=${server.keyFile}`], { stdio: ['pipe', 'pipe', 'inherit'] });
const { ports } = await readJsonLine(backend, (j) => j.ports);
const nodeArgs = (process.env.NODE_ARGS ?? '').split(' ').filter(Boolean);
const node = resolveNode().bin;
for (const name of (process.env.TARGETS ?? 'apilb,apilb-bare,node-pipe').split(',')) {
  const t = name === 'apilb' ? await startApilb({ backends: ports, dir, caFile: ca.certFile, nodeArgs, node })
    : await startNodePipe({ backends: ports, dir, nodeArgs, node, name, script: { 'apilb-bare': 'bench/bare-dataproxy.js', 'node-onread': 'bench/pipe-proxy-onread.js' }[name] ?? 'bench/pipe-proxy.js' });
  await sleep(500);
  if (process.env.PIN) for (const p of processTree(t.pid)) spawnSync('taskset', ['-a', '-p', '-c', process.env.PIN, String(p)], { stdio: 'ignore' });
  const out = [];
  for (const [paced, streams] of [[true, 1], [false, 4], [true, 1], [false, 4], [true, 1]]) {
    const c0 = cpuSeconds(t.pid);
    const lg = spawnTracked(process.execPath, [join(ROOT, 'bench/loadgen.js'), JSON.stringify({ mode: 'bulk', port: t.port, streams, seconds: 3, paced })], { stdio: ['pipe', 'pipe', 'pipe'] });
    const r = await readJsonLine(lg, () => true, 60000);
    out.push(`${paced ? 'paced' : 'bulk4'} ${((cpuSeconds(t.pid) - c0) / (r.total / 1e9)).toFixed(2)} (rss ${rssMB(t.pid).toFixed(0)})`);
  }
  console.log(name, out.join(' | '));
  await t.stop('SIGKILL');
}
backend.stdin.end(); process.exit(0);
