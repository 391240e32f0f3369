// Shared helpers for the benchmark scripts: child-process bookkeeping (everything we start is killed on exit,
// error or signal), /proc readers for CPU and RSS, ports, statistics, the test CA.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CLK_TCK = 100; // USER_HZ on every Linux we care about; /proc/PID/stat ticks are in these units.

const children = new Set();
const cleanups = [];
let exiting = false;

/** Spawns a child that is killed (SIGKILL to its process group) when this process exits for any reason. */
export function spawnTracked(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...opts });
  children.add(child);
  child.on('exit', () => children.delete(child));
  child.on('error', () => children.delete(child));
  return child;
}

/** Registers a synchronous cleanup (temp dirs, netns) to run at exit. */
export function atExit(fn) { cleanups.push(fn); }

/** Kills one tracked child (its whole process group) and waits for it to exit, bounded. */
export async function killChild(child, signal = 'SIGTERM', timeoutMs = 3000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try { process.kill(-child.pid, signal); } catch { /* already gone */ }
  const t = setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, timeoutMs);
  await Promise.race([exited, sleep(timeoutMs + 1000)]);
  clearTimeout(t);
}

function killAllSync() {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGKILL'); } catch { /* gone */ }
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
  children.clear();
  while (cleanups.length) { try { cleanups.pop()(); } catch { /* best effort */ } }
}

process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (exiting) return;
    exiting = true;
    console.error(`\n${sig}: stopping all benchmark processes`);
    killAllSync();
    process.exit(130);
  });
}
process.on('uncaughtException', (err) => { console.error(err); killAllSync(); process.exit(1); });
process.on('unhandledRejection', (err) => { console.error(err); killAllSync(); process.exit(1); });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Asks the kernel for a free port. Only for configs of external programs (haproxy, nginx, apilb) that need an
 * explicit port; there is a small race between close and their bind, acceptable for a benchmark.
 */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Polls until a TCP connect to port succeeds, bounded. */
export async function waitForPort(port, timeoutMs = 10000, host = '127.0.0.1') {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = connect(port, host);
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`port ${port} did not open within ${timeoutMs} ms`);
}

/** Polls fn() until truthy, bounded; returns its value or undefined on timeout. */
export async function waitFor(fn, { timeout = 5000, interval = 20 } = {}) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const v = await fn();
    if (v) return v;
    await sleep(interval);
  }
  return undefined;
}

/** PIDs of pid and all its descendants (nginx master+worker, apilb, ...). */
export function processTree(pid) {
  const parents = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const rest = st.slice(st.lastIndexOf(')') + 2).split(' ');
      parents.set(Number(d), Number(rest[1]));
    } catch { /* exited */ }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) for (const [p, pp] of parents) if (pp === out[i]) out.push(p);
  return out;
}

/** utime+stime in seconds, summed over the process tree. */
export function cpuSeconds(pid) {
  let ticks = 0;
  for (const p of processTree(pid)) {
    try {
      const st = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // fields 14, 15 of stat(5)
    } catch { /* exited */ }
  }
  return ticks / CLK_TCK;
}

/** VmRSS in MB, summed over the process tree. */
export function rssMB(pid) {
  let kb = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) kb += Number(m[1]);
    } catch { /* exited */ }
  }
  return kb / 1024;
}

export function median(xs) {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

export function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Reads lines from a child's stdout; resolves with the first JSON line satisfying pred, bounded. */
export function readJsonLine(child, pred = () => true, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const t = setTimeout(() => { cleanup(); reject(new Error(`no JSON line from child within ${timeoutMs} ms`)); }, timeoutMs);
    function onData(d) {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        try { const j = JSON.parse(line); if (pred(j)) { cleanup(); resolve(j); return; } } catch { /* not JSON */ }
      }
    }
    function onExit(code) { cleanup(); reject(new Error(`child exited (${code}) before reporting`)); }
    function cleanup() { clearTimeout(t); child.stdout.off('data', onData); child.off('exit', onExit); }
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Collects a child's stderr (last 8 KB) for diagnostics. */
export function tailStderr(child) {
  let s = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { s = (s + d).slice(-8192); });
  return () => s;
}

/** The test CA: dist/demo/test-ca.js when built, else a minimal openssl fallback with the same shape. */
export async function makeCA() {
  const mod = join(ROOT, 'dist/demo/test-ca.js');
  if (existsSync(mod)) {
    const { createTestCA } = await import(mod);
    const ca = createTestCA();
    atExit(() => ca.remove());
    return ca;
  }
  const dir = mkdtempSync(join(tmpdir(), 'apilb-bench-ca-'));
  atExit(() => rmSync(dir, { recursive: true, force: true }));
  const o = (args) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  o(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=bench-ca']);
  o(['req', ...ec, '-keyout', 's.key', '-out', 's.csr', '-subj', '/CN=kube-apiserver']);
  execFileSync('sh', ['-c', 'printf "subjectAltName=DNS:kubernetes,DNS:localhost,IP:127.0.0.1\\n" > s.ext'], { cwd: dir });
  o(['x509', '-req', '-in', 's.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', '7', '-days', '2', '-out', 's.crt', '-extfile', 's.ext']);
  const server = { certFile: join(dir, 's.crt'), keyFile: join(dir, 's.key'),
    cert: readFileSync(join(dir, 's.crt'), 'utf8'), key: readFileSync(join(dir, 's.key'), 'utf8') };
  return { dir, certFile: join(dir, 'ca.crt'), cert: readFileSync(join(dir, 'ca.crt'), 'utf8'), server: () => server,
    remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The shell wrapper that raises the fd limit as far as allowed before exec'ing cmd. */
export function withNoFile(cmd, args) {
  return ['sh', ['-c', 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"', 'sh', cmd, ...args]];
}

/** The fd limit a child started through withNoFile gets. */
export function childNoFile() {
  const out = execFileSync('sh', ['-c', 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ulimit -n']).toString().trim();
  return out === 'unlimited' ? 1 << 20 : Number(out);
}

export function fmt(x, digits = 0) {
  if (!Number.isFinite(x)) return '–';
  if (Math.abs(x) >= 100 || digits === 0) return x.toFixed(digits === 0 ? 0 : Math.max(0, digits - 2));
  return x.toFixed(digits);
}
