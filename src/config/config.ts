/**
 * Resolving configuration: file (YAML) + `APILB_*` environment + flags over defaults, validated in one pass
 * with zod so that every bad field is reported with its path and reason before anything is bound.
 * Precedence: flags > environment > file > defaults.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { z } from 'zod';
import { loadYaml } from './yaml.js';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { loadCredentials, type LoadedCredentials } from './credentials.js';
import { looksLikeContent, readBoundedFile } from './read-file.js';
import { envName, fileKey, optionByKey, OPTIONS, type OptionSpec } from './options.js';
import type { BalancePolicy } from '../pool/pool.js';
import { formatAddress, formatDuration, MAX_DURATION_MS, negativeDuration, parseAddress, parseDuration, type Address } from './values.js';

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
  /** Default `least-connections`. */
  balance: BalancePolicy;
  /** Default true. */
  rebalance: boolean;
  /** Default 10000 ms. */
  rebalanceInterval: number;
  /** Percent, default 20. */
  rebalanceTolerance: number;
  /** Percent, default 10. */
  rebalanceMaxMovesPercent: number;
  /** Default 30000 ms; 0: any age. */
  rebalanceMinAge: number;
  /** Default 1000 ms. */
  rebalanceQuiet: number;
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
  /**
   * Things that are allowed but probably not what the operator wants (tcp checks without a CA, credential files
   * that do not exist yet): check-config prints them, run logs them. Never secrets.
   */
  warnings: string[];
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
  // A key or token pasted where a path or setting belongs must never be echoed (stderr, journal, POST /reload).
  if (typeof v === 'string')
    return looksLikeContent(v) ? 'what looks like file contents or a secret (not shown)' : JSON.stringify(v.length > 60 ? v.slice(0, 57) + '...' : v);
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
          if (v < 0) return fail(ctx, negativeDuration(String(v)).message);
          // YAML `connectTimeout: 5` is ambiguous (seconds? milliseconds?): only a bare 0 is accepted.
          if (v !== 0) return fail(ctx, `must be a duration with a unit, like ${v}s or ${v}ms (a bare number is ambiguous)`);
          v = '0';
        }
        if (typeof v !== 'string') return fail(ctx, `must be a duration like 250ms, 2s or 1m30s, got ${shown(v)}`);
        if (looksLikeContent(v)) return fail(ctx, `must be a duration like 250ms, 2s or 1m30s, got ${shown(v)}`);
        let ms: number;
        try {
          ms = parseDuration(v);
        } catch (e) {
          return fail(ctx, (e as Error).message);
        }
        if (spec.min !== undefined && ms < spec.min)
          return fail(ctx, spec.min <= 1 ? `must be greater than zero, got ${shown(raw)}` : `must be at least ${formatDuration(spec.min)}, got ${shown(raw)}`);
        const max = Math.min(spec.max ?? MAX_DURATION_MS, MAX_DURATION_MS);
        if (ms > max) return fail(ctx, `must be at most ${formatDuration(max)}, got ${shown(raw)}`);
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
        if (looksLikeContent(v) || /[\x00-\x1f\x7f]/.test(v)) return fail(ctx, `must be one line of text, got ${shown(v)}`);
        return v;
      });
    case 'file':
      return z.unknown().transform((v, ctx) => {
        if (typeof v !== 'string') return fail(ctx, `must be a file path, got ${shown(v)}`);
        if (v.trim() === '') return fail(ctx, 'must not be empty');
        if (looksLikeContent(v)) return fail(ctx, `must be a file path, got ${shown(v)}: put the PEM in a file and pass its path`);
        // Whether the file exists and holds usable PEM is checked with the other credentials (loadCredentials):
        // a kubeconfig or client certificate may legitimately not exist yet on a joining node.
        return resolveCredentialPath(v);
      });
    case 'address':
      return z.unknown().transform((v, ctx) => {
        if (typeof v !== 'string' || looksLikeContent(v)) return fail(ctx, `must be an address HOST:PORT, got ${shown(v)}`);
        try {
          return parseAddress(v, { allowPortZero: spec.allowPortZero === true });
        } catch (e) {
          return fail(ctx, (e as Error).message);
        }
      });
    case 'address-list':
      return z.unknown().transform((v, ctx) => {
        // Flags and the environment give `a,b` or a list of strings; YAML gives a list (or one string).
        const items =
          typeof v === 'string'
            ? v
                .split(',')
                .map((x) => x.trim())
                .filter(Boolean)
            : v;
        if (!Array.isArray(items)) return fail(ctx, `must be a list of HOST:PORT addresses, got ${shown(v)}`);
        if (spec.max !== undefined && items.length > spec.max) return fail(ctx, `holds ${items.length} addresses; at most ${spec.max} are accepted`);
        const out: Address[] = [];
        let bad = false;
        items.forEach((item, i) => {
          if (typeof item !== 'string' || looksLikeContent(item)) {
            bad = true;
            fail(ctx, `must be an address HOST:PORT, got ${shown(item)}`, [i]);
            return;
          }
          try {
            out.push(parseAddress(item, { allowPortZero: spec.allowPortZero === true, allowHttpsUrl: spec.allowHttpsUrl === true }));
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
    text = readBoundedFile(path, 'config file');
  } catch (e) {
    throw new ConfigError([{ path: 'config', reason: (e as Error).message }]);
  }
  let doc: unknown;
  const yaml = loadYaml();
  try {
    doc = yaml.parse(text, { prettyErrors: true });
  } catch (e) {
    const where = e instanceof yaml.YAMLParseError && e.linePos ? ` at line ${e.linePos[0].line}` : '';
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
  cfg.warnings = [];
  if (input.configFile) cfg.configFile = input.configFile;

  // Cross-field issues are reported where the operator set the value: file key, environment variable or flag.
  const where = (key: string) => {
    const spec = optionByKey(key)!;
    if (origin[key] === 'file') return `${input.configFile}: ${fileKey(spec)}`;
    if (origin[key] === 'env') return envName(spec);
    return `--${spec.flag}`;
  };
  if (!input.allowNoBackends && cfg.backends.length === 0 && !cfg.discoverEndpointslices) {
    issues.push({
      path: 'backends',
      reason: 'no backend configured: pass --backend HOST:PORT (repeatable), set backends: in --config FILE, or set APILB_BACKEND',
    });
  }
  if (cfg.discoverEndpointslices && !cfg.kubeconfig) {
    issues.push({ path: where('discoverEndpointslices'), reason: 'needs --kubeconfig for the credentials to read EndpointSlices' });
  }
  if (Boolean(cfg.clientCertFile) !== Boolean(cfg.clientKeyFile)) {
    issues.push({ path: where(cfg.clientCertFile ? 'clientCertFile' : 'clientKeyFile'), reason: '--client-cert-file and --client-key-file go together' });
  }
  if (cfg.healthCheckTimeout > cfg.healthCheckInterval) {
    issues.push({ path: where('healthCheckTimeout'), reason: `must not exceed healthCheckInterval (${formatDuration(cfg.healthCheckInterval)})` });
  }
  if (!cfg.healthCheckPath.startsWith('/') || /\s/.test(cfg.healthCheckPath)) {
    issues.push({ path: where('healthCheckPath'), reason: `must be an absolute path starting with /, like /readyz, got ${shown(cfg.healthCheckPath)}` });
  }
  cfg.backends.forEach((b, i) => {
    const own = ownListenerOf(b, cfg);
    if (own) issues.push({ path: `${where('backends')}.${i}`, reason: `${formatAddress(b)} is apilb's own ${own}: apilb would forward to itself` });
  });
  issues.push(...credentialIssues(cfg, where));
  if (cfg.healthCheckMode === 'tcp' && !cfg.caFile && !cfg.kubeconfig) {
    cfg.warnings.push(
      'health-check-mode tcp without a CA (--ca-file or --kubeconfig) only connects: a hung API server that still accepts TCP looks healthy. Set --ca-file so checks complete a TLS handshake',
    );
  }
  if (issues.length) throw new ConfigError(issues);
  return cfg;
}

/** Which of apilb's own listeners `b` is (`listener (--listen)`, `admin endpoint (--admin-listen)`), if any. */
function ownListenerOf(b: Address, cfg: Config): string | undefined {
  const canon = (h: string) => (h.toLowerCase().startsWith('::ffff:') && isIP(h.slice(7)) === 4 ? h.slice(7) : h.toLowerCase());
  const loopback = (h: string) => /^127\./.test(h) || h === '::1';
  const same = (l: Address) => {
    if (l.port !== b.port || isIP(b.host) === 0) return false;
    const lh = canon(l.host);
    const bh = canon(b.host);
    // A wildcard listener accepts on every local address; loopback is certainly one of them.
    return lh === bh || ((lh === '0.0.0.0' || lh === '::') && loopback(bh));
  };
  if (cfg.listen.some(same)) return 'listener (--listen)';
  if (same(cfg.adminListen)) return 'admin endpoint (--admin-listen)';
  return undefined;
}

/**
 * Loads every credential file once, as run will (one validation for check-config and run): parse errors, keys
 * that do not match and `exec` users are issues; files that do not exist yet and expired certificates are warnings
 * (a joining node), except the explicit CA, and an https check that would have no CA at all.
 */
function credentialIssues(cfg: Config, where: (key: string) => string): ConfigIssue[] {
  let loaded: LoadedCredentials;
  try {
    loaded = loadCredentials(cfg);
  } catch (e) {
    const msg = (e as Error).message;
    const key = (['caFile', 'clientCertFile', 'clientKeyFile'] as const).find((k) => cfg[k] && msg.includes(`"${cfg[k]}"`)) ?? 'kubeconfig';
    return [{ path: where(key), reason: msg }];
  }
  if (loaded.expired) cfg.warnings.push(`${loaded.expired}; checks answered 401 count as up`);
  cfg.warnings.push(
    ...loaded.missing.map(
      (f) =>
        `"${f}" does not exist yet: running without it (anonymous or partial credentials; checks answered 401/403 count as up) and using it as soon as it appears`,
    ),
  );
  if (cfg.healthCheckMode === 'https' && !cfg.healthCheckInsecure && !loaded.material.ca) {
    if (!cfg.caFile && !cfg.kubeconfig) {
      return [
        {
          path: 'caFile',
          reason:
            'https health checks verify the API server certificate: pass --ca-file (the cluster CA, e.g. /etc/kubernetes/pki/ca.crt), --kubeconfig, or --health-check-insecure to opt out of verification',
        },
      ];
    }
    const why = loaded.missing.includes(cfg.kubeconfig!)
      ? 'does not exist yet'
      : loaded.missing.length > 0
        ? `gives no CA: ${loaded.missing.map((f) => `"${f}"`).join(', ')} does not exist yet`
        : 'has no certificate-authority or certificate-authority-data for its cluster';
    return [
      {
        path: where('kubeconfig'),
        reason: `"${cfg.kubeconfig}" ${why}: pass --ca-file too (kubeadm join writes /etc/kubernetes/pki/ca.crt before kubelet.conf)`,
      },
    ];
  }
  return [];
}

/**
 * The admin address `apilb status` talks to: `flag`, else APILB_ADMIN_LISTEN, else `adminListen` in the config
 * file, else the default. Only that one key is read, so status works even when the rest of the file would not
 * validate. Throws ConfigError naming where a bad value came from.
 */
export function resolveAdminListen(input: { flag?: string; env?: NodeJS.ProcessEnv; configFile?: string }): Address {
  const spec = optionByKey('adminListen')!;
  const fromEnv = input.env?.[envName(spec)];
  let raw: unknown = spec.default;
  let where = '--admin-listen';
  if (input.flag !== undefined) raw = input.flag;
  else if (fromEnv) [raw, where] = [fromEnv, envName(spec)];
  else if (input.configFile) {
    const doc = readConfigFile(input.configFile);
    if (doc[fileKey(spec)] !== undefined) [raw, where] = [doc[fileKey(spec)], `${input.configFile}: ${fileKey(spec)}`];
  }
  const r = kindSchema(spec).safeParse(raw);
  if (!r.success) throw new ConfigError(zodIssues(r.error, () => where));
  return r.data as Address;
}

/** The effective configuration as YAML-style `key: value` lines (check-config --print): paths, never contents. */
export function formatConfig(cfg: Config): string {
  const lines: string[] = [];
  for (const spec of OPTIONS) {
    const v = cfg[spec.key];
    if (v === undefined) continue;
    const k = fileKey(spec);
    if (spec.kind === 'address-list') {
      const list = v as Address[];
      lines.push(list.length ? `${k}:\n${list.map((a) => `  - ${JSON.stringify(formatAddress(a))}`).join('\n')}` : `${k}: []`);
    } else if (spec.kind === 'address') lines.push(`${k}: ${JSON.stringify(formatAddress(v as Address))}`);
    else if (spec.kind === 'duration') lines.push(`${k}: ${JSON.stringify(formatDuration(v as number))}`);
    else lines.push(`${k}: ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`);
  }
  return lines.join('\n') + '\n';
}

function fileToKey(k: string): string {
  return OPTIONS.find((o) => fileKey(o) === k)?.key ?? k;
}

function assignDefined(
  target: Record<string, unknown>,
  src: Record<string, unknown>,
  map: (k: string) => string,
  origin: Record<string, string>,
  tag: string,
): void {
  for (const [k, v] of Object.entries(src)) {
    if (v === undefined) continue;
    target[map(k)] = v;
    origin[map(k)] = tag;
  }
}
