/**
 * Backends from DNS: a `--backend` given as a host name expands to one backend per A/AAAA record, re-resolved
 * every `--dns-refresh` (jittered). Each name is its own BackendSet source (`dns:HOST:PORT`), so one name's
 * records changing never disturbs another name's backends or the static ones.
 *
 * A failed or empty answer keeps the last known set: a resolver hiccup must not take the node off the API. When
 * the very first resolution of a name fails there is no last known set, so the name itself becomes the backend
 * and `net.connect` resolves it at dial time; the next successful refresh replaces it with the records.
 */
import { lookup } from 'node:dns/promises';
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { jitter, systemClock, type Clock, type TimerHandle } from '../clock.js';
import { OptionError } from '../errors.js';
import { formatAddress, type Address } from '../config/values.js';
import type { BackendSpec } from '../pool/backend.js';
import type { Logger } from '../logging.js';
import type { BackendSet } from './backend-set.js';

/** One resolved record. `family` is 4 or 6. */
export interface ResolvedAddress {
  address: string;
  family: number;
}

/** Resolves a host name to all its addresses. Default: `dns.promises.lookup(host, { all: true })` (getaddrinfo, so /etc/hosts counts). */
export type Resolver = (host: string) => Promise<ResolvedAddress[]>;

/** Options of {@link DnsDiscovery}. */
export interface DnsDiscoveryOptions {
  backendSet: BackendSet;
  /** DNS-named backends (`HOST:PORT` with a host name, never an IP literal). May be empty. */
  names: readonly Address[];
  /** Re-resolve interval in ms, jittered ±10%. Must be > 0 (the configuration enforces ≥ 1s). */
  refresh: number;
  /** Name for TLS verification of every DNS backend. Default: the DNS name the backend came from. */
  serverName?: string;
  /** Default: {@link defaultResolver}. */
  resolver?: Resolver;
  /** Default: the system clock. */
  clock?: Clock;
  /** Random source for the jitter (tests). Default Math.random. */
  random?: () => number;
  /** Failures by DNS name (`HOST:PORT`), incremented here; read by metrics at scrape time. Default: a private map. */
  failures?: Map<string, number>;
}

/** A name resolved (possibly to the same set as before). */
export interface DnsResolvedEvent {
  name: string;
  addresses: string[];
  added: string[];
  removed: string[];
}

/** A resolution failed; the last known set (`kept` backends) stays. */
export interface DnsErrorEvent {
  name: string;
  error: Error;
  kept: number;
  /** True when there was no last known set and the name itself is used as the backend (first resolution). */
  fallback: boolean;
}

/** A resolution returned no address; the last known set stays. */
export interface DnsStaleEvent {
  name: string;
  kept: number;
  fallback: boolean;
}

/** Events of {@link DnsDiscovery}. */
export interface DnsEvents {
  resolved: [DnsResolvedEvent];
  error: [DnsErrorEvent];
  stale: [DnsStaleEvent];
}

/** The default resolver: getaddrinfo through `dns.promises.lookup`, every address, both families. */
export const defaultResolver: Resolver = async (host) => lookup(host, { all: true, verbatim: true });

/** True for the backends DNS discovery owns: a host name rather than an IP literal. */
export function isDnsName(a: Address): boolean {
  return isIP(a.host) === 0;
}

interface NameState {
  address: Address;
  id: string;
  timer: TimerHandle | undefined;
  inFlight: boolean;
  /** True once the source holds real records (not the name-itself fallback). */
  resolvedOnce: boolean;
}

/** Keeps one BackendSet source per DNS name in step with its A/AAAA records. */
export class DnsDiscovery extends EventEmitter<DnsEvents> {
  /** Re-resolve interval (ms); changed by {@link update}, used from each name's next schedule. */
  refresh: number;
  /** Failures by name (`HOST:PORT`). */
  readonly failures: Map<string, number>;
  private readonly backendSet: BackendSet;
  private readonly serverName: string | undefined;
  private readonly resolver: Resolver;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly names = new Map<string, NameState>();
  private running = false;
  private closed = false;

  constructor(options: DnsDiscoveryOptions) {
    super();
    if (!options?.backendSet) throw new OptionError('backendSet', 'is required');
    if (!(Number.isFinite(options.refresh) && options.refresh > 0)) throw new OptionError('refresh', `must be a number of ms > 0, got ${options.refresh}`);
    this.backendSet = options.backendSet;
    this.refresh = options.refresh;
    this.serverName = options.serverName;
    this.resolver = options.resolver ?? defaultResolver;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.failures = options.failures ?? new Map();
    this.setNames(options.names);
  }

  /** The DNS names followed, as `HOST:PORT`. */
  get sources(): string[] {
    return [...this.names.keys()];
  }

  /** The BackendSet source name of a DNS name. */
  static sourceName(id: string): string {
    return `dns:${id}`;
  }

  /**
   * Resolves every name once (awaited: the daemon calls it before binding), then refreshes each on its own
   * jittered timer. Never rejects: failures keep the last known set or fall back to the name itself.
   */
  async start(): Promise<void> {
    if (this.closed) throw new OptionError('start', 'called after close()');
    this.running = true;
    await Promise.all([...this.names.values()].map((st) => this.resolveName(st)));
  }

  /**
   * Replaces the followed names (reload). Removed names' backends leave the pool (they drain); new names are
   * resolved at once when running. Names kept keep their backends and timers untouched. A new `refresh` applies
   * from each name's next schedule.
   */
  async update(names: readonly Address[], options: { refresh?: number } = {}): Promise<void> {
    if (options.refresh !== undefined) {
      if (!(Number.isFinite(options.refresh) && options.refresh > 0)) throw new OptionError('refresh', `must be a number of ms > 0, got ${options.refresh}`);
      this.refresh = options.refresh;
    }
    const added = this.setNames(names);
    if (this.running) await Promise.all(added.map((st) => this.resolveName(st)));
  }

  /** Resolves every name now (tests, operator-triggered refresh). */
  async refreshAll(): Promise<void> {
    await Promise.all([...this.names.values()].map((st) => this.resolveName(st)));
  }

  /** Stops refreshing. The backends stay in the pool. */
  close(): void {
    this.closed = true;
    this.running = false;
    for (const st of this.names.values()) this.clock.clearTimeout(st.timer);
  }

  private setNames(list: readonly Address[]): NameState[] {
    const wanted = new Map<string, Address>();
    for (const a of list) {
      if (!isDnsName(a)) throw new OptionError('names', `"${formatAddress(a)}" is an IP address, not a DNS name`);
      wanted.set(formatAddress(a), a);
    }
    for (const [id, st] of [...this.names]) {
      if (wanted.has(id)) continue;
      this.clock.clearTimeout(st.timer);
      this.names.delete(id);
      this.backendSet.delete(DnsDiscovery.sourceName(id));
    }
    const added: NameState[] = [];
    for (const [id, address] of wanted) {
      if (this.names.has(id)) continue;
      const st: NameState = { address, id, timer: undefined, inFlight: false, resolvedOnce: false };
      this.names.set(id, st);
      added.push(st);
    }
    return added;
  }

  private spec(address: Address, host: string): BackendSpec {
    return { address, serverName: this.serverName ?? host, source: 'dns' };
  }

  private async resolveName(st: NameState): Promise<void> {
    if (st.inFlight) return;
    st.inFlight = true;
    this.clock.clearTimeout(st.timer);
    st.timer = undefined;
    let records: ResolvedAddress[] | undefined;
    let error: Error | undefined;
    try {
      records = await this.resolver(st.address.host);
    } catch (e) {
      error = e instanceof Error ? e : new Error(String(e));
    }
    st.inFlight = false;
    // The name was dropped by a reload (or discovery closed) while the lookup ran: its answer is not wanted.
    if (this.names.get(st.id) !== st || this.closed) return;
    this.apply(st, records, error);
    if (this.running) st.timer = this.clock.setTimeout(() => void this.resolveName(st), jitter(this.refresh, 0.1, this.random));
  }

  private apply(st: NameState, records: ResolvedAddress[] | undefined, error: Error | undefined): void {
    const source = DnsDiscovery.sourceName(st.id);
    const current = this.backendSet.get(source) ?? [];
    const unique = [...new Set((records ?? []).map((r) => r.address).filter((a) => isIP(a) !== 0))];
    if (error || unique.length === 0) {
      this.failures.set(st.id, (this.failures.get(st.id) ?? 0) + 1);
      // Never drop to zero: keep what we had; with nothing yet, let net.connect resolve the name at dial time.
      const fallback = !st.resolvedOnce;
      if (current.length === 0) this.backendSet.set(source, [this.spec(st.address, st.address.host)]);
      const kept = Math.max(1, current.length);
      // An unheard 'error' event would throw out of a timer: emit it only to listeners.
      if (error) {
        if (this.listenerCount('error') > 0) this.emit('error', { name: st.id, error, kept, fallback });
      } else this.emit('stale', { name: st.id, kept, fallback });
      return;
    }
    st.resolvedOnce = true;
    const specs = unique.map((ip) => this.spec({ host: ip, port: st.address.port }, st.address.host));
    const before = new Set(current.map((s) => formatAddress(s.address)));
    const after = new Set(specs.map((s) => formatAddress(s.address)));
    const added = [...after].filter((a) => !before.has(a));
    const removed = [...before].filter((a) => !after.has(a));
    if (added.length || removed.length) this.backendSet.set(source, specs);
    this.emit('resolved', { name: st.id, addresses: [...after], added, removed });
  }
}

/** Logs DNS discovery events: changes at info, failures at warn (error when the name itself is the fallback). */
export function subscribeDnsLogger(log: Logger, dns: DnsDiscovery): () => void {
  function onDnsResolvedLog(ev: DnsResolvedEvent): void {
    if (ev.added.length === 0 && ev.removed.length === 0) return;
    log.info(
      { event: 'dns_resolved', name: ev.name, addresses: ev.addresses, added: ev.added, removed: ev.removed },
      `${ev.name} resolved to ${ev.addresses.join(', ')}`,
    );
  }
  function onDnsErrorLog(ev: DnsErrorEvent): void {
    if (ev.fallback) {
      log.error(
        { event: 'dns_failure', name: ev.name, err: ev.error.message, fallback: true },
        `cannot resolve ${ev.name} (${ev.error.message}): using the name itself as the backend, resolved per connection, until a refresh succeeds`,
      );
    } else {
      log.warn(
        { event: 'dns_failure', name: ev.name, err: ev.error.message, kept: ev.kept },
        `cannot resolve ${ev.name} (${ev.error.message}): keeping the last known ${ev.kept} backends`,
      );
    }
  }
  function onDnsStaleLog(ev: DnsStaleEvent): void {
    const what = ev.fallback ? 'using the name itself as the backend' : `keeping the last known ${ev.kept} backends`;
    log[ev.fallback ? 'error' : 'warn'](
      { event: 'dns_empty', name: ev.name, kept: ev.kept, fallback: ev.fallback },
      `${ev.name} resolved to no address: ${what}`,
    );
  }
  dns.on('resolved', onDnsResolvedLog);
  dns.on('error', onDnsErrorLog);
  dns.on('stale', onDnsStaleLog);
  return function unsubscribeDnsLogger() {
    dns.off('resolved', onDnsResolvedLog);
    dns.off('error', onDnsErrorLog);
    dns.off('stale', onDnsStaleLog);
  };
}
