/**
 * A real node for tests: a Debian 12 root filesystem booted with systemd as PID 1 under `systemd-nspawn`, with a
 * private network (its own loopback only, so nothing inside can reach another machine). How it works and what was
 * measured on this kind of host: /work/shared/real-node.md, summarized:
 *
 * - the root filesystem is made once with debootstrap and cached in {@link ROOTFS_CACHE} (built into a temporary
 *   name, then renamed, so an interrupted build never leaves a half cache); each boot gets a fresh `cp -a` copy;
 * - `systemd-nspawn -D DIR --private-network --register=no --keep-unit -M NAME -b` in its own session, stdin from
 *   /dev/null (without `--keep-unit` it stops with "Failed to open system bus" on a host without systemd);
 * - the container's PID 1 is the nspawn child named `systemd`; commands run with `nsenter -t PID -a`;
 * - `systemctl reboot` inside ends nspawn (status 133 with `--keep-unit`): boot the same directory again.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { findBinary } from './e2e.js';
import { waitFor } from './index.js';

/** Where the debootstrapped root filesystem is cached between runs. */
export const ROOTFS_CACHE = '/var/cache/apilb-realnode/rootfs';

/** The debootstrap call that makes it (Debian 12, systemd, what the checks use). */
export const DEBOOTSTRAP_ARGS = ['--variant=minbase', '--include=systemd,systemd-sysv,dbus,iproute2,ca-certificates,openssl,procps', 'bookworm'];

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Why a real node cannot be booted on this host, or undefined when it can. */
export function whyNoRealNode(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root (systemd-nspawn needs root)';
  const need: [string, string][] = [
    ['systemd-nspawn', 'systemd-container'],
    ['debootstrap', 'debootstrap'],
    ['nsenter', 'util-linux'],
  ];
  for (const [bin, pkg] of need) if (!findBinary(bin)) return `${bin} not found (apt-get install ${pkg}; npm test's pretest step installs it as root)`;
  return undefined;
}

/** Result of a command inside the node. */
export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

function execFileResult(file: string, args: string[], timeoutMs: number): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 255) : 0;
      resolve({ code, stdout, stderr: err && code === 255 ? `${stderr}${err.message}` : stderr });
    });
  });
}

/** Makes the cached root filesystem when it is missing (about a minute, ~400 MB). Returns its path. */
export async function ensureRootfs(log: (line: string) => void): Promise<string> {
  if (existsSync(join(ROOTFS_CACHE, 'usr/lib/systemd/systemd'))) return ROOTFS_CACHE;
  const tmp = `${ROOTFS_CACHE}.tmp-${process.pid}`;
  mkdirSync(dirname(ROOTFS_CACHE), { recursive: true });
  rmSync(tmp, { recursive: true, force: true });
  log(`building ${ROOTFS_CACHE} with debootstrap ${DEBOOTSTRAP_ARGS.join(' ')} (once; cached afterwards)`);
  const r = await execFileResult('debootstrap', [...DEBOOTSTRAP_ARGS.slice(0, -1), DEBOOTSTRAP_ARGS.at(-1)!, tmp], 15 * 60_000);
  if (r.code !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`debootstrap failed (${r.code}): ${r.stderr.slice(-2000)}`);
  }
  renameSync(tmp, ROOTFS_CACHE);
  return ROOTFS_CACHE;
}

/** A booted container. */
export class RealNode {
  private nspawn: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  /** The container's PID 1 (systemd) as seen from the host. */
  pid = 0;
  /** Boots so far (a reboot boots the same directory again). */
  boots = 0;

  /** `dir`: the node's root filesystem (a fresh copy); `name`: its machine name. */
  constructor(
    readonly dir: string,
    readonly name: string,
    private readonly logFile: string,
  ) {}

  /** Copies the cached root filesystem to `dir` and boots it. */
  static async create(dir: string, name: string, log: (line: string) => void): Promise<RealNode> {
    const rootfs = await ensureRootfs(log);
    rmSync(dir, { recursive: true, force: true });
    // cp -a keeps owners, modes, device nodes and hard links as debootstrap made them.
    const cp = await execFileResult('cp', ['-a', rootfs, dir], 120_000);
    if (cp.code !== 0) throw new Error(`cp -a ${rootfs} ${dir}: ${cp.stderr}`);
    const node = new RealNode(dir, name, `${dir}.console.log`);
    await node.boot();
    return node;
  }

  /** Starts nspawn and waits until systemd inside reports the boot finished. */
  async boot(): Promise<void> {
    const out = openSync(this.logFile, 'a');
    const child = spawn('systemd-nspawn', ['-D', this.dir, '--private-network', '--register=no', '--keep-unit', '-M', this.name, '-b'], {
      detached: true, // its own session, as a service manager would run it
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    this.nspawn = child;
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    this.boots++;
    const nspawnPid = child.pid!;
    // A short-lived intermediate child exists at first: wait for the one named systemd.
    this.pid = await waitFor(() => childNamed(nspawnPid, 'systemd'), { timeoutMs: 30_000, intervalMs: 100, what: 'container PID 1 (systemd)' });
    await waitFor(
      async () => {
        const r = await this.exec('systemctl is-system-running', 10_000);
        return ['running', 'degraded'].includes(r.stdout.trim());
      },
      { timeoutMs: 90_000, intervalMs: 200, what: `boot of ${this.name} (console: ${this.logFile})` },
    );
  }

  /** Runs `script` with bash inside the node (all its namespaces, a clean environment). Never rejects. */
  exec(script: string, timeoutMs = 60_000): Promise<ExecResult> {
    return execFileResult('nsenter', ['-t', String(this.pid), '-a', '--', '/usr/bin/env', '-i', `PATH=${PATH}`, 'bash', '-c', script], timeoutMs);
  }

  /** Like {@link exec}, but throws with the output when the exit code is not 0; returns stdout. */
  async run(script: string, timeoutMs = 60_000): Promise<string> {
    const r = await this.exec(script, timeoutMs);
    if (r.code !== 0) throw new Error(`inside ${this.name}: \`${script}\` exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout;
  }

  /** A long-running process inside the node with pipes to it (e.g. the client load). */
  spawn(argv: string[]): ChildProcess {
    return spawn('nsenter', ['-t', String(this.pid), '-a', '--', '/usr/bin/env', '-i', `PATH=${PATH}`, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
  }

  /** Writes a file into the node's file system (from the host: the directory is its root). */
  writeFile(path: string, content: string | Buffer, mode = 0o644): void {
    const p = join(this.dir, path);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, content, { mode });
  }

  /** `systemctl show -p NAME --value UNIT`. */
  async show(unit: string, prop: string): Promise<string> {
    return (await this.run(`systemctl show -p ${prop} --value ${unit}`)).trim();
  }

  /** `systemctl reboot` inside, waits for nspawn to exit, boots the same directory again. */
  async reboot(): Promise<void> {
    await this.exec('systemctl reboot', 20_000);
    await withTimeout(this.exited, 60_000, 'nspawn exit after systemctl reboot');
    await this.boot();
  }

  /** Powers the node off (kills nspawn when that does not finish in 20 s) and removes its directory. */
  async destroy(): Promise<void> {
    if (this.nspawn && this.nspawn.exitCode === null && this.nspawn.signalCode === null) {
      await this.exec('systemctl poweroff', 10_000);
      try {
        await withTimeout(this.exited, 20_000, 'poweroff');
      } catch {
        this.nspawn.kill('SIGKILL');
        await this.exited;
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
    rmSync(this.logFile, { force: true });
  }

  /** The end of the console log (for failure messages). */
  consoleTail(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8').slice(-3000) : '';
  }
}

function childNamed(ppid: number, comm: string): number | undefined {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
      const close = stat.lastIndexOf(')');
      const name = stat.slice(stat.indexOf('(') + 1, close);
      const parent = Number(stat.slice(close + 2).split(' ')[1]);
      if (parent === ppid && name === comm) return Number(e);
    } catch {
      /* the process went away */
    }
  }
  return undefined;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Where the package put things inside the node. */
export interface Installed {
  /** The Node.js runtime the package ships (apilb runs on it); also runs the stand-ins and clients inside. */
  node: string;
  /** The package's application directory (dist/ with the API-server stand-in script). */
  appDir: string;
}

/**
 * Installs apilb into `node` the way an operator does: builds the .deb from this checkout (`npm run package`, into
 * a temporary directory so no stale release/ file is used; APILB_FAST=1 skips xz), `dpkg -i` inside, and kubelet's
 * drop-in from /usr/share/apilb (docs/install.md). The configuration (/etc/apilb/apilb.yaml) is the caller's.
 */
export async function installApilb(node: RealNode, repo: string): Promise<Installed> {
  const version = (JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string }).version;
  const out = mkdtempSync(join(tmpdir(), 'apilb-realnode-deb-'));
  try {
    // build.sh's `npm ci` may fetch modules from the npm registry: exempt from test/support/loopback-guard.mjs.
    const r = await execFileResult('env', ['APILB_FAST=1', 'LOOPBACK_GUARD=off', 'bash', join(repo, 'packaging/build.sh'), out], 10 * 60_000);
    if (r.code !== 0) throw new Error(`packaging/build.sh failed (${r.code}): ${r.stderr.slice(-2000)}`);
    node.writeFile('/root/apilb.deb', readFileSync(join(out, `apilb_${version}_amd64.deb`)));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
  await node.run(
    [
      'dpkg -i /root/apilb.deb',
      'install -D -m 0644 /usr/share/apilb/kubelet.service.d/10-apilb.conf /etc/systemd/system/kubelet.service.d/10-apilb.conf',
      'systemctl daemon-reload',
    ].join(' && '),
    120_000,
  );
  return { node: '/usr/lib/apilb/node/bin/node', appDir: '/usr/lib/apilb' };
}
