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
import { envName, fileKey, OPTIONS, type OptionSpec } from './options.js';
import { parseAddress, parseDuration, type Address } from './values.js';

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

function kindSchema(spec: OptionSpec): z.ZodTypeAny {
  const msg = (m: string) => ({ message: m });
  switch (spec.kind) {
    case 'duration':
      return z.union([z.string(), z.literal(0)]).transform((v, ctx) => {
        try {
          const ms = parseDuration(String(v));
          if (spec.min !== undefined && ms < spec.min) {
            ctx.addIssue({ code: 'custom', message: spec.min <= 1 ? 'must be greater than zero' : `must be at least ${spec.min}ms` });
            return z.NEVER;
          }
          return ms;
        } catch (e) {
          ctx.addIssue({ code: 'custom', message: (e as Error).message });
          return z.NEVER;
        }
      });
    case 'int':
      return z
        .union([z.number(), z.string().regex(/^-?\d+$/, 'must be a whole number')])
        .transform(Number)
        .pipe(
          z.number(msg('must be a whole number')).int('must be a whole number')
            .min(spec.min ?? Number.MIN_SAFE_INTEGER, `must be at least ${spec.min}`)
            .max(spec.max ?? Number.MAX_SAFE_INTEGER, `must be at most ${spec.max}`),
        );
    case 'bool':
      return z.union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])]).transform(
        (v) => v === true || v === 'true' || v === '1' || v === 'yes',
      );
    case 'enum':
      return z.string().refine((v) => spec.choices!.includes(v), `must be one of ${spec.choices!.join(', ')}`);
    case 'string':
      return z.string().min(1, 'must not be empty');
    case 'file':
      return z.string().min(1, 'must not be empty').transform((p, ctx) => {
        const resolved = resolveCredentialPath(p);
        try {
          accessSync(resolved, constants.R_OK);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          ctx.addIssue({ code: 'custom', message: code === 'ENOENT' ? `file "${p}" does not exist` : `file "${p}" is not readable (${code})` });
          return z.NEVER;
        }
        return resolved;
      });
    case 'address':
      return z.string().transform((v, ctx) => addressOrIssue(v, spec, ctx));
    case 'address-list':
      return z
        .union([z.string().transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean)), z.array(z.string())])
        .pipe(z.array(z.string().transform((v, ctx) => addressOrIssue(v, spec, ctx))));
  }
}

function addressOrIssue(v: string, spec: OptionSpec, ctx: z.RefinementCtx): Address {
  try {
    return parseAddress(v, { allowPortZero: spec.allowPortZero === true });
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
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
    } else if (issue.code === 'invalid_union') {
      // A union failed on every branch: report the most specific message of the string branch.
      const inner = issue.unionErrors.flatMap((e) => e.issues).find((i) => i.code === 'custom' || i.code === 'too_small' || i.code === 'invalid_string');
      out.push({ path: label(issue.path), reason: inner?.message ?? describeType(issue) });
    } else {
      out.push({ path: label(issue.path), reason: issue.message });
    }
  }
  return out;
}

function describeType(issue: z.ZodIssue): string {
  return issue.message === 'Invalid input' ? 'has the wrong type' : issue.message;
}

function suggest(key: string): string {
  const lower = key.toLowerCase().replace(/[-_]/g, '');
  const hit = OPTIONS.find((o) => fileKey(o).toLowerCase() === lower || o.key.toLowerCase() === lower || o.flag.replace(/-/g, '') === lower);
  return hit ? ` (did you mean "${fileKey(hit)}"?)` : '';
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

/** True when the host has an IPv6 loopback address configured. */
export function detectIPv6Loopback(): boolean {
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => i.family === 'IPv6' && i.address === '::1'));
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
    const raw = readConfigFile(input.configFile);
    const r = FILE_SCHEMA.safeParse(raw);
    if (r.success) assignDefined(merged, r.data, fileToKey, origin, 'file');
    else issues.push(...zodIssues(r.error, (p) => `${input.configFile}: ${p.join('.')}`));
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
    else issues.push(...zodIssues(r.error, (p) => `--${OPTIONS.find((o) => o.key === p[0])?.flag ?? p[0]}`));
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

  const where = (key: string) => {
    const spec = OPTIONS.find((o) => o.key === key)!;
    return origin[key] === 'file' ? fileKey(spec) : `--${spec.flag}`;
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
