// Load generator, a separate process so it never shares an event loop with what it measures.
// node bench/loadgen.js '<json>' — modes:
//   {mode:'bulk', port, streams, seconds, warmup, paced}   → {mbps, bytes, total} (paced: ~200 MB/s per stream)
//   {mode:'upload', port, streams, seconds, warmup}        → {mbps, bytes, total}: writes as fast as the path takes
//                                                            (bytes counted when the kernel accepted them)
//   {mode:'hold', port, count, batch}               → prints {ready, opened, failed}, then holds until stdin closes
//   {mode:'https', port, conns, seconds, newConn, path, ca} → {rps, p50, p99, errors} (fallback when wrk is absent)
import { connect } from 'node:net';
import https from 'node:https';
import { readFileSync } from 'node:fs';

const opt = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const host = '127.0.0.1';
const hardStop = setTimeout(() => { out({ error: 'loadgen hard timeout' }); process.exit(2); }, (opt.limit ?? 120) * 1000);
hardStop.unref();

/** Counts bytes for opt.seconds after opt.warmup, then prints {mbps, bytes, total, errors} and exits. */
function reportAfterWindow(socks, st) {
  setTimeout(() => {
    st.counting = true;
    const t0 = process.hrtime.bigint();
    setTimeout(() => {
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      st.counting = false;
      st.stop = true;
      for (const s of socks) s.destroy();
      out({ mbps: st.bytes / secs / 1e6, bytes: st.bytes, total: st.total, errors: st.errors });
      process.exit(0);
    }, opt.seconds * 1000);
  }, (opt.warmup ?? 0.5) * 1000);
}
const count = (st, n) => { st.total += n; if (st.counting) st.bytes += n; };

if (opt.mode === 'bulk') {
  const st = { bytes: 0, total: 0, counting: false, stop: false, errors: 0 };
  const socks = [];
  for (let i = 0; i < opt.streams; i++) {
    const s = connect({ port: opt.port, host });
    s.on('error', () => { st.errors++; });
    s.on('connect', () => s.write(opt.paced ? 'P' : 'S'));
    s.on('data', (d) => count(st, d.length));
    socks.push(s);
  }
  reportAfterWindow(socks, st);
} else if (opt.mode === 'upload') {
  const st = { bytes: 0, total: 0, counting: false, stop: false, errors: 0 };
  const chunk = Buffer.alloc(64 * 1024, 0x75);
  const socks = [];
  for (let i = 0; i < opt.streams; i++) {
    const s = connect({ port: opt.port, host });
    s.on('error', () => { st.errors++; });
    // A chunk counts once its write callback says it left the process.
    const pump = () => {
      while (!st.stop && s.writable) {
        if (!s.write(chunk, () => count(st, chunk.length))) return;
      }
    };
    s.on('connect', () => { s.write('U'); pump(); });
    s.on('drain', pump);
    socks.push(s);
  }
  reportAfterWindow(socks, st);
} else if (opt.mode === 'hold') {
  const socks = [];
  let opened = 0;
  let failed = 0;
  let started = 0;
  const batch = opt.batch ?? 200;
  function one() {
    if (started >= opt.count) return;
    started++;
    const s = connect({ port: opt.port, host });
    socks.push(s);
    let done = false;
    const t = setTimeout(() => finish(false), 10_000);
    function finish(ok) {
      if (done) return;
      done = true;
      clearTimeout(t);
      if (ok) opened++; else failed++;
      if (opened + failed === opt.count) out({ ready: true, opened, failed });
      else one();
    }
    s.on('connect', () => s.write('H'));
    s.once('data', () => finish(true));
    s.on('error', () => finish(false));
    s.on('close', () => finish(false));
  }
  for (let i = 0; i < batch; i++) one();
  process.stdin.resume();
  process.stdin.on('end', () => { for (const s of socks) s.destroy(); process.exit(0); });
} else if (opt.mode === 'https') {
  const ca = opt.ca ? readFileSync(opt.ca) : undefined;
  const agent = opt.newConn ? new https.Agent({ keepAlive: false, maxCachedSessions: 0 })
    : new https.Agent({ keepAlive: true, maxSockets: opt.conns });
  const lat = [];
  let errors = 0;
  let stop = false;
  let counting = false;
  let total = 0;
  function loop() {
    if (stop) return;
    const t0 = process.hrtime.bigint();
    const req = https.request({ host, port: opt.port, path: opt.path ?? '/api/v1/nodes/node-1', agent, ca, servername: 'kubernetes',
      headers: opt.newConn ? { connection: 'close' } : {} }, (res) => {
      res.on('data', () => {});
      res.on('end', () => { total++; if (counting) lat.push(Number(process.hrtime.bigint() - t0) / 1e6); loop(); });
    });
    req.on('error', () => { errors++; setImmediate(loop); });
    req.end();
  }
  for (let i = 0; i < opt.conns; i++) loop();
  setTimeout(() => {
    counting = true;
    const t0 = Date.now();
    setTimeout(() => {
      stop = true;
      const secs = (Date.now() - t0) / 1000;
      lat.sort((a, b) => a - b);
      const p = (q) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))];
      out({ rps: lat.length / secs, requests: lat.length, total, p50: p(0.5), p99: p(0.99), errors });
      process.exit(0);
    }, opt.seconds * 1000);
  }, (opt.warmup ?? 0.5) * 1000);
} else {
  out({ error: `unknown mode ${opt.mode}` });
  process.exit(2);
}
