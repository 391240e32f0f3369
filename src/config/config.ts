/**
 * Resolving configuration: file (YAML) + `APILB_*` environment + flags over defaults, validated in one pass
 * with zod so that every bad field is reported with its path and reason before anything is bound.
 * Precedence: flags > environment > file > defaults.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { loadKubeconfigCredentials } from './kubeconfig.js';
import { envName, fileKey, optionByKey, OPTIONS, type OptionSpec } from './options.js';
import { formatDuration, parseAddress, parseDuration, type Address } from './values.js';

/** The fully resolved, validated configuration. Durations are milliseconds. */
export interface Config {
  /** Client listeners. Default 127.0.0.1:6443 (+ [::1]:6443 with IPv6 loopback). */
  listen: Address[];
  /** Static backends / seeds; DNS names are expanded by discovery/. */
  backends: Address[];
  /** Default 1000 ms. */
  connectTimeout: number;
  /** Default 1000 ms; 0 disables first-byte failover. */
  firstByteTimeout: number;
  /** Default 10000. */
  maxConnections: number;
  healthCheckMode: 'https' | 'tcp';
  /** Default `/readyz`. */
  healthCheckPath: string;
  /** Default 2000 ms. */
  healthCheckInterval: number;
  /** Default 1000 ms. */
  healthCheckTimeout: number;
  /** Default 2. */
  rise: number;
  /** Default 2. */
  fall: number;
  /** Default 60000 ms; 0 closes draining connections at once. */
  drainTimeout: number;
  /** Default false. */
  healthCheckInsecure: boolean;
  caFile?: string;
  tlsServerName?: string;
  clientCertFile?: string;
  clientKeyFile?: string;
  kubeconfig?: string;
  /** Default 30000 ms. */
  dnsRefresh: number;
  /** Default false. */
  discoverEndpointslices: boolean;
  stateDir?: string;
  /** Default 127.0.0.1:9643. */
  adminListen: Address;
  /** Default 10000 ms; 0 closes connections at once on shutdown. */
  shutdownTimeout: number;
  logLevel: string;
  /** Default 30000 ms; 0 closes at once. */
  closeSpread: number;
  /** Metrics-only listener; default unset (off). */
  metricsListen?: Address;
  /** Default 10000 ms; 0 disables. */
  clientHelloTimeout: number;
  /** Default 16 MiB; 0 = no process-wide bound on replay bytes. */
  replayBufferTotal: number;
  /** Default false. */
  discoveryAllowLocal: boolean;
  /** Comma-separated extra Host names of admin requests. */
  adminAllowedHosts?: string;
  /** The config file this came from, if any (reload re-reads it). */
  configFile?: string;
}

/** Raw values of one layer (strings from flags/env, anything from YAML). */
export type Layer = Record<string, unknown>;

/** Inputs to {@link resolveConfig}. */
export interface ResolveInput {
  /** Parsed flags keyed by config key (yargs camelCase). Only keys the operator set. */
  flags?: Layer;
  /** The process environment (only `APILB_*` names are read). */
  env?: NodeJS.ProcessEnv;
  /** Path of a YAML config file. */
  configFile?: string;
  /** Skip the "at least one backend" rule (check-config of partial files, demo). Default false. */
  allowNoBackends?: boolean;
  /** Overrides IPv6 loopback detection for the default listeners (tests). */
  hasIPv6Loopback?: boolean;
}

/** Short description of a raw value for messages: `"abc"`, `5`, `a list`, `a mapping`. */
function shown(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 57) + '...' : v);
  return String(v);
}

/**
 * One value parser per option kind. Every kind accepts the raw forms an operator can produce (strings from flags
 * and the environment, typed scalars from YAML) and reports anything else as "must be X, got Y" so the message
 * names what to write instead of a zod type name.
 */
function kindSchema(spec: OptionSpec): z.ZodTypeAny {
  const fail = (ctx: z.RefinementCtx, message: string, path?: (string | number)[]) => {
    ctx.addIssue({ code: 'custom', message, ...(path ? { path } : {}) });
    return z.NEVER;
  };
  switch (spec.kind) {
    case 'duration':
      return z.unknown().transform((v, ctx) => {
        const raw = v;
        if (typeof v === 'number') {
          // YAML `connectTimeout: 5` is ambiguous (seconds? milliseconds?): only a bare 0 is accepted.
          if (v !== 0) return fail(ctx, `must be a duration with a unit, like ${v}s or ${v}ms (a bare number is ambiguous)`);
          v = '0';
        }
        if (typeof v !== 'string') return fail(ctx, `must be a duration like 250ms, 2s or 1m, got ${shown(v)}`);
        let ms: number;
        try {
          ms = parseDuration(v);
        } catch (e) {
          return fail(ctx, (e as Error).message);
        }
        if (spec.min !== undefined && ms < spec.min) return fail(ctx, spec.min <= 1 ? `must be greater than zero, got ${shown(raw)}` : `must be at least ${formatDuration(spec.min)}, got ${shown(raw)}`);
        if (spec.max !== undefined && ms > spec.max) return fail(ctx, `must be at most ${formatDuration(spec.max)}, got ${shown(raw)}`);
        return ms;
      });
    case 'int':
      return z.unknown().transform((v, ctx) => {
        const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : NaN;
        if (!Number.isSafeInteger(n)) return fail(ctx, `must be a whole number, got ${shown(v)}`);
        if (spec.min !== undefined && n < spec.min) return fail(ctx, `must be at least ${spec.min}, got ${n}`);
        if (spec.max !== undefined && n > spec.max) return fail(ctx, `must be at most ${spec.max}, got ${n}`);
        return n;
      });
    case 'bool':
      return z.unknown().transform((v, ctx) => {
        if (typeof v === 'boolean') return v;
        const s = typeof v === 'string' ? v.trim().toLowerCase() : undefined;
        if (s === 'true' || s === '1' || s === 'yes') return true;
        if (s === 'false' || s === '0' || s === 'no') return false;
        return fail(ctx, `must be true or false, got ${shown(v)}`);
      });
    case 'enum':
      return z.unknown().transform((v, ctx) => {
        if (typeof v === 'string' && spec.choices!.includes(v)) return v;
        return fail(ctx, `must be one of ${spec.choices!.join(', ')}, got ${shown(v)}`);
      });
    case 'string':
      return z.unknown().transform((v, ctx) => {
        if (typeof v !== 'string') return fail(ctx, `must be a string, got ${shown(v)}`);
        if (v.trim() === '') return fail(ctx, 'must not be empty');
        return v;
      });
    case 'file':
      return z.unknown().transform((v, ctx) => {
        if (typeof v !== 'string') return fail(ctx, `must be a file path, got ${shown(v)}`);
        if (v.trim() === '') return fail(ctx, 'must not be empty');
        const resolved = resolveCredentialPath(v);
        try {
          accessSync(resolved, constants.R_OK);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          return fail(ctx, code === 'ENOENT' ? `file "${v}" does not exist` : `file "${v}" is not readable (${code})`);
        }
        return resolved;
      });
    case 'address':
      return z.unknown().transform((v, ctx) => {
        if (typeof v !== 'string') return fail(ctx, `must be an address HOST:PORT, got ${shown(v)}`);
        try {
          return parseAddress(v, { allowPortZero: spec.allowPortZero === true });
        } catch (e) {
          return fail(ctx, (e as Error).message);
        }
      });
    case 'address-list':
      return z.unknown().transform((v, ctx) => {
        // Flags and the environment give `a,b` or a list of strings; YAML gives a list (or one string).
        const items = typeof v === 'string' ? v.split(',').map((x) => x.trim()).filter(Boolean) : v;
        if (!Array.isArray(items)) return fail(ctx, `must be a list of HOST:PORT addresses, got ${shown(v)}`);
        const out: Address[] = [];
        let bad = false;
        items.forEach((item, i) => {
          if (typeof item !== 'string') {
            bad = true;
            fail(ctx, `must be an address HOST:PORT, got ${shown(item)}`, [i]);
            return;
          }
          try {
            out.push(parseAddress(item, { allowPortZero: spec.allowPortZero === true }));
          } catch (e) {
            bad = true;
            fail(ctx, (e as Error).message, [i]);
          }
        });
        return bad ? z.NEVER : out;
      });
  }
}

/**
 * A relative credential path (e.g. `client.key`) is looked up in `$CREDENTIALS_DIRECTORY` first, so the
 * systemd unit can hand root-only keys in through `LoadCredential=` without loosening file modes.
 */
export function resolveCredentialPath(p: string, env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.CREDENTIALS_DIRECTORY;
  if (dir && !isAbsolute(p)) {
    const candidate = join(dir, p);
    if (existsSync(candidate)) return candidate;
  }
  return p;
}

function layerSchema(keyOf: (s: OptionSpec) => string) {
  const shape: Record<string, z.ZodTypeAny> = {};
  for (const spec of OPTIONS) shape[keyOf(spec)] = kindSchema(spec).optional();
  return z.object(shape).strict();
}

const FILE_SCHEMA = layerSchema(fileKey);
const KEY_SCHEMA = layerSchema((s) => s.key);

function zodIssues(err: z.ZodError, label: (path: (string | number)[]) => string): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of err.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) out.push({ path: label([...issue.path, k]), reason: 'unknown key' + suggest(k) });
    } else {
      out.push({ path: label(issue.path), reason: issue.message });
    }
  }
  return out;
}

/** Levenshtein distance, for "did you mean" on misspelt keys. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * Suggests the YAML key an unknown key most likely meant: the same letters in another case or separator style
 * (`drain_timeout`, `connect-timeout`, `backend` for `backends`), else the closest key within a few edits.
 */
function suggest(key: string): string {
  const norm = (k: string) => k.toLowerCase().replace(/[-_]/g, '');
  const lower = norm(key);
  let best: { name: string; d: number } | undefined;
  for (const o of OPTIONS) {
    const name = fileKey(o);
    const d = Math.min(editDistance(lower, norm(name)), editDistance(lower, norm(o.flag)));
    if (!best || d < best.d) best = { name, d };
  }
  const limit = Math.max(2, Math.floor(lower.length / 4));
  return best && best.d <= limit ? ` (did you mean "${best.name}"?)` : '';
}

/** Reads and parses a YAML config file; throws ConfigError naming the file on any problem. */
export function readConfigFile(path: string): Layer {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ConfigError([{ path: 'config', reason: code === 'ENOENT' ? `file "${path}" does not exist` : `cannot read "${path}" (${code})` }]);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { prettyErrors: true });
  } catch (e) {
    const where = e instanceof YAMLParseError && e.linePos ? ` at line ${e.linePos[0].line}` : '';
    throw new ConfigError([{ path: 'config', reason: `"${path}" is not valid YAML${where}: ${(e as Error).message.split('\n')[0]}` }]);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigError([{ path: 'config', reason: `"${path}" must hold a mapping of settings (key: value)` }]);
  }
  return doc as Layer;
}

/** Picks the `APILB_*` variables that name options, keyed by config key. `APILB_CONFIG` is handled by the CLI. */
export function envLayer(env: NodeJS.ProcessEnv): { layer: Layer; names: Record<string, string> } {
  const layer: Layer = {};
  const names: Record<string, string> = {};
  for (const spec of OPTIONS) {
    const name = envName(spec);
    const v = env[name];
    if (v !== undefined && v !== '') {
      layer[spec.key] = v;
      names[spec.key] = name;
    }
  }
  return { layer, names };
}

/**
 * True when the host has an IPv6 loopback address configured. `interfaces` (default `os.networkInterfaces`)
 * asks the kernel over netlink; where that fails, e.g. under the shipped unit's `RestrictAddressFamilies=`
 * without AF_NETLINK (EAFNOSUPPORT, "Unknown system error 97"), `/proc/net/if_inet6` is read instead
 * (`readIfInet6`), and when that is unreadable too the answer is false: listening on 127.0.0.1 only never fails
 * to bind, while a missing `::1` would.
 */
export function detectIPv6Loopback(
  interfaces: () => ReturnType<typeof networkInterfaces> = networkInterfaces,
  readIfInet6: () => string = () => readFileSync('/proc/net/if_inet6', 'utf8'),
): boolean {
  try {
    return Object.values(interfaces()).some((list) => list?.some((i) => i.family === 'IPv6' && i.address === '::1'));
  } catch {
    try {
      // One line per address: 32 hex digits, interface index, prefix length, scope, flags, name.
      return /^0{31}1\s/m.test(readIfInet6());
    } catch {
      return false;
    }
  }
}

/**
 * Resolves and validates configuration from all layers. Throws ConfigError listing every problem
 * (path + reason); never returns a half-valid Config.
 */
export function resolveConfig(input: ResolveInput = {}): Config {
  const issues: ConfigIssue[] = [];
  const merged: Record<string, unknown> = {};
  const origin: Record<string, string> = {};

  if (input.configFile) {
    // An unreadable file is one issue among others: the environment and flags are still checked and reported.
    let raw: Layer | undefined;
    try {
      raw = readConfigFile(input.configFile);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      issues.push(...e.issues);
    }
    const r = raw === undefined ? undefined : FILE_SCHEMA.safeParse(raw);
    if (r?.success) assignDefined(merged, r.data, fileToKey, origin, 'file');
    else if (r) issues.push(...zodIssues(r.error, (p) => `${input.configFile}: ${p.join('.')}`));
  }
  if (input.env) {
    const { layer, names } = envLayer(input.env);
    const r = KEY_SCHEMA.safeParse(layer);
    if (r.success) assignDefined(merged, r.data, (k) => k, origin, 'env');
    else issues.push(...zodIssues(r.error, (p) => names[String(p[0])] ?? String(p[0])));
  }
  if (input.flags) {
    const r = KEY_SCHEMA.safeParse(input.flags);
    if (r.success) assignDefined(merged, r.data, (k) => k, origin, 'flag');
    else issues.push(...zodIssues(r.error, (p) => `--${optionByKey(String(p[0]))?.flag ?? p[0]}`));
  }
  if (issues.length) throw new ConfigError(issues);

  const defaults = KEY_SCHEMA.parse(Object.fromEntries(OPTIONS.filter((o) => o.default !== undefined).map((o) => [o.key, o.default])));
  const cfg = { ...defaults, ...merged } as unknown as Config;
  if (!cfg.listen || cfg.listen.length === 0) {
    cfg.listen = [{ host: '127.0.0.1', port: 6443 }];
    if (input.hasIPv6Loopback ?? detectIPv6Loopback()) cfg.listen.push({ host: '::1', port: 6443 });
  }
  cfg.backends ??= [];
  if (input.configFile) cfg.configFile = input.configFile;

  // Cross-field issues are reported where the operator set the value: file key, environment variable or flag.
  const where = (key: string) => {
    const spec = optionByKey(key)!;
    if (origin[key] === 'file') return `${input.configFile}: ${fileKey(spec)}`;
    if (origin[key] === 'env') return envName(spec);
    return `--${spec.flag}`;
  };
  if (!input.allowNoBackends && cfg.backends.length === 0 && !cfg.discoverEndpointslices) {
    issues.push({ path: 'backends', reason: 'no backend configured: pass --backend HOST:PORT (repeatable), set backends: in --config FILE, or set APILB_BACKEND' });
  }
  if (cfg.discoverEndpointslices && !cfg.kubeconfig) {
    issues.push({ path: where('discoverEndpointslices'), reason: 'needs --kubeconfig for the credentials to read EndpointSlices' });
  }
  if (cfg.healthCheckMode === 'https' && !cfg.healthCheckInsecure && !cfg.caFile && !cfg.kubeconfig) {
    issues.push({
      path: 'caFile',
      reason: 'https health checks verify the API server certificate: pass --ca-file (the cluster CA, e.g. /etc/kubernetes/pki/ca.crt), --kubeconfig, or --health-check-insecure to opt out of verification',
    });
  }
  if (Boolean(cfg.clientCertFile) !== Boolean(cfg.clientKeyFile)) {
    issues.push({ path: cfg.clientCertFile ? 'clientKeyFile' : 'clientCertFile', reason: '--client-cert-file and --client-key-file go together' });
  }
  if (cfg.healthCheckTimeout > cfg.healthCheckInterval) {
    issues.push({ path: where('healthCheckTimeout'), reason: `must not exceed healthCheckInterval (${cfg.healthCheckInterval}ms)` });
  }
  if (cfg.kubeconfig) {
    // Read it now so a broken kubeconfig fails check-config and startup, not the first health check.
    try {
      const k = loadKubeconfigCredentials(cfg.kubeconfig);
      if (!k.ca && !cfg.caFile && cfg.healthCheckMode === 'https' && !cfg.healthCheckInsecure) {
        issues.push({ path: where('kubeconfig'), reason: 'has no certificate-authority or certificate-authority-data for its cluster: pass --ca-file too' });
      }
    } catch (e) {
      issues.push({ path: where('kubeconfig'), reason: (e as Error).message });
    }
  }
  if (issues.length) throw new ConfigError(issues);
  return cfg;
}

function fileToKey(k: string): string {
  return OPTIONS.find((o) => fileKey(o) === k)?.key ?? k;
}

function assignDefined(target: Record<string, unknown>, src: Record<string, unknown>, map: (k: string) => string, origin: Record<string, string>, tag: string): void {
  for (const [k, v] of Object.entries(src)) {
    if (v === undefined) continue;
    target[map(k)] = v;
    origin[map(k)] = tag;
  }
}
