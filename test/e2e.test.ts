/**
 * End to end with real clients: kubectl and curl (real binaries, real TLS, client certificates) and node http2
 * watches, all through a real apilb Daemon in front of three kube-apiserver stand-ins, including while one of them
 * crashes, shuts down gracefully, hangs or drains.
 */
import t, { type Test } from 'tap';
import { createTestCA, h2Request, runCurl, runKubectl, KUBECTL, waitFor, type CommandResult } from './support/index.js';
import { E2E_CN, E2E_O, issueKeys, openWatch, requireBinary, startStack, type E2eStack, type Watch } from './support/e2e.js';

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
  return requireBinary(tt, KUBECTL.split('/').pop()!, 'kubernetes-client') !== undefined;
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

const countBy = (xs: string[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const x of xs) out[x] = (out[x] ?? 0) + 1;
  return out;
};

t.test('kubectl through apilb: version, get --raw /readyz, client-certificate echo, auth whoami, round-robin', async (tt) => {
  if (!haveKubectl(tt)) return;
  const s = await startStack(tt, keys);

  const version = await runKubectl(s.kubeconfig, ['version', '-o', 'json']);
  tt.equal(version.code, 0, `kubectl version: ${version.stderr}`);
  const v = JSON.parse(version.stdout) as { serverVersion?: { gitVersion: string; major: string; minor: string }; clientVersion?: unknown };
  tt.same([v.serverVersion?.gitVersion, v.serverVersion?.major, v.serverVersion?.minor], ['v1.31.0', '1', '31'], 'server version read through apilb');
  tt.ok(v.clientVersion, 'client version reported');

  const readyz = await runKubectl(s.kubeconfig, ['get', '--raw', '/readyz']);
  tt.same([readyz.code, readyz.stdout], [0, 'ok'], `kubectl get --raw /readyz: ${readyz.stderr}`);

  // TLS passthrough: the stand-in authenticated the kubeconfig's client certificate itself, which it could not
  // if apilb terminated TLS.
  const before = connectionsByServer(s);
  const answers: WhoAmI[] = [];
  for (let i = 0; i < 6; i++) answers.push(await kubectlWhoami(s));
  for (const a of answers) tt.same([a.cn, a.o, a.httpVersion], [E2E_CN, [E2E_O], '2.0'], `${a.server}: client certificate CN/O seen by the API server, over HTTP/2`);
  // kubectl (client-go's HTTP/2 transport) dials twice per run and sends the request on whichever connection is
  // ready first, so the `server` field moves round-robin but not strictly in turn; apilb's own per-backend count
  // of established connections shows the exact split.
  const dialed = diff(connectionsByServer(s), before);
  const total = Object.values(dialed).reduce((a, b) => a + b, 0);
  tt.ok(total >= 6 && total % 3 === 0, `kubectl's connections through apilb: ${total}`);
  tt.same(dialed, { 'apiserver-1': total / 3, 'apiserver-2': total / 3, 'apiserver-3': total / 3 }, 'round-robin: the same number of connections to each API server');
  const answeredBy = answers.map((a) => a.server);
  tt.ok(new Set(answeredBy).size >= 2, `six kubectl runs answered by several API servers: ${answeredBy.join(' ')}`);
  tt.comment(`round-robin seen by kubectl: ${answeredBy.join(' ')}; connections per API server ${JSON.stringify(dialed)}`);

  const who = await runKubectl(s.kubeconfig, ['auth', 'whoami', '-o', 'json']);
  tt.equal(who.code, 0, `kubectl auth whoami: ${who.stderr}`);
  const review = JSON.parse(who.stdout) as { kind: string; status: { userInfo: { username: string; groups: string[] } } };
  tt.equal(review.kind, 'SelfSubjectReview');
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
  tt.equal(run.servers.length, 9);
  tt.notOk(run.servers.includes('apiserver-2'), 'nobody was answered by the crashed server');
  const dialed = diff(connectionsByServer(s), before);
  tt.ok(dialed['apiserver-1']! > 0 && dialed['apiserver-3']! > 0 && dialed['apiserver-2'] === 0, `connections went to both survivors only: ${JSON.stringify(dialed)}`);
  const refused = [...vb.connectFailures.values()].reduce((a, b) => a + b, 0);
  tt.comment(`crash: ${run.servers.length} kubectl calls, ${run.failures.length} failures, slowest ${maxOf(run.ms)} ms; ` +
    `${refused} client dials to the crashed server failed and were retried on another; victim state ${vb.state}`);
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
  tt.comment(`graceful shutdown: ${run.servers.length + after.servers.length} kubectl calls, ${run.failures.length + after.failures.length} failures, ` +
    `slowest ${maxOf([...run.ms, ...after.ms])} ms; answered by ${JSON.stringify(countBy([...run.servers, ...after.servers]))}; ` +
    `victim state ${s.daemon.pool.get(victim.address)?.state}`);
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
    tt.equal(r.code, 0, `curl: ${r.stderr}`);
    const { who, httpVersion } = parse(r);
    tt.equal(httpVersion, '2', 'curl negotiated HTTP/2 (ALPN passed through to the API server)');
    tt.same([who.cn, who.o, who.httpVersion], [E2E_CN, [E2E_O], '2.0'], `${who.server} saw curl's client certificate`);
    seen.push(who.server);
  }
  tt.same(new Set(seen), new Set(['apiserver-1', 'apiserver-2', 'apiserver-3']), 'three curl runs, three API servers');
  // As a kubelet dials it: the name `kubernetes` (a SAN of the API server certificate), resolved to apilb.
  const byName = await runCurl([...certArgs, '--resolve', `kubernetes:${s.port}:127.0.0.1`, `https://kubernetes:${s.port}/whoami`]);
  tt.equal(byName.code, 0, `curl https://kubernetes:${s.port}: ${byName.stderr}`);
  tt.equal(parse(byName).who.cn, E2E_CN);
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
  tt.ok([...watches.values()].every((w) => w.closedAt === null && w.events[0] === 'ADDED'), 'every watch open and streaming through apilb');
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
  tt.ok(others.every((o) => o.closedAt === null), 'watches on healthy servers stay open');
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
  await waitFor(() => w.events.length >= atDraining + 5, { timeoutMs: 5000, what: 'the draining server\'s watch to keep streaming' });
  tt.equal(w.closedAt, null, 'the watch on the draining server stays open and keeps receiving events');
  const who = await Promise.all([1, 2, 3, 4].map(() =>
    h2Request({ port: s.port, path: '/whoami', ca: ca.cert, cert: keys.client.cert, key: keys.client.key })));
  tt.notOk(who.some((r) => r.headers['x-apiserver-name'] === 'apiserver-2'), 'new requests avoid the draining server');
  tt.ok([...watches.values()].every((x) => x.closedAt === null), 'no watch was closed');
});
