/**
 * Client load run INSIDE the real-node container (test/real-node.test.ts) with the container's Node.js: the test
 * transpiles this file to JavaScript and copies it in, so it may import only `node:` modules.
 *
 *   node load.mjs '{"mode":"probe","host":"::1","port":6443,...}'   one GET /whoami, prints {status, body}
 *   node load.mjs '{"mode":"load",...}'                              kubelet-like load until stdin closes
 *
 * Load: `streams` long-lived watches (each its own TCP+TLS connection; when one ends it reconnects at once, like
 * client-go's reflector) plus one new connection every `intervalMs` (GET /version). Commands on stdin, one per
 * line: `peek` prints the statistics since the last `report` as one JSON line; `report` does too and starts a new
 * period. Every request carries the client certificate, so a proxy that terminated TLS would fail them.
 */
import { readFileSync } from 'node:fs';
import { request, type RequestOptions } from 'node:https';
import { createInterface } from 'node:readline';

/** The JSON argument. */
export interface LoadArgs {
  mode: 'probe' | 'load';
  host: string;
  port: number;
  /** PEM file paths inside the container. */
  ca: string;
  cert: string;
  key: string;
  streams?: number;
  intervalMs?: number;
  /** Per-request timeout of the new connections, ms. */
  timeoutMs?: number;
}

/** One period's numbers, printed by `peek`/`report`. */
export interface LoadReport {
  /** New connections (one request each). */
  conns: {
    attempted: number;
    ok: number;
    failed: number;
    /** The slowest finished request, and the age of the oldest one still waiting (0: none). */
    slowestMs: number;
    oldestInFlightMs: number;
    errors: Record<string, number>;
  };
  /** Long-lived watches. */
  streams: {
    open: number;
    /** Watches that ended in this period. */
    closed: number;
    /** Ended watches whose replacement delivered its first event, and the longest gap between the two. */
    reestablished: number;
    maxGapMs: number;
    /** Ended, not yet re-established. */
    pending: number;
    /** Reconnect attempts that failed (retried after 50 ms). */
    failedAttempts: number;
  };
  periodMs: number;
}

function main(): void {
  const args = JSON.parse(process.argv[2] ?? '{}') as LoadArgs;
  const tls: RequestOptions = {
    host: args.host,
    port: args.port,
    ca: readFileSync(args.ca),
    cert: readFileSync(args.cert),
    key: readFileSync(args.key),
    agent: false,
  };
  if (args.mode === 'probe') {
    probe(tls);
    return;
  }
  load(tls, args);
}

function probe(tls: RequestOptions): void {
  const req = request({ ...tls, path: '/whoami' }, function onProbeResponse(res) {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d: string) => {
      body += d;
    });
    res.on('end', () => {
      process.stdout.write(JSON.stringify({ status: res.statusCode, body }) + '\n');
    });
  });
  req.setTimeout(5000, () => req.destroy(new Error('timeout')));
  req.on('error', (err) => {
    process.stdout.write(JSON.stringify({ error: (err as NodeJS.ErrnoException).code ?? err.message }) + '\n');
    process.exitCode = 1;
  });
  req.end();
}

function load(tls: RequestOptions, args: LoadArgs): void {
  const streams = args.streams ?? 20;
  const intervalMs = args.intervalMs ?? 50;
  const timeoutMs = args.timeoutMs ?? 5000;
  let period = fresh();
  let periodStart = Date.now();
  let open = 0;
  /** Close time of each ended watch, until its replacement delivers an event. */
  const downSince = new Map<number, number>();
  /** Start times of the new-connection requests still waiting. */
  const inFlight = new Set<{ t0: number }>();

  function fresh(): Omit<LoadReport, 'periodMs'> {
    return {
      conns: { attempted: 0, ok: 0, failed: 0, slowestMs: 0, oldestInFlightMs: 0, errors: {} },
      streams: { open: 0, closed: 0, reestablished: 0, maxGapMs: 0, pending: 0, failedAttempts: 0 },
    };
  }

  function oneRequest(): void {
    const t0 = Date.now();
    const entry = { t0 };
    inFlight.add(entry);
    period.conns.attempted++;
    // Counted in the period it started in: a restart's queued requests belong to the restart's report.
    const mine = period;
    let done = false;
    const finish = (err?: string): void => {
      if (done) return;
      done = true;
      inFlight.delete(entry);
      if (err) {
        mine.conns.failed++;
        mine.conns.errors[err] = (mine.conns.errors[err] ?? 0) + 1;
      } else {
        mine.conns.ok++;
      }
      mine.conns.slowestMs = Math.max(mine.conns.slowestMs, Date.now() - t0);
    };
    const req = request({ ...tls, path: '/version' }, function onVersionResponse(res) {
      res.resume();
      res.on('end', () => finish(res.statusCode === 200 ? undefined : `HTTP_${res.statusCode}`));
      res.on('error', (err: NodeJS.ErrnoException) => finish(err.code ?? 'response_error'));
    });
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    req.on('error', (err: NodeJS.ErrnoException) => finish(err.code ?? 'error'));
    req.end();
  }

  function watch(id: number): void {
    let established = false;
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      if (!established) {
        // The reconnect itself failed (refused, reset): retry shortly, the gap keeps counting.
        period.streams.failedAttempts++;
        setTimeout(() => watch(id), 50);
        return;
      }
      open--;
      period.streams.closed++;
      downSince.set(id, Date.now());
      setImmediate(() => watch(id));
    };
    const req = request({ ...tls, path: '/api/v1/watch/pods?watch=true' }, function onWatchResponse(res) {
      res.on('data', function onWatchEvent() {
        if (established) return;
        established = true;
        open++;
        const since = downSince.get(id);
        if (since !== undefined) {
          downSince.delete(id);
          period.streams.reestablished++;
          period.streams.maxGapMs = Math.max(period.streams.maxGapMs, Date.now() - since);
        }
      });
      res.on('end', end);
      res.on('close', end);
      res.on('error', end);
    });
    req.on('error', end);
    req.on('close', end);
    req.end();
  }

  for (let i = 0; i < streams; i++) watch(i);
  const timer = setInterval(oneRequest, intervalMs);

  function snapshot(): LoadReport {
    const now = Date.now();
    let oldest = 0;
    for (const { t0 } of inFlight) oldest = Math.max(oldest, now - t0);
    return {
      conns: { ...period.conns, oldestInFlightMs: oldest },
      streams: { ...period.streams, open, pending: downSince.size },
      periodMs: now - periodStart,
    };
  }
  createInterface({ input: process.stdin })
    .on('line', function onCommand(line: string) {
      const cmd = line.trim();
      if (cmd === 'peek' || cmd === 'report') process.stdout.write(JSON.stringify(snapshot()) + '\n');
      if (cmd === 'report') {
        period = fresh();
        periodStart = Date.now();
      }
    })
    .on('close', () => {
      clearInterval(timer);
      process.exit(0);
    });
}

main();
