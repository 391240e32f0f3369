/**
 * Which addresses apilb may use as backends when they come from data (EndpointSlices, DNS answers) rather than
 * from the operator. Pure: no sockets, no resolver; the node's own addresses are passed in.
 *
 * Every address is canonicalised before any comparison: IPv6 text is lower-cased and compressed, and an
 * IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, `::ffff:7f00:1`, `0:0:0:0:0:ffff:7f00:1`) becomes the IPv4
 * address the kernel connects to. Otherwise one spelling of apilb's own listener slips past a comparison made
 * with another and apilb connects to itself (each connection opening another: a loop that ends at the fd limit).
 *
 * Refused always: apilb's own listeners (data and admin; a wildcard listener is every local address on its
 * port), unspecified (`0.0.0.0/8`, `::`: the kernel connects those to the local host), multicast, broadcast and
 * reserved (`240.0.0.0/4`). Refused unless the operator allows local addresses (`--discovery-allow-local`):
 * loopback (`127.0.0.0/8`, `::1`) and link-local (`169.254.0.0/16` with the cloud metadata service at
 * 169.254.169.254, `fe80::/10`).
 */
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { formatAddress, type Address } from '../config/values.js';

/** Address classes the policy distinguishes; `global` is everything else (usable). */
export const ADDRESS_CLASSES = ['loopback', 'link-local', 'unspecified', 'multicast', 'broadcast', 'global'] as const;

/** One of {@link ADDRESS_CLASSES}. */
export type AddressClass = (typeof ADDRESS_CLASSES)[number];

const RANGES: ReadonlyArray<[Exclude<AddressClass, 'global'>, string, number, 'ipv4' | 'ipv6']> = [
  ['loopback', '127.0.0.0', 8, 'ipv4'],
  ['loopback', '::1', 128, 'ipv6'],
  ['unspecified', '0.0.0.0', 8, 'ipv4'],
  ['unspecified', '::', 128, 'ipv6'],
  ['link-local', '169.254.0.0', 16, 'ipv4'],
  ['link-local', 'fe80::', 10, 'ipv6'],
  ['multicast', '224.0.0.0', 4, 'ipv4'],
  ['multicast', 'ff00::', 8, 'ipv6'],
  // 255.255.255.255 and the rest of the reserved 240/4 block: never a unicast server.
  ['broadcast', '240.0.0.0', 4, 'ipv4'],
];

const LISTS = new Map<AddressClass, BlockList>();
for (const [cls, net, prefix, family] of RANGES) {
  let l = LISTS.get(cls);
  if (!l) LISTS.set(cls, (l = new BlockList()));
  l.addSubnet(net, prefix, family);
}

/**
 * The canonical spelling of an IP literal (IPv4-mapped IPv6 → IPv4, IPv6 compressed and lower-case, a zone
 * index kept); anything that is not an IP literal (a DNS name) is returned lower-cased.
 */
export function canonicalHost(host: string): string {
  const family = isIP(host);
  if (family === 4) return host;
  if (family === 0) return host.toLowerCase();
  const pct = host.indexOf('%');
  const bare = pct >= 0 ? host.slice(0, pct) : host;
  const zone = pct >= 0 ? host.slice(pct) : '';
  // The WHATWG URL serializer is the canonical IPv6 text form (RFC 5952) and turns dotted tails into hex.
  const text = new URL(`http://[${bare}]/`).hostname.slice(1, -1);
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(text);
  if (m) {
    const hi = parseInt(m[1]!, 16);
    const lo = parseInt(m[2]!, 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return text + zone;
}

/** {@link canonicalHost} applied to an address. */
export function canonicalAddress(a: Address): Address {
  const host = canonicalHost(a.host);
  return host === a.host ? a : { host, port: a.port };
}

/** The class of a canonical IP literal (see {@link canonicalHost}); DNS names are `global`. */
export function classifyHost(host: string): AddressClass {
  const family = isIP(host);
  if (family === 0) return 'global';
  const bare = host.includes('%') ? host.slice(0, host.indexOf('%')) : host;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  for (const [cls, list] of LISTS) if (list.check(bare, type)) return cls;
  return 'global';
}

/** Options of {@link AddressPolicy}. */
export interface AddressPolicyOptions {
  /** apilb's own listeners, data and admin (bound addresses). A wildcard host matches every local address. */
  own?: readonly Address[];
  /** Accept loopback and link-local addresses (operator opt-in, `--discovery-allow-local`). Default false. */
  allowLocal?: boolean;
  /** The node's own addresses (wildcard listeners are reached on them). Default: every interface address. */
  localAddresses?: () => readonly string[];
}

function interfaceAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address));
}

/** Decides whether a discovered address may become a backend. */
export class AddressPolicy {
  readonly allowLocal: boolean;
  private readonly own: Set<string>;
  /** Ports of wildcard (0.0.0.0 / ::) own listeners. */
  private readonly wildcardPorts: Set<number>;
  private readonly localAddresses: () => readonly string[];

  constructor(options: AddressPolicyOptions = {}) {
    this.allowLocal = options.allowLocal ?? false;
    this.own = new Set();
    this.wildcardPorts = new Set();
    for (const a of options.own ?? []) this.addOwn(a);
    this.localAddresses = options.localAddresses ?? interfaceAddresses;
  }

  /** Adds one of apilb's own listeners once it is bound (e.g. the admin endpoint, bound after discovery starts). */
  addOwn(address: Address): void {
    const a = canonicalAddress(address);
    if (a.port === 0) return;
    this.own.add(formatAddress(a));
    if (classifyHost(a.host) === 'unspecified') this.wildcardPorts.add(a.port);
  }

  /** True when `a` (any spelling) is one of apilb's own listeners: connecting to it would loop. */
  isOwn(a: Address): boolean {
    const c = canonicalAddress(a);
    if (this.own.has(formatAddress(c))) return true;
    if (!this.wildcardPorts.has(c.port)) return false;
    const cls = classifyHost(c.host);
    if (cls === 'loopback' || cls === 'unspecified') return true;
    return this.localAddresses().some((l) => canonicalHost(l) === c.host);
  }

  /** Why `a` must not be a backend, or undefined when it may. */
  refusal(a: Address): string | undefined {
    if (this.isOwn(a)) return `${formatAddress(canonicalAddress(a))} is apilb's own listener`;
    const cls = classifyHost(canonicalHost(a.host));
    if (cls === 'global') return undefined;
    if ((cls === 'loopback' || cls === 'link-local') && this.allowLocal) return undefined;
    const hint = cls === 'loopback' || cls === 'link-local' ? ' (allow with --discovery-allow-local)' : '';
    return `${formatAddress(canonicalAddress(a))} is ${/^[aeiou]/.test(cls) ? 'an' : 'a'} ${cls} address${hint}`;
  }
}
