/**
 * sd_notify against a real AF_UNIX/SOCK_DGRAM receiver (python3, the way systemd reads it: SO_PASSCRED on,
 * received fds closed, which is what releases systemd-notify's BARRIER=1 wait).
 */
import { CLI } from './support/cli.js';
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Notifier, watchdogIntervalFrom } from '../src/systemd/notify.js';
import { FakeClock } from './support/fake-clock.js';
import { until } from './support/net.js';

const RECEIVER = `
import socket, sys, os, array, json
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print(json.dumps({"bound": True}), flush=True)
while True:
    data, anc, flags, _ = s.recvmsg(65536, socket.CMSG_SPACE(64 * 4) + socket.CMSG_SPACE(12))
    fds = []
    pid = None
    for level, typ, d in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array('i'); a.frombytes(d[:len(d) - len(d) % 4]); fds.extend(a)
        elif level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(d[0:4], sys.byteorder)
    for fd in fds:
        os.close(fd)
    print(json.dumps({"msg": data.decode(), "fds": len(fds), "pid": pid}), flush=True)
`;

interface Datagram {
  msg: string;
  fds: number;
  pid: number | null;
}

interface Receiver {
  messages: Datagram[];
  child: ChildProcess;
}

/** Starts the python receiver bound to `address` and resolves once it is bound. */
async function startReceiver(t: Test, address: string): Promise<Receiver> {
  const child = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: Datagram[] = [];
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const lines = createInterface({ input: child.stdout! });
  await new Promise<void>((resolve, reject) => {
    function onReceiverExit(code: number | null): void {
      reject(new Error(`receiver exited early with ${code}`));
    }
    child.once('exit', onReceiverExit);
    lines.on('line', function onReceiverLine(line: string) {
      const obj = JSON.parse(line) as Datagram & { bound?: boolean };
      if (obj.bound) {
        child.off('exit', onReceiverExit);
        resolve();
      } else {
        messages.push(obj);
      }
    });
  });
  return { messages, child };
}

const waitFor = (cond: () => boolean, timeoutMs = 5000): Promise<boolean> => until(cond, 'condition', timeoutMs);

function tmp(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'apilb-notify-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const payloads = (r: Receiver): string[] => r.messages.map((m) => m.msg).filter((m) => m !== 'BARRIER=1');

t.test('without NOTIFY_SOCKET every call is a no-op', async (t) => {
  const n = new Notifier({ env: { WATCHDOG_USEC: '1000000' }, command: '/nonexistent/systemd-notify' });
  t.equal(n.enabled, false);
  t.equal(n.watchdogInterval, 0);
  t.equal(await n.ready('up'), false);
  t.equal(await n.stopping(), false);
  t.equal(await n.status('x'), false);
  t.equal(await n.watchdog(), false);
  t.equal(n.startWatchdog(), false);
  await n.close();
});

t.test('READY=1, STATUS=, STOPPING=1 reach a path socket in order, after the barrier', async (t) => {
  const path = join(tmp(t), 'notify.sock');
  const r = await startReceiver(t, path);
  const n = new Notifier({ env: { NOTIFY_SOCKET: path, PATH: process.env.PATH } });
  t.equal(n.enabled, true);
  t.equal(await n.ready('serving on 127.0.0.1:6443'), true);
  // ready() resolves only after systemd-notify's BARRIER=1 was processed, so the message is already there.
  await waitFor(() => r.messages.length >= 2);
  t.same(
    r.messages.slice(0, 2).map((m) => m.msg),
    ['READY=1\nSTATUS=serving on 127.0.0.1:6443', 'BARRIER=1'],
  );
  t.equal(r.messages[1]!.fds, 1, 'the barrier carries one fd, which the receiver closed');
  t.type(r.messages[0]!.pid, 'number', 'sent with credentials');
  await n.status('2/3 backends\nup');
  await n.stopping();
  await waitFor(() => payloads(r).length >= 3);
  t.same(payloads(r), ['READY=1\nSTATUS=serving on 127.0.0.1:6443', 'STATUS=2/3 backends up', 'STOPPING=1']);
  await n.close();
});

t.test('abstract-namespace socket (@name) and the watchdog loop', async (t) => {
  const address = `@apilb-test-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const r = await startReceiver(t, address);
  const errors: Error[] = [];
  const n = new Notifier({
    env: { NOTIFY_SOCKET: address, PATH: process.env.PATH, WATCHDOG_USEC: '200000', WATCHDOG_PID: String(process.pid) },
    onError: (e) => errors.push(e),
  });
  t.teardown(() => n.close());
  t.equal(n.watchdogInterval, 100, 'half of WATCHDOG_USEC, in ms');
  await n.ready();
  t.equal(n.startWatchdog(), true);
  t.equal(n.startWatchdog(), true, 'a second start keeps the one loop');
  await waitFor(() => payloads(r).filter((m) => m === 'WATCHDOG=1').length >= 3);
  await n.stopping('bye');
  await waitFor(() => payloads(r).includes('STOPPING=1\nSTATUS=bye'));
  const count = payloads(r).filter((m) => m === 'WATCHDOG=1').length;
  t.equal(payloads(r)[0], 'READY=1');
  t.same(errors, []);
  // After STOPPING=1 the loop is stopped: no ping follows it.
  await n.close();
  t.equal(payloads(r).filter((m) => m === 'WATCHDOG=1').length, count);
  t.equal(payloads(r).at(-1), 'STOPPING=1\nSTATUS=bye');
});

t.test('watchdog interval: WATCHDOG_PID must match when present', async (t) => {
  t.equal(watchdogIntervalFrom({ WATCHDOG_USEC: '30000000' }, 42), 15000, 'absent WATCHDOG_PID: ours');
  t.equal(watchdogIntervalFrom({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42), 15000);
  t.equal(watchdogIntervalFrom({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '43' }, 42), 0, 'meant for another process');
  t.equal(watchdogIntervalFrom({}, 42), 0);
  t.equal(watchdogIntervalFrom({ WATCHDOG_USEC: '0' }, 42), 0);
  t.equal(watchdogIntervalFrom({ WATCHDOG_USEC: 'abc' }, 42), 0);
  t.equal(watchdogIntervalFrom({ WATCHDOG_USEC: '1000' }, 42), 1, 'never below 1 ms');
  const n = new Notifier({ env: { NOTIFY_SOCKET: '/nonexistent', WATCHDOG_USEC: '30000000', WATCHDOG_PID: '1' }, pid: 2 });
  t.equal(n.startWatchdog(), false);
});

t.test('failures resolve false and reach onError with APILB_ERR_SYSTEMD; they never reject', async (t) => {
  const dir = tmp(t);
  const errors: Error[] = [];
  const onError = (e: Error): void => {
    errors.push(e);
  };
  const noListener = new Notifier({ env: { NOTIFY_SOCKET: join(dir, 'nobody.sock'), PATH: process.env.PATH }, onError });
  t.equal(await noListener.ready(), false);
  t.match(errors.pop(), { code: 'APILB_ERR_SYSTEMD', message: /READY=1 failed: systemd-notify exited with/ });
  const noHelper = new Notifier({ env: { NOTIFY_SOCKET: join(dir, 'x.sock') }, command: join(dir, 'no-such-helper'), onError });
  t.equal(await noHelper.ready(), false);
  t.match(errors.pop(), { code: 'APILB_ERR_SYSTEMD', message: /not found/ });
  const r = await startReceiver(t, join(dir, 'ok.sock'));
  const n = new Notifier({ env: { NOTIFY_SOCKET: join(dir, 'ok.sock'), PATH: process.env.PATH }, onError });
  t.equal(await n.send(['READY=1\nMAINPID=1']), false, 'a newline would inject a field');
  t.equal(await n.send(['lower=1']), false);
  t.equal(errors.length, 2);
  t.ok(errors.every((e) => (e as { code?: string }).code === 'APILB_ERR_SYSTEMD'));
  const throwing = new Notifier({
    env: { NOTIFY_SOCKET: join(dir, 'nobody.sock'), PATH: process.env.PATH },
    onError: () => {
      throw new Error('logger broke');
    },
  });
  t.equal(await throwing.status('x'), false, 'a throwing onError does not turn into a rejection');
  // Failed sends do not block the queue.
  t.equal(await n.ready(), true);
  await waitFor(() => payloads(r).includes('READY=1'));
  t.same(payloads(r), ['READY=1']);
  t.throws(() => new Notifier({ timeout: 0 }), /timeout/);
});

t.test('a helper killed by a signal after STOPPING=1 is expected, not an error (the cgroup is being stopped)', async (t) => {
  const dir = tmp(t);
  // systemd stops a unit with SIGTERM to every process of its cgroup, helpers started during the stop included.
  const helper = join(dir, 'killed');
  writeFileSync(helper, '#!/bin/sh\nkill -TERM $$\n');
  chmodSync(helper, 0o755);
  const errors: unknown[] = [];
  const n = new Notifier({ env: { NOTIFY_SOCKET: '/run/systemd/notify' }, command: helper, onError: (e) => errors.push(e) });
  t.teardown(() => n.close());
  t.equal(await n.status('serving'), false);
  t.match(errors, [{ code: 'APILB_ERR_SYSTEMD', message: /exited with SIGTERM/ }], 'while running, a killed helper is a failure');
  t.equal(await n.stopping('closing'), false, 'the STOPPING=1 send reports it was not delivered');
  t.equal(await n.status('closing'), false);
  t.equal(errors.length, 1, 'but after STOPPING=1 nothing reaches onError (nothing logged)');
});

t.test('watchdog schedule on an injected clock: at once, then every WATCHDOG_USEC/2', async (t) => {
  const dir = tmp(t);
  // A stand-in helper that records its arguments, so only the schedule is under test here.
  const log = join(dir, 'calls');
  const helper = join(dir, 'record');
  writeFileSync(helper, `#!/bin/sh\necho "$*" >> '${log}'\n`);
  chmodSync(helper, 0o755);
  const calls = (): string[] => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []);
  const clock = new FakeClock();
  const n = new Notifier({ env: { NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '10000000' }, command: helper, clock });
  t.teardown(() => n.close());
  t.equal(n.watchdogInterval, 5000);
  t.equal(n.startWatchdog(), true);
  await waitFor(() => calls().length === 1);
  await waitFor(() => clock.pending === 1, 2000); // only the next tick is left once the helper has exited
  clock.advance(4999);
  t.equal(calls().length, 1, 'not before the interval');
  clock.advance(1);
  await waitFor(() => calls().length === 2);
  t.same(calls(), ['WATCHDOG=1', 'WATCHDOG=1']);
  n.stopWatchdog();
  await waitFor(() => clock.pending === 0, 2000);
  clock.advance(60_000);
  t.equal(calls().length, 2, 'no ping after stopWatchdog');
});

t.test('apilb run under Type=notify: READY=1 once serving, WATCHDOG=1, STOPPING=1 on SIGTERM', async (t) => {
  const dir = tmp(t);
  const sock = join(dir, 'notify.sock');
  const receiver = await startReceiver(t, sock);
  const { createServer } = await import('node:net');
  const backend = createServer((s) => s.end());
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => backend.close(() => r())));
  const port = (backend.address() as { port: number }).port;
  const child = spawn(
    process.execPath,
    [
      CLI,
      'run',
      '--backend',
      `127.0.0.1:${port}`,
      '--listen',
      '127.0.0.1:0',
      '--admin-listen',
      '127.0.0.1:0',
      '--health-check-mode',
      'tcp',
      '--log-level',
      'warn',
    ],
    {
      stdio: ['ignore', 'ignore', 'inherit'],
      // WATCHDOG_USEC=1s: systemd expects a ping at least every second; apilb sends one every 500 ms.
      env: { ...process.env, NOTIFY_SOCKET: sock, WATCHDOG_USEC: '1000000' },
    },
  );
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  await waitFor(() => payloads(receiver).some((m) => m.startsWith('READY=1')), 15_000);
  const ready = payloads(receiver).find((m) => m.startsWith('READY=1'))!;
  t.match(ready, /STATUS=serving 1\/1 backends up/, 'READY=1 carries a status line after the first health round');
  await waitFor(() => payloads(receiver).includes('WATCHDOG=1'), 5000);
  t.pass('watchdog pings arrive');
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'clean exit on SIGTERM');
  t.ok(
    payloads(receiver).some((m) => m.startsWith('STOPPING=1')),
    'STOPPING=1 sent on shutdown',
  );
  const order = payloads(receiver).map((m) => m.split('\n')[0]);
  t.ok(order.indexOf('READY=1') < order.findIndex((m) => m!.startsWith('STOPPING=1')), 'READY before STOPPING');
});
