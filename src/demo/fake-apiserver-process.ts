/**
 * Runs the kube-apiserver stand-in in a child process (fake-apiserver-main.ts) so tests can SIGSTOP it: the most
 * realistic hang, where the kernel keeps completing TCP handshakes for a process that never runs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OptionError } from '../errors.js';
import { formatAddress } from '../config/values.js';
import type { TestCA } from './test-ca.js';
import { KEY_DIR_FILES as FILES, type FakeApiServerOptions, type FakeApiServerTls } from './fake-apiserver.js';

/**
 * Options of {@link spawnFakeApiServer}: those of startFakeApiServer that the child understands (same meaning and
 * defaults; `ca` required), plus the process-only ones below.
 */
export interface SpawnFakeApiServerOptions extends Pick<FakeApiServerOptions, 'ca' | 'name' | 'host' | 'port' | 'anonymousAuth' | 'watchIntervalMs'> {
  /** Readyz-500 period on SIGTERM (`--shutdown-delay-duration`). Default 0. */
  shutdownDelayMs?: number;
  /** Directory the key material is written to (it must exist; files there are overwritten and left in place). Default: a new temp dir, removed by close(). */
  dir?: string;
  /** How long to wait for the child to report its port. Default 15000 ms; must be > 0. */
  startTimeoutMs?: number;
}

/** A stand-in running as a child process. */
export interface SpawnedFakeApiServer {
  port: number;
  host: string;
  /** `HOST:PORT`. */
  address: string;
  pid: number;
  name: string;
  child: ChildProcess;
  /** SIGSTOP: the process freezes; the kernel still accepts connections into the listen backlog. */
  stop(): void;
  /** SIGCONT: undoes stop(). */
  cont(): void;
  /** Sends `signal` (default SIGKILL) and resolves when the process has exited. SIGTERM = graceful shutdown. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Kills the process (SIGKILL works on a stopped one too), waits for exit, removes the temp dir. Idempotent. */
  close(): Promise<void>;
}

function isTls(x: TestCA | FakeApiServerTls): x is FakeApiServerTls {
  return typeof (x as FakeApiServerTls).key === 'string' && typeof (x as FakeApiServerTls).caCert === 'string';
}

/** The child's entry: the .ts sibling when we run from source (tap via ts-node), else the compiled .js. */
function mainEntry(): { file: string; execArgv: string[] } {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return { file: here.replace(/fake-apiserver-process\.ts$/, 'fake-apiserver-main.ts'), execArgv: process.execArgv };
  return { file: here.replace(/fake-apiserver-process\.js$/, 'fake-apiserver-main.js'), execArgv: [] };
}

/** Spawns the stand-in process and resolves once it listens. Rejects with its stderr if it fails to start. */
export async function spawnFakeApiServer(opts: SpawnFakeApiServerOptions): Promise<SpawnedFakeApiServer> {
  const name = opts.name ?? 'apiserver-1';
  const host = opts.host ?? '127.0.0.1';
  const startTimeoutMs = opts.startTimeoutMs ?? 15_000;
  if (!(startTimeoutMs > 0)) throw new OptionError('startTimeoutMs', `must be > 0, got ${startTimeoutMs}`);
  if (!opts.ca || typeof opts.ca !== 'object') throw new OptionError('ca', 'is required (a TestCA or {cert, key, caCert})');
  const tls = isTls(opts.ca)
    ? opts.ca
    : (() => {
        const leaf = (opts.ca as TestCA).server(name);
        return { cert: leaf.cert, key: leaf.key, caCert: (opts.ca as TestCA).cert };
      })();
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'apilb-fake-apiserver-'));
  writeFileSync(join(dir, FILES.caCert), tls.caCert);
  writeFileSync(join(dir, FILES.cert), tls.cert);
  writeFileSync(join(dir, FILES.key), tls.key, { mode: 0o600 });
  const args = [
    '--ca-dir',
    dir,
    '--port',
    String(opts.port ?? 0),
    '--host',
    host,
    '--name',
    name,
    '--anonymous-auth',
    String(opts.anonymousAuth ?? true),
    '--watch-interval-ms',
    String(opts.watchIntervalMs ?? 1000),
    '--shutdown-delay-ms',
    String(opts.shutdownDelayMs ?? 0),
    '--watch-stdin',
    'true',
  ];
  const entry = mainEntry();
  // stdin is a pipe the child watches: if this process dies, the child sees EOF and exits.
  const child = spawn(process.execPath, [...entry.execArgv, entry.file, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', function onChildStderr(d: string) {
    if (stderr.length < 16_384) stderr += d;
  });
  child.stdin!.on('error', function onChildStdinError() {
    /* child gone */
  });
  const removeDir = (): void => {
    if (ownDir) rmSync(dir, { recursive: true, force: true });
  };
  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error(`fake apiserver did not start within ${startTimeoutMs} ms: ${stderr}`)), startTimeoutMs);
      function fail(err: Error): void {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.off('exit', onExit);
        reject(err);
      }
      function onData(d: Buffer): void {
        out += d.toString('utf8');
        const nl = out.indexOf('\n');
        if (nl < 0) return;
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.off('exit', onExit);
        try {
          const msg = JSON.parse(out.slice(0, nl)) as { port?: unknown };
          if (typeof msg.port !== 'number') throw new Error(`no port in ${out.slice(0, nl)}`);
          resolve(msg.port);
        } catch (err) {
          reject(err as Error);
        }
      }
      function onExit(code: number | null, signal: string | null): void {
        // stderr may still be in flight; give it the exit reason at least.
        fail(new Error(`fake apiserver exited (code ${code}, signal ${signal}) before listening: ${stderr}`));
      }
      child.stdout!.on('data', onData);
      child.once('exit', onExit);
    });
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    removeDir();
    throw err;
  }
  child.stdout!.resume();
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      // A stopped process acts on SIGTERM only once continued.
      if (signal !== 'SIGKILL' && signal !== 'SIGSTOP') child.kill('SIGCONT');
    }
    await exited;
  };
  let closing: Promise<void> | undefined;
  return {
    port,
    host,
    address: formatAddress({ host, port }),
    pid: child.pid!,
    name,
    child,
    stop: () => void child.kill('SIGSTOP'),
    cont: () => void child.kill('SIGCONT'),
    kill,
    close() {
      closing ??= kill('SIGKILL').then(() => {
        child.stdin!.destroy();
        child.stdout!.destroy();
        child.stderr!.destroy();
        removeDir();
      });
      return closing;
    },
  };
}
