/**
 * What a configuration reload changes, option by option, and which changes a running daemon can apply. Pure:
 * the daemon decides from this list what to hand to the pool, proxy, health checks and DNS discovery, and what
 * to report as "requires restart" instead of half-applying it.
 */
import type { Config } from './config.js';
import { OPTIONS, type OptionSpec } from './options.js';
import { formatAddress, formatDuration, type Address } from './values.js';

/**
 * Options a running daemon cannot change: bound sockets (listen, adminListen), the pool's state-machine
 * thresholds (rise, fall), EndpointSlice discovery's wiring (discoverEndpointslices, kubeconfig's use there,
 * stateDir, discoveryAllowLocal), the TLS server name already stamped on existing backends, and balancing (pick policy,
 * rebalancer).
 */
export const RESTART_REQUIRED: ReadonlySet<keyof Config> = new Set<keyof Config>([
  'listen',
  'adminListen',
  'metricsListen',
  'rise',
  'fall',
  'discoverEndpointslices',
  'stateDir',
  'tlsServerName',
  'discoveryAllowLocal',
  'balance',
  'rebalance',
  'rebalanceInterval',
  'rebalanceTolerance',
  'rebalanceMaxMovesPercent',
  'rebalanceMinAge',
  'rebalanceQuiet',
]);

/** One changed option. */
export interface ConfigChange {
  key: keyof Config;
  from: string;
  to: string;
  /** False when the change needs a restart (see {@link RESTART_REQUIRED}). */
  applies: boolean;
  /** For `backends`: addresses added and removed. */
  added?: string[];
  removed?: string[];
}

function show(spec: OptionSpec, v: unknown): string {
  if (v === undefined) return '(unset)';
  switch (spec.kind) {
    case 'duration':
      return formatDuration(v as number);
    case 'address':
      return formatAddress(v as Address);
    case 'address-list':
      return (v as Address[]).map(formatAddress).join(',') || '(none)';
    default:
      return String(v);
  }
}

/** Compares two resolved configurations; returns the changed options in option-table order. */
export function diffConfig(prev: Config, next: Config): ConfigChange[] {
  const out: ConfigChange[] = [];
  for (const spec of OPTIONS) {
    const a = prev[spec.key];
    const b = next[spec.key];
    const from = show(spec, a);
    const to = show(spec, b);
    if (from === to) continue;
    const change: ConfigChange = { key: spec.key, from, to, applies: !RESTART_REQUIRED.has(spec.key) };
    if (spec.kind === 'address-list') {
      const before = new Set(((a as Address[] | undefined) ?? []).map(formatAddress));
      const after = new Set(((b as Address[] | undefined) ?? []).map(formatAddress));
      change.added = [...after].filter((x) => !before.has(x));
      change.removed = [...before].filter((x) => !after.has(x));
    }
    out.push(change);
  }
  return out;
}

/** One line per change, as logged and returned by POST /reload. */
export function describeChange(c: ConfigChange): string {
  if (!c.applies) return `${c.key}: ${c.from} -> ${c.to} requires restart (not applied)`;
  if (c.added || c.removed) {
    const parts = [...(c.added ?? []).map((x) => `+${x}`), ...(c.removed ?? []).map((x) => `-${x}`)];
    return `${c.key}: ${parts.join(' ') || 'reordered'}`;
  }
  return `${c.key}: ${c.from} -> ${c.to}`;
}
