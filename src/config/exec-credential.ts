/**
 * kubeconfig `exec` users: the client-go credential plugin protocol (`client.authentication.k8s.io/v1`, and
 * `v1beta1`). apilb runs the plugin without a terminal, reads one ExecCredential from its stdout (a bearer token,
 * or a client certificate and key), and caches it until its `expirationTimestamp`; credentials.ts re-runs it
 * before that and when an API server answers 401. Nothing a plugin prints is ever logged or echoed.
 */
import { execFile, execFileSync } from 'node:child_process';
import { dirname, isAbsolute, resolve } from 'node:path';

/** The exec versions apilb speaks. */
export const EXEC_API_VERSIONS: readonly string[] = ['client.authentication.k8s.io/v1', 'client.authentication.k8s.io/v1beta1'];
/** A plugin that has not answered after this long has failed. */
export const EXEC_TIMEOUT_MS = 10_000;
/** Largest ExecCredential read from a plugin's stdout. */
const MAX_OUTPUT_BYTES = 1024 * 1024;

/** A kubeconfig user's `exec` section, validated. */
export interface ExecSpec {
  apiVersion: string;
  /** As written, for messages. */
  command: string;
  /** Resolved: a relative path with a slash is relative to the kubeconfig's directory, as in client-go. */
  path: string;
  args: string[];
  env: { name: string; value: string }[];
}

/** What a plugin gave. */
export interface ExecResult {
  token?: string;
  cert?: string;
  key?: string;
  /** Epoch ms the credential expires; undefined = until a 401. */
  expiresAt?: number;
}

/** Validates a user's `exec` section; throws a message naming the field. */
export function parseExecSpec(raw: unknown, kubeconfigPath: string): ExecSpec {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error('exec must be a mapping');
  const e = raw as Record<string, unknown>;
  if (typeof e.apiVersion !== 'string' || !EXEC_API_VERSIONS.includes(e.apiVersion)) {
    throw new Error(`exec.apiVersion must be one of ${EXEC_API_VERSIONS.join(', ')}, got ${JSON.stringify(String(e.apiVersion ?? ''))}`);
  }
  if (typeof e.command !== 'string' || e.command.trim() === '') throw new Error('exec.command must name the plugin');
  if (e.interactiveMode === 'Always') throw new Error('exec.interactiveMode is Always: apilb runs without a terminal (use Never or IfAvailable)');
  const args = e.args ?? [];
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw new Error('exec.args must be a list of strings');
  const env = e.env ?? [];
  if (!Array.isArray(env) || env.some((v) => !v || typeof v.name !== 'string' || typeof v.value !== 'string'))
    throw new Error('exec.env must be a list of {name, value}');
  const command = e.command;
  const path = command.includes('/') && !isAbsolute(command) ? resolve(dirname(kubeconfigPath), command) : command;
  return { apiVersion: e.apiVersion, command, path, args: args as string[], env: env as ExecSpec['env'] };
}

/** A key identifying a spec (the cache key of credentials.ts). */
export function execKey(spec: ExecSpec): string {
  return JSON.stringify([spec.apiVersion, spec.path, spec.args, spec.env]);
}

function pluginEnv(spec: ExecSpec, base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const { name, value } of spec.env) env[name] = value;
  env.KUBERNETES_EXEC_INFO = JSON.stringify({ apiVersion: spec.apiVersion, kind: 'ExecCredential', spec: { interactive: false } });
  return env;
}

/** Parses a plugin's stdout; throws a message naming the plugin, never the output. */
export function parseExecCredential(stdout: string, spec: ExecSpec): ExecResult {
  const what = `exec plugin "${spec.command}"`;
  let doc: { apiVersion?: unknown; kind?: unknown; status?: Record<string, unknown> };
  try {
    doc = JSON.parse(stdout) as typeof doc;
  } catch {
    throw new Error(`${what} did not print an ExecCredential (not JSON)`);
  }
  if (doc?.kind !== 'ExecCredential' || doc.apiVersion !== spec.apiVersion) {
    throw new Error(`${what} printed something other than an ExecCredential of ${spec.apiVersion}`);
  }
  const st = doc.status ?? {};
  const out: ExecResult = {};
  if (typeof st.token === 'string' && st.token.trim() !== '') {
    if (/\s/.test(st.token.trim())) throw new Error(`${what}: status.token holds whitespace`);
    out.token = st.token.trim();
  } else if (typeof st.clientCertificateData === 'string' && typeof st.clientKeyData === 'string') {
    out.cert = st.clientCertificateData;
    out.key = st.clientKeyData;
  } else {
    throw new Error(`${what}: the ExecCredential has neither status.token nor status.clientCertificateData and status.clientKeyData`);
  }
  if (st.expirationTimestamp !== undefined) {
    const at = typeof st.expirationTimestamp === 'string' ? Date.parse(st.expirationTimestamp) : NaN;
    if (!Number.isFinite(at)) throw new Error(`${what}: status.expirationTimestamp is not an RFC 3339 time`);
    out.expiresAt = at;
  }
  return out;
}

function failure(spec: ExecSpec, err: unknown): Error {
  const e = err as NodeJS.ErrnoException & { status?: number | null; signal?: string | null; killed?: boolean };
  const what = `exec plugin "${spec.command}"`;
  if (e.code === 'ENOENT') return new Error(`${what} was not found`);
  if (e.code === 'EACCES') return new Error(`${what} is not executable`);
  if (e.code === 'ETIMEDOUT' || e.killed || e.signal === 'SIGTERM') return new Error(`${what} did not answer within ${EXEC_TIMEOUT_MS / 1000} s`);
  if (e.code === 'ENOBUFS' || e.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') return new Error(`${what} printed more than 1 MiB`);
  const code = typeof e.status === 'number' ? e.status : typeof e.code === 'number' ? e.code : undefined;
  // The plugin's stderr is not shown: plugins print tokens and URLs with secrets in them on failure too.
  return new Error(`${what} failed${code !== undefined ? ` (exit code ${code})` : ''}`);
}

/** Runs the plugin and waits for it (startup and check-config only: it blocks the event loop). */
export function runExecPluginSync(spec: ExecSpec, env: NodeJS.ProcessEnv = process.env): ExecResult {
  let stdout: string;
  try {
    stdout = execFileSync(spec.path, spec.args, {
      env: pluginEnv(spec, env),
      timeout: EXEC_TIMEOUT_MS,
      maxBuffer: MAX_OUTPUT_BYTES,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    throw failure(spec, e);
  }
  return parseExecCredential(stdout, spec);
}

/** Runs the plugin without blocking (refreshes while serving). */
export function runExecPlugin(spec: ExecSpec, env: NodeJS.ProcessEnv = process.env): Promise<ExecResult> {
  return new Promise((resolvePromise, reject) => {
    execFile(spec.path, spec.args, { env: pluginEnv(spec, env), timeout: EXEC_TIMEOUT_MS, maxBuffer: MAX_OUTPUT_BYTES, encoding: 'utf8' }, (err, stdout) => {
      if (err) return reject(failure(spec, err));
      try {
        resolvePromise(parseExecCredential(stdout, spec));
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}
