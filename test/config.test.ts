/**
 * Configuration: every validation error class with its message, precedence (flags > env > file > defaults),
 * APILB_CONFIG, `check-config` exit codes, `run` on an address in use, and kubeconfig credentials from file
 * paths (relative to the kubeconfig) and inline `*-data`.
 */
import t, { type Test } from 'tap';
import { runCli } from './support/cli.js';
import { mkdirSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { resolveConfig, resolveCredentialPath, type ResolveInput } from '../src/config/config.js';
import { loadKubeconfigCredentials } from '../src/config/kubeconfig.js';
import { envName, OPTIONS } from '../src/config/options.js';
import { loadTlsMaterial } from '../src/config/tls.js';
import { formatAddress, formatDuration, parseAddress, parseDuration } from '../src/config/values.js';
import { createTestCA } from '../src/demo/test-ca.js';
import { tempDir, writeIn } from './support/index.js';
import { ConfigError, hasCode } from '../src/errors.js';

const BASE = { backends: ['10.0.0.1:6443'], healthCheckInsecure: true };

const tmp = (tt: Test) => tempDir(tt, 'apilb-config-');
const writeFile = writeIn;

/** The issues resolveConfig reports for `input`, as `path: reason` lines; fails the test when it does not throw. */
function issuesOf(tt: Test, input: ResolveInput): string[] {
  try {
    resolveConfig({ hasIPv6Loopback: false, ...input });
  } catch (e) {
    tt.ok(e instanceof ConfigError, 'a ConfigError');
    tt.ok(hasCode(e, 'APILB_ERR_CONFIG_INVALID'), 'code APILB_ERR_CONFIG_INVALID');
    return (e as ConfigError).issues.map((i) => `${i.path}: ${i.reason}`);
  }
  tt.fail('resolveConfig accepted an invalid configuration');
  return [];
}

function flagIssue(tt: Test, flags: Record<string, unknown>): string[] {
  return issuesOf(tt, { flags: { ...BASE, ...flags } });
}

t.test('values: durations and addresses', async (tt) => {
  tt.equal(parseDuration('250ms'), 250);
  tt.equal(parseDuration('1.5s'), 1500);
  tt.equal(parseDuration('2m'), 120_000);
  tt.equal(parseDuration('1h'), 3_600_000);
  tt.equal(parseDuration('0'), 0);
  tt.throws(() => parseDuration('5'), {
    message: '"5" is not a duration: write a number with a unit, like 500ms, 2s, 1.5s or 1m30s (units ns, us, ms, s, m, h)',
  });
  tt.throws(() => parseDuration('-1s'), { message: '"-1s" is negative: a duration is 0 or more, like 500ms, 2s, 1.5s or 1m30s' });
  tt.equal(formatDuration(1500), '1.5s');
  tt.equal(formatDuration(120_000), '2m');
  tt.same(parseAddress('[::1]:6443'), { host: '::1', port: 6443 });
  tt.same(parseAddress('api.example.internal:6443'), { host: 'api.example.internal', port: 6443 });
  tt.same(parseAddress('127.0.0.1:0', { allowPortZero: true }), { host: '127.0.0.1', port: 0 });
  tt.equal(formatAddress({ host: '::1', port: 6443 }), '[::1]:6443');
  tt.throws(() => parseAddress('::1'), { message: '"::1" looks like an IPv6 address: write it in brackets with a port, like [::1]:6443' });
  tt.throws(() => parseAddress('[::1]'), { message: '"[::1]" is not HOST:PORT (IPv6 is written [::1]:6443)' });
  tt.throws(() => parseAddress('[10.0.0.1]:6443'), { message: '"10.0.0.1" in "[10.0.0.1]:6443" is not an IPv6 address' });
  tt.throws(() => parseAddress('10.0.0.256:6443'), { message: '"10.0.0.256" in "10.0.0.256:6443" is not a valid IPv4 address' });
  tt.throws(() => parseAddress('bad host:6443'), { message: '"bad host" in "bad host:6443" is neither an IP address nor a host name' });
  tt.throws(() => parseAddress('10.0.0.1:https'), { message: 'port "https" in "10.0.0.1:https" is not a number' });
});

t.test('defaults', async (tt) => {
  const cfg = resolveConfig({ flags: BASE, hasIPv6Loopback: true });
  tt.same(cfg.listen, [
    { host: '127.0.0.1', port: 6443 },
    { host: '::1', port: 6443 },
  ]);
  tt.same(resolveConfig({ flags: BASE, hasIPv6Loopback: false }).listen, [{ host: '127.0.0.1', port: 6443 }]);
  tt.same(cfg.backends, [{ host: '10.0.0.1', port: 6443 }]);
  tt.equal(cfg.connectTimeout, 1000);
  tt.equal(cfg.firstByteTimeout, 1000);
  tt.equal(cfg.maxConnections, 10000);
  tt.equal(cfg.healthCheckMode, 'https');
  tt.equal(cfg.healthCheckPath, '/readyz');
  tt.equal(cfg.healthCheckInterval, 2000);
  tt.equal(cfg.healthCheckTimeout, 1000);
  tt.equal(cfg.rise, 2);
  tt.equal(cfg.fall, 2);
  tt.equal(cfg.drainTimeout, 60_000);
  tt.equal(cfg.dnsRefresh, 30_000);
  tt.equal(cfg.discoverEndpointslices, false);
  tt.same(cfg.adminListen, { host: '127.0.0.1', port: 9643 });
  tt.equal(cfg.shutdownTimeout, 10_000);
  tt.equal(cfg.logLevel, 'info');
  tt.equal(cfg.configFile, undefined);
});

t.test('precedence: flags > environment > file > defaults', async (tt) => {
  const dir = tmp(tt);
  const file = writeFile(
    dir,
    'apilb.yaml',
    [
      'backends: [10.0.0.1:6443, 10.0.0.2:6443]',
      'healthCheckInsecure: true',
      'connectTimeout: 3s',
      'firstByteTimeout: 3s',
      'maxConnections: 3',
      'rise: 3',
      '',
    ].join('\n'),
  );
  const env = { APILB_CONNECT_TIMEOUT: '2s', APILB_FIRST_BYTE_TIMEOUT: '2s', APILB_MAX_CONNECTIONS: '2', APILB_UNRELATED: 'x', PATH: '/bin' };
  const flags = { connectTimeout: '1500ms' };
  const cfg = resolveConfig({ configFile: file, env, flags, hasIPv6Loopback: false });
  tt.equal(cfg.connectTimeout, 1500, 'flag beats env and file');
  tt.equal(cfg.firstByteTimeout, 2000, 'env beats file');
  tt.equal(cfg.maxConnections, 2, 'env beats file (int)');
  tt.equal(cfg.rise, 3, 'file beats default');
  tt.equal(cfg.fall, 2, 'default when nobody sets it');
  tt.same(cfg.backends.map(formatAddress), ['10.0.0.1:6443', '10.0.0.2:6443'], 'backends from the file');
  tt.equal(cfg.configFile, file);

  const env2 = resolveConfig({ configFile: file, env: { APILB_BACKEND: '10.0.0.7:6443, 10.0.0.8:6443' }, hasIPv6Loopback: false });
  tt.same(env2.backends.map(formatAddress), ['10.0.0.7:6443', '10.0.0.8:6443'], 'a list from the environment replaces the file list');
  const flag2 = resolveConfig({ configFile: file, env: { APILB_BACKEND: '10.0.0.7:6443' }, flags: { backends: ['10.0.0.9:6443'] }, hasIPv6Loopback: false });
  tt.same(flag2.backends.map(formatAddress), ['10.0.0.9:6443'], 'repeated flags replace env and file lists');

  // Every option has an environment variable that works.
  tt.equal(
    resolveConfig({ flags: BASE, env: { APILB_HEALTH_CHECK_INTERVAL: '5s', APILB_LOG_LEVEL: 'debug', APILB_HEALTH_CHECK_MODE: 'tcp' } }).healthCheckInterval,
    5000,
  );
  for (const spec of OPTIONS) tt.match(envName(spec), /^APILB_[A-Z_]+$/, `${spec.key} has an env name`);
});

t.test('file: YAML keys are the flags in camelCase, lists under plural names', async (tt) => {
  const dir = tmp(tt);
  const file = writeFile(
    dir,
    'apilb.yaml',
    [
      'listen: ["127.0.0.1:16443", "[::1]:16443"]',
      'backends:',
      '  - 10.0.0.1:6443',
      '  - "[fd00::1]:6443"',
      '  - api.example.internal:6443',
      'healthCheckInsecure: true',
      'connectTimeout: 0.5s',
      'firstByteTimeout: 0',
      'drainTimeout: 0',
      'healthCheckMode: tcp',
      'adminListen: 127.0.0.1:0',
      'tlsServerName: kubernetes',
      '',
    ].join('\n'),
  );
  const cfg = resolveConfig({ configFile: file });
  tt.same(cfg.listen.map(formatAddress), ['127.0.0.1:16443', '[::1]:16443']);
  tt.same(cfg.backends.map(formatAddress), ['10.0.0.1:6443', '[fd00::1]:6443', 'api.example.internal:6443']);
  tt.equal(cfg.connectTimeout, 500);
  tt.equal(cfg.firstByteTimeout, 0, 'bare 0 disables');
  tt.equal(cfg.drainTimeout, 0);
  tt.equal(cfg.healthCheckMode, 'tcp');
  tt.equal(cfg.tlsServerName, 'kubernetes');
  tt.same(cfg.adminListen, { host: '127.0.0.1', port: 0 });
  const empty = writeFile(dir, 'empty.yaml', '# nothing yet\n');
  tt.same(
    resolveConfig({ configFile: empty, flags: BASE, hasIPv6Loopback: false }).backends.map(formatAddress),
    ['10.0.0.1:6443'],
    'an empty file is no settings',
  );
});

t.test('validation errors name the field and the reason', async (tt) => {
  tt.same(flagIssue(tt, { connectTimeout: 'abc' }), [
    '--connect-timeout: "abc" is not a duration: write a number with a unit, like 500ms, 2s, 1.5s or 1m30s (units ns, us, ms, s, m, h)',
  ]);
  tt.same(flagIssue(tt, { connectTimeout: '0' }), ['--connect-timeout: must be greater than zero, got "0"'], 'zero where invalid');
  tt.same(
    flagIssue(tt, { connectTimeout: '-1s' }),
    ['--connect-timeout: "-1s" is negative: a duration is 0 or more, like 500ms, 2s, 1.5s or 1m30s'],
    'negative',
  );
  tt.same(flagIssue(tt, { healthCheckInterval: '50ms' }), ['--health-check-interval: must be at least 100ms, got "50ms"'], 'below the minimum');
  tt.same(flagIssue(tt, { dnsRefresh: '0' }), ['--dns-refresh: must be at least 1s, got "0"']);
  tt.same(
    flagIssue(tt, { backends: ['fd00::1:6443'] }),
    ['--backend: "fd00::1:6443" looks like an IPv6 address: write it in brackets with a port, like [fd00::1]:6443'],
    'IPv6 without brackets',
  );
  tt.same(flagIssue(tt, { backends: ['10.0.0.1:70000'] }), ['--backend: port 70000 in "10.0.0.1:70000" is out of range (1-65535)'], 'port range');
  tt.same(flagIssue(tt, { backends: ['10.0.0.1:0'] }), ['--backend: port 0 in "10.0.0.1:0" is out of range (1-65535)'], 'port 0 is for listeners only');
  tt.same(flagIssue(tt, { backends: ['10.0.0.1'] }), ['--backend: "10.0.0.1" is not HOST:PORT (for example 10.0.0.1:6443)'], 'missing port');
  tt.same(flagIssue(tt, { listen: ['127.0.0.1:65536'] }), ['--listen: port 65536 in "127.0.0.1:65536" is out of range (0-65535)']);
  tt.same(flagIssue(tt, { adminListen: 'localhost' }), ['--admin-listen: "localhost" is not HOST:PORT (for example 10.0.0.1:6443)']);
  tt.same(flagIssue(tt, { maxConnections: 'many' }), ['--max-connections: must be a whole number, got "many"'], 'wrong type (int)');
  tt.same(flagIssue(tt, { rise: '0' }), ['--rise: must be at least 1, got 0']);
  tt.same(flagIssue(tt, { fall: '101' }), ['--fall: must be at most 100, got 101']);
  tt.same(flagIssue(tt, { healthCheckMode: 'udp' }), ['--health-check-mode: must be one of https, tcp, got "udp"'], 'enum');
  tt.same(flagIssue(tt, { logLevel: 'loud' }), ['--log-level: must be one of fatal, error, warn, info, debug, trace, silent, got "loud"']);
  tt.same(flagIssue(tt, { caFile: '/nonexistent/ca.crt' }), ['--ca-file: CA file "/nonexistent/ca.crt" does not exist'], 'missing file');
  tt.same(flagIssue(tt, { healthCheckPath: '' }), ['--health-check-path: must not be empty']);

  tt.same(
    issuesOf(tt, { env: { APILB_BACKEND: '10.0.0.1:6443', APILB_HEALTH_CHECK_INSECURE: 'maybe' } }),
    ['APILB_HEALTH_CHECK_INSECURE: must be true or false, got "maybe"'],
    'env errors name the variable',
  );
  tt.same(issuesOf(tt, { env: { APILB_BACKEND: '10.0.0.1:6443,::1' }, flags: { healthCheckInsecure: true } }), [
    'APILB_BACKEND: "::1" looks like an IPv6 address: write it in brackets with a port, like [::1]:6443',
  ]);

  const several = flagIssue(tt, { connectTimeout: 'x', rise: 'y', backends: ['a', 'b:1'] });
  tt.equal(several.length, 3, 'every bad field is reported, not just the first');
});

t.test('file errors: unknown keys with suggestions, wrong types, bad YAML, missing file', async (tt) => {
  const dir = tmp(tt);
  const file = writeFile(
    dir,
    'apilb.yaml',
    [
      'backends:',
      '  - 10.0.0.1:6443',
      '  - nope',
      '  - 7',
      'healthCheckInsecure: true',
      'healthCheckIntervall: 2s',
      'drain_timeout: 1s',
      'backend: 10.0.0.2:6443',
      'frobnicate: 1',
      'connectTimeout: 5',
      'firstByteTimeout: [1s]',
      'rise: 2.5',
      'fall: "abc"',
      'listen: {a: 1}',
      'logLevel: 3',
      'healthCheckInsecureX: yes',
      'tlsServerName: 42',
      '',
    ].join('\n'),
  );
  const got = issuesOf(tt, { configFile: file });
  const f = file;
  tt.same(
    got.sort(),
    [
      `${f}: backends.1: "nope" is not HOST:PORT (for example 10.0.0.1:6443)`,
      `${f}: backends.2: must be an address HOST:PORT, got 7`,
      `${f}: healthCheckIntervall: unknown key (did you mean "healthCheckInterval"?)`,
      `${f}: drain_timeout: unknown key (did you mean "drainTimeout"?)`,
      `${f}: backend: unknown key (did you mean "backends"?)`,
      `${f}: frobnicate: unknown key`,
      `${f}: connectTimeout: must be a duration with a unit, like 5s or 5ms (a bare number is ambiguous)`,
      `${f}: firstByteTimeout: must be a duration like 250ms, 2s or 1m30s, got a list`,
      `${f}: rise: must be a whole number, got 2.5`,
      `${f}: fall: must be a whole number, got "abc"`,
      `${f}: listen: must be a list of HOST:PORT addresses, got a mapping`,
      `${f}: logLevel: must be one of fatal, error, warn, info, debug, trace, silent, got 3`,
      `${f}: healthCheckInsecureX: unknown key (did you mean "healthCheckInsecure"?)`,
      `${f}: tlsServerName: must be a string, got 42`,
    ].sort(),
  );

  const bad = writeFile(dir, 'bad.yaml', 'backends: [10.0.0.1:6443\nfoo: : :\n');
  const badIssues = issuesOf(tt, { configFile: bad });
  tt.equal(badIssues.length, 1);
  tt.match(badIssues[0], new RegExp(`^config: "${bad}" is not valid YAML at line 2: `), 'bad YAML names the file and line');

  const list = writeFile(dir, 'list.yaml', '- a\n- b\n');
  tt.same(issuesOf(tt, { configFile: list }), [`config: "${list}" must hold a mapping of settings (key: value)`]);

  const missing = join(dir, 'missing.yaml');
  tt.same(
    issuesOf(tt, { configFile: missing, flags: { ...BASE, rise: 'x' } }),
    [`config: config file "${missing}" does not exist`, '--rise: must be a whole number, got "x"'],
    "a missing file is reported together with the other layers' problems",
  );
});

t.test('cross-field rules', async (tt) => {
  tt.same(issuesOf(tt, { flags: { healthCheckInsecure: true } }), [
    'backends: no backend configured: pass --backend HOST:PORT (repeatable), set backends: in --config FILE, or set APILB_BACKEND',
  ]);
  tt.same(resolveConfig({ flags: { healthCheckInsecure: true }, allowNoBackends: true }).backends, [], 'allowNoBackends');
  tt.same(issuesOf(tt, { flags: { backends: ['10.0.0.1:6443'] } }), [
    'caFile: https health checks verify the API server certificate: pass --ca-file (the cluster CA, e.g. /etc/kubernetes/pki/ca.crt), --kubeconfig, or --health-check-insecure to opt out of verification',
  ]);
  tt.ok(resolveConfig({ flags: { backends: ['10.0.0.1:6443'], healthCheckMode: 'tcp' } }), 'tcp checks need no CA');
  tt.same(flagIssue(tt, { healthCheckTimeout: '3s' }), ['--health-check-timeout: must not exceed healthCheckInterval (2s)']);
  tt.same(
    issuesOf(tt, { flags: BASE, env: { APILB_HEALTH_CHECK_TIMEOUT: '3s' } }),
    ['APILB_HEALTH_CHECK_TIMEOUT: must not exceed healthCheckInterval (2s)'],
    'reported where it was set',
  );
  tt.same(flagIssue(tt, { discoverEndpointslices: true }), ['--discover-endpointslices: needs --kubeconfig for the credentials to read EndpointSlices']);
  const dir = tmp(tt);
  const pem = writeFile(dir, 'client.crt', '-----BEGIN CERTIFICATE-----\n');
  tt.same(flagIssue(tt, { clientCertFile: pem }), ['--client-cert-file: --client-cert-file and --client-key-file go together']);
  tt.same(flagIssue(tt, { clientKeyFile: pem }), ['--client-key-file: --client-cert-file and --client-key-file go together']);
});

t.test('credential paths: a bare name is looked up in $CREDENTIALS_DIRECTORY', async (tt) => {
  const dir = tmp(tt);
  writeFile(dir, 'client.key', 'x');
  tt.equal(resolveCredentialPath('client.key', { CREDENTIALS_DIRECTORY: dir }), join(dir, 'client.key'));
  tt.equal(resolveCredentialPath('other.key', { CREDENTIALS_DIRECTORY: dir }), 'other.key', 'not there: unchanged');
  tt.equal(resolveCredentialPath('/etc/x.key', { CREDENTIALS_DIRECTORY: dir }), '/etc/x.key', 'absolute: unchanged');
});

t.test('kubeconfig: file paths relative to the kubeconfig, and inline data', async (tt) => {
  const ca = createTestCA();
  tt.teardown(() => ca.remove());
  const client = ca.client('system:node:node-1', 'system:nodes');
  const dir = tmp(tt);
  mkdirSync(join(dir, 'pki'));
  writeFile(dir, 'pki/ca.crt', ca.cert);
  // kubeadm's kubelet.conf points both client-certificate and client-key at one rotated PEM holding both.
  writeFile(dir, 'pki/kubelet-client-current.pem', client.cert + client.key);
  const kcFiles = writeFile(
    dir,
    'kubelet.conf',
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: kubernetes',
      '  cluster:',
      '    certificate-authority: pki/ca.crt',
      '    server: https://10.0.0.1:6443',
      '    tls-server-name: kubernetes',
      'contexts:',
      '- name: system:node:node-1@kubernetes',
      '  context: {cluster: kubernetes, user: system:node:node-1}',
      'current-context: system:node:node-1@kubernetes',
      'users:',
      '- name: system:node:node-1',
      '  user:',
      '    client-certificate: pki/kubelet-client-current.pem',
      '    client-key: pki/kubelet-client-current.pem',
      '',
    ].join('\n'),
  );
  const k = loadKubeconfigCredentials(kcFiles);
  tt.equal(k.ca, ca.cert, 'CA read relative to the kubeconfig directory');
  tt.match(k.cert, /BEGIN CERTIFICATE/);
  tt.match(k.key, /PRIVATE KEY/);
  tt.equal(k.serverName, 'kubernetes');
  tt.equal(k.server, 'https://10.0.0.1:6443');
  tt.ok(createSecureContext({ ca: k.ca, cert: k.cert, key: k.key }), 'the combined PEM works as both certificate and key');

  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const kcInline = writeFile(
    dir,
    'admin.conf',
    [
      'apiVersion: v1',
      'clusters:',
      '- name: c',
      '  cluster:',
      `    certificate-authority-data: ${b64(ca.cert)}`,
      '    server: https://10.0.0.1:6443',
      'contexts:',
      '- name: only',
      '  context: {cluster: c, user: u}',
      'users:',
      '- name: u',
      '  user:',
      `    client-certificate-data: ${b64(client.cert)}`,
      `    client-key-data: ${b64(client.key)}`,
      '',
    ].join('\n'),
  );
  const inline = loadKubeconfigCredentials(kcInline);
  tt.equal(inline.ca, ca.cert, 'inline CA decoded');
  tt.equal(inline.cert, client.cert);
  tt.equal(inline.key, client.key);
  tt.equal(inline.serverName, undefined);

  // Through the configuration: --kubeconfig alone satisfies the https CA rule; explicit files win in loadTlsMaterial.
  const cfg = resolveConfig({ flags: { backends: ['10.0.0.1:6443'], kubeconfig: kcInline } });
  const m = loadTlsMaterial(cfg);
  tt.equal(m.ca, ca.cert);
  tt.equal(m.cert, client.cert);
  tt.equal(m.insecure, false);
  const other = createTestCA({ name: 'other' });
  tt.teardown(() => other.remove());
  const m2 = loadTlsMaterial(resolveConfig({ flags: { backends: ['10.0.0.1:6443'], kubeconfig: kcInline, caFile: other.certFile, tlsServerName: 'api' } }));
  tt.equal(m2.ca, other.cert, '--ca-file beats the kubeconfig CA');
  tt.equal(m2.cert, client.cert, 'client identity still from the kubeconfig');
  tt.equal(m2.serverName, 'api');
});

t.test('kubeconfig: unreadable referenced files are found in $CREDENTIALS_DIRECTORY by base name', async (tt) => {
  const ca = createTestCA();
  tt.teardown(() => ca.remove());
  const client = ca.client('system:node:node-1', 'system:nodes');
  const creds = tmp(tt);
  writeFile(creds, 'kubelet-client-current.pem', client.cert + client.key);
  const dir = tmp(tt);
  const kc = writeFile(
    dir,
    'kubelet.conf',
    [
      `clusters: [{name: c, cluster: {certificate-authority-data: ${Buffer.from(ca.cert).toString('base64')}}}]`,
      'contexts: [{name: x, context: {cluster: c, user: u}}]',
      'current-context: x',
      'users: [{name: u, user: {client-certificate: /nonexistent/pki/kubelet-client-current.pem, client-key: /nonexistent/pki/kubelet-client-current.pem}}]',
    ].join('\n'),
  );
  const k = loadKubeconfigCredentials(kc, { CREDENTIALS_DIRECTORY: creds });
  tt.equal(k.cert, client.cert + client.key, 'read from the credentials directory');
  const without = loadKubeconfigCredentials(kc, {});
  tt.equal(without.cert, undefined, 'without the credentials directory the certificate is not there (yet)');
  tt.same(
    without.missing,
    ['/nonexistent/pki/kubelet-client-current.pem', '/nonexistent/pki/kubelet-client-current.pem'],
    'and is listed as missing, not fatal',
  );
});

t.test('kubeconfig errors', async (tt) => {
  const dir = tmp(tt);
  const kc = (name: string, lines: string[]) => writeFile(dir, name, lines.join('\n') + '\n');
  const missingCa = kc('missing-ca.conf', [
    'clusters: [{name: c, cluster: {certificate-authority: nope/ca.crt, server: "https://10.0.0.1:6443"}}]',
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
    'users: [{name: u, user: {}}]',
  ]);
  tt.same(loadKubeconfigCredentials(missingCa).missing, [join(dir, 'nope/ca.crt')], 'a referenced file that does not exist yet is listed, not fatal');
  const badData = kc('bad-data.conf', [
    'clusters: [{name: c, cluster: {certificate-authority-data: bm90IGEgcGVt}}]',
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
  ]);
  tt.throws(() => loadKubeconfigCredentials(badData), { message: `kubeconfig "${badData}": certificate-authority-data is not base64-encoded PEM` });
  const noCtx = kc('no-ctx.conf', ['clusters: []', 'contexts: [{name: a}, {name: b}]', 'current-context: c']);
  tt.throws(() => loadKubeconfigCredentials(noCtx), { message: `kubeconfig "${noCtx}": current-context "c" is not among its contexts` });
  const noCluster = kc('no-cluster.conf', ['contexts: [{name: x, context: {cluster: gone, user: u}}]', 'current-context: x']);
  tt.throws(() => loadKubeconfigCredentials(noCluster), { message: `kubeconfig "${noCluster}": cluster "gone" of context "x" is missing` });
  const certOnly = kc('cert-only.conf', [
    `clusters: [{name: c, cluster: {certificate-authority-data: ${Buffer.from('-----BEGIN CERTIFICATE-----\n').toString('base64')}}}]`,
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
    `users: [{name: u, user: {client-certificate-data: ${Buffer.from('-----BEGIN CERTIFICATE-----\n').toString('base64')}}}]`,
  ]);
  tt.throws(() => loadKubeconfigCredentials(certOnly), {
    message: `kubeconfig "${certOnly}": has a client certificate without a key or a key without a certificate`,
  });

  // resolveConfig reads the kubeconfig, so check-config catches a broken one before startup.
  tt.same(issuesOf(tt, { flags: { backends: ['10.0.0.1:6443'], kubeconfig: missingCa } }), [
    `--kubeconfig: "${missingCa}" gives no CA: "${join(dir, 'nope/ca.crt')}" does not exist yet: pass --ca-file too (kubeadm join writes /etc/kubernetes/pki/ca.crt before kubelet.conf)`,
  ]);
  const noCa = kc('no-ca.conf', [
    'clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443"}}]',
    'contexts: [{name: x, context: {cluster: c, user: u}}]',
    'current-context: x',
  ]);
  tt.same(issuesOf(tt, { flags: { backends: ['10.0.0.1:6443'], kubeconfig: noCa } }), [
    `--kubeconfig: "${noCa}" has no certificate-authority or certificate-authority-data for its cluster: pass --ca-file too (kubeadm join writes /etc/kubernetes/pki/ca.crt before kubelet.conf)`,
  ]);
});

t.test('cli: check-config exit codes, APILB_CONFIG, messages on stderr', async (tt) => {
  const dir = tmp(tt);
  const good = writeFile(dir, 'good.yaml', 'backends: [10.0.0.1:6443]\nhealthCheckInsecure: true\n');
  const bad = writeFile(dir, 'bad.yaml', 'backends: [10.0.0.1:6443]\nhealthCheckInsecure: true\nconnectTimeout: fast\n');

  const ok = await runCli(['check-config', '--config', good]);
  tt.equal(ok.code, 0, 'valid: exit 0');
  tt.match(ok.stdout, /configuration OK: 1 backends/);
  tt.equal(ok.stderr, '');

  const invalid = await runCli(['check-config', '--config', bad]);
  tt.equal(invalid.code, 2, 'invalid: exit 2, as run exits for the same configuration');
  tt.equal(invalid.stdout, '');
  tt.match(invalid.stderr, `${bad}: connectTimeout: "fast" is not a duration`);

  const viaEnv = await runCli(['check-config'], { APILB_CONFIG: bad });
  tt.equal(viaEnv.code, 2, 'APILB_CONFIG names the file');
  tt.match(viaEnv.stderr, 'connectTimeout: "fast" is not a duration');

  const flagWins = await runCli(['check-config', '--config', good, '--connect-timeout', '0'], { APILB_CONNECT_TIMEOUT: '2s' });
  tt.equal(flagWins.code, 2);
  tt.match(flagWins.stderr, '--connect-timeout: must be greater than zero, got "0"');

  const envOnly = await runCli(['check-config', '--backend', '10.0.0.1:6443'], { APILB_HEALTH_CHECK_INSECURE: 'true', APILB_RISE: 'zero' });
  tt.equal(envOnly.code, 2);
  tt.match(envOnly.stderr, 'APILB_RISE: must be a whole number, got "zero"');

  const unknownFlag = await runCli(['check-config', '--backends', '10.0.0.1:6443']);
  tt.equal(unknownFlag.code, 2, 'unknown flag is a usage error');
  tt.match(unknownFlag.stderr, /Unknown argument: backends/);

  const missing = await runCli(['check-config', '--config', join(dir, 'nope.yaml')]);
  tt.equal(missing.code, 2);
  tt.match(missing.stderr, `config: config file "${join(dir, 'nope.yaml')}" does not exist`);
});

t.test('cli: run on an address in use exits non-zero naming the address', async (tt) => {
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  tt.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const port = (blocker.address() as AddressInfo).port;
  const r = await runCli([
    'run',
    '--listen',
    `127.0.0.1:${port}`,
    '--backend',
    '127.0.0.1:9',
    '--health-check-insecure',
    '--admin-listen',
    '127.0.0.1:0',
    '--log-level',
    'silent',
  ]);
  tt.equal(r.code, 3, 'the listen exit code');
  tt.match(r.stderr, `cannot listen on 127.0.0.1:${port}: address already in use`);
  tt.match(r.stderr, 'use --listen to pick another port');
  tt.match(r.stderr, '[APILB_ERR_ADDRESS_IN_USE]');

  const invalid = await runCli(['run', '--listen', `127.0.0.1:${port}`, '--backend', '127.0.0.1:9']);
  tt.equal(invalid.code, 2, 'invalid configuration exits 2 before binding anything');
  tt.match(invalid.stderr, 'caFile: https health checks verify');
});
