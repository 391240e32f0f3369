/**
 * Runs the built CLI (dist/cli.js) as a child process with a clean APILB_* environment plus `env`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Path of the built CLI. */
export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

/** Result of {@link runCli}. */
export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node dist/cli.js ...args`; inherited APILB_* variables are dropped so only `env` sets them. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npm test runs the build)`);
  return new Promise((resolve, reject) => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('APILB_')));
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...clean, ...env } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** What {@link spawnDaemon} returns: the child, with its stdout (and stderr unless inherited) piped. */
export type DaemonChild = ChildProcess & { stdout: Readable; stderr: Readable };

/**
 * Starts `node dist/cli.js run ...args` as a child, in the test's environment, killed (and waited for) at the
 * test's teardown. `wrapper`: a command that ends by exec'ing the rest (`['sh', '-c', 'ulimit -n 64 && exec "$0"
 * "$@"']`, `unshare -n ...`). `stderr: 'inherit'` sends the child's stderr to the test's (then `stderr` is null).
 */
export function spawnDaemon(
  tt: { teardown(fn: () => unknown): void },
  args: string[],
  opts: { wrapper?: string[]; stderr?: 'pipe' | 'inherit' } = {},
): DaemonChild {
  const argv = [...(opts.wrapper ?? []), process.execPath, CLI, 'run', ...args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', opts.stderr ?? 'pipe'] }) as DaemonChild;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  tt.teardown(() => {
    child.kill('SIGKILL');
    return exited;
  });
  return child;
}
