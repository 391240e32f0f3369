/**
 * Operator input as a node has it: Go durations (with fast-check properties), negative and overlong durations in
 * every spelling, https:// backends, paths, own-listener loops, backend count, secrets pasted where a path
 * belongs (never echoed: stderr, reload_rejected, POST /reload), and the CLI's shared validation and exit codes.
 */
import t, { type Test } from 'tap';
import fc from 'fast-check';
import { writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { resolveConfig, type Config, type ResolveInput } from '../src/config/config.js';
import { Daemon } from '../src/daemon.js';
import { ConfigError } from '../src/errors.js';
import { createLogger } from '../src/logging.js';
import { formatDuration, MAX_DURATION_MS, parseAddress, parseDuration } from '../src/config/values.js';
import { CLI, runCli } from './support/cli.js';
import { spawnChild } from './support/e2e.js';
import { createTestCA, dial, echoServer, readBytes, tempDir, waitFor, writeIn } from './support/index.js';

const ca = createTestCA();
const client = ca.client('apilb');
t.teardown(() => ca.remove());
/** A line from the middle of a real key: no message may contain it. */
const KEY_LINE = client.key.split('\n')[1]!;

const BASE = { backends: ['10.0.0.1:6443'], healthCheckInsecure: true };

/** A loopback echo backend for tests that start apilb (its checks and dials stay on this machine); closed at teardown. */
async function loopbackBackend(tt: Test): Promise<string> {
  const b = await echoServer();
  tt.teardown(() => b.close());
  return b.address;
}

const tmp = (tt: Test) => tempDir(tt, 'apilb-input-');
const file = writeIn;

function resolve(input: ResolveInput): Config | string[] {
  try {
    return resolveConfig({ hasIPv6Loopback: false, env: {}, ...input });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    return e.issues.map((i) => `${i.path}: ${i.reason}`);
  }
}

const NEGATIVE = 'is negative: a duration is 0 or more, like 500ms, 2s, 1.5s or 1m30s';

t.test('Go durations: accepted forms', async (tt) => {
  const table: [string, number][] = [
    ['1m30s', 90_000],
    ['1.5s', 1500],
    ['500ms', 500],
    ['1h2m3.5s', 3_723_500],
    ['2h', 7_200_000],
    ['.5s', 500],
    ['1500us', 2],
    ['1µs', 1],
    ['100ns', 1],
    ['0', 0],
    ['0s', 0],
    ['-0s', 0],
    ['596h31m23.647s', MAX_DURATION_MS],
  ];
  for (const [text, ms] of table) tt.equal(parseDuration(text), ms, text);
  const cfg = resolve({ flags: { ...BASE, drainTimeout: '1h2m3.5s', connectTimeout: '1.5s' } }) as Config;
  tt.equal(cfg.drainTimeout, 3_723_500);
  tt.equal(cfg.connectTimeout, 1500);
});

t.test('negative durations: one message in every spelling (flag, environment, YAML string and number)', async (tt) => {
  const dir = tmp(tt);
  const rows: [string, ResolveInput, string][] = [
    ['flag -1s', { flags: { ...BASE, connectTimeout: '-1s' } }, `--connect-timeout: "-1s" ${NEGATIVE}`],
    ['flag -1.5m', { flags: { ...BASE, drainTimeout: '-1.5m' } }, `--drain-timeout: "-1.5m" ${NEGATIVE}`],
    ['flag -1 (no unit)', { flags: { ...BASE, drainTimeout: '-1' } }, `--drain-timeout: "-1" ${NEGATIVE}`],
    ['env', { flags: BASE, env: { APILB_CONNECT_TIMEOUT: '-250ms' } }, `APILB_CONNECT_TIMEOUT: "-250ms" ${NEGATIVE}`],
    ['YAML string', { flags: BASE, configFile: file(dir, 'a.yaml', 'connectTimeout: -1s\n') }, `${join(dir, 'a.yaml')}: connectTimeout: "-1s" ${NEGATIVE}`],
    ['YAML number', { flags: BASE, configFile: file(dir, 'b.yaml', 'connectTimeout: -3\n') }, `${join(dir, 'b.yaml')}: connectTimeout: "-3" ${NEGATIVE}`],
  ];
  for (const [name, input, want] of rows) tt.same(resolve(input), [want], name);
  tt.throws(() => parseDuration('-0h1m'), { message: `"-0h1m" ${NEGATIVE}` }, 'a leading zero term does not hide the sign (found by fast-check)');
});

t.test("durations past Node's timer limit are refused, not turned into 1 ms", async (tt) => {
  const long = '"1000h" is too long: the longest duration is 596h31m23.647s (Node\'s timer limit, about 24.8 days)';
  tt.same(resolve({ flags: { ...BASE, healthCheckInterval: '1000h' } }), [`--health-check-interval: ${long}`]);
  tt.same(resolve({ flags: { ...BASE, firstByteTimeout: '1000h' } }), [`--first-byte-timeout: ${long}`]);
  tt.same(resolve({ flags: { ...BASE, drainTimeout: '596h31m23.648s' } }), [
    '--drain-timeout: "596h31m23.648s" is too long: the longest duration is 596h31m23.647s (Node\'s timer limit, about 24.8 days)',
  ]);
});

t.test('property: formatDuration and parseDuration round-trip every whole millisecond count up to the timer limit', async (tt) => {
  fc.assert(fc.property(fc.integer({ min: 0, max: MAX_DURATION_MS }), (ms) => parseDuration(formatDuration(ms)) === ms));
  tt.pass('round-trip holds');
});

t.test('property: a sum of Go terms parses to the sum of its parts (rounded to ms); negatives and overlong values always throw', async (tt) => {
  const unit = fc.constantFrom(['h', 3_600_000], ['m', 60_000], ['s', 1000], ['ms', 1]);
  const term = fc.tuple(fc.integer({ min: 0, max: 500 }), unit);
  fc.assert(
    fc.property(fc.array(term, { minLength: 1, maxLength: 5 }), (terms) => {
      const text = terms.map(([n, [u]]) => `${n}${u}`).join('');
      const ms = terms.reduce((a, [n, [, f]]) => a + n * f, 0);
      if (ms > MAX_DURATION_MS) return /is too long/.test(String(tryParse(text)));
      return parseDuration(text) === ms && (ms === 0 || new RegExp(NEGATIVE).test(String(tryParse(`-${text}`))));
    }),
  );
  fc.assert(
    fc.property(fc.string(), (s) => {
      const r = tryParse(s);
      return typeof r === 'number' ? Number.isInteger(r) && r >= 0 && r <= MAX_DURATION_MS : r instanceof Error;
    }),
    { numRuns: 2000 },
  );
  tt.pass('properties hold');
});

function tryParse(s: string): number | Error {
  try {
    return parseDuration(s);
  } catch (e) {
    return e as Error;
  }
}

t.test('backends: https://HOST:PORT is accepted (scheme stripped); other schemes are refused clearly', async (tt) => {
  tt.same(parseAddress('https://10.0.0.1:6443', { allowHttpsUrl: true }), { host: '10.0.0.1', port: 6443 });
  tt.same(parseAddress('https://[fd00::1]:6443/', { allowHttpsUrl: true }), { host: 'fd00::1', port: 6443 });
  tt.same(parseAddress('https://api.example.internal', { allowHttpsUrl: true }), { host: 'api.example.internal', port: 443 });
  const rows: [Record<string, unknown>, string][] = [
    [{ backends: ['http://10.0.0.1:6443'] }, '--backend: "http://10.0.0.1:6443": scheme "http" is not supported: write HOST:PORT or https://HOST:PORT'],
    [{ backends: ['https://10.0.0.1:6443/api'] }, '--backend: "https://10.0.0.1:6443/api": only https://HOST:PORT is accepted (no path, query or user)'],
    [{ listen: ['https://127.0.0.1:6443'] }, '--listen: "https://127.0.0.1:6443": scheme "https" is not supported: write HOST:PORT'],
  ];
  for (const [flags, want] of rows) tt.same(resolve({ flags: { ...BASE, ...flags } }), [want], want);
  tt.same((resolve({ flags: { ...BASE, backends: ['https://10.0.0.1:6443'] } }) as Config).backends, [{ host: '10.0.0.1', port: 6443 }]);
});

t.test('paths, loops to apilb itself, backend count', async (tt) => {
  const rows: [string, Record<string, unknown>, string][] = [
    ['path without /', { healthCheckPath: 'readyz' }, '--health-check-path: must be an absolute path starting with /, like /readyz, got "readyz"'],
    [
      'own listener',
      { listen: ['127.0.0.1:16443'], backends: ['127.0.0.1:16443'] },
      "--backend.0: 127.0.0.1:16443 is apilb's own listener (--listen): apilb would forward to itself",
    ],
    [
      'own listener, IPv4-mapped',
      { listen: ['127.0.0.1:16443'], backends: ['[::ffff:127.0.0.1]:16443'] },
      "--backend.0: [::ffff:127.0.0.1]:16443 is apilb's own listener (--listen): apilb would forward to itself",
    ],
    [
      'wildcard listener',
      { listen: ['0.0.0.0:16443'], backends: ['127.0.0.1:16443'] },
      "--backend.0: 127.0.0.1:16443 is apilb's own listener (--listen): apilb would forward to itself",
    ],
    [
      'admin endpoint',
      { backends: ['127.0.0.1:9643'] },
      "--backend.0: 127.0.0.1:9643 is apilb's own admin endpoint (--admin-listen): apilb would forward to itself",
    ],
    [
      '257 backends',
      { backends: Array.from({ length: 257 }, (_, i) => `10.0.${i >> 8}.${i & 255}:6443`) },
      '--backend: holds 257 addresses; at most 256 are accepted',
    ],
  ];
  for (const [name, flags, want] of rows) tt.same(resolve({ flags: { ...BASE, ...flags } }), [want], name);
  tt.ok(
    Array.isArray((resolve({ flags: { ...BASE, listen: ['127.0.0.1:16443'], backends: ['127.0.0.1:16444'] } }) as Config).backends),
    'another loopback port is fine',
  );
});

t.test('a key pasted where a path belongs is refused without echoing it (flag, environment, YAML, kubeconfig)', async (tt) => {
  const dir = tmp(tt);
  const pasted = 'must be a file path, got what looks like file contents or a secret (not shown): put the PEM in a file and pass its path';
  const yaml = file(
    dir,
    'apilb.yaml',
    `backends: [10.0.0.1:6443]\nhealthCheckInsecure: true\nclientCertFile: /etc/c.crt\nclientKeyFile: |\n${client.key
      .split('\n')
      .map((l) => `  ${l}`)
      .join('\n')}\n`,
  );
  const kc = file(
    dir,
    'kc.conf',
    [
      `clusters: [{name: c, cluster: {certificate-authority-data: ${Buffer.from(ca.cert).toString('base64')}}}]`,
      'contexts: [{name: x, context: {cluster: c, user: u}}]',
      'current-context: x',
      `users: [{name: u, user: {client-certificate: /etc/c.crt, client-key: ${JSON.stringify(client.key)}}}]`,
    ].join('\n'),
  );
  const rows: [string, ResolveInput, string][] = [
    ['flag', { flags: { ...BASE, clientCertFile: '/etc/c.crt', clientKeyFile: client.key } }, `--client-key-file: ${pasted}`],
    ['env', { flags: BASE, env: { APILB_CLIENT_CERT_FILE: '/etc/c.crt', APILB_CLIENT_KEY_FILE: client.key } }, `APILB_CLIENT_KEY_FILE: ${pasted}`],
    ['YAML', { configFile: yaml }, `${yaml}: clientKeyFile: ${pasted}`],
    [
      'kubeconfig',
      { flags: { ...BASE, kubeconfig: kc } },
      `--kubeconfig: kubeconfig "${kc}": client-key holds what looks like file contents (not shown), not a path: use client-key-data for inline PEM (base64)`,
    ],
    [
      'a key file given as the kubeconfig',
      { flags: { ...BASE, kubeconfig: client.keyFile } },
      `--kubeconfig: kubeconfig "${client.keyFile}": is not a kubeconfig (not a YAML mapping; a certificate or key file?)`,
    ],
    [
      'another string option',
      { flags: { ...BASE, tlsServerName: client.key } },
      '--tls-server-name: must be one line of text, got what looks like file contents or a secret (not shown)',
    ],
  ];
  for (const [name, input, want] of rows) {
    const got = resolve(input);
    tt.same(got, [want], name);
    tt.notOk(JSON.stringify(got).includes(KEY_LINE), `${name}: the key is not in the message`);
  }
});

t.test('reload: a pasted key is in neither the reload_rejected line nor the POST /reload answer', async (tt) => {
  const dir = tmp(tt);
  const backend = await loopbackBackend(tt);
  const cfgFile = file(dir, 'apilb.yaml', `backends: [${backend}]\nhealthCheckMode: tcp\nlisten: ["127.0.0.1:0"]\nadminListen: 127.0.0.1:0\n`);
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const input: ResolveInput = { configFile: cfgFile, env: {}, flags: {} };
  const d = new Daemon(resolveConfig(input), { resolveInput: input, logger: createLogger('info', sink) });
  await d.start();
  tt.teardown(() => d.close(0));
  writeFileSync(
    cfgFile,
    `backends: [${backend}]\nhealthCheckMode: tcp\nlisten: ["127.0.0.1:0"]\nadminListen: 127.0.0.1:0\nclientCertFile: /etc/c.crt\nclientKeyFile: ${JSON.stringify(client.key)}\n`,
  );
  const r = await d.reload();
  tt.equal(r.ok, false);
  tt.match(r.error, 'clientKeyFile: must be a file path, got what looks like file contents or a secret (not shown)');
  tt.notOk(r.error!.includes(KEY_LINE), 'not in the POST /reload answer');
  tt.ok(
    lines.some((l) => l.includes('reload_rejected')),
    'the rejection is logged',
  );
  tt.notOk(
    lines.some((l) => l.includes(KEY_LINE)),
    'not in the journal',
  );
});

t.test('cli: check-config and run share one validation and one exit code per kind of error', async (tt) => {
  const dir = tmp(tt);
  const neg = await runCli(['check-config', '--backend', '10.0.0.1:6443', '--health-check-insecure', '--connect-timeout', '-1s']);
  tt.equal(neg.code, 2, '--connect-timeout -1s reaches validation (not "Unknown arguments: 1, s")');
  tt.match(neg.stderr, `--connect-timeout: "-1s" ${NEGATIVE}`);
  const runNeg = await runCli(['run', '--backend', '10.0.0.1:6443', '--health-check-insecure', '--connect-timeout', '-1s']);
  tt.equal(runNeg.code, 2, 'run: same exit code');
  tt.equal(runNeg.stderr, neg.stderr, 'run: same message');
  for (const [args, what] of [
    [['--ca-file', dir], 'a directory as CA'],
    [['--health-check-path', 'readyz', '--health-check-insecure'], 'a path without /'],
  ] as const) {
    const a = await runCli(['check-config', '--backend', '10.0.0.1:6443', ...args]);
    const b = await runCli(['run', '--backend', '10.0.0.1:6443', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', ...args]);
    tt.equal(a.code, 2, `check-config refuses ${what}`);
    tt.equal(b.code, 2, `run refuses ${what}`);
    tt.equal(a.stderr, b.stderr, `${what}: the same message`);
  }
  const warn = await runCli(['check-config', '--backend', '10.0.0.1:6443', '--health-check-mode', 'tcp']);
  tt.equal(warn.code, 0);
  tt.match(
    warn.stderr,
    'apilb: warning: health-check-mode tcp without a CA (--ca-file or --kubeconfig) only connects: a hung API server that still accepts TCP looks healthy',
  );
});

t.test('cli: check-config --print shows the effective configuration with secrets redacted', async (tt) => {
  const dir = tmp(tt);
  file(dir, 'token', 's3cr3t-token-value\n');
  const kc = file(
    dir,
    'kc.conf',
    [
      `clusters: [{name: c, cluster: {certificate-authority-data: ${Buffer.from(ca.cert).toString('base64')}}}]`,
      'contexts: [{name: x, context: {cluster: c, user: u}}]',
      'current-context: x',
      'users: [{name: u, user: {tokenFile: token}}]',
    ].join('\n'),
  );
  const cfg = file(dir, 'apilb.yaml', `backends: ["https://10.0.0.1:6443"]\nkubeconfig: ${kc}\nconnectTimeout: 1m30s\n`);
  const r = await runCli(['check-config', '--config', cfg, '--print', '--client-cert-file', client.certFile, '--client-key-file', client.keyFile]);
  tt.equal(r.code, 0, r.stderr);
  tt.match(r.stdout, `# effective configuration (flags > APILB_* environment > ${cfg} > defaults)`);
  tt.match(r.stdout, 'backends:\n  - "10.0.0.1:6443"\nconnectTimeout: "1m30s"');
  tt.match(r.stdout, `kubeconfig: "${kc}"`);
  tt.match(r.stdout, `#   bearer token: from "${join(dir, 'token')}" (18 characters, value redacted)`);
  tt.match(r.stdout, new RegExp(`#   client certificate: "${client.certFile}" \\(.*CN=apilb; valid until 20`));
  tt.notOk(r.stdout.includes('s3cr3t-token-value'), 'the token is not printed');
  tt.notOk(r.stdout.includes(KEY_LINE), 'the key is not printed');
});

t.test('cli: status reads adminListen from --config; an admin port in use names --admin-listen', async (tt) => {
  const dir = tmp(tt);
  const backend = await loopbackBackend(tt);
  const d = new Daemon(
    resolveConfig({ flags: { backends: [backend], healthCheckMode: 'tcp', listen: ['127.0.0.1:0'], adminListen: '127.0.0.1:0' }, env: {} }),
    { logger: createLogger('silent') },
  );
  await d.start();
  tt.teardown(() => d.close(0));
  const cfg = file(dir, 'apilb.yaml', `adminListen: ${JSON.stringify(d.adminAddress)}\n`);
  const st = await runCli(['status', '--json', '--config', cfg]);
  tt.equal(st.code, 0, st.stderr);
  tt.match(JSON.parse(st.stdout), { admin: d.adminAddress, credentials: { identity: 'anonymous', missing: [] } });
  const viaEnv = await runCli(['status', '--json'], { APILB_CONFIG: cfg });
  tt.equal(viaEnv.code, 0, 'APILB_CONFIG too');

  // An admin port in use does not stop apilb (the data path serves; the bind is retried with backoff), and the
  // admin_bind_failed line names the flag that picks another port.
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  tt.teardown(() => new Promise<void>((r) => blocker.close(() => r())));
  const port = (blocker.address() as AddressInfo).port;
  const run = spawnChild(tt, process.execPath, [
    CLI,
    'run',
    '--backend',
    backend,
    '--health-check-mode',
    'tcp',
    '--listen',
    '127.0.0.1:0',
    '--admin-listen',
    `127.0.0.1:${port}`,
  ]);
  const events = (): { event?: string; msg?: string; listen?: string[] }[] =>
    `${run.stdout}\n${run.stderr}`
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { event?: string; msg?: string; listen?: string[] });
  const failed = await waitFor(() => run.done || events().find((e) => e.event === 'admin_bind_failed'), { timeoutMs: 20_000, what: 'admin_bind_failed' });
  tt.equal(run.done, false, `apilb keeps running with its admin port taken: ${run.stderr}`);
  tt.match(
    (failed as { msg?: string }).msg,
    `cannot listen on 127.0.0.1:${port}: address already in use (is kube-apiserver or another apilb bound to it? use --admin-listen to pick another port)`,
  );
  const started = await waitFor(() => events().find((e) => e.event === 'started'), { timeoutMs: 20_000, what: 'the started line' });
  const dataPort = Number(started.listen![0]!.split(':').at(-1));
  const c = await dial(dataPort);
  c.write('ping');
  tt.equal((await readBytes(c, 4)).toString(), 'ping', 'the data listener serves through the loopback backend');
  c.destroy();
  run.proc.kill('SIGTERM');
  tt.equal(await run.exited, 0, 'SIGTERM ends it cleanly');
});
