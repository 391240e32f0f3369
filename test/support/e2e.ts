/**
 * End-to-end harness: a real apilb Daemon (real listeners, health checks, metrics) in front of three
 * kube-apiserver stand-ins, a kubeconfig pointing at apilb, and helpers to run real binaries (kubectl, curl,
 * Prometheus, the built CLI) as bounded child processes that never outlive the test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsc, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { connect as http2Connect, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { Test } from 'tap';
import { resolveConfig, type Layer } from '../../src/config/config.js';
import { startDaemon, type Daemon } from '../../src/daemon.js';
import { createLogger } from '../../src/logging.js';
import { startFakeApiServer, waitFor, writeKubeconfig, type FakeApiServer, type LeafCert, type TestCA } from './index.js';

/**
 * Looks `name` up in PATH (then /usr/local/bin, /usr/bin, /usr/sbin); a name with a slash is checked as is.
 * Returns the executable's path or undefined.
 */
export function findBinary(name: string): string | undefined {
  const dirs = name.includes('/') ? [''] : [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), '/usr/local/bin', '/usr/bin', '/usr/sbin'];
  for (const dir of dirs) {
    const p = dir ? join(dir, name) : name;
    try {
      accessSync(p, fsc.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * The binary's path, or a failed assertion saying loudly what is missing and how CI installs it. The issue asks for
 * a failure, not a skip: a green run must mean the real client was exercised.
 */
export function requireBinary(tt: Test, name: string, debianPackage: string): string | undefined {
  const p = findBinary(name);
  if (!p) {
    tt.fail(
      `!!! ${name} NOT FOUND${name.includes('/') ? '' : ` in PATH (${process.env.PATH ?? ''})`} — install the Debian package "${debianPackage}" ` +
        `(npm test's pretest step, scripts/test-deps.sh, does as root); this end-to-end test cannot run without it !!!`,
    );
  }
  return p;
}

/** Key material shared by every stack of a test file (one openssl run per certificate). */
export interface E2eKeys {
  ca: TestCA;
  /** Serving certificate of every stand-in (SANs kubernetes, localhost, 127.0.0.1, ::1). */
  leaf: LeafCert;
  /** Client certificate CN=e2e-user O=system:masters, O=e2e-group. */
  client: LeafCert;
}

/** Distinguished names of {@link E2eKeys.client}. */
export const E2E_CN = 'e2e-user';
export const E2E_O = 'system:masters';

/** Issues {@link E2eKeys} from `ca`. */
export function issueKeys(ca: TestCA): E2eKeys {
  return { ca, leaf: ca.server('apiserver'), client: ca.client(E2E_CN, E2E_O) };
}

/** apilb in front of stand-ins, all closed by the test's teardown. */
export interface E2eStack {
  servers: FakeApiServer[];
  daemon: Daemon;
  /** apilb's client listener port on 127.0.0.1. */
  port: number;
  /** `https://127.0.0.1:<port>`. */
  url: string;
  /** Kubeconfig with the CA and client certificate, server = {@link url}. */
  kubeconfig: string;
  /** Temporary directory of this stack (kubeconfig, Prometheus data...), removed on teardown. */
  dir: string;
  /** The stand-in named `name`. */
  server(name: string): FakeApiServer;
}

/** Options of {@link startStack}. */
export interface StackOptions {
  /** Number of stand-ins, named apiserver-1..N. Default 3. */
  count?: number;
  /** Watch event interval of the stand-ins. Default 200 ms. */
  watchIntervalMs?: number;
  /** Extra apilb flags (config keys), e.g. `{ healthCheckInterval: '500ms' }`. Default none: apilb's defaults. */
  flags?: Layer;
}

/** Starts `count` stand-ins and a real apilb Daemon (listener and admin on 127.0.0.1 port 0) in front of them. */
export async function startStack(tt: Test, keys: E2eKeys, opts: StackOptions = {}): Promise<E2eStack> {
  const dir = mkdtempSync(join(tmpdir(), 'apilb-e2e-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const servers: FakeApiServer[] = [];
  // Registered before the daemon's teardown so it runs after it (tap runs teardowns in order): apilb first, then
  // the stand-ins, as on a node where the load balancer stops before the control plane goes away.
  tt.teardown(() => Promise.all(servers.map((s) => s.close())));
  const count = opts.count ?? 3;
  for (let i = 1; i <= count; i++) {
    servers.push(
      await startFakeApiServer({
        ca: { cert: keys.leaf.cert, key: keys.leaf.key, caCert: keys.ca.cert },
        name: `apiserver-${i}`,
        watchIntervalMs: opts.watchIntervalMs ?? 200,
      }),
    );
  }
  const config = resolveConfig({
    flags: {
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      backends: servers.map((s) => s.address),
      caFile: keys.ca.certFile,
      ...opts.flags,
    },
    env: {},
  });
  const daemon = await startDaemon(config, { logger: createLogger('silent') });
  tt.teardown(() => daemon.close(0));
  const port = (daemon.listeners[0]!.address() as { port: number }).port;
  const url = `https://127.0.0.1:${port}`;
  const kubeconfig = writeKubeconfig({
    path: join(dir, 'kubeconfig'),
    server: url,
    caCert: keys.ca.cert,
    cert: keys.client.cert,
    key: keys.client.key,
    name: 'apilb-e2e',
  });
  const server = (name: string): FakeApiServer => {
    const s = servers.find((x) => x.name === name);
    if (!s) throw new Error(`no stand-in named ${JSON.stringify(name)}`);
    return s;
  };
  return { servers, daemon, port, url, kubeconfig, dir, server };
}

/** A watch opened through apilb over HTTP/2 on its own session. */
export interface Watch {
  session: ClientHttp2Session;
  stream: ClientHttp2Stream;
  /** `x-apiserver-name` of the response: which stand-in serves it. */
  server: string;
  /** Event types received so far, in order. */
  events: string[];
  /** performance.now() of the last event. */
  lastEventAt: number;
  /** performance.now() when the stream ended or failed; null while open. */
  closedAt: number | null;
  /** Resolves with 'end' (clean end), or the error, when the stream is over. */
  closed: Promise<'end' | Error>;
}

/** Opens `GET /api/v1/namespaces/default/pods?watch=true` over HTTP/2 with the client certificate; resolves on the response headers. */
export function openWatch(port: number, keys: E2eKeys, timeoutMs = 5000): Promise<Watch> {
  return new Promise((resolve, reject) => {
    const session = http2Connect(`https://127.0.0.1:${port}`, { ca: keys.ca.cert, cert: keys.client.cert, key: keys.client.key, servername: 'kubernetes' });
    session.on('error', function onWatchSessionError() {
      /* reported through the stream */
    });
    const stream = session.request({ ':path': '/api/v1/namespaces/default/pods?watch=true' });
    stream.end();
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error(`watch through apilb: no response within ${timeoutMs} ms`));
    }, timeoutMs);
    let closedAt: number | null = null;
    const closed = new Promise<'end' | Error>((res) => {
      stream.once('end', () => res('end'));
      stream.once('error', (err) => res(err));
      stream.once('close', () => res('end'));
    }).then((r) => {
      closedAt ??= performance.now();
      clearTimeout(timer);
      return r;
    });
    stream.once('response', (headers) => {
      clearTimeout(timer);
      const w: Watch = {
        session,
        stream,
        server: String(headers['x-apiserver-name']),
        events: [],
        lastEventAt: performance.now(),
        get closedAt() {
          return closedAt;
        },
        closed,
      };
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', function onWatchData(d: string) {
        buf += d;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          w.events.push((JSON.parse(buf.slice(0, nl)) as { type: string }).type);
          w.lastEventAt = performance.now();
          buf = buf.slice(nl + 1);
        }
      });
      resolve(w);
    });
    void closed.then((r) => {
      if (r instanceof Error) reject(r);
    });
  });
}

/** A child process started by {@link spawnChild}. */
export interface Child {
  proc: ChildProcess;
  /** Everything written to stdout / stderr so far. */
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves with the exit code (or the signal's name) once the process exited. */
  exited: Promise<number | string>;
  /** Whether it has exited. */
  readonly done: boolean;
}

/**
 * Spawns `file args` (never a shell; APILB_* variables removed, `env` added) and registers a teardown that ends it: SIGTERM, then SIGKILL after 5 s.
 * Nothing the test started outlives it.
 */
export function spawnChild(tt: Test, file: string, args: string[], env: NodeJS.ProcessEnv = {}): Child {
  // APILB_* settings of whoever runs the tests must not leak into a spawned apilb.
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('APILB_')));
  const proc = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...base, NO_PROXY: '*', no_proxy: '*', ...env } });
  let stdout = '';
  let stderr = '';
  let done = false;
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | string>((resolve) => {
    proc.once('error', (err) => {
      done = true;
      stderr += `spawn error: ${err.message}\n`;
      resolve(-1);
    });
    proc.once('exit', (code, signal) => {
      done = true;
      resolve(code ?? signal ?? -1);
    });
  });
  tt.teardown(async () => {
    if (done) return;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  });
  return {
    proc,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    exited,
    get done() {
      return done;
    },
  };
}

/** A Prometheus server started by {@link startPrometheus}. */
export interface Prometheus {
  child: Child;
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /** GET /api/v1/query?query=… ; rejects unless Prometheus answers status "success". */
  query<T = PromSeries[]>(promql: string): Promise<T>;
}

/** One series of an instant-vector (`value`) or range-vector (`values`) query result. */
export interface PromSeries {
  metric: Record<string, string>;
  value?: [number, string];
  values?: [number, string][];
}

/**
 * Where a listening socket of process `pid` is bound, read from /proc (Linux): the ports of TCP sockets in
 * LISTEN state whose inodes are among the process's file descriptors.
 */
export function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  const ports: number[] = [];
  for (const table of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9]!)) continue;
      ports.push(parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

/**
 * Starts the real `prometheus` binary scraping `targets` (HOST:PORT, path /metrics) every second, with its TSDB in
 * a directory under `dir`. Resolves once it is ready (GET /-/ready answers 200). Ended by the test's teardown.
 *
 * Port: Prometheus has no "pick a free port and tell me" option, and binding a port ourselves to learn a free one
 * and handing it over (bind-close-reuse) races with every other process on the host. But Prometheus binds
 * `--web.listen-address` with Go's net.Listen, which accepts port 0 (the kernel picks), and its web server logs
 * the bound address (`msg="Listening on" address=127.0.0.1:40507`). That line is read from stderr; if a
 * version logs only the configured `:0`, the port is read from /proc instead (the listening socket the process
 * owns). Either way no port is guessed and nothing needs a retry.
 */
export async function startPrometheus(tt: Test, binary: string, dir: string, targets: string[]): Promise<Prometheus> {
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      '  - job_name: apilb',
      '    metrics_path: /metrics',
      '    static_configs:',
      `      - targets: ${JSON.stringify(targets)}`,
      '',
    ].join('\n'),
  );
  const child = spawnChild(tt, binary, [
    `--config.file=${config}`,
    `--storage.tsdb.path=${join(dir, 'tsdb')}`,
    '--web.listen-address=127.0.0.1:0',
    '--log.level=info',
  ]);
  const port = await waitFor(
    () => {
      if (child.done) throw new Error(`prometheus exited: ${child.stderr.slice(-2000)}`);
      const m = /msg="Listening on" address=127\.0\.0\.1:(\d+)/.exec(child.stderr);
      if (m && m[1] !== '0') return Number(m[1]);
      if (!/Server is ready to receive web requests/.test(child.stderr) || child.proc.pid === undefined) return undefined;
      return listeningPorts(child.proc.pid)[0];
    },
    { timeoutMs: 15_000, intervalMs: 20, what: 'prometheus to listen' },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitFor(async () => (await fetch(`${url}/-/ready`)).status === 200, { timeoutMs: 15_000, intervalMs: 50, what: 'prometheus /-/ready' });
  const query = async <T = PromSeries[]>(promql: string): Promise<T> => {
    const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { result: T } };
    if (body.status !== 'success') throw new Error(`prometheus query ${promql}: ${body.error ?? res.status}`);
    return body.data!.result;
  };
  return { child, url, query };
}

/**
 * A TCP port outside the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), for a program that
 * must be told a fixed port. Ports other tests get by binding port 0 come from the ephemeral range, so a port
 * below it can only collide with a fixed-port listener; callers retry with another one when it is taken.
 */
export function portOutsideEphemeralRange(): number {
  let low = 32768;
  let high = 60999;
  try {
    [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number) as [number, number];
  } catch {
    // not Linux: the usual defaults
  }
  if (low - 1024 >= 2000) return low - 1 - Math.floor(Math.random() * Math.min(10_000, low - 1025));
  // Ephemeral range starting low: use the ports above it instead.
  return high + 1 + Math.floor(Math.random() * (65535 - high));
}

/** PIDs of the live processes whose parent is `pid` (Linux /proc). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // pid (comm) state ppid ...: comm may contain spaces and parentheses, so parse after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** Whether process `pid` exists (signal 0). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
