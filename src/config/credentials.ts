/**
 * Credentials for the connections apilb opens to API servers (health checks, discovery): loading them from
 * the kubeconfig and the explicit --ca-file / --client-*-file options, checking every PEM (parses, key matches
 * certificate; an expired certificate is reported), and following the files as they change on disk.
 *
 * Files rotate under apilb in three ways, and all three are followed: kubelet writes a new
 * `kubelet-client-<time>.pem` and swaps the `kubelet-client-current.pem` symlink; config management replaces a
 * file by rename; a Kubernetes projected volume swaps its `..data` directory symlink. Each file's directory is
 * watched (fs.watch) and every file is also stat'ed periodically (a watch can miss events, and a directory that
 * does not exist yet cannot be watched). A change is read once the burst of events settles; a broken new file
 * keeps the old credentials and says why (`rejected`), a good one replaces them (`reloaded`).
 *
 * Files that do not exist yet (a node joining the cluster: kubelet.conf and the client certificate appear after
 * kubelet's TLS bootstrap) are not an error: apilb runs with what exists, lists them in `missing`, and picks
 * them up when they appear. Only the explicit --ca-file must exist.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { statSync, watch as fsWatch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import { ApilbError, OptionError } from '../errors.js';
import type { Config } from './config.js';
import { execKey, runExecPlugin, runExecPluginSync, type ExecResult, type ExecSpec } from './exec-credential.js';
import { loadKubeconfigCredentials, type KubeconfigCredentials } from './kubeconfig.js';
import { FileReadError, readBoundedFile } from './read-file.js';
import type { TlsMaterial } from './tls.js';

/** The options credentials are loaded from. */
export type CredentialConfig = Pick<Config, 'kubeconfig' | 'caFile' | 'clientCertFile' | 'clientKeyFile' | 'tlsServerName' | 'healthCheckInsecure'>;

/** What {@link loadCredentials} found. */
export interface LoadedCredentials {
  material: TlsMaterial;
  /** Every file credentials come from or will come from (watched), found or not. */
  files: string[];
  /** Files that do not exist yet; their part of the credentials is not used until they appear. */
  missing: string[];
  /** One line per part, naming where it came from, never its value (check-config --print, logs). */
  summary: string[];
  /** Why the client certificate will be refused (expired), if it will; see {@link checkClientIdentity}. */
  expired?: string;
  /** The kubeconfig user's exec plugin and when its credential expires (undefined: until a 401). */
  exec?: { spec: ExecSpec; expiresAt?: number };
}

/** Options of {@link loadCredentials}. */
export interface LoadCredentialsOptions {
  /** Default `process.env` (`$CREDENTIALS_DIRECTORY`). */
  env?: NodeJS.ProcessEnv;
  /** Epoch ms certificates must be valid at. Default now. */
  now?: number;
  /**
   * Exec plugin results by {@link execKey}. A plugin without a result here is run at once, synchronously (startup,
   * check-config, a kubeconfig naming a new plugin); the watcher refreshes results without blocking. Default: one
   * cache shared by the process, so `run`'s validation and the daemon run the plugin once.
   */
  execCache?: Map<string, ExecResult>;
}

const EXEC_CACHE = new Map<string, ExecResult>();

function tlsError(message: string): ApilbError {
  return new ApilbError('APILB_ERR_TLS_CONFIG', message);
}

function shownSource(source: string): string {
  return source.startsWith('kubeconfig ') ? source : `"${source}"`;
}

const CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Parses every certificate of a PEM bundle; throws naming the source (never the contents). */
export function parseCertificates(pem: string, what: string, source: string): X509Certificate[] {
  const blocks = pem.match(CERT_RE);
  if (!blocks) throw tlsError(`${what} ${shownSource(source)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch {
      throw tlsError(`${what} ${shownSource(source)}: certificate ${i + 1} of ${blocks.length} is corrupt (not a valid X.509 certificate)`);
    }
  });
}

function parsePrivateKey(pem: string, source: string): KeyObject {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem))
    throw tlsError(`client key ${shownSource(source)} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)`);
  try {
    return createPrivateKey(pem);
  } catch {
    throw tlsError(`client key ${shownSource(source)} holds a corrupt or encrypted private key`);
  }
}

/**
 * Checks a client identity: the certificate parses and the key is its key (else throws APILB_ERR_TLS_CONFIG
 * naming both files). Returns a message when the certificate has expired, undefined otherwise.
 *
 * Expiry is reported, not thrown: kube-apiserver answers an expired client certificate with 401 (it verifies
 * client certificates after the handshake), which counts as up, whereas refusing to start would take the node's
 * API access away (kubelet may need apilb to bootstrap a new certificate).
 */
export function checkClientIdentity(cert: { pem: string; source: string }, key: { pem: string; source: string }, now: number): string | undefined {
  const leaf = parseCertificates(cert.pem, 'client certificate', cert.source)[0]!;
  const k = parsePrivateKey(key.pem, key.source);
  if (!leaf.checkPrivateKey(k)) {
    throw tlsError(`client key ${shownSource(key.source)} does not belong to client certificate ${shownSource(cert.source)} (swapped or stale files?)`);
  }
  const until = Date.parse(leaf.validTo);
  return until < now
    ? `client certificate ${shownSource(cert.source)} expired on ${new Date(until).toISOString()}: the API servers will refuse it (401)`
    : undefined;
}

function readOptional(path: string, what: string, missing: string[]): string | undefined {
  try {
    return readBoundedFile(path, what);
  } catch (e) {
    if (e instanceof FileReadError && e.code === 'ENOENT') {
      missing.push(path);
      return undefined;
    }
    throw tlsError((e as Error).message);
  }
}

/** The cached result of an exec plugin, or a synchronous run when there is none yet (see `execCache`). */
function execResult(spec: ExecSpec, kubeconfig: string, opts: LoadCredentialsOptions): ExecResult {
  const cache = opts.execCache ?? EXEC_CACHE;
  const key = execKey(spec);
  let r = cache.get(key);
  if (!r) {
    try {
      r = runExecPluginSync(spec, opts.env);
    } catch (e) {
      throw tlsError(`kubeconfig "${kubeconfig}": ${(e as Error).message}`);
    }
    cache.set(key, r);
  }
  return r;
}

/**
 * Loads and checks the credentials the configuration names. Explicit files win over the kubeconfig's entries,
 * so an operator can take the client identity from the kubelet's kubeconfig and still point at another CA.
 * Throws APILB_ERR_TLS_CONFIG / APILB_ERR_KUBECONFIG_INVALID naming the file for anything unusable (not PEM,
 * corrupt, key not matching the certificate, a directory, larger than 1 MiB) and when the explicit --ca-file
 * does not exist; other files that do not exist yet are listed in `missing`, an expired certificate in `expired`.
 */
export function loadCredentials(cfg: CredentialConfig, opts: LoadCredentialsOptions = {}): LoadedCredentials {
  const now = opts.now ?? Date.now();
  const m: TlsMaterial = { insecure: cfg.healthCheckInsecure };
  const files: string[] = [];
  const missing: string[] = [];
  let exec: LoadedCredentials['exec'];
  const src: { ca?: string; cert?: string; key?: string; token?: string } = {};
  if (cfg.kubeconfig) {
    files.push(cfg.kubeconfig);
    let k: KubeconfigCredentials | undefined;
    try {
      k = loadKubeconfigCredentials(cfg.kubeconfig, opts.env);
    } catch (e) {
      if (!(e instanceof FileReadError && e.code === 'ENOENT')) throw e;
      missing.push(cfg.kubeconfig);
    }
    if (k) {
      files.push(...k.files);
      missing.push(...k.missing);
      if (k.ca) [m.ca, src.ca] = [k.ca, k.sources.ca];
      if (k.cert && k.key) [m.cert, m.key, src.cert, src.key] = [k.cert, k.key, k.sources.cert, k.sources.key];
      if (k.token) [m.token, src.token] = [k.token, k.sources.token];
      if (k.serverName) m.serverName = k.serverName;
      if (k.exec) {
        const r = execResult(k.exec, cfg.kubeconfig, opts);
        exec = { spec: k.exec, ...(r.expiresAt !== undefined ? { expiresAt: r.expiresAt } : {}) };
        const source = `kubeconfig "${cfg.kubeconfig}" exec plugin "${k.exec.command}"`;
        if (r.token && !m.token) [m.token, src.token] = [r.token, source];
        if (r.cert && r.key && !m.cert) [m.cert, m.key, src.cert, src.key] = [r.cert, r.key, source, source];
      }
    }
  }
  if (cfg.caFile) {
    files.push(cfg.caFile);
    try {
      m.ca = readBoundedFile(cfg.caFile, 'CA file');
    } catch (e) {
      throw tlsError((e as Error).message);
    }
    src.ca = cfg.caFile;
  }
  if (cfg.clientCertFile && cfg.clientKeyFile) {
    files.push(cfg.clientCertFile, cfg.clientKeyFile);
    const cert = readOptional(cfg.clientCertFile, 'client certificate', missing);
    const key = readOptional(cfg.clientKeyFile, 'client key', missing);
    if (cert !== undefined && key !== undefined) [m.cert, m.key, src.cert, src.key] = [cert, key, cfg.clientCertFile, cfg.clientKeyFile];
  }
  if (cfg.tlsServerName) m.serverName = cfg.tlsServerName;
  const summary: string[] = [];
  let expired: string | undefined;
  if (m.ca !== undefined) {
    // An empty CA file too: "no CA" must never pass as "a CA that trusts nothing".
    const certs = parseCertificates(m.ca, 'CA', src.ca!);
    summary.push(`CA: ${shownSource(src.ca!)} (${certs.length} certificate${certs.length === 1 ? '' : 's'})`);
  }
  if (m.cert && m.key) {
    expired = checkClientIdentity({ pem: m.cert, source: src.cert! }, { pem: m.key, source: src.key! }, now);
    const leaf = new X509Certificate(m.cert.match(CERT_RE)![0]);
    summary.push(
      `client certificate: ${shownSource(src.cert!)} (${leaf.subject.replace(/\n/g, ', ')}; valid until ${new Date(leaf.validTo).toISOString()}), key: ${shownSource(src.key!)}`,
    );
  }
  if (m.token) summary.push(`bearer token: from ${shownSource(src.token!)} (${m.token.length} characters, value redacted)`);
  if (exec?.expiresAt !== undefined) summary.push(`exec credential expires at ${new Date(exec.expiresAt).toISOString()} (run again before, and on a 401)`);
  if (!m.cert && !m.token) summary.push('client identity: none (anonymous health checks)');
  const absent = [...new Set(missing)];
  for (const f of absent) summary.push(`not there yet: "${f}" (used once it appears)`);
  return { material: m, files: [...new Set(files)], missing: absent, summary, ...(expired ? { expired } : {}), ...(exec ? { exec } : {}) };
}

/** An exec plugin is run again on a 401 at most this often. */
export const EXEC_RERUN_MS = 10_000;

/** Emitted when the credentials in use changed. */
export interface CredentialReload {
  material: TlsMaterial;
  /** Files that still do not exist. */
  missing: string[];
  /** What changed: `CA`, `client certificate`, `token`, `server name`. */
  changed: string[];
}

/** Events of {@link CredentialWatcher}. */
export interface CredentialWatcherEvents {
  reloaded: [CredentialReload];
  /** A changed file could not be used; the previous credentials stay. `error` names the file, never its contents. */
  rejected: [{ error: string }];
}

/** Options of {@link CredentialWatcher}. Durations in milliseconds. */
export interface CredentialWatcherOptions {
  config: CredentialConfig;
  /** Default the system clock (drives the poll and the settle delay). */
  clock?: Clock;
  /** Every file is stat'ed this often, in case a watch misses an event. Default 2000; 0 disables polling. */
  pollInterval?: number;
  /** Wait after a change event before reading (writes and renames come in bursts). Default 100; ≥ 0. */
  settleDelay?: number;
  /** Directory watcher (tests inject one, or a no-op to exercise polling). Default fs.watch. */
  watch?: (dir: string, listener: () => void) => FSWatcher | { close(): void };
  /** Default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

/** Summary of the watcher for /status. */
export interface CredentialStatus {
  /** Files that do not exist yet (their part of the credentials is not in use). */
  missing: string[];
  /** What is presented: `client certificate`, `token`, or `anonymous`. */
  identity: 'client certificate' | 'token' | 'client certificate and token' | 'anonymous';
  reloads: number;
  rejected: number;
  /** Why the last changed file was refused; null after a good reload. */
  lastError: string | null;
}

/** True when two materials present the same identity and trust (a reload that changes nothing). */
export function sameMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  return a.ca === b.ca && a.cert === b.cert && a.key === b.key && a.token === b.token && a.serverName === b.serverName && a.insecure === b.insecure;
}

function changedParts(a: TlsMaterial, b: TlsMaterial): string[] {
  const out: string[] = [];
  if (a.ca !== b.ca) out.push('CA');
  if (a.cert !== b.cert || a.key !== b.key) out.push('client certificate');
  if (a.token !== b.token) out.push('token');
  if (a.serverName !== b.serverName) out.push('server name');
  return out;
}

function signature(files: readonly string[]): string {
  return files
    .map((f) => {
      try {
        // stat follows symlinks: a swapped symlink (or `..data` directory) shows up as another inode.
        const s = statSync(f);
        return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
      } catch (e) {
        return (e as NodeJS.ErrnoException).code ?? 'error';
      }
    })
    .join('|');
}

/** Keeps credentials in step with their files; see the module comment. */
export class CredentialWatcher extends EventEmitter<CredentialWatcherEvents> {
  private config: CredentialConfig;
  private loaded: LoadedCredentials;
  private readonly clock: Clock;
  private readonly pollInterval: number;
  private readonly settleDelay: number;
  private readonly watchDir: NonNullable<CredentialWatcherOptions['watch']>;
  private readonly env: NodeJS.ProcessEnv | undefined;
  private readonly watchers = new Map<string, { close(): void }>();
  private lastSignature: string;
  private pollTimer: TimerHandle | undefined;
  private settleTimer: TimerHandle | undefined;
  private started = false;
  private closed = false;
  private counts = { reloads: 0, rejected: 0 };
  private execTimer: TimerHandle | undefined;
  private execRunning = false;
  private lastExecRun = Number.NEGATIVE_INFINITY;
  private lastError: string | null = null;

  /** Loads the credentials at once: throws like {@link loadCredentials} when they are unusable. */
  constructor(options: CredentialWatcherOptions) {
    super();
    if (!options?.config) throw new OptionError('config', 'is required');
    this.pollInterval = options.pollInterval ?? 2000;
    this.settleDelay = options.settleDelay ?? 100;
    if (!(this.pollInterval >= 0)) throw new OptionError('pollInterval', `must be ≥ 0, got ${this.pollInterval}`);
    if (!(this.settleDelay >= 0)) throw new OptionError('settleDelay', `must be ≥ 0, got ${this.settleDelay}`);
    this.config = options.config;
    this.clock = options.clock ?? systemClock;
    this.env = options.env;
    this.watchDir = options.watch ?? ((dir, listener) => fsWatch(dir, { persistent: false }, listener));
    this.loaded = this.load();
    this.lastSignature = signature(this.loaded.files);
  }

  /** The credentials in use. */
  get material(): TlsMaterial {
    return this.loaded.material;
  }

  /** Files that do not exist yet. */
  get missing(): readonly string[] {
    return this.loaded.missing;
  }

  /** Where each part comes from (no values). */
  get summary(): readonly string[] {
    return this.loaded.summary;
  }

  /** For /status. */
  status(): CredentialStatus {
    const m = this.loaded.material;
    const identity = m.cert && m.token ? 'client certificate and token' : m.cert ? 'client certificate' : m.token ? 'token' : 'anonymous';
    return { missing: [...this.loaded.missing], identity, reloads: this.counts.reloads, rejected: this.counts.rejected, lastError: this.lastError };
  }

  /** Starts watching and polling. */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.rewatch();
    this.schedulePoll();
    this.scheduleExecRefresh();
  }

  /**
   * Switches to new options (configuration reload): loads them at once and throws, changing nothing, when they
   * are unusable. Returns the new material; emits nothing (the caller applies it).
   */
  reconfigure(config: CredentialConfig): TlsMaterial {
    const prev = this.config;
    this.config = config;
    try {
      this.loaded = this.load();
    } catch (e) {
      this.config = prev;
      throw e;
    }
    this.lastSignature = signature(this.loaded.files);
    if (this.started) this.rewatch();
    return this.loaded.material;
  }

  /** Re-reads the files when any of them changed on disk since the last read (the poll and watches call it). */
  checkNow(): void {
    if (this.closed) return;
    const sig = signature(this.loaded.files);
    if (sig === this.lastSignature) return;
    this.lastSignature = sig;
    this.loadAndApply();
  }

  /** Loads the credentials again and applies them; false when they were refused (the previous ones stay). */
  private loadAndApply(): boolean {
    let next: LoadedCredentials;
    try {
      next = this.load();
    } catch (e) {
      this.reject((e as Error).message);
      return false;
    }
    return this.apply(next);
  }

  /**
   * An API server answered 401/403: an exec credential may have been revoked or expired early, so the plugin is
   * run again (at most once per {@link EXEC_RERUN_MS}). Nothing happens for other kinds of credentials: files are
   * followed on their own.
   */
  onUnauthenticated(): void {
    if (this.loaded.exec && this.clock.now() - this.lastExecRun >= EXEC_RERUN_MS) this.refreshExec();
  }

  /** Runs the exec plugin again without blocking; a good result replaces the credentials like a changed file. */
  refreshExec(): void {
    const exec = this.loaded.exec;
    if (!exec || this.execRunning || this.closed) return;
    this.execRunning = true;
    this.lastExecRun = this.clock.now();
    this.clock.clearTimeout(this.execTimer);
    this.execTimer = undefined;
    runExecPlugin(exec.spec, this.env).then(
      (r) => {
        this.execRunning = false;
        if (this.closed) return;
        EXEC_CACHE.set(execKey(exec.spec), r);
        // A refused result (e.g. an expired certificate) is retried like a failed run.
        if (this.loadAndApply()) this.scheduleExecRefresh();
        else this.scheduleExecRefresh(EXEC_RERUN_MS);
      },
      (err: Error) => {
        this.execRunning = false;
        if (this.closed) return;
        this.reject(`${err.message}; the previous credentials stay in use`);
        this.scheduleExecRefresh(EXEC_RERUN_MS);
      },
    );
  }

  private reject(error: string): void {
    this.counts.rejected++;
    this.lastError = error;
    this.emit('rejected', { error });
  }

  /** Refreshes an expiring exec credential a little before it expires (a fifth of its remaining life, ≤ 1 min). */
  private scheduleExecRefresh(retryIn?: number): void {
    this.clock.clearTimeout(this.execTimer);
    this.execTimer = undefined;
    const at = this.loaded.exec?.expiresAt;
    if (!this.started || this.closed || (at === undefined && retryIn === undefined)) return;
    const left = at === undefined ? Infinity : at - this.clock.now();
    const delay = Math.max(1000, Math.min(retryIn ?? Infinity, left - Math.min(60_000, left / 5)));
    this.execTimer = this.clock.setTimeout(() => this.refreshExec(), Math.min(delay, 2 ** 31 - 1));
  }

  /** Switches to `next` unless it would drop something that worked; false when refused. */
  private apply(next: LoadedCredentials): boolean {
    const prev = this.loaded;
    // A file that was there and is gone (deleted, or replaced by delete-then-write) must not drop the CA or the
    // identity in use: keep the previous credentials until it is back.
    const gone = next.missing.filter((f) => !prev.missing.includes(f));
    const refusal =
      gone.length > 0
        ? `${gone.map((f) => `"${f}"`).join(', ')} no longer exists: the previous credentials stay in use until it is back`
        : prev.material.ca && !next.material.ca
          ? `the changed kubeconfig "${this.config.kubeconfig}" names no CA any more: the previous CA stays in use`
          : next.expired && next.material.cert !== prev.material.cert
            ? `the new ${next.expired}; the previous certificate stays in use`
            : undefined;
    if (refusal) {
      this.reject(refusal);
      return false;
    }
    this.loaded = next;
    // The kubeconfig may now name other files; the signature must cover them.
    this.lastSignature = signature(next.files);
    if (this.started) this.rewatch();
    if (next.exec?.expiresAt !== prev.exec?.expiresAt) this.scheduleExecRefresh();
    const changed = changedParts(prev.material, next.material);
    if (sameMaterial(prev.material, next.material) && prev.missing.join('\n') === next.missing.join('\n')) return true;
    this.counts.reloads++;
    this.lastError = null;
    this.emit('reloaded', { material: next.material, missing: [...next.missing], changed });
    return true;
  }

  /** Stops watching. Idempotent. */
  close(): void {
    this.closed = true;
    this.clock.clearTimeout(this.pollTimer);
    this.clock.clearTimeout(this.settleTimer);
    this.clock.clearTimeout(this.execTimer);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  private load(): LoadedCredentials {
    return loadCredentials(this.config, { now: this.clock.now(), ...(this.env ? { env: this.env } : {}) });
  }

  private schedulePoll(): void {
    if (this.pollInterval === 0 || this.closed) return;
    this.pollTimer = this.clock.setTimeout(() => {
      this.checkNow();
      this.schedulePoll();
    }, this.pollInterval);
  }

  private onWatchEvent(): void {
    if (this.closed || this.settleTimer !== undefined) return;
    this.settleTimer = this.clock.setTimeout(() => {
      this.settleTimer = undefined;
      this.checkNow();
    }, this.settleDelay);
  }

  /** Watches the directory of every file (a symlink swap or rename is an event in the directory, not the file). */
  private rewatch(): void {
    const dirs = new Set(this.loaded.files.map((f) => dirname(f)));
    for (const [dir, w] of this.watchers) {
      if (!dirs.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = this.watchDir(dir, () => this.onWatchEvent());
        // A watched directory that disappears emits 'error'; polling carries on.
        if ('on' in w) (w as FSWatcher).on('error', () => this.dropWatch(dir));
        this.watchers.set(dir, w);
      } catch {
        // The directory does not exist yet (kubelet's pki before the bootstrap): polling finds the file.
      }
    }
  }

  private dropWatch(dir: string): void {
    this.watchers.get(dir)?.close();
    this.watchers.delete(dir);
  }
}
