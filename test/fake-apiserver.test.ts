/**
 * The kube-apiserver stand-in, exercised by real clients on loopback: node https (HTTP/1.1), node http2, curl and
 * kubectl; mutual TLS; fault controls (not ready, graceful shutdown, crash, hang) in-process and SIGSTOP in a child.
 */
import t, { type Test } from 'tap';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { connect as http2Connect, type ClientHttp2Session } from 'node:http2';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createTestCA,
  h1Request,
  h2Request,
  runCurl,
  runKubectl,
  spawnFakeApiServer,
  startDemoBackends,
  startFakeApiServer,
  waitFor,
  writeKubeconfig,
  type FakeApiServer,
  type FakeApiServerOptions,
  type TestRequest,
} from './support/index.js';

const ca = createTestCA();
const client = ca.client('system:node:node-1', 'system:nodes');
const admin = ca.client('demo-user', 'system:masters');
const other = createTestCA({ name: 'other-ca' });
const stranger = other.client('mallory', 'system:masters');
// One serving cert for every in-process server: issuing one per server costs an openssl run each.
const leaf = ca.server('apiserver');
t.teardown(() => {
  ca.remove();
  other.remove();
});

async function start(tt: Test, opts: Partial<FakeApiServerOptions> = {}): Promise<FakeApiServer> {
  const s = await startFakeApiServer({ ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert }, ...opts });
  tt.teardown(() => s.close());
  return s;
}

const withCert = (s: FakeApiServer, path: string, extra: Partial<TestRequest> = {}): TestRequest => ({
  port: s.port,
  path,
  ca: ca.cert,
  cert: client.cert,
  key: client.key,
  ...extra,
});

/** Opens a watch over HTTP/2 on its own session and records event lines. */
function h2Watch(
  port: number,
  path = '/api/v1/namespaces/default/pods?watch=true',
): {
  session: ClientHttp2Session;
  events: { type: string }[];
  ended: Promise<'end' | Error>;
} {
  const session = http2Connect(`https://127.0.0.1:${port}`, { ca: ca.cert, cert: client.cert, key: client.key });
  session.on('error', function onSessionError() {
    /* reported through the stream */
  });
  const events: { type: string }[] = [];
  const stream = session.request({ ':path': path });
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      events.push(JSON.parse(buf.slice(0, nl)) as { type: string });
      buf = buf.slice(nl + 1);
    }
  });
  const ended = new Promise<'end' | Error>((resolve) => {
    stream.once('end', () => resolve('end'));
    stream.once('error', (err) => resolve(err));
  });
  stream.end();
  return { session, events, ended };
}

t.test('HTTP/2 and HTTP/1.1 both serve; client cert CN/O echoed; every response names the server', async (tt) => {
  const s = await start(tt, { name: 'apiserver-7' });
  for (const req of [h1Request, h2Request]) {
    const who = await req(withCert(s, '/whoami'));
    tt.equal(who.status, 200);
    tt.same(JSON.parse(who.text), { cn: 'system:node:node-1', o: ['system:nodes'], server: 'apiserver-7', httpVersion: who.httpVersion });
    tt.equal(who.headers['x-apiserver-name'], 'apiserver-7');
    const ready = await req({ port: s.port, path: '/readyz', ca: ca.cert });
    tt.same([ready.status, ready.text, ready.headers['x-apiserver-name']], [200, 'ok', 'apiserver-7']);
    const version = JSON.parse((await req({ port: s.port, path: '/version', ca: ca.cert })).text) as Record<string, string>;
    tt.same([version.major, version.minor, version.gitVersion], ['1', '31', 'v1.31.0']);
    const missing = await req(withCert(s, '/nope'));
    tt.same([missing.status, missing.headers['x-apiserver-name'], (JSON.parse(missing.text) as { reason: string }).reason], [404, 'apiserver-7', 'NotFound']);
  }
  tt.same([(await h1Request(withCert(s, '/whoami'))).httpVersion, (await h2Request(withCert(s, '/whoami'))).httpVersion], ['1.1', '2.0']);
  tt.equal(s.requests, 10);
  tt.equal(s.connections, 10);
  await waitFor(() => s.activeConnections === 0, { what: 'client connections to close' });
  tt.equal(s.address, `127.0.0.1:${s.port}`);
});

t.test('curl over --http2 and --http1.1 with --cacert --cert --key', async (tt) => {
  const s = await start(tt, { name: 'curl-target' });
  for (const [flag, want] of [
    ['--http2', '2'],
    ['--http1.1', '1.1'],
  ] as const) {
    const r = await runCurl([
      flag,
      '--cacert',
      ca.certFile,
      '--cert',
      admin.certFile,
      '--key',
      admin.keyFile,
      '-D',
      '-',
      '-w',
      '\n%{http_version}',
      `https://127.0.0.1:${s.port}/whoami`,
    ]);
    tt.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split(/\r?\n/);
    tt.equal(lines.at(-1), want, `${flag} negotiated`);
    tt.match(r.stdout, /^x-apiserver-name: curl-target\r?$/m);
    tt.same(JSON.parse(lines.at(-2)!), { cn: 'demo-user', o: ['system:masters'], server: 'curl-target', httpVersion: want === '2' ? '2.0' : '1.1' });
  }
  const anon = await runCurl(['--http2', '--cacert', ca.certFile, '-w', ' %{http_code}', `https://localhost:${s.port}/readyz`]);
  tt.equal(anon.stdout, 'ok 200', 'anonymous readyz by hostname (SAN localhost)');
});

t.test('authentication: anonymous, anonymousAuth=false, and a cert from another CA', async (tt) => {
  const open = await start(tt);
  const whoAnon = await h2Request({ port: open.port, path: '/whoami', ca: ca.cert });
  tt.equal(whoAnon.status, 403, 'anonymous may not read /whoami');
  tt.match(whoAnon.text, /system:anonymous/);
  for (const path of ['/readyz', '/livez', '/healthz', '/version']) {
    tt.equal((await h1Request({ port: open.port, path, ca: ca.cert })).status, 200, `anonymous ${path}`);
  }
  const foreign = await h2Request({ port: open.port, path: '/whoami', ca: ca.cert, cert: stranger.cert, key: stranger.key });
  tt.same([foreign.status, (JSON.parse(foreign.text) as { reason: string }).reason], [401, 'Unauthorized'], 'unverifiable cert');

  const closed = await start(tt, { anonymousAuth: false });
  for (const req of [h1Request, h2Request]) {
    for (const path of ['/readyz', '/version', '/whoami']) {
      const r = await req({ port: closed.port, path, ca: ca.cert });
      tt.equal(r.status, 401, `no cert ${path}`);
      tt.equal(r.headers['x-apiserver-name'], 'apiserver-1');
    }
    tt.equal((await req({ port: closed.port, path: '/readyz', ca: ca.cert, cert: stranger.cert, key: stranger.key })).status, 401);
    tt.equal((await req(withCert(closed, '/readyz'))).status, 200, 'valid cert passes');
  }
  const review = await h2Request(withCert(closed, '/apis/authentication.k8s.io/v1/selfsubjectreviews', { method: 'POST', body: '{}' }));
  tt.equal(review.status, 201);
  tt.same((JSON.parse(review.text) as { status: unknown }).status, {
    userInfo: { username: 'system:node:node-1', groups: ['system:nodes', 'system:authenticated'] },
  });
});

t.test('setReady flips /readyz with a kube-like body; livez stays ok', async (tt) => {
  const s = await start(tt);
  s.setReady(false);
  const r = await h2Request({ port: s.port, path: '/readyz', ca: ca.cert });
  tt.equal(r.status, 500);
  tt.match(r.text, /\[-\]etcd-readiness failed: reason withheld\n/);
  tt.match(r.text, /readyz check failed\n$/);
  tt.equal((await h2Request({ port: s.port, path: '/readyz/etcd-readiness', ca: ca.cert })).status, 500);
  tt.equal((await h2Request({ port: s.port, path: '/livez', ca: ca.cert })).status, 200);
  s.setReady(true);
  tt.same((await h1Request({ port: s.port, path: '/readyz', ca: ca.cert })).text, 'ok');
  tt.match((await h1Request({ port: s.port, path: '/readyz?verbose', ca: ca.cert })).text, /\[\+\]shutdown ok\nreadyz check passed\n$/);
});

t.test('large list and echo-size return exactly the requested bytes over both protocols', async (tt) => {
  const s = await start(tt);
  for (const req of [h1Request, h2Request]) {
    const list = await req(withCert(s, '/api/v1/pods'));
    tt.equal(list.body.length, 1024 * 1024, 'default list ~1 MiB');
    const doc = JSON.parse(list.text) as { kind: string; items: unknown[] };
    tt.equal(doc.kind, 'PodList');
    tt.ok(doc.items.length > 500, `${doc.items.length} pods`);
    tt.equal((await req(withCert(s, '/api/v1/pods?bytes=300000'))).body.length, 300000);
    const echo = await req(withCert(s, '/echo-size?bytes=5000001', { timeoutMs: 20000 }));
    tt.equal(echo.body.length, 5000001);
    tt.equal(echo.headers['content-length'], '5000001');
    tt.equal((await req(withCert(s, '/echo-size?bytes=-1'))).status, 400);
  }
});

t.test('a watch streams one event per interval for as long as the client stays, over HTTP/2 and HTTP/1.1', async (tt) => {
  const s = await start(tt, { watchIntervalMs: 20 });
  const w = h2Watch(s.port);
  tt.teardown(() => w.session.destroy());
  await waitFor(() => w.events.length >= 10, { what: '10 watch events' });
  tt.equal(w.events[0]!.type, 'ADDED');
  tt.equal(w.events[1]!.type, 'MODIFIED');
  w.session.destroy();

  // HTTP/1.1 watch on /watch, read as raw chunked lines.
  const sock = tlsConnect({
    port: s.port,
    host: '127.0.0.1',
    ca: ca.cert,
    cert: client.cert,
    key: client.key,
    ALPNProtocols: ['http/1.1'],
    servername: 'localhost',
  });
  tt.teardown(() => sock.destroy());
  sock.write('GET /watch HTTP/1.1\r\nHost: x\r\n\r\n');
  let text = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => (text += d));
  await waitFor(() => (text.match(/"type":"MODIFIED"/g) ?? []).length >= 5, { what: 'HTTP/1.1 watch events' });
  tt.match(text, /^HTTP\/1\.1 200 OK\r\n/);
  tt.match(text, /transfer-encoding: chunked/i);
  tt.match(text, /x-apiserver-name: apiserver-1/i);
  sock.destroy();
  await waitFor(() => s.activeConnections === 0, { what: 'watch connections to close' });
});

t.test('gracefulShutdown: readyz 500 during the delay while serving, then listener closed and watches finish', async (tt) => {
  const s = await start(tt, { watchIntervalMs: 20 });
  const w = h2Watch(s.port);
  tt.teardown(() => w.session.destroy());
  await waitFor(() => w.events.length >= 1, { what: 'watch started' });
  const done = s.gracefulShutdown({ delayMs: 400 });
  tt.equal(s.gracefulShutdown(), done, 'second call returns the same promise');
  const before = w.events.length;
  const ready = await h1Request({ port: s.port, path: '/readyz', ca: ca.cert });
  tt.equal(ready.status, 500);
  tt.match(ready.text, /\[-\]shutdown failed: reason withheld/);
  tt.equal((await h2Request(withCert(s, '/whoami'))).status, 200, 'still serving during the delay');
  tt.equal((await h1Request({ port: s.port, path: '/livez', ca: ca.cert })).status, 200, 'livez unaffected');
  await waitFor(() => w.events.length >= before + 3, { what: 'watch events during the delay' });
  tt.equal(await w.ended, 'end', 'the in-flight watch ends cleanly once the listener closes');
  const refused = await new Promise<string>((resolve) => {
    const c = netConnect({ port: s.port, host: '127.0.0.1' });
    c.once('connect', () => {
      c.destroy();
      resolve('connected');
    });
    c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
  tt.equal(refused, 'ECONNREFUSED', 'listener closed after the delay');
  await done;
  tt.equal(s.activeConnections, 0);
});

t.test('gracefulShutdown lets an in-flight HTTP/1.1 response finish and then closes the connection', async (tt) => {
  const s = await start(tt);
  s.hang();
  const inflight = h1Request(withCert(s, '/echo-size?bytes=1000'));
  await waitFor(() => s.connections === 1, { what: 'connection accepted' });
  const done = s.gracefulShutdown({ delayMs: 0 });
  await waitFor(() => !s.isReady && s.activeConnections === 1, { what: 'draining' });
  s.resume();
  const r = await inflight;
  tt.same([r.status, r.body.length], [200, 1000]);
  await done;
  tt.equal(s.activeConnections, 0);
});

t.test('crash: an open connection gets ECONNRESET and the port refuses', async (tt) => {
  const s = await start(tt);
  const sock = tlsConnect({
    port: s.port,
    host: '127.0.0.1',
    ca: ca.cert,
    cert: client.cert,
    key: client.key,
    ALPNProtocols: ['http/1.1'],
    servername: 'localhost',
  });
  tt.teardown(() => sock.destroy());
  await new Promise((resolve) => sock.once('secureConnect', resolve));
  sock.write('GET /watch HTTP/1.1\r\nHost: x\r\n\r\n');
  await new Promise((resolve) => sock.once('data', resolve));
  const w = h2Watch(s.port);
  tt.teardown(() => w.session.destroy());
  const sessionErr = new Promise<NodeJS.ErrnoException>((resolve) => w.session.once('error', resolve));
  await waitFor(() => w.events.length >= 1, { what: 'HTTP/2 watch running' });
  const err = new Promise<NodeJS.ErrnoException>((resolve) => sock.once('error', resolve));
  await s.crash();
  tt.equal((await err).code, 'ECONNRESET', 'HTTP/1.1 connection reset');
  tt.equal((await sessionErr).code, 'ECONNRESET', 'HTTP/2 session reset');
  tt.not(await w.ended, 'end', 'the watch did not end cleanly');
  await tt.rejects(h2Request({ port: s.port, path: '/readyz', ca: ca.cert }), { code: 'ECONNREFUSED' });
  tt.equal(s.activeConnections, 0);
});

t.test('hang: TCP connects but requests time out, existing watches go silent; resume restores', async (tt) => {
  const s = await start(tt, { watchIntervalMs: 10 });
  const w = h2Watch(s.port);
  tt.teardown(() => w.session.destroy());
  await waitFor(() => w.events.length >= 2, { what: 'watch running' });
  const pinger = http2Connect(`https://127.0.0.1:${s.port}`, { ca: ca.cert, cert: client.cert, key: client.key });
  tt.teardown(() => pinger.destroy());
  await new Promise((resolve) => pinger.once('connect', resolve));
  s.hang();
  const frozenAt = w.events.length;

  const raw = await new Promise<Socket>((resolve, reject) => {
    const c = netConnect({ port: s.port, host: '127.0.0.1' }, () => resolve(c));
    c.once('error', reject);
  });
  tt.teardown(() => raw.destroy());
  await tt.rejects(h2Request({ port: s.port, path: '/readyz', ca: ca.cert, timeoutMs: 300 }), { code: 'ETIMEDOUT' }, 'new connection: no TLS handshake');
  await tt.rejects(h1Request({ port: s.port, path: '/readyz', ca: ca.cert, timeoutMs: 300 }), { code: 'ETIMEDOUT' });
  let pong = false;
  pinger.ping(() => (pong = true));
  const onOld = pinger.request({ ':path': '/readyz' });
  let oldStatus = 0;
  onOld.on('response', (h) => (oldStatus = Number(h[':status'])));
  onOld.resume();
  onOld.end();
  tt.ok(w.events.length <= frozenAt + 1, 'watch silent while hung');
  tt.same([pong, oldStatus], [false, 0], 'existing connection: no PING ack, no response');
  tt.ok(s.connections >= 4, 'TCP connections were still accepted');

  s.resume();
  await waitFor(() => pong && oldStatus === 200, { what: 'the stalled connection to answer after resume' });
  await waitFor(() => w.events.length >= frozenAt + 3, { what: 'watch events after resume' });
  tt.equal((await h2Request({ port: s.port, path: '/readyz', ca: ca.cert })).status, 200);
});

t.test('child process: SIGSTOP accepts TCP but answers nothing; SIGCONT answers again', async (tt) => {
  const child = await spawnFakeApiServer({ ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert }, name: 'proc-1' });
  tt.teardown(() => child.close());
  tt.equal(child.address, `127.0.0.1:${child.port}`);
  const first = await h2Request({ port: child.port, path: '/whoami', ca: ca.cert, cert: client.cert, key: client.key });
  tt.same(JSON.parse(first.text), { cn: 'system:node:node-1', o: ['system:nodes'], server: 'proc-1', httpVersion: '2.0' });
  child.stop();
  await waitFor(() => /^T/m.test(readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1] ?? ''), { what: 'process stopped' });
  const raw = await new Promise<Socket>((resolve, reject) => {
    const c = netConnect({ port: child.port, host: '127.0.0.1' }, () => resolve(c));
    c.once('error', reject);
  });
  raw.destroy();
  tt.pass('kernel completed the TCP handshake for the stopped process');
  await tt.rejects(h1Request({ port: child.port, path: '/readyz', ca: ca.cert, timeoutMs: 300 }), { code: 'ETIMEDOUT' });
  child.cont();
  tt.equal((await h1Request({ port: child.port, path: '/readyz', ca: ca.cert })).text, 'ok');
  await child.kill('SIGTERM');
  tt.equal(child.child.exitCode, 0, 'SIGTERM: graceful exit');
});

t.test('kubectl version, get --raw and auth whoami against the stand-in', async (tt) => {
  const s = await start(tt, { name: 'kubectl-target' });
  const dir = mkdtempSync(join(tmpdir(), 'apilb-kubectl-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = writeKubeconfig({ path: join(dir, 'config'), server: `https://127.0.0.1:${s.port}`, caCert: ca.cert, cert: admin.cert, key: admin.key });
  const version = await runKubectl(kubeconfig, ['version', '-o', 'json']);
  tt.equal(version.code, 0, version.stderr);
  tt.equal((JSON.parse(version.stdout) as { serverVersion: { gitVersion: string } }).serverVersion.gitVersion, 'v1.31.0');
  const raw = await runKubectl(kubeconfig, ['get', '--raw', '/readyz']);
  tt.same([raw.code, raw.stdout], [0, 'ok']);
  const whoami = await runKubectl(kubeconfig, ['auth', 'whoami', '-o', 'json']);
  tt.equal(whoami.code, 0, whoami.stderr);
  tt.same((JSON.parse(whoami.stdout) as { status: unknown }).status, {
    userInfo: { username: 'demo-user', groups: ['system:masters', 'system:authenticated'] },
  });
  s.setReady(false);
  const notReady = await runKubectl(kubeconfig, ['get', '--raw', '/readyz']);
  tt.not(notReady.code, 0, 'kubectl reports the 500');
});

t.test('startDemoBackends: three named servers and a kubeconfig kubectl can use', async (tt) => {
  const demo = await startDemoBackends({ count: 3 });
  tt.teardown(() => demo.close());
  tt.same(
    demo.servers.map((x) => x.name),
    ['apiserver-1', 'apiserver-2', 'apiserver-3'],
  );
  tt.same(
    demo.backends,
    demo.servers.map((x) => `127.0.0.1:${x.port}`),
  );
  tt.match(readFileSync(demo.kubeconfigPath, 'utf8'), /server: "https:\/\/127\.0\.0\.1:6443"/);
  const dir = mkdtempSync(join(tmpdir(), 'apilb-demo-'));
  tt.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const direct = writeKubeconfig({
    path: join(dir, 'config'),
    server: `https://${demo.backends[1]}`,
    caCert: demo.ca.cert,
    cert: demo.client.cert,
    key: demo.client.key,
  });
  const r = await runKubectl(direct, ['get', '--raw', '/whoami']);
  tt.equal(r.code, 0, r.stderr);
  tt.same(JSON.parse(r.stdout), { cn: 'demo-user', o: ['system:masters'], server: 'apiserver-2', httpVersion: '2.0' });
  await demo.close();
  tt.same(
    demo.servers.map((x) => x.activeConnections),
    [0, 0, 0],
  );
});

t.test('listens on IPv6 loopback too', async (tt) => {
  const s = await start(tt, { host: '::1' });
  tt.equal(s.address, `[::1]:${s.port}`);
  for (const req of [h1Request, h2Request]) {
    tt.equal((await req({ host: '::1', port: s.port, path: '/readyz', ca: ca.cert })).text, 'ok');
  }
});

t.test('options are validated', async (tt) => {
  const tls = { cert: leaf.cert, key: leaf.key, caCert: ca.cert };
  for (const bad of [{ name: 'has space' }, { port: 70000 }, { host: 'example.com' }, { watchIntervalMs: -1 }, { version: '1.31' }, { anonymousAuth: 'yes' }]) {
    await tt.rejects(startFakeApiServer({ ca: tls, ...(bad as object) }), { code: 'APILB_ERR_OPTION_INVALID' }, JSON.stringify(bad));
  }
  await tt.rejects(startFakeApiServer({} as FakeApiServerOptions), { code: 'APILB_ERR_OPTION_INVALID' });
  await tt.rejects(startDemoBackends({ count: 0 }), { code: 'APILB_ERR_OPTION_INVALID' });
  const s = await start(tt);
  tt.throws(() => s.gracefulShutdown({ delayMs: -5 }), { code: 'APILB_ERR_OPTION_INVALID' });
});

t.test('close() releases every handle, even with open watches and a hang', async (tt) => {
  const handles = (): number => (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().length;
  const base = handles();
  const s = await startFakeApiServer({ ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert }, watchIntervalMs: 5 });
  const w = h2Watch(s.port);
  await waitFor(() => w.events.length >= 2, { what: 'watch running' });
  s.hang();
  const pending = h1Request({ port: s.port, path: '/readyz', ca: ca.cert, timeoutMs: 2000 }).catch((err: Error) => err);
  await waitFor(() => s.connections === 2, { what: 'second connection accepted' });
  await s.close();
  await w.ended;
  w.session.destroy();
  tt.type(await pending, Error);
  await waitFor(() => handles() <= base, { what: `handles back to ${base} (now ${handles()})` });
  tt.equal(s.activeConnections, 0);
});
