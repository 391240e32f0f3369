/**
 * End to end with real clients: kubectl and curl (real binaries, real TLS, client certificates) and node http2
 * watches, all through a real apilb Daemon in front of three kube-apiserver stand-ins, including while one of them
 * crashes, shuts down gracefully, hangs or drains; and `apilb demo` (the built CLI) used as its output says.
 */
import { CLI } from './support/cli.js';
import t, { type Test } from 'tap';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTestCA, h2Request, runCurl, runKubectl, KUBECTL, waitFor, type CommandResult } from './support/index.js';
import {
  childPids,
  E2E_CN,
  E2E_O,
  issueKeys,
  openWatch,
  portOutsideEphemeralRange,
  processExists,
  requireBinary,
  spawnChild,
  startStack,
  type Child,
  type E2eStack,
  type Watch,
} from './support/e2e.js';

const ca = createTestCA({ name: 'apilb-e2e-ca' });
t.teardown(() => ca.remove());
const keys = issueKeys(ca);

/** What the stand-in's /whoami echoes. */
interface WhoAmI {
  cn: string | null;
  o: string[];
  server: string;
  httpVersion: string;
}

function haveKubectl(tt: Test): boolean {
  // The exact path runKubectl runs.
  return requireBinary(tt, KUBECTL, 'kubernetes-client') !== undefined;
}

/** `kubectl get --raw /whoami` through apilb, parsed; throws with kubectl's stderr when it failed. */
async function kubectlWhoami(s: E2eStack): Promise<WhoAmI> {
  const r = await runKubectl(s.kubeconfig, ['get', '--raw', '/whoami']);
  if (r.code !== 0) throw new Error(`kubectl exited ${r.code}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as WhoAmI;
}

/** Connections apilb established to each stand-in so far, by stand-in name. */
function connectionsByServer(s: E2eStack): Record<string, number> {
  const out: Record<string, number> = {};
  for (const srv of s.servers) out[srv.name] = s.daemon.pool.get(srv.address)?.totalConnections ?? 0;
  return out;
}

const diff = (a: Record<string, number>, b: Record<string, number>): Record<string, number> =>
  Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - (b[k] ?? 0)]));

/** `: <stderr>` when the command wrote to stderr, for assertion messages. */
const why = (r: CommandResult): string => (r.stderr.trim() ? `: ${r.stderr.trim()}` : '');

const countBy = (xs: string[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
};

t.test('kubectl through apilb: version, get --raw /readyz, client-certificate echo, auth whoami, round-robin', async (tt) => {
  if (!haveKubectl(tt)) return;
  const s = await startStack(tt, keys);

  const version = await runKubectl(s.kubeconfig, ['version', '-o', 'json']);
  tt.equal(version.code, 0, `kubectl version -o json${why(version)}`);
  const v = JSON.parse(version.stdout) as { serverVersion?: { gitVersion: string; major: string; minor: string }; clientVersion?: unknown };
  tt.same([v.serverVersion?.gitVersion, v.serverVersion?.major, v.serverVersion?.minor], ['v1.31.0', '1', '31'], 'server version read through apilb');
  tt.ok(v.clientVersion, 'client version reported');

  const readyz = await runKubectl(s.kubeconfig, ['get', '--raw', '/readyz']);
  tt.same([readyz.code, readyz.stdout], [0, 'ok'], `kubectl get --raw /readyz${why(readyz)}`);

  // TLS passthrough: the stand-in authenticated the kubeconfig's client certificate itself, which it could not
  // if apilb terminated TLS.
  const before = connectionsByServer(s);
  const answers: WhoAmI[] = [];
  for (let i = 0; i < 6; i++) answers.push(await kubectlWhoami(s));
  for (const a of answers)
    tt.same([a.cn, a.o, a.httpVersion], [E2E_CN, [E2E_O], '2.0'], `${a.server}: client certificate CN/O seen by the API server, over HTTP/2`);
  // kubectl (client-go's HTTP/2 transport) dials twice per run and sends the request on whichever connection is
  // ready first, so the `server` field moves round-robin but not strictly in turn; apilb's own per-backend count
  // of established connections shows the exact split.
  const dialed = diff(connectionsByServer(s), before);
  const counts = Object.values(dialed);
  tt.ok(counts.reduce((a, b) => a + b, 0) >= 6, `kubectl's connections through apilb: ${JSON.stringify(dialed)}`);
  tt.ok(Math.max(...counts) - Math.min(...counts) <= 1, `round-robin: connections spread evenly over the three API servers ${JSON.stringify(dialed)}`);
  const answeredBy = answers.map((a) => a.server);
  tt.ok(new Set(answeredBy).size >= 2, `six kubectl runs answered by several API servers: ${answeredBy.join(' ')}`);
  tt.comment(`round-robin seen by kubectl: ${answeredBy.join(' ')}; connections per API server ${JSON.stringify(dialed)}`);

  const who = await runKubectl(s.kubeconfig, ['auth', 'whoami', '-o', 'json']);
  tt.equal(who.code, 0, `kubectl auth whoami -o json${why(who)}`);
  const review = JSON.parse(who.stdout) as { kind: string; status: { userInfo: { username: string; groups: string[] } } };
  tt.equal(review.kind, 'SelfSubjectReview', 'a SelfSubjectReview came back');
  tt.same(review.status.userInfo, { username: E2E_CN, groups: [E2E_O, 'system:authenticated'] }, 'kubectl auth whoami: the certificate user');
});

/**
 * Runs `kubectl get --raw /whoami` one after another until `until()` is true and at least `min` ran; returns who
 * answered and how each failed run failed.
 */
async function kubectlLoop(s: E2eStack, min: number, until: () => boolean, maxMs: number): Promise<{ servers: string[]; failures: string[]; ms: number[] }> {
  const servers: string[] = [];
  const failures: string[] = [];
  const ms: number[] = [];
  const deadline = performance.now() + maxMs;
  while ((servers.length + failures.length < min || !until()) && performance.now() < deadline) {
    const started = performance.now();
    try {
      servers.push((await kubectlWhoami(s)).server);
    } catch (err) {
      failures.push((err as Error).message);
    }
    ms.push(performance.now() - started);
  }
  return { servers, failures, ms };
}

const maxOf = (xs: number[]): string => Math.max(...xs).toFixed(0);

t.test('kubectl during failover: an API server crashes (RST), every kubectl call succeeds', async (tt) => {
  if (!haveKubectl(tt)) return;
  const s = await startStack(tt, keys);
  const victim = s.server('apiserver-2');
  const vb = s.daemon.pool.get(victim.address)!;
  await victim.crash();
  const before = connectionsByServer(s);
  // At once, before any health check noticed: dials to the dead address are refused and apilb retries the next.
  const run = await kubectlLoop(s, 9, () => true, 30_000);
  tt.same(run.failures, [], 'no kubectl call failed');
  tt.equal(run.servers.length, 9, 'nine answers');
  tt.notOk(run.servers.includes('apiserver-2'), 'nobody was answered by the crashed server');
  const dialed = diff(connectionsByServer(s), before);
  tt.ok(
    dialed['apiserver-1']! > 0 && dialed['apiserver-3']! > 0 && dialed['apiserver-2'] === 0,
    `connections went to both survivors only: ${JSON.stringify(dialed)}`,
  );
  const refused = [...vb.connectFailures.values()].reduce((a, b) => a + b, 0);
  tt.comment(
    `crash: ${run.servers.length} kubectl calls, ${run.failures.length} failures, slowest ${maxOf(run.ms)} ms; ` +
      `${refused} client dials to the crashed server failed and were retried on another; victim state ${vb.state}`,
  );
  await waitFor(() => s.daemon.pool.get(victim.address)?.state === 'down', { timeoutMs: 10_000, what: 'apilb to mark the crashed server down' });
  const after = await kubectlLoop(s, 4, () => true, 20_000);
  tt.same([after.failures, after.servers.includes('apiserver-2')], [[], false], 'after it is marked down too');
});

t.test('kubectl during failover: graceful shutdown with a shutdown delay, every kubectl call succeeds', async (tt) => {
  if (!haveKubectl(tt)) return;
  const s = await startStack(tt, keys);
  const victim = s.server('apiserver-3');
  let shutDown = false;
  // readyz fails for 1.5 s while everything is still served, then the listener closes and connections drain.
  const shutdown = victim.gracefulShutdown({ delayMs: 1500 }).then(() => (shutDown = true));
  const run = await kubectlLoop(s, 9, () => shutDown, 30_000);
  await shutdown;
  const after = await kubectlLoop(s, 3, () => true, 20_000);
  tt.same([...run.failures, ...after.failures], [], 'no kubectl call failed');
  tt.ok(run.servers.length >= 9, `${run.servers.length} kubectl calls during the shutdown`);
  tt.notOk(after.servers.includes('apiserver-3'), 'once it is gone nobody is sent there');
  tt.comment(
    `graceful shutdown: ${run.servers.length + after.servers.length} kubectl calls, ${run.failures.length + after.failures.length} failures, ` +
      `slowest ${maxOf([...run.ms, ...after.ms])} ms; answered by ${JSON.stringify(countBy([...run.servers, ...after.servers]))}; ` +
      `victim state ${s.daemon.pool.get(victim.address)?.state}`,
  );
});

t.test('curl with client certificates over HTTP/2 through apilb', async (tt) => {
  if (requireBinary(tt, 'curl', 'curl') === undefined) return;
  const s = await startStack(tt, keys);
  const certArgs = ['--http2', '--cacert', ca.certFile, '--cert', keys.client.certFile, '--key', keys.client.keyFile, '-w', '\n%{http_version}'];
  const parse = (r: CommandResult): { who: WhoAmI; httpVersion: string } => {
    const lines = r.stdout.trimEnd().split('\n');
    return { httpVersion: lines.at(-1)!, who: JSON.parse(lines.slice(0, -1).join('\n')) as WhoAmI };
  };
  const seen: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await runCurl([...certArgs, `${s.url}/whoami`]);
    tt.equal(r.code, 0, `curl --http2 --cert … ${s.url}/whoami${why(r)}`);
    const { who, httpVersion } = parse(r);
    tt.equal(httpVersion, '2', 'curl negotiated HTTP/2 (ALPN passed through to the API server)');
    tt.same([who.cn, who.o, who.httpVersion], [E2E_CN, [E2E_O], '2.0'], `${who.server} saw curl's client certificate`);
    seen.push(who.server);
  }
  tt.same(new Set(seen), new Set(['apiserver-1', 'apiserver-2', 'apiserver-3']), 'three curl runs, three API servers');
  // As a kubelet dials it: the name `kubernetes` (a SAN of the API server certificate), resolved to apilb.
  const byName = await runCurl([...certArgs, '--resolve', `kubernetes:${s.port}:127.0.0.1`, `https://kubernetes:${s.port}/whoami`]);
  tt.equal(byName.code, 0, `curl https://kubernetes:${s.port}/whoami${why(byName)}`);
  tt.equal(parse(byName).who.cn, E2E_CN, 'by the name kubernetes: the client certificate reaches the API server');
  const anon = await runCurl(['--http2', '--cacert', ca.certFile, '-w', ' %{http_code} %{http_version}', `${s.url}/readyz`]);
  tt.equal(anon.stdout, 'ok 200 2', 'anonymous /readyz over HTTP/2');
});

/** Opens one watch per stand-in through apilb (round-robin spreads three fresh connections over three servers). */
async function watchEach(tt: Test, s: E2eStack): Promise<Map<string, Watch>> {
  const watches = new Map<string, Watch>();
  tt.teardown(() => {
    for (const w of watches.values()) w.session.destroy();
  });
  for (let i = 0; i < 3; i++) {
    const w = await openWatch(s.port, keys);
    watches.set(w.server, w);
  }
  tt.same([...watches.keys()].sort(), ['apiserver-1', 'apiserver-2', 'apiserver-3'], 'one watch per API server');
  // Open while apilb is healthy: events keep coming (every 200 ms), nothing is closed.
  await waitFor(() => [...watches.values()].every((w) => w.events.length >= 5), { timeoutMs: 5000, what: 'five events on every watch' });
  tt.ok(
    [...watches.values()].every((w) => w.closedAt === null && w.events[0] === 'ADDED'),
    'every watch open and streaming through apilb',
  );
  return watches;
}

t.test('watch through apilb: released within 5 s when its API server hangs, others untouched', async (tt) => {
  const s = await startStack(tt, keys);
  const watches = await watchEach(tt, s);
  const victim = s.server('apiserver-1');
  const w = watches.get('apiserver-1')!;
  const hungAt = performance.now();
  victim.hang();
  await waitFor(() => w.closedAt !== null, { timeoutMs: 6000, what: 'apilb to close the watch on the hung API server' });
  const releaseMs = w.closedAt! - hungAt;
  tt.ok(releaseMs < 5000, `watch on the hung server closed by apilb after ${releaseMs.toFixed(0)} ms (< 5 s)`);
  tt.equal(s.daemon.pool.get(victim.address)?.state, 'down', 'the hung server is marked down');
  tt.comment(`hang: watch released after ${releaseMs.toFixed(0)} ms, ${w.events.length} events before; outcome ${String(await w.closed)}`);
  // The others keep streaming.
  const others = [watches.get('apiserver-2')!, watches.get('apiserver-3')!];
  const before = others.map((o) => o.events.length);
  await waitFor(() => others.every((o, i) => o.events.length >= before[i]! + 3), { timeoutMs: 5000, what: 'the healthy watches to keep streaming' });
  tt.ok(
    others.every((o) => o.closedAt === null),
    'watches on healthy servers stay open',
  );
  victim.resume();
});

t.test('watch through apilb: left alone while its API server drains (readyz failing)', async (tt) => {
  const s = await startStack(tt, keys);
  const watches = await watchEach(tt, s);
  const victim = s.server('apiserver-2');
  const w = watches.get('apiserver-2')!;
  victim.setReady(false);
  await waitFor(() => s.daemon.pool.get(victim.address)?.state === 'draining', { timeoutMs: 10_000, what: 'apilb to mark the not-ready server draining' });
  const atDraining = w.events.length;
  await waitFor(() => w.events.length >= atDraining + 5, { timeoutMs: 5000, what: "the draining server's watch to keep streaming" });
  tt.equal(w.closedAt, null, 'the watch on the draining server stays open and keeps receiving events');
  const who = await Promise.all(
    [1, 2, 3, 4].map(() => h2Request({ port: s.port, path: '/whoami', ca: ca.cert, cert: keys.client.cert, key: keys.client.key })),
  );
  tt.notOk(
    who.some((r) => r.headers['x-apiserver-name'] === 'apiserver-2'),
    'new requests avoid the draining server',
  );
  tt.ok(
    [...watches.values()].every((x) => x.closedAt === null),
    'no watch was closed',
  );
});

/** A command line the demo printed for the user to paste, split into words (the demo's paths have no spaces). */
function pasted(stderr: string, re: RegExp): string[] {
  const line = stderr.split('\n').find((l) => re.test(l));
  if (!line) throw new Error(`the demo printed no line matching ${re}:\n${stderr}`);
  return line
    .replace(/\s+#.*$/, '')
    .trim()
    .split(/\s+/);
}

t.test('apilb demo as a new user runs it: the printed kubectl and curl lines work through apilb; Ctrl-C exits 0, nothing left', async (tt) => {
  if (!haveKubectl(tt) || !requireBinary(tt, 'curl', 'curl')) return;
  if (!existsSync(CLI)) {
    tt.fail(`${CLI} is missing: build first (npm test runs the build)`);
    return;
  }
  // The demo leaves its directory (CA, kubeconfig) in place for the user; TMPDIR puts it where teardown removes it.
  const tmp = mkdtempSync(join(tmpdir(), 'apilb-e2e-demo-'));
  tt.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  // The demo writes its kubeconfig before apilb binds, so it needs a fixed --listen port (with port 0 the kubeconfig
  // and printed URLs say :0). A port outside the ephemeral range never collides with other tests' port-0 listeners;
  // if something else holds it, apilb exits with APILB_ERR_ADDRESS_IN_USE and another port is tried.
  let demo: Child | undefined;
  let port = 0;
  for (let attempt = 0; attempt < 5 && !demo; attempt++) {
    port = portOutsideEphemeralRange();
    const child = spawnChild(tt, process.execPath, [CLI, 'demo', '--listen', `127.0.0.1:${port}`, '--admin-listen', '127.0.0.1:0'], { TMPDIR: tmp });
    await waitFor(() => child.done || /Press Ctrl-C to stop/.test(child.stderr), { timeoutMs: 15_000, what: `the demo to start (stderr: ${child.stderr})` });
    if (!child.done) demo = child;
    else if (!/APILB_ERR_ADDRESS_IN_USE/.test(child.stderr)) throw new Error(`the demo exited ${await child.exited}: ${child.stderr}`);
    else tt.comment(`port ${port} is taken, trying another`);
  }
  if (!demo) throw new Error('five random ports outside the ephemeral range were all taken');
  const pid = demo.proc.pid!;
  tt.match(demo.stderr, `apilb listens on 127.0.0.1:${port} in front of 3 API-server stand-ins`, 'the demo says where apilb listens');
  const standIns = /stand-ins \(([^)]*)\)/.exec(demo.stderr)![1]!.split(', ');

  const readyz = pasted(demo.stderr, /^\s+kubectl .* get --raw \/readyz$/);
  tt.same(readyz.slice(0, 2), ['kubectl', '--kubeconfig'], 'a kubectl line with a kubeconfig');
  const r1 = await runKubectl(readyz[2]!, readyz.slice(3));
  tt.same([r1.code, r1.stdout], [0, 'ok'], `pasted: ${readyz.join(' ')}${why(r1)}`);
  const whoami = pasted(demo.stderr, /^\s+kubectl .* auth whoami$/);
  const r2 = await runKubectl(whoami[2]!, [...whoami.slice(3), '-o', 'json']);
  tt.equal(r2.code, 0, `pasted: ${whoami.join(' ')} -o json${why(r2)}`);
  tt.equal((JSON.parse(r2.stdout) as { status: { userInfo: { username: string } } }).status.userInfo.username, 'demo-user', 'kubectl auth whoami: demo-user');
  const curl = pasted(demo.stderr, /^\s+curl --cacert .*\/whoami/);
  const servers = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const r = await runCurl(curl.slice(1));
    tt.equal(r.code, 0, `pasted: ${curl.join(' ')}${why(r)}`);
    const who = JSON.parse(r.stdout) as WhoAmI;
    tt.equal(who.cn, 'demo-user', `${who.server} saw CN=demo-user`);
    servers.add(who.server);
  }
  tt.equal(servers.size, 3, `"answered by a different apiserver-N each time": ${[...servers].join(' ')}`);
  const status = pasted(demo.stderr, /^\s+curl http:\/\/\S+\/status/);
  const st = await runCurl(status.slice(1));
  tt.equal(st.code, 0, `pasted: ${status.join(' ')}${why(st)}`);
  tt.match(st.stdout, /"up"/, 'apilb status shows backends up');

  const children = childPids(pid);
  demo.proc.kill('SIGINT');
  await waitFor(() => demo.done, { timeoutMs: 15_000, what: `the demo to exit on SIGINT (stderr: ${demo.stderr.slice(-2000)})` });
  tt.equal(await demo.exited, 0, 'Ctrl-C: exit code 0');
  tt.notOk(processExists(pid), 'the demo process is gone');
  tt.same(children.filter(processExists), [], `no child process left (had ${children.length})`);
  for (const address of [`127.0.0.1:${port}`, ...standIns]) {
    const [host, p] = address.split(':');
    tt.equal(await connectOutcome(host!, Number(p)), 'ECONNREFUSED', `${address} no longer listens`);
  }
});

/** 'connected' or the error code of a TCP connect to host:port. */
function connectOutcome(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}
