/**
 * The kube-apiserver stand-in as its own process, for faults only a real process shows: SIGSTOP freezes it while
 * the kernel still completes TCP handshakes into its backlog. Started by spawnFakeApiServer (fake-apiserver-process.ts):
 *
 *   node dist/demo/fake-apiserver-main.js --ca-dir DIR [--port 0] [--host 127.0.0.1] [--name apiserver-1]
 *     [--anonymous-auth true|false] [--watch-interval-ms 1000] [--shutdown-delay-ms 0] [--watch-stdin false]
 *
 * DIR holds ca.crt, apiserver.crt and apiserver.key (PEM). Prints one JSON line {"port":N,"pid":P} on stdout once
 * listening. SIGTERM shuts down gracefully (readyz 500 for --shutdown-delay-ms, then drain); SIGINT closes at
 * once, and so does stdin closing with --watch-stdin true (the parent went away; spawnFakeApiServer sets it). Exit code 0 after a clean stop, 2 on bad arguments.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KEY_DIR_FILES, startFakeApiServer, type FakeApiServer } from './fake-apiserver.js';

interface MainArgs {
  caDir: string;
  port: number;
  host: string;
  name: string;
  anonymousAuth: boolean;
  watchIntervalMs: number;
  shutdownDelayMs: number;
  watchStdin: boolean;
}

function parseArgs(argv: string[]): MainArgs {
  const raw = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new Error(`unexpected argument ${JSON.stringify(a)}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new Error(`--${m[1]} needs a value`);
    raw.set(m[1]!, value);
  }
  const known = ['ca-dir', 'port', 'host', 'name', 'anonymous-auth', 'watch-interval-ms', 'shutdown-delay-ms', 'watch-stdin'];
  for (const k of raw.keys()) if (!known.includes(k)) throw new Error(`unknown flag --${k}`);
  const int = (k: string, dflt: number): number => {
    const v = raw.get(k);
    if (v === undefined) return dflt;
    if (!/^\d+$/.test(v)) throw new Error(`--${k} must be a non-negative integer, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  const caDir = raw.get('ca-dir');
  if (!caDir) throw new Error('--ca-dir is required');
  const bool = (k: string, dflt: boolean): boolean => {
    const v = raw.get(k);
    if (v === undefined) return dflt;
    if (v !== 'true' && v !== 'false') throw new Error(`--${k} must be true or false, got ${JSON.stringify(v)}`);
    return v === 'true';
  };
  return {
    caDir,
    port: int('port', 0),
    host: raw.get('host') ?? '127.0.0.1',
    name: raw.get('name') ?? 'apiserver-1',
    anonymousAuth: bool('anonymous-auth', true),
    watchIntervalMs: int('watch-interval-ms', 1000),
    shutdownDelayMs: int('shutdown-delay-ms', 0),
    watchStdin: bool('watch-stdin', false),
  };
}

async function main(): Promise<void> {
  let args: MainArgs;
  let server: FakeApiServer;
  try {
    args = parseArgs(process.argv.slice(2));
    const read = (f: string): string => readFileSync(join(args.caDir, f), 'utf8');
    server = await startFakeApiServer({
      ca: { caCert: read(KEY_DIR_FILES.caCert), cert: read(KEY_DIR_FILES.cert), key: read(KEY_DIR_FILES.key) },
      name: args.name,
      host: args.host,
      port: args.port,
      anonymousAuth: args.anonymousAuth,
      watchIntervalMs: args.watchIntervalMs,
    });
  } catch (err) {
    process.stderr.write(`fake-apiserver: ${(err as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  let stopping = false;
  const stop = (graceful: boolean): void => {
    if (stopping) return;
    stopping = true;
    if (args.watchStdin) process.stdin.destroy();
    process.off('SIGTERM', onSigterm);
    process.off('SIGINT', onSigint);
    const done = graceful ? server.gracefulShutdown({ delayMs: args.shutdownDelayMs }) : server.close();
    void done.then(() => server.close());
  };
  function onSigterm(): void {
    stop(true);
  }
  function onSigint(): void {
    stop(false);
  }
  function onStdinEnd(): void {
    stop(false);
  }
  process.on('SIGTERM', onSigterm);
  process.on('SIGINT', onSigint);
  if (args.watchStdin) {
    process.stdin.on('end', onStdinEnd);
    process.stdin.on('error', onStdinEnd);
    process.stdin.resume();
  }
  process.stdout.write(JSON.stringify({ port: server.port, pid: process.pid }) + '\n');
}

void main();
