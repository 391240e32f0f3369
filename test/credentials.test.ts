/**
 * Credentials that follow their files, against kube-apiserver stand-ins that accept only the current credential
 * per request (anything else: 401): kubelet's certificate rotation through a symlink swap, a projected token
 * rotated through a `..data` directory swap, a kubeconfig that appears after start (bootstrap), a broken new file
 * (the old credentials stay), exec plugins (token used, re-run on 401 and before expiry, failures refused), and the
 * poll fallback when no watch event comes.
 */
import t, { type Test } from 'tap';
import { mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { resolveConfig } from '../src/config/config.js';
import { CredentialWatcher, loadCredentials } from '../src/config/credentials.js';
import { Daemon } from '../src/daemon.js';
import { formatStatus } from '../src/admin/status.js';
import { createLogger } from '../src/logging.js';
import type { Backend } from '../src/pool/backend.js';
import type { TransitionEvent } from '../src/pool/pool.js';
import { runCli } from './support/cli.js';
import { createTestCA, FakeClock, startFakeApiServer, tempDir, waitFor, type FakeApiServer, type LeafCert } from './support/index.js';

const ca = createTestCA();
const c1 = ca.client('system:node:node-1', 'system:nodes');
const c2 = ca.client('system:node:node-1', 'system:nodes');
t.teardown(() => ca.remove());

const tmp = (tt: Test) => tempDir(tt, 'apilb-creds-');

/** Writes `text` to `path` the way careful writers do: a temporary file renamed over the target. */
function writeAtomic(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** Points symlink `link` at `target` atomically (a new link renamed over the old one), as kubelet and kubelet's volumes do. */
function swapSymlink(link: string, target: string): void {
  symlinkSync(target, `${link}.new`);
  renameSync(`${link}.new`, link);
}

function kubeconfig(user: Record<string, string>): string {
  const u = Object.entries(user)
    .map(([k, v]) => `${k}: ${JSON.stringify(v)}`)
    .join(', ');
  return [
    `clusters: [{name: c, cluster: {certificate-authority-data: ${Buffer.from(ca.cert).toString('base64')}, server: "https://127.0.0.1:6443"}}]`,
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
    `users: [{name: u, user: {${u}}}]`,
    '',
  ].join('\n');
}

interface Node {
  d: Daemon;
  servers: FakeApiServer[];
  transitions: TransitionEvent[];
  logs: string[];
  /** Resolves once every backend has had a check answered `status` after this call. */
  allAnswered(status: number, what: string): Promise<number>;
}

/** Three stand-ins that accept only `accept`, and a daemon checking them every 300 ms with `flags`' credentials. */
async function node(tt: Test, flags: Record<string, unknown>, accept: { certs?: string[]; tokens?: string[] }): Promise<Node> {
  const leaf = ca.server('apiserver');
  const servers = await Promise.all([1, 2, 3].map((i) => startFakeApiServer({ ca: { cert: leaf.cert, key: leaf.key, caCert: ca.cert }, name: `api-${i}` })));
  for (const s of servers) {
    s.requireCredentials(accept);
    tt.teardown(() => s.close());
  }
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  const cfg = resolveConfig({
    flags: {
      backends: servers.map((s) => s.address),
      listen: ['127.0.0.1:0'],
      adminListen: '127.0.0.1:0',
      healthCheckInterval: '300ms',
      healthCheckTimeout: '300ms',
      ...flags,
    },
    env: {},
  });
  const d = new Daemon(cfg, { logger: createLogger(cfg.logLevel, sink) });
  const transitions: TransitionEvent[] = [];
  d.pool.on('transition', (ev) => transitions.push(ev));
  await d.start();
  tt.teardown(() => d.close(0));
  const answered = new Map<Backend, number>();
  d.health.on('check', (ev) => {
    if (ev.result.ok && ev.result.status !== undefined) answered.set(ev.backend, ev.result.status);
  });
  return {
    d,
    servers,
    transitions,
    logs,
    async allAnswered(status, what) {
      const start = performance.now();
      answered.clear();
      await waitFor(() => d.pool.backends.every((b) => answered.get(b) === status), { timeoutMs: 10_000, what });
      return Math.round(performance.now() - start);
    },
  };
}

function pem(c: LeafCert): string {
  return c.cert + c.key;
}

t.test('kubelet certificate rotation through a symlink swap: every backend stays up and the new certificate is used at once', async (tt) => {
  const dir = tmp(tt);
  const pki = join(dir, 'pki');
  mkdirSync(pki);
  writeFileSync(join(pki, 'kubelet-client-2026-01-01.pem'), pem(c1));
  symlinkSync(join(pki, 'kubelet-client-2026-01-01.pem'), join(pki, 'kubelet-client-current.pem'));
  const kc = join(dir, 'kubelet.conf');
  writeFileSync(kc, kubeconfig({ 'client-certificate': join(pki, 'kubelet-client-current.pem'), 'client-key': join(pki, 'kubelet-client-current.pem') }));
  const n = await node(tt, { kubeconfig: kc }, { certs: [c1.cert] });
  await n.allAnswered(200, 'checks with the first certificate');
  tt.same(
    n.d.pool.backends.map((b) => b.state),
    ['up', 'up', 'up'],
  );

  // The API servers stop accepting the old certificate at the same moment kubelet swaps the link (worst case).
  for (const s of n.servers) s.requireCredentials({ certs: [c2.cert] });
  writeFileSync(join(pki, 'kubelet-client-2026-02-01.pem'), pem(c2));
  swapSymlink(join(pki, 'kubelet-client-current.pem'), join(pki, 'kubelet-client-2026-02-01.pem'));
  const ms = await n.allAnswered(200, 'checks with the rotated certificate');
  tt.comment(`every backend answered 200 with the new certificate ${ms} ms after the swap`);
  const refused = n.servers.map((s) => s.refused);
  await n.allAnswered(200, 'two more rounds');
  await n.allAnswered(200, 'two more rounds');
  tt.same(
    n.servers.map((s) => s.refused),
    refused,
    'no request with the old certificate after the switch: old connections were closed',
  );
  tt.same(
    n.transitions.filter((e) => e.to !== 'up'),
    [],
    'no backend left `up` at any time',
  );
  tt.match(n.d.credentials.status(), { reloads: 1, rejected: 0, missing: [], identity: 'client certificate' });
  tt.match(await n.d.metrics.render(), /apilb_credential_reloads_total\{result="success"\} 1/);
  tt.ok(
    n.logs.some((l) => /"event":"credentials_reloaded".*client certificate/.test(l)),
    'the reload is logged, naming what changed',
  );
});

t.test('a projected token rotated through a ..data directory swap is re-read; bearer tokens never reach the log', async (tt) => {
  const dir = tmp(tt);
  const vol = join(dir, 'token-volume');
  mkdirSync(join(vol, '..2026_01'), { recursive: true });
  writeFileSync(join(vol, '..2026_01', 'token'), 'token-A-7f3e\n');
  symlinkSync('..2026_01', join(vol, '..data'));
  symlinkSync('..data/token', join(vol, 'token'));
  const kc = join(dir, 'apilb.conf');
  writeFileSync(kc, kubeconfig({ tokenFile: join(vol, 'token') }));
  const n = await node(tt, { kubeconfig: kc, logLevel: 'debug' }, { tokens: ['token-A-7f3e'] });
  await n.allAnswered(200, 'checks with the first token');

  for (const s of n.servers) s.requireCredentials({ tokens: ['token-B-91ac'] });
  mkdirSync(join(vol, '..2026_02'));
  writeFileSync(join(vol, '..2026_02', 'token'), 'token-B-91ac\n');
  swapSymlink(join(vol, '..data'), '..2026_02');
  const ms = await n.allAnswered(200, 'checks with the rotated token');
  tt.comment(`every backend answered 200 with the new token ${ms} ms after the ..data swap`);
  tt.same(
    n.transitions.filter((e) => e.to !== 'up'),
    [],
    'no backend left `up`',
  );
  tt.match(n.d.credentials.status(), { reloads: 1, identity: 'token' });
  tt.ok(n.logs.length > 5, 'debug logging was on');
  tt.notOk(
    n.logs.some((l) => l.includes('token-A-7f3e') || l.includes('token-B-91ac')),
    'no log line carries a token',
  );
});

t.test('bootstrap: a kubeconfig that does not exist yet is not fatal; 401s count as up; it is used once it appears', async (tt) => {
  const dir = tmp(tt);
  const kc = join(dir, 'kubelet.conf');
  const n = await node(tt, { kubeconfig: kc, caFile: ca.certFile }, { certs: [c1.cert] });
  await n.allAnswered(401, 'anonymous checks refused');
  tt.same(
    n.d.pool.backends.map((b) => b.state),
    ['up', 'up', 'up'],
    'refused with 401 = alive: in rotation',
  );
  tt.equal(n.d.readiness().ready, true);
  tt.match(n.d.status().credentials, { missing: [kc], identity: 'anonymous' }, '/status says what is missing');
  const table = formatStatus(n.d.status(), Date.now());
  tt.match(table, `CREDENTIALS: not there yet (anonymous in use): ${kc}`, 'apilb status says it too');
  tt.match(table, /ok 401 unauthenticated/, 'and marks the backends whose checks were refused');
  const before = await n.d.metrics.render();
  tt.match(before, /apilb_credential_files_missing 1/);
  tt.match(before, /apilb_health_check_unauthenticated_total\{backend="[^"]+"\} [1-9]/);
  tt.ok(
    n.logs.some((l) => l.includes('"event":"credentials_missing"') && l.includes(kc)),
    'logged loudly at start',
  );
  tt.ok(
    n.logs.some((l) => l.includes('"event":"health_check_unauthenticated"')),
    'the 401s are logged',
  );

  // kubelet's TLS bootstrap finishes: the certificate, then kubelet.conf (written by rename).
  writeFileSync(join(dir, 'kubelet-client-current.pem'), pem(c1));
  writeAtomic(kc, kubeconfig({ 'client-certificate': join(dir, 'kubelet-client-current.pem'), 'client-key': join(dir, 'kubelet-client-current.pem') }));
  const ms = await n.allAnswered(200, 'checks with the bootstrapped certificate');
  tt.comment(`kubeconfig picked up ${ms} ms after it appeared`);
  tt.match(n.d.status().credentials, { missing: [], identity: 'client certificate', reloads: 1 });
  tt.match(await n.d.metrics.render(), /apilb_credential_files_missing 0/);
  tt.same(
    n.transitions.filter((e) => e.to !== 'up'),
    [],
  );
});

t.test('a broken new file keeps the old credentials and says why (file named, contents never)', async (tt) => {
  const dir = tmp(tt);
  const certFile = join(dir, 'client.crt');
  const keyFile = join(dir, 'client.key');
  writeFileSync(certFile, c1.cert);
  writeFileSync(keyFile, c1.key);
  const n = await node(tt, { clientCertFile: certFile, clientKeyFile: keyFile, caFile: ca.certFile }, { certs: [c1.cert] });
  await n.allAnswered(200, 'checks with the first certificate');

  // Half a rotation: the new certificate is there, its key is not yet. The pair does not match: refused.
  writeAtomic(certFile, c2.cert);
  await waitFor(() => n.d.credentials.status().rejected === 1, { what: 'the mismatched pair refused' });
  tt.match(n.d.credentials.status().lastError, `client key "${keyFile}" does not belong to client certificate "${certFile}"`);
  await n.allAnswered(200, 'old credentials still in use');
  // A file that is not PEM at all.
  writeAtomic(keyFile, 'garbage that is not a key\n');
  await waitFor(() => n.d.credentials.status().rejected === 2, { what: 'the garbage key refused' });
  tt.match(n.d.credentials.status().lastError, `client key "${keyFile}" holds no PEM private key`);
  tt.notOk(
    n.logs.some((l) => l.includes('garbage that is not a key') || l.includes(c1.key.split('\n')[1]!)),
    'file contents are never logged',
  );
  tt.ok(
    n.logs.some((l) => l.includes('"event":"credentials_rejected"')),
    'each refusal is logged',
  );
  tt.match(await n.d.metrics.render(), /apilb_credential_reloads_total\{result="failure"\} 2/);

  for (const s of n.servers) s.requireCredentials({ certs: [c2.cert] });
  writeAtomic(keyFile, c2.key);
  await n.allAnswered(200, 'the completed pair is used');
  tt.match(n.d.credentials.status(), { reloads: 1, rejected: 2, lastError: null });
  tt.same(
    n.transitions.filter((e) => e.to !== 'up'),
    [],
  );
});

/**
 * A client-go exec plugin stand-in: prints an ExecCredential with the token (and expiry) in `state`, and appends a
 * line to `runs` per run. It also checks KUBERNETES_EXEC_INFO and prints a secret on stderr when told to fail.
 */
function execPlugin(dir: string): {
  kubeconfigUser: Record<string, unknown>;
  set(state: { token: string; expires?: string; fail?: boolean }): void;
  runs(): number;
} {
  const script = join(dir, 'plugin.mjs');
  const state = join(dir, 'plugin-state.json');
  const runs = join(dir, 'plugin-runs');
  writeFileSync(runs, '');
  writeFileSync(
    script,
    `
import { appendFileSync, readFileSync } from 'node:fs';
const s = JSON.parse(readFileSync(process.env.PLUGIN_STATE, 'utf8'));
appendFileSync(${JSON.stringify(runs)}, 'run\\n');
const info = JSON.parse(process.env.KUBERNETES_EXEC_INFO);
if (info.kind !== 'ExecCredential' || info.spec.interactive !== false) process.exit(3);
if (s.fail) { process.stderr.write('error: refresh token sk-secret-in-stderr expired\\n'); process.exit(1); }
process.stdout.write(JSON.stringify({ apiVersion: info.apiVersion, kind: 'ExecCredential',
  status: { token: s.token, ...(s.expires ? { expirationTimestamp: s.expires } : {}) } }));
`,
  );
  return {
    kubeconfigUser: {
      apiVersion: 'client.authentication.k8s.io/v1',
      command: process.execPath,
      args: [script],
      env: [{ name: 'PLUGIN_STATE', value: state }],
      interactiveMode: 'Never',
    },
    set: (st) => writeFileSync(state, JSON.stringify(st)),
    runs: () => readFileSync(runs, 'utf8').split('\n').filter(Boolean).length,
  };
}

function execKubeconfig(dir: string, user: Record<string, unknown>): string {
  const kc = join(dir, `exec-${Math.random().toString(36).slice(2)}.conf`);
  writeFileSync(kc, kubeconfig({}).replace('user: {}', `user: {exec: ${JSON.stringify(user)}}`));
  return kc;
}

t.test('exec plugin: its token is used, and it runs again when an API server answers 401', async (tt) => {
  const dir = tmp(tt);
  const plugin = execPlugin(dir);
  plugin.set({ token: 'exec-token-1' });
  const kc = execKubeconfig(dir, plugin.kubeconfigUser);
  const n = await node(tt, { kubeconfig: kc }, { tokens: ['exec-token-1'] });
  await n.allAnswered(200, "checks with the plugin's token");
  tt.equal(plugin.runs(), 1, 'run once at start (validation and daemon share the result)');

  // The token is revoked: the API servers refuse it, the plugin now hands out another one.
  plugin.set({ token: 'exec-token-2' });
  for (const s of n.servers) s.requireCredentials({ tokens: ['exec-token-2'] });
  const ms = await n.allAnswered(200, "checks with the re-run plugin's token");
  tt.comment(`every backend answered 200 with the new exec token ${ms} ms after the old one was refused`);
  tt.equal(plugin.runs(), 2, 'the 401 made it run once more (rate-limited)');
  tt.same(
    n.transitions.filter((e) => e.to !== 'up'),
    [],
  );
  tt.notOk(
    n.logs.some((l) => l.includes('exec-token-')),
    'tokens never logged',
  );
});

t.test('exec plugin: a credential is refreshed before its expirationTimestamp; a failing plugin keeps the old one', async (tt) => {
  const dir = tmp(tt);
  const plugin = execPlugin(dir);
  const clock = new FakeClock(Date.now());
  plugin.set({ token: 'tok-a', expires: new Date(clock.now() + 300_000).toISOString() });
  const kc = execKubeconfig(dir, plugin.kubeconfigUser);
  const w = new CredentialWatcher({ config: { kubeconfig: kc, healthCheckInsecure: false }, clock, pollInterval: 0, watch: () => ({ close() {} }) });
  tt.teardown(() => w.close());
  const events: string[][] = [];
  const rejected: string[] = [];
  w.on('reloaded', (ev) => events.push(ev.changed));
  w.on('rejected', (ev) => rejected.push(ev.error));
  w.start();
  tt.equal(w.material.token, 'tok-a');
  tt.match(w.summary.join('\n'), /exec credential expires at/);
  plugin.set({ token: 'tok-b', expires: new Date(clock.now() + 600_000).toISOString() });
  clock.advance(239_000);
  tt.equal(plugin.runs(), 1, 'cached until shortly before it expires');
  clock.advance(1000); // 4 min: a fifth of the remaining 5 min before expiry
  await waitFor(() => events.length === 1, { what: 'the refreshed credential' });
  tt.same(events, [['token']]);
  tt.equal(w.material.token, 'tok-b');
  plugin.set({ token: 'tok-c', fail: true });
  w.refreshExec();
  await waitFor(() => rejected.length === 1, { what: 'the failed run' });
  tt.match(rejected[0], `exec plugin "${process.execPath}" failed (exit code 1); the previous credentials stay in use`);
  tt.notOk(rejected[0]!.includes('sk-secret'), "the plugin's stderr is not echoed");
  tt.equal(w.material.token, 'tok-b');
});

t.test('exec problems and auth-provider users are refused by name, in check-config and run alike (exit 2)', async (tt) => {
  const dir = tmp(tt);
  const plugin = execPlugin(dir);
  plugin.set({ token: 'x', fail: true });
  const failing = execKubeconfig(dir, plugin.kubeconfigUser);
  const interactive = execKubeconfig(dir, { ...plugin.kubeconfigUser, interactiveMode: 'Always' });
  const missing = execKubeconfig(dir, { ...plugin.kubeconfigUser, command: join(dir, 'no-such-plugin'), args: [] });
  const provider = join(dir, 'provider.conf');
  writeFileSync(provider, kubeconfig({}).replace('user: {}', 'user: {auth-provider: {name: oidc}}'));
  const rows: [string, string][] = [
    [failing, `--kubeconfig: kubeconfig "${failing}": exec plugin "${process.execPath}" failed (exit code 1)`],
    [
      interactive,
      `--kubeconfig: kubeconfig "${interactive}": user "u": exec.interactiveMode is Always: apilb runs without a terminal (use Never or IfAvailable)`,
    ],
    [missing, `--kubeconfig: kubeconfig "${missing}": exec plugin "${join(dir, 'no-such-plugin')}" was not found`],
    [provider, `--kubeconfig: kubeconfig "${provider}": user "u" uses an auth-provider plugin (auth-provider), which apilb does not support`],
  ];
  for (const [file, message] of rows) {
    for (const cmd of ['check-config', 'run']) {
      const r = await runCli([cmd, '--backend', '10.0.0.1:6443', '--kubeconfig', file, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0']);
      tt.equal(r.code, 2, `${cmd}: exit 2`);
      tt.match(r.stderr, message, `${cmd}: ${message}`);
      tt.notOk(r.stderr.includes('sk-secret'), 'plugin stderr never echoed');
    }
  }
});

t.test('check-config --print names the exec plugin and redacts its token', async (tt) => {
  const dir = tmp(tt);
  const plugin = execPlugin(dir);
  plugin.set({ token: 'printed-never-1234', expires: '2099-01-01T00:00:00Z' });
  const kc = execKubeconfig(dir, plugin.kubeconfigUser);
  const r = await runCli(['check-config', '--print', '--backend', '10.0.0.1:6443', '--kubeconfig', kc]);
  tt.equal(r.code, 0, r.stderr);
  tt.match(r.stdout, `#   bearer token: from kubeconfig "${kc}" exec plugin "${process.execPath}" (18 characters, value redacted)`);
  tt.match(r.stdout, '#   exec credential expires at 2099-01-01T00:00:00.000Z');
  tt.notOk(r.stdout.includes('printed-never-1234'));
});

t.test('polling finds changes no watch reported (CA replaced by rename, file appearing in a directory created later)', async (tt) => {
  const dir = tmp(tt);
  const other = createTestCA({ name: 'next-ca' });
  tt.teardown(() => other.remove());
  const caFile = join(dir, 'ca.crt');
  writeFileSync(caFile, ca.cert);
  const late = join(dir, 'later', 'client.pem');
  const clock = new FakeClock();
  const w = new CredentialWatcher({
    config: { caFile, clientCertFile: late, clientKeyFile: late, healthCheckInsecure: false },
    clock,
    pollInterval: 1000,
    watch: () => ({ close() {} }),
  });
  tt.teardown(() => w.close());
  const events: string[][] = [];
  w.on('reloaded', (ev) => events.push(ev.changed));
  w.start();
  tt.same(w.missing, [late], 'the client file is not there yet');
  writeAtomic(caFile, other.cert);
  clock.advance(999);
  tt.same(events, [], 'nothing before the poll');
  clock.advance(1);
  tt.same(events, [['CA']], 'the poll saw the renamed CA');
  tt.equal(w.material.ca, other.cert);
  mkdirSync(join(dir, 'later'));
  writeFileSync(late, pem(c1));
  clock.advance(1000);
  tt.same(events, [['CA'], ['client certificate']]);
  tt.same(w.missing, []);
  clock.advance(5000);
  tt.equal(events.length, 2, 'no reload without a change');
  const rejected: string[] = [];
  w.on('rejected', (ev) => rejected.push(ev.error));
  rmSync(caFile);
  clock.advance(1000);
  rmSync(late);
  clock.advance(1000);
  tt.same(rejected, [`CA file "${caFile}" does not exist`, `CA file "${caFile}" does not exist`], 'a deleted CA is refused');
  writeFileSync(caFile, other.cert);
  clock.advance(1000);
  tt.same(rejected.at(-1), `"${late}" no longer exists: the previous credentials stay in use until it is back`, 'a deleted client file is refused too');
  tt.equal(w.material.ca, other.cert, 'the CA in use stays');
  tt.equal(w.material.cert, pem(c1), 'the identity in use stays');
  writeFileSync(late, pem(c2));
  clock.advance(1000);
  tt.same(events.at(-1), ['client certificate'], 'and the file is used again once back');
});

t.test('a kubeconfig rewritten without its CA keeps the previous CA (https checks cannot run without one)', async (tt) => {
  const dir = tmp(tt);
  const kc = join(dir, 'kc.conf');
  writeFileSync(kc, kubeconfig({ token: 'abc' }));
  const clock = new FakeClock();
  const w = new CredentialWatcher({ config: { kubeconfig: kc, healthCheckInsecure: false }, clock, pollInterval: 1000, watch: () => ({ close() {} }) });
  tt.teardown(() => w.close());
  const rejected: string[] = [];
  w.on('rejected', (ev) => rejected.push(ev.error));
  w.start();
  writeAtomic(kc, kubeconfig({ token: 'abc' }).replace(/certificate-authority-data: [^,]+, /, ''));
  clock.advance(1000);
  tt.same(rejected, [`the changed kubeconfig "${kc}" names no CA any more: the previous CA stays in use`]);
  tt.equal(w.material.ca, ca.cert);
});

t.test('an expired certificate is reported but presented at start; rotating to an expired one is refused', async (tt) => {
  const dir = tmp(tt);
  const certFile = join(dir, 'c.pem');
  writeFileSync(certFile, pem(c1));
  const clock = new FakeClock(Date.now() + 3 * 86_400_000); // the test CA's certificates are valid for 2 days
  const w = new CredentialWatcher({
    config: { caFile: ca.certFile, clientCertFile: certFile, clientKeyFile: certFile, healthCheckInsecure: false },
    clock,
    pollInterval: 1000,
    watch: () => ({ close() {} }),
  });
  tt.teardown(() => w.close());
  tt.equal(w.material.cert, pem(c1), 'presented although expired (kube-apiserver answers 401: up, loudly)');
  const rejected: string[] = [];
  w.on('rejected', (ev) => rejected.push(ev.error));
  w.start();
  writeAtomic(certFile, pem(c2));
  clock.advance(1000);
  tt.match(rejected, [new RegExp(`^the new client certificate "${certFile}" expired on .*; the previous certificate stays in use$`)]);
  tt.equal(w.material.cert, pem(c1));
});

t.test('loadCredentials: check-config parses every PEM and names the file', async (tt) => {
  const dir = tmp(tt);
  const f = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const base = { healthCheckInsecure: false };
  const good = { ...base, caFile: f('ca.crt', ca.cert), clientCertFile: f('c.crt', c1.cert), clientKeyFile: f('c.key', c1.key) };
  tt.match(
    loadCredentials(good).summary.join('\n'),
    /CA: ".*ca.crt" \(1 certificate\)\nclient certificate: ".*c.crt" \(.*CN=system:node:node-1.*\), key: ".*c.key"/,
  );
  const cases: [string, Record<string, unknown>, string | RegExp][] = [
    ['CA not PEM', { caFile: f('bad-ca.crt', 'hello\n') }, `CA "${join(dir, 'bad-ca.crt')}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)`],
    [
      'CA corrupt',
      { caFile: f('corrupt-ca.crt', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n') },
      `CA "${join(dir, 'corrupt-ca.crt')}": certificate 1 of 1 is corrupt (not a valid X.509 certificate)`,
    ],
    [
      'key and certificate swapped',
      { clientCertFile: good.clientKeyFile, clientKeyFile: good.clientCertFile },
      `client certificate "${good.clientKeyFile}" holds no PEM certificate`,
    ],
    [
      'key of another certificate',
      { clientKeyFile: f('c2.key', c2.key) },
      `client key "${join(dir, 'c2.key')}" does not belong to client certificate "${good.clientCertFile}" (swapped or stale files?)`,
    ],
    ['CA empty', { caFile: f('empty-ca.crt', '') }, `CA "${join(dir, 'empty-ca.crt')}" holds no PEM certificate (-----BEGIN CERTIFICATE-----)`],
    ['CA is a directory', { caFile: dir }, `CA file "${dir}" is a directory, not a file`],
    ['CA is /dev/zero (bounded read)', { caFile: '/dev/zero' }, 'CA file "/dev/zero" is larger than 1024 KiB: is it the right file?'],
    ['CA missing', { caFile: join(dir, 'nope.crt') }, `CA file "${join(dir, 'nope.crt')}" does not exist`],
  ];
  for (const [name, over, message] of cases) tt.throws(() => loadCredentials({ ...good, ...over }), { code: 'APILB_ERR_TLS_CONFIG', message }, name);
  const later = loadCredentials(good, { now: Date.now() + 3 * 86_400_000 });
  tt.match(
    later.expired,
    new RegExp(`^client certificate "${good.clientCertFile}" expired on 20.*: the API servers will refuse it \\(401\\)$`),
    'an expired certificate is reported',
  );
  tt.equal(later.material.cert, c1.cert, 'and still presented: kube-apiserver answers it with 401, which counts as up');
  const rss = process.memoryUsage().rss;
  for (let i = 0; i < 20; i++) tt.throws(() => loadCredentials({ ...good, caFile: '/dev/zero' }));
  tt.ok(process.memoryUsage().rss - rss < 64 * 1024 * 1024, 'reading /dev/zero 20 times does not grow memory');
});
