/**
 * Socket activation: environment parsing in-process, and real fd passing to a child (fds 3 and 4 at the child's
 * fd table, LISTEN_PID set by `sh -c 'export LISTEN_PID=$$; exec …'` the way systemd sets it after fork).
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ADMIN_FD_NAME, listenFds, listenOnFds, splitListenFds } from '../src/systemd/listen-fds.js';

const MODULE_URL = new URL('../src/systemd/listen-fds.js', import.meta.url).href;

// Runs in the child: adopts the passed fds, reports what it saw, echoes on every listener until SIGTERM.
const CHILD = `
import { listenFds, listenOnFds } from ${JSON.stringify(MODULE_URL)};
try {
  const fds = listenFds();
  const ls = await listenOnFds(fds);
  for (const l of ls) l.server.on('connection', function onEchoConnection(s) { s.on('error', () => {}); s.pipe(s); });
  console.log(JSON.stringify({
    pid: process.pid,
    fds,
    addresses: ls.map((l) => l.server.address()),
    env: [process.env.LISTEN_PID, process.env.LISTEN_FDS, process.env.LISTEN_FDNAMES],
  }));
  process.once('SIGTERM', function onChildTerm() { for (const l of ls) l.server.close(); });
} catch (err) {
  console.log(JSON.stringify({ error: err.code, message: err.message }));
}
`;

interface ChildReport {
  pid?: number;
  fds?: { fd: number; name: string }[];
  addresses?: AddressInfo[];
  env?: (string | null)[];
  error?: string;
  message?: string;
}

function listen(t: Test, host: string): Promise<Server> {
  const s = createServer();
  t.teardown(() => {
    if (s.listening) s.close();
  });
  return new Promise((resolve) => s.listen({ port: 0, host }, () => resolve(s)));
}

function handleFd(h: unknown): number {
  const fd = (h as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('no fd on handle');
  return fd;
}

/** Starts the child with `fds` at 3, 4, … and LISTEN_* set as systemd would; resolves with its report. */
async function runChild(t: Test, fds: number[], names: string | undefined): Promise<{ report: ChildReport; stop: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'apilb-fds-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const script = join(dir, 'child.mts');
  writeFileSync(script, CHILD);
  const env: NodeJS.ProcessEnv = { ...process.env, LISTEN_FDS: String(fds.length) };
  if (names !== undefined) env.LISTEN_FDNAMES = names;
  const child = spawn('sh', ['-c', 'export LISTEN_PID=$$; exec "$0" "$@"', process.execPath, ...process.execArgv, script], {
    env,
    stdio: ['ignore', 'pipe', 'inherit', ...fds],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', resolve);
    child.once('exit', function onEarlyExit(code) {
      reject(new Error(`child exited with ${code}`));
    });
  });
  return {
    report: JSON.parse(line) as ChildReport,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

function echo(port: number, host: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host });
    let got = '';
    s.setEncoding('utf8');
    s.on('data', function onEchoData(d: string) {
      got += d;
      if (got.length >= text.length) s.end();
    });
    s.on('close', () => resolve(got));
    s.on('error', reject);
    s.write(text);
  });
}

t.test('LISTEN_* parsing and clean-up', async (t) => {
  const mine = { LISTEN_PID: '4242', LISTEN_FDS: '2', LISTEN_FDNAMES: 'a:b', OTHER: 'x' };
  let env: NodeJS.ProcessEnv = { ...mine, LISTEN_PID: '4243' };
  t.same(listenFds(env, 4242), [], 'fds meant for another PID are ignored');
  t.same(env, { OTHER: 'x' }, 'and the variables are removed anyway');
  t.same(listenFds({}, 4242), [], 'nothing passed');
  t.same(listenFds({ LISTEN_PID: '4242', LISTEN_FDS: '0' }, 4242), []);
  t.same(listenFds({ LISTEN_PID: '4242' }, 4242), []);
  t.throws(() => listenFds({ LISTEN_PID: 'me', LISTEN_FDS: '1' }, 4242), { code: 'APILB_ERR_SYSTEMD' });
  t.throws(() => listenFds({ LISTEN_PID: '4242', LISTEN_FDS: '-1' }, 4242), { code: 'APILB_ERR_SYSTEMD' });
  env = { ...mine, LISTEN_FDNAMES: 'only-one' };
  t.throws(() => listenFds(env, 4242), { code: 'APILB_ERR_SYSTEMD', message: /1 names for LISTEN_FDS=2/ });
  t.same(env, { OTHER: 'x' });
  t.throws(() => listenFds({ LISTEN_PID: '4242', LISTEN_FDS: '200' }, 4242), {
    code: 'APILB_ERR_SYSTEMD',
    message: /LISTEN_FDS=200 but fd \d+ is not (open|a socket)/,
  });
  const split = splitListenFds([
    { fd: 3, name: 'apilb' },
    { fd: 4, name: ADMIN_FD_NAME },
    { fd: 5, name: 'unknown' },
  ]);
  t.same(split, {
    listeners: [
      { fd: 3, name: 'apilb' },
      { fd: 5, name: 'unknown' },
    ],
    admin: [{ fd: 4, name: 'admin' }],
  });
  await t.rejects(listenOnFds([], undefined, 0), { code: 'APILB_ERR_OPTION_INVALID' });
});

t.test('a child serves on the fds it was passed, with their names, and clears LISTEN_*', async (t) => {
  const v4 = await listen(t, '127.0.0.1');
  const v6 = await listen(t, '::1');
  const p4 = (v4.address() as AddressInfo).port;
  const p6 = (v6.address() as AddressInfo).port;
  const { report, stop } = await runChild(t, [handleFd(v4), handleFd(v6)], 'apilb:apilb6');
  // The child holds its own copies now; ours are closed so only the child can accept.
  await new Promise<void>((r) => v4.close(() => r()));
  await new Promise<void>((r) => v6.close(() => r()));
  t.same(report.fds, [
    { fd: 3, name: 'apilb' },
    { fd: 4, name: 'apilb6' },
  ]);
  t.same(
    report.addresses?.map((a) => [a.address, a.port]),
    [
      ['127.0.0.1', p4],
      ['::1', p6],
    ],
  );
  t.same(report.env, [null, null, null], 'LISTEN_* removed from the child environment');
  t.equal(await echo(p4, '127.0.0.1', 'hello v4'), 'hello v4');
  t.equal(await echo(p6, '::1', 'hello v6'), 'hello v6');
  await stop();
});

t.test("an adopted fd listens with listenOnFds' backlog, not Node's 511", async (t) => {
  // The "socket unit" here listens with Node's default backlog (511); apilb.socket has Backlog=4096.
  const v4 = await listen(t, '127.0.0.1');
  const port = (v4.address() as AddressInfo).port;
  const { stop } = await runChild(t, [handleFd(v4)], 'apilb');
  await new Promise<void>((r) => v4.close(() => r()));
  // ss shows a listening socket's backlog in Send-Q (the 3rd column with -H).
  const ss = spawnSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' });
  if (ss.error) throw new Error(`ss (iproute2) is needed for this test: ${ss.error.message}`);
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  const backlog = Number(ss.stdout.trim().split(/\s+/)[2]);
  t.comment(`backlog after adoption: ${backlog} (somaxconn ${somaxconn})`);
  t.equal(backlog, Math.min(4096, somaxconn), 'listenOnFds re-listens with backlog 4096 (capped by somaxconn)');
  await stop();
});

t.test('names default to "unknown"; a datagram fd is refused with APILB_ERR_SYSTEMD', async (t) => {
  const udp = createSocket('udp4');
  t.teardown(() => udp.close());
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
  const { report, stop } = await runChild(t, [handleFd(udp)], undefined);
  t.equal(report.error, 'APILB_ERR_SYSTEMD');
  t.match(report.message, /cannot serve on passed fd 3 \(unknown\)/);
  await stop();
});
