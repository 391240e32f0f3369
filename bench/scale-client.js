// Fleet simulator, its own process (bench/scale.js drives it). node bench/scale-client.js '<json>':
//   {mode:'checks', port, nodes, intervalMs, seconds, style, ca}
//      nodes health checkers against one API server, each on its own phase; style:
//      keepalive = one kept-alive TLS connection per node, GET /readyz per check (apilb)
//      handshake = new TCP + full TLS handshake + GET /readyz per check (HAProxy check-ssl without session reuse)
//      resume    = new TCP + resumed TLS session + GET /readyz per check (HAProxy check-ssl, default ssl-reuse)
//      tcp       = TCP connect + close per check (HAProxy plain `check`)
//      → {checks, errors, rate, p50, p99}
//   {mode:'storm', ports, conns, spreadMs, ca} — conns clients reconnect round-robin over ports at times uniform in
//      [0, spreadMs) (0 = all at once): new TLS connection + GET /version.
//      → {done, errors, peakPer100ms, p50, p99, lastMs}
import https from 'node:https';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';

const opt = JSON.parse(process.argv[2]);
const ca = readFileSync(opt.ca);
const out = (o) => { process.stdout.write(JSON.stringify(o) + '\n'); process.exit(0); };
setTimeout(() => out({ error: 'scale-client hard timeout' }), 120_000).unref();
const host = '127.0.0.1';
const pct = (a, q) => { a.sort((x, y) => x - y); return a.length ? a[Math.min(a.length - 1, Math.floor(q * a.length))] : NaN; };

function get(port, path, agent, timeoutMs = 5000) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let done = false;
    const fin = (ok) => { if (!done) { done = true; clearTimeout(timer); resolve({ ok, ms: performance.now() - t0, end: performance.now() }); } };
    const req = https.request({ host, port, path, agent, ca, servername: 'kubernetes' }, (res) => {
      res.resume();
      res.on('end', () => fin(res.statusCode === 200));
      res.on('error', () => fin(false));
    });
    const timer = setTimeout(() => { req.destroy(); fin(false); }, timeoutMs);
    req.on('error', () => fin(false));
    req.end();
  });
}

function tcpCheck(port) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = connect({ port, host });
    s.on('connect', () => { s.end(); resolve({ ok: true, ms: performance.now() - t0 }); });
    s.on('error', () => resolve({ ok: false, ms: performance.now() - t0 }));
    s.setTimeout(5000, () => { s.destroy(); resolve({ ok: false, ms: 5000 }); });
  });
}

if (opt.mode === 'checks') {
  let checks = 0;
  let errors = 0;
  const lat = [];
  const timers = [];
  const agents = [];
  let measuring = false;
  let warmed = 0;
  for (let i = 0; i < opt.nodes; i++) {
    const agent = opt.style === 'keepalive' ? new https.Agent({ keepAlive: true, maxSockets: 1 })
      : opt.style === 'resume' ? new https.Agent({ keepAlive: false, maxCachedSessions: 1 }) : false;
    if (agent) agents.push(agent);
    let first = true;
    const check = async () => {
      const r = opt.style === 'tcp' ? await tcpCheck(opt.port) : await get(opt.port, '/readyz', agent);
      if (first) { first = false; warmed++; }
      if (!measuring) return;
      checks++;
      if (!r.ok) errors++;
      lat.push(r.ms);
    };
    // Each node on its own phase (apilb jitters its interval, so a fleet's phases end up uniform).
    timers.push(setTimeout(() => { check(); timers.push(setInterval(check, opt.intervalMs)); }, Math.random() * opt.intervalMs));
  }
  // Warm-up: every node has done one check (connections opened, sessions cached) plus one interval, bounded.
  const warmStart = performance.now();
  const waitWarm = setInterval(() => {
    if (warmed < opt.nodes && performance.now() - warmStart < 20_000) return;
    clearInterval(waitWarm);
    setTimeout(startMeasuring, opt.intervalMs);
  }, 50);
  function startMeasuring() {
    measuring = true;
    process.stdout.write(JSON.stringify({ measuring: true }) + '\n');
    const t0 = performance.now();
    setTimeout(() => {
      const secs = (performance.now() - t0) / 1000;
      measuring = false;
      for (const t of timers) { clearTimeout(t); clearInterval(t); }
      for (const a of agents) a.destroy();
      out({ checks, errors, rate: checks / secs, p50: pct(lat, 0.5), p99: pct(lat, 0.99), warmed });
    }, opt.seconds * 1000);
  }
} else if (opt.mode === 'storm') {
  const results = [];
  const t0 = performance.now();
  let pending = opt.conns;
  for (let i = 0; i < opt.conns; i++) {
    const port = opt.ports[i % opt.ports.length];
    setTimeout(async () => {
      results.push(await get(port, '/version', false, 10_000));
      if (--pending === 0) {
        const buckets = new Map();
        for (const r of results) { const b = Math.floor((r.end - t0) / 100); buckets.set(b, (buckets.get(b) ?? 0) + 1); }
        const lats = results.filter((r) => r.ok).map((r) => r.ms);
        out({ done: results.filter((r) => r.ok).length, errors: results.filter((r) => !r.ok).length,
          peakPer100ms: Math.max(...buckets.values()), p50: pct(lats, 0.5), p99: pct(lats, 0.99),
          lastMs: Math.max(...results.map((r) => r.end - t0)) });
      }
    }, opt.spreadMs > 0 ? Math.random() * opt.spreadMs : 0);
  }
} else {
  out({ error: `unknown mode ${opt.mode}` });
}
