/**
 * The loopback guard (test/support/loopback-guard.mjs) that every test process and its Node children load: a
 * connect to a non-loopback address is refused before a socket handle exists (so no packet can leave) with an
 * error naming the address and the rule, and recorded so the test file fails; loopback, `localhost` and Unix
 * sockets pass; children inherit it; a network namespace the tests create is left alone. The addresses refused
 * here are TEST-NET/documentation ranges, never routed.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
// @ts-expect-error plain JavaScript module (it must load in children without a TypeScript loader): no types
import { active, forgetViolations, GUARD_CODE, isLoopback, violations } from './support/loopback-guard.mjs';
import { tempDir } from './support/index.js';

type GuardError = Error & { code?: string };

/** The error (or 'connected') of `s`; whether it had a handle right after connect() returned. */
function outcome(s: Socket): Promise<GuardError | 'connected'> {
  return new Promise((resolve) => {
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', resolve);
  });
}

/** Expects `count` new violations naming `address`, then forgets them (they were provoked on purpose). */
function expectRecorded(tt: Test, address: string, count = 1): void {
  const seen = (violations() as string[]).filter((l) => l.includes(address));
  tt.equal(seen.length, count, `${address}: recorded for the test file's exit status`);
  forgetViolations();
}

t.test('the guard is loaded into this test process (tap node-arg)', async (tt) => {
  tt.equal(active, true);
});

t.test('a connect to 192.0.2.1:9 is refused by the guard before a socket handle (and so any packet) exists', async (tt) => {
  const s = connect(9, '192.0.2.1');
  tt.equal((s as unknown as { _handle: unknown })._handle ?? null, null, 'no handle: nothing was sent');
  const r = await outcome(s);
  tt.not(r, 'connected');
  const err = r as GuardError;
  tt.equal(err.code, GUARD_CODE, "the guard's error, not a network one");
  tt.match(err.message, /^loopback guard: connect to 192\.0\.2\.1 port 9 refused .*tests must never connect to a non-loopback address/);
  expectRecorded(tt, '192.0.2.1');
});

t.test('every client path is guarded: tls, fetch (undici), a host name resolving off this machine, UDP', async (tt) => {
  const tls = await outcome(tlsConnect({ host: '10.0.0.1', port: 6443, rejectUnauthorized: false }));
  tt.equal((tls as GuardError).code, GUARD_CODE, 'tls.connect 10.0.0.1:6443');
  const f = await fetch('http://[2001:db8::1]:8080/').then(
    () => undefined,
    (e: Error) => e.cause as GuardError,
  );
  tt.equal(f?.code, GUARD_CODE, 'fetch http://[2001:db8::1]:8080');
  // A name is resolved with the socket's own lookup, then checked: an injected lookup stands in for DNS.
  const lookup = (_h: string, _o: object, cb: (e: null, a: string, f: number) => void) => cb(null, '198.51.100.7', 4);
  const named = await outcome(connect({ host: 'api.example', port: 6443, lookup: lookup as never }));
  tt.equal((named as GuardError).code, GUARD_CODE, 'a name resolving to 198.51.100.7');
  tt.match((named as GuardError).message, 'connect (api.example) to 198.51.100.7 port 6443');
  const udp = dgram.createSocket('udp4');
  tt.throws(() => udp.send('x', 53, '192.0.2.53'), { code: GUARD_CODE }, 'UDP send');
  udp.close();
  expectRecorded(tt, 'loopback guard', 4);
});

t.test('loopback, localhost and Unix sockets pass', async (tt) => {
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  tt.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const { port } = server.address() as AddressInfo;
  for (const host of ['127.0.0.1', 'localhost', '::ffff:127.0.0.1']) {
    tt.equal(await outcome(connect(port, host)), 'connected', host);
  }
  const unix = createServer((s) => s.end());
  const path = join(tempDir(tt, 'apilb-guard-'), 's.sock');
  await new Promise<void>((r) => unix.listen(path, r));
  tt.teardown(() => new Promise<void>((r) => unix.close(() => r())));
  tt.equal(await outcome(connect(path)), 'connected', 'a Unix socket');
  const table: [string, boolean][] = [
    ['127.0.0.1', true],
    ['127.255.0.9', true],
    ['::1', true],
    ['::ffff:127.0.0.2', true],
    ['0.0.0.0', true],
    ['::', true],
    ['10.0.0.1', false],
    ['192.0.2.1', false],
    ['::ffff:10.0.0.1', false],
    ['2001:db8::1', false],
    ['fe80::1', false],
    ['localhost', false],
  ];
  for (const [address, loopback] of table) tt.equal(isLoopback(address), loopback, `isLoopback(${address})`);
  tt.same(violations(), [], 'nothing recorded');
});

/** Runs a Node snippet that connects to 192.0.2.1:9 and prints the error code; `prefix` wraps the command. */
function childConnect(prefix: string[]): Promise<{ out: string; err: string }> {
  const code = "require('node:net').connect(9, '192.0.2.1').on('error', (e) => console.log(e.code)).on('connect', () => console.log('connected'))";
  return new Promise((resolve, reject) => {
    const [file, ...args] = [...prefix, process.execPath, '-e', code];
    const p = spawn(file!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    p.on('error', reject);
    p.on('close', () => resolve({ out: out.trim(), err }));
  });
}

t.test('a Node child inherits the guard (NODE_OPTIONS) and its violation fails this test file', async (tt) => {
  const r = await childConnect([]);
  tt.equal(r.out, GUARD_CODE, r.err);
  expectRecorded(tt, '192.0.2.1');
});

t.test('a network namespace the tests create is left alone (its addresses are its own)', async (tt) => {
  // A fresh namespace has only a down loopback and no route: the kernel answers, not the guard.
  const r = await childConnect(['unshare', '-n']);
  tt.not(r.out, GUARD_CODE, r.err);
  tt.match(r.out, /^E[A-Z]+$/, `a kernel error (${r.out}) ${r.err}`);
  tt.same(violations(), [], 'nothing recorded');
});
