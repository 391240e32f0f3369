/**
 * One import for test helpers: `import { waitFor, startFakeApiServer, h2Request, ... } from './support/index.js'`.
 * Stable API (other test files rely on it): add, don't rename.
 *
 * - waitFor(fn, {timeoutMs, intervalMs, what}): bounded polling instead of sleeps.
 * - collect(stream): every byte of a readable until it ends.
 * - h1Request / h2Request: one HTTPS request over HTTP/1.1 (node:https) or HTTP/2 (node:http2), optional client cert.
 * - runKubectl / runCurl: the real binaries, never a shell, with a bounded timeout.
 * - the kube-apiserver stand-in, its child-process variant, the demo environment and the test CA (re-exports).
 *
 * Not imported from here: loopback-guard.mjs, preloaded by tap (package.json `node-arg`) into every test process and
 * its Node children, refuses and records any connect to a non-loopback address (test/loopback-guard.test.ts).
 */
import { execFile } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { connect as http2Connect, constants as h2c } from 'node:http2';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until, type Truthy } from './net.js';

export * from './net.js';
export * from './fake-clock.js';
export { createTestCA, type TestCA, type LeafCert } from '../../src/demo/test-ca.js';
export {
  startFakeApiServer,
  FakeApiServer,
  KEY_DIR_FILES,
  type FakeApiServerOptions,
  type FakeApiServerTls,
  type GracefulShutdownOptions,
  type CredentialPolicy,
} from '../../src/demo/fake-apiserver.js';
export { spawnFakeApiServer, type SpawnFakeApiServerOptions, type SpawnedFakeApiServer } from '../../src/demo/fake-apiserver-process.js';
export { startDemoBackends, writeKubeconfig, type DemoBackends, type DemoOptions, type KubeconfigSpec } from '../../src/demo/demo.js';

/** A temporary directory, removed at `t`'s teardown. */
export function tempDir(t: { teardown(fn: () => void): void }, prefix = 'apilb-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `text` to `dir/name` and returns the path. */
export function writeIn(dir: string, name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** Options of {@link waitFor}. */
export interface WaitForOptions {
  /** Give up after this many ms (default 5000). */
  timeoutMs?: number;
  /** Poll every this many ms (default 10). */
  intervalMs?: number;
  /** Description used in the timeout error. */
  what?: string;
}

/**
 * Polls `fn` until it returns a truthy value (which is returned) or `timeoutMs` passes (rejects). A throwing `fn`
 * counts as not yet; its last error is included in the timeout message.
 */
export async function waitFor<T>(fn: () => T | Promise<T>, opts: WaitForOptions = {}): Promise<Truthy<T>> {
  let lastErr: unknown;
  async function attempt(): Promise<T | undefined> {
    try {
      return await fn();
    } catch (err) {
      lastErr = err;
      return undefined;
    }
  }
  try {
    return await until(attempt, opts.what ?? 'condition', opts.timeoutMs, opts.intervalMs);
  } catch (err) {
    if (!lastErr) throw err;
    throw new Error(`${(err as Error).message} (last error: ${(lastErr as Error).message ?? String(lastErr)})`, { cause: err });
  }
}

/** Reads a stream to its end; rejects on its error. */
export function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer | string) => chunks.push(typeof c === 'string' ? Buffer.from(c) : c));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

/** One HTTPS request. */
export interface TestRequest {
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default `/`. */
  path?: string;
  /** Default GET. */
  method?: string;
  /** CA (PEM) to verify the server with. Without it the server is not verified. */
  ca?: string;
  /** Client certificate and key (PEM). */
  cert?: string;
  key?: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** Abort with an error whose code is `ETIMEDOUT` after this many ms without completion (default 5000). */
  timeoutMs?: number;
}

/** A complete response. */
export interface TestResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text: string;
  /** Which protocol answered: `1.1` or `2.0`. */
  httpVersion: string;
}

function timeoutError(ms: number): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(`request timed out after ${ms} ms`);
  err.code = 'ETIMEDOUT';
  return err;
}

/** GET (or `method`) over HTTP/1.1 with a fresh connection (agent: false). */
export function h1Request(r: TestRequest): Promise<TestResponse> {
  const timeoutMs = r.timeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: r.host ?? '127.0.0.1',
        port: r.port,
        path: r.path ?? '/',
        method: r.method ?? 'GET',
        agent: false,
        ca: r.ca,
        cert: r.cert,
        key: r.key,
        rejectUnauthorized: r.ca !== undefined,
        headers: r.headers,
      },
      (res) => {
        collect(res).then(
          (body) => {
            clearTimeout(timer);
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8'), httpVersion: res.httpVersion });
          },
          (err: Error) => {
            clearTimeout(timer);
            reject(err);
          },
        );
      },
    );
    const timer = setTimeout(() => req.destroy(timeoutError(timeoutMs)), timeoutMs);
    req.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(r.body);
  });
}

/** GET (or `method`) over HTTP/2 on a fresh session, closed afterwards. */
export function h2Request(r: TestRequest): Promise<TestResponse> {
  const timeoutMs = r.timeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const host = r.host ?? '127.0.0.1';
    const session = http2Connect(`https://${host.includes(':') ? `[${host}]` : host}:${r.port}`, {
      ca: r.ca,
      cert: r.cert,
      key: r.key,
      rejectUnauthorized: r.ca !== undefined,
    });
    let settled = false;
    const finish = (err: Error | undefined, res?: TestResponse): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) session.destroy();
      else session.close();
      if (err) reject(err);
      else resolve(res!);
    };
    const timer = setTimeout(() => finish(timeoutError(timeoutMs)), timeoutMs);
    session.on('error', (err) => finish(err));
    const stream = session.request({ ':method': r.method ?? 'GET', ':path': r.path ?? '/', ...r.headers });
    // A stream cancelled because the session failed carries the session's error (e.g. ECONNREFUSED) as cause.
    stream.on('error', (err: Error & { cause?: unknown }) => finish(err.cause instanceof Error ? err.cause : err));
    stream.once('response', (headers) => {
      collect(stream).then(
        (body) => {
          finish(undefined, { status: Number(headers[h2c.HTTP2_HEADER_STATUS]), headers, body, text: body.toString('utf8'), httpVersion: '2.0' });
        },
        (err: Error) => finish(err),
      );
    });
    stream.end(r.body);
  });
}

/** Result of a child command. */
export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], timeoutMs: number): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, NO_PROXY: '*', no_proxy: '*' } }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Path of the kubectl binary used by tests. */
export const KUBECTL = '/usr/bin/kubectl';

/** Runs `kubectl --kubeconfig <kubeconfig> ...args` with a throwaway cache dir (default timeout 20 s). */
export async function runKubectl(kubeconfig: string, args: string[], timeoutMs = 20_000): Promise<CommandResult> {
  const cache = mkdtempSync(join(tmpdir(), 'apilb-kubectl-cache-'));
  try {
    return await run(KUBECTL, ['--kubeconfig', kubeconfig, '--cache-dir', cache, '--request-timeout', '10s', ...args], timeoutMs);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
}

/** Runs `curl --silent --show-error ...args` (default timeout 20 s). */
export function runCurl(args: string[], timeoutMs = 20_000): Promise<CommandResult> {
  return run('curl', ['--silent', '--show-error', '--noproxy', '*', ...args], timeoutMs);
}
