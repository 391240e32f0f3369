/**
 * EndpointSlices → backend addresses: the pure half of EndpointSlice discovery (no I/O, no state), so the
 * translation rules can be tested and reasoned about apart from the LIST/WATCH loop.
 */
import { isIP } from 'node:net';
import { formatAddress, type Address } from '../config/values.js';
import { AddressPolicy, canonicalAddress } from './address-policy.js';
import type { KubeObject } from './list-watch.js';

/** Name of the Service port whose number the API servers listen on. */
export const API_PORT_NAME = 'https';

/** The parts of a discovery.k8s.io/v1 EndpointSlice discovery reads. */
export interface EndpointSlice extends KubeObject {
  /** `IPv4`, `IPv6` or `FQDN` (FQDN slices are skipped: the kubernetes Service never has them). */
  addressType?: string;
  endpoints?: Array<{ addresses?: string[]; conditions?: { ready?: boolean | null } | null }> | null;
  ports?: Array<{ name?: string | null; port?: number | null; protocol?: string | null }> | null;
}

/** Result of {@link backendsFromSlices}. */
export interface SliceBackends {
  /** Ready endpoint addresses × `https` ports, deduplicated, sorted by `HOST:PORT`. */
  backends: Address[];
  /** Human-readable reasons for entries that were left out (not counting not-ready endpoints). */
  skipped: string[];
  /** The part of `skipped` refused by the address policy (own listeners, loopback, link-local, multicast...). */
  refused: string[];
  /** Endpoints left out because `conditions.ready` is false. */
  notReady: number;
}

/**
 * Turns EndpointSlices into backend addresses: every address of every endpoint whose `conditions.ready` is not
 * false (unset means ready, as the API defines), times every port named `https`, in canonical spelling.
 * Addresses the `policy` refuses (apilb's own listeners: following them would loop; loopback, link-local,
 * multicast... see address-policy.ts) and malformed entries are left out and reported. A list of addresses as
 * `policy` means the strict policy with those as apilb's own listeners.
 */
export function backendsFromSlices(slices: Iterable<EndpointSlice>, policy: AddressPolicy | readonly Address[] = []): SliceBackends {
  const guard = policy instanceof AddressPolicy ? policy : new AddressPolicy({ own: policy });
  const byId = new Map<string, Address>();
  const skipped: string[] = [];
  const refused: string[] = [];
  let notReady = 0;
  for (const slice of slices) {
    const name = slice.metadata?.name ?? '(unnamed)';
    const type = slice.addressType ?? 'IPv4';
    if (type !== 'IPv4' && type !== 'IPv6') {
      skipped.push(`slice ${name}: addressType ${type} is not supported`);
      continue;
    }
    const ports: number[] = [];
    for (const p of slice.ports ?? []) {
      if (p.name !== API_PORT_NAME || (p.protocol && p.protocol !== 'TCP')) continue;
      if (!Number.isInteger(p.port) || p.port! < 1 || p.port! > 65535) {
        skipped.push(`slice ${name}: port ${String(p.port)} is out of range`);
        continue;
      }
      ports.push(p.port!);
    }
    if (ports.length === 0) {
      if ((slice.endpoints ?? []).length > 0) skipped.push(`slice ${name}: no TCP port named ${API_PORT_NAME}`);
      continue;
    }
    for (const ep of slice.endpoints ?? []) {
      if (ep.conditions?.ready === false) {
        notReady++;
        continue;
      }
      for (const host of ep.addresses ?? []) {
        const family = isIP(host);
        if ((type === 'IPv4' && family !== 4) || (type === 'IPv6' && family !== 6)) {
          skipped.push(`slice ${name}: "${host}" is not a usable ${type} address`);
          continue;
        }
        for (const port of ports) {
          const a = canonicalAddress({ host, port });
          const why = guard.refusal(a);
          if (why) {
            skipped.push(why);
            refused.push(why);
            continue;
          }
          byId.set(formatAddress(a), a);
        }
      }
    }
  }
  const backends = [...byId.values()].sort(compareAddresses);
  return { backends, skipped, refused: [...new Set(refused)], notReady };
}

/** Orders addresses by their `HOST:PORT` spelling (the order of {@link SliceBackends.backends}). */
export function compareAddresses(a: Address, b: Address): number {
  const x = formatAddress(a);
  const y = formatAddress(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * Why a list must not be applied, or undefined when it is plausible. Empty (no ready API server: a control
 * plane restarting, a broken controller, a deleted slice) and oversized lists are refused.
 */
export function implausibleReason(backends: readonly Address[], maxBackends: number): string | undefined {
  if (backends.length === 0) return 'no ready API server in the EndpointSlices';
  if (backends.length > maxBackends) return `${backends.length} API servers is more than the ${maxBackends} a control plane plausibly has`;
  return undefined;
}
