/**
 * Graceful shutdown and signals: the listener closes at once (new connects refused) while open streams finish
 * within --shutdown-timeout, the rest are closed after it; a second SIGTERM exits at once; SIGHUP reloads.
 * In-process through Daemon.close(), and end to end through a spawned `node dist/cli.js run`.
 */
import { CLI, spawnDaemon } from './support/cli.js';
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { resolveConfig } from '../src/config/config.js';
import { Daemon } from '../src/daemon.js';
import { createLogger } from '../src/logging.js';
import { dial, echoServer, ended, readBytes, until } from './support/net.js';

async function echoes(s: Socket, payload: string): Promise<boolean> {
  s.write(payload);
  return (await readBytes(s, payload.length)).toString() === payload;
}

/** True once connecting to `port` is refused (the listener is closed). */
async function refused(port: number): Promise<boolean> {
  try {
    const s = await dial(port);
    s.destroy();
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  }
}

async function startDaemon(tt: Test, backend: string, shutdownTimeout: string): Promise<{ d: Daemon; port: number }> {
  const config = resolveConfig({
    flags: { backends: [backend], listen: ['127.0.0.1:0'], adminListen: '127.0.0.1:0', healthCheckMode: 'tcp', shutdownTimeout },
  });
  const d = new Daemon(config, { logger: createLogger('silent') });
  await d.start();
  tt.teardown(() => d.close(0));
  return { d, port: (d.listeners[0]!.address() as AddressInfo).port };
}

t.test('close(): listener closed at once, an open stream finishes within the shutdown timeout', async (tt) => {
  const backend = await echoServer();
  tt.teardown(() => backend.close());
  const { d, port } = await startDaemon(tt, backend.address, '20s');
  const s = await dial(port);
  tt.teardown(() => s.destroy());
  tt.ok(await echoes(s, 'before'));

  const began = Date.now();
  let done = false;
  const closing = d.close().then(() => (done = true));
  await until(() => refused(port), 'new connections refused');
  tt.equal(d.readiness().ready, false, 'not ready while shutting down');
  tt.equal(d.readiness().reason, 'shutting down');
  tt.ok(await echoes(s, 'during-shutdown'), 'the open stream keeps flowing');
  tt.equal(done, false, 'close waits for the stream');

  s.end();
  await ended(s);
  await closing;
  const elapsed = Date.now() - began;
  tt.ok(elapsed < 10_000, `close resolved once the stream finished (${elapsed} ms), not after the 20 s timeout`);
  tt.equal(d.proxy.activeConnections, 0);
  tt.equal(d.admin.server.listening, false, 'admin endpoint closed');
});

t.test('close(): streams still open after the shutdown timeout are closed', async (tt) => {
  const backend = await echoServer();
  tt.teardown(() => backend.close());
  const { d, port } = await startDaemon(tt, backend.address, '400ms');
  const s = await dial(port);
  tt.teardown(() => s.destroy());
  tt.ok(await echoes(s, 'x'));
  const began = Date.now();
  const closing = d.close();
  tt.ok(await echoes(s, 'still'), 'flows inside the timeout');
  await ended(s);
  const elapsed = Date.now() - began;
  tt.ok(elapsed >= 350, `closed after the shutdown timeout (${elapsed} ms)`);
  await closing;
  tt.equal(d.proxy.activeConnections, 0);
});

interface Proc {
  child: ChildProcess;
  /** Parsed JSON log lines so far. */
  logs: Record<string, unknown>[];
  /** Resolves with the first log line whose `event` is `event` (bounded). */
  event(event: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

function spawnApilb(tt: Test, args: string[]): Proc {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npm test runs the build)`);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('APILB_')));
  const child = spawn(process.execPath, [CLI, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const logs: Record<string, unknown>[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      logs.push({ raw: line });
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  tt.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return {
    child,
    logs,
    exited,
    event: (event, timeoutMs = 10_000) => until(() => logs.find((l) => l.event === event), `log event ${event} (stderr: ${stderr})`, timeoutMs),
  };
}

async function startedPort(p: Proc): Promise<number> {
  const started = await p.event('started');
  return Number(
    String((started.listen as string[])[0])
      .split(':')
      .pop(),
  );
}

t.test('SIGTERM: graceful, the open stream finishes, exit 0; a second SIGTERM exits at once', async (tt) => {
  const backend = await echoServer();
  tt.teardown(() => backend.close());
  const common = [
    '--listen',
    '127.0.0.1:0',
    '--admin-listen',
    '127.0.0.1:0',
    '--backend',
    backend.address,
    '--health-check-mode',
    'tcp',
    '--shutdown-timeout',
    '30s',
  ];

  tt.test('stream finishes → exit 0', async (t2) => {
    const p = spawnApilb(t2, common);
    const port = await startedPort(p);
    const s = await dial(port);
    t2.teardown(() => s.destroy());
    t2.ok(await echoes(s, 'hello'));
    p.child.kill('SIGTERM');
    await p.event('shutdown');
    t2.ok(await until(() => refused(port), 'listener closed'), 'new connections refused at once');
    t2.ok(await echoes(s, 'still-flowing'), 'the open stream keeps flowing');
    const endAt = Date.now();
    s.end();
    await ended(s);
    const exit = await p.exited;
    t2.equal(exit.code, 0, 'exit 0 after a graceful shutdown');
    t2.ok(exit.at - endAt < 10_000, `exited once the stream finished (${exit.at - endAt} ms), long before the 30 s timeout`);
    t2.ok(p.logs.some((l) => l.event === 'stopped'));
  });

  tt.test('second SIGTERM → exits at once', async (t2) => {
    const p = spawnApilb(t2, common);
    const port = await startedPort(p);
    const s = await dial(port);
    t2.teardown(() => s.destroy());
    t2.ok(await echoes(s, 'hello'));
    p.child.kill('SIGTERM');
    await p.event('shutdown');
    t2.ok(await echoes(s, 'draining'), 'stream open during the graceful phase');
    const secondAt = Date.now();
    p.child.kill('SIGTERM');
    const exit = await p.exited;
    t2.equal(exit.code, 1, 'forced exit code');
    t2.ok(exit.at - secondAt < 5000, `exited at once (${exit.at - secondAt} ms), without waiting for the 30 s timeout`);
    t2.ok(
      p.logs.some((l) => l.event === 'signal' && String(l.msg).includes('again')),
      'logged as a forced exit',
    );
  });
});

t.test('SIGHUP reloads the configuration file of a running apilb', async (tt) => {
  const a = await echoServer('a');
  const b = await echoServer('b');
  tt.teardown(() => a.close());
  tt.teardown(() => b.close());
  const dir = mkdtempSync(join(tmpdir(), 'apilb-sighup-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'apilb.yaml');
  const write = (backends: string[], extra: string[] = []) =>
    writeFileSync(
      file,
      [`backends: [${backends.join(', ')}]`, 'healthCheckMode: tcp', 'listen: ["127.0.0.1:0"]', 'adminListen: 127.0.0.1:0', ...extra, ''].join('\n'),
    );
  write([a.address]);
  const p = spawnApilb(tt, ['--config', file]);
  const port = await startedPort(p);
  const s = await dial(port);
  tt.teardown(() => s.destroy());
  tt.equal((await readBytes(s, 2)).toString(), 'a\n');

  write([b.address]);
  p.child.kill('SIGHUP');
  const reloaded = await p.event('reloaded');
  tt.same(reloaded.changes, [`backends: +${b.address} -${a.address}`]);
  const s2 = await dial(port);
  tt.teardown(() => s2.destroy());
  tt.equal((await readBytes(s2, 2)).toString(), 'b\n', 'new connections go to the new backend');
  tt.ok(await echoes(s, 'old-stream'), 'the stream to the removed backend drains (60 s default)');

  write([b.address], ['connectTimeout: soon']);
  p.child.kill('SIGHUP');
  const rejected = await p.event('reload_rejected');
  tt.match(rejected.err, 'connectTimeout: "soon" is not a duration');
  tt.equal(rejected.code, 'APILB_ERR_RELOAD_REJECTED');
  p.child.kill('SIGTERM');
  s.destroy();
  s2.destroy();
  const exit = await p.exited;
  tt.equal(exit.code, 0);
});

t.test('SIGHUP while apilb is still starting (first health round) does not kill it', async (tt) => {
  // A backend that accepts and never answers: the first https check round waits for its timeout, and its
  // accepted check connection tells the test that apilb is inside startup.
  const { silentServer } = await import('./support/net.js');
  const hung = await silentServer();
  tt.teardown(() => hung.close());
  const child = spawnDaemon(tt, [
    '--listen',
    '127.0.0.1:0',
    '--admin-listen',
    '127.0.0.1:0',
    '--backend',
    hung.address,
    '--health-check-insecure',
    '--health-check-timeout',
    '1s',
    '--log-level',
    'info',
  ]);
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  let exit: { code: number | null; signal: string | null } | undefined;
  child.once('exit', (code, signal) => (exit = { code, signal }));
  await until(() => hung.accepted > 0, 'the first health check to reach the backend', 10_000);
  tt.notOk(out.includes('"event":"started"'), 'still starting');
  child.kill('SIGHUP');
  await until(() => err.includes('SIGHUP while starting: ignored') || exit, 'the early SIGHUP to be handled', 5000);
  tt.equal(exit, undefined, 'not killed by SIGHUP');
  await until(() => out.includes('"event":"started"'), 'startup to finish', 10_000);
  child.kill('SIGTERM');
  await until(() => exit, 'exit after SIGTERM', 15_000);
  tt.equal(exit!.code, 0);
});
