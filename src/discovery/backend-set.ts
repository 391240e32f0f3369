/**
 * Backends come from several sources at once (static seeds, DNS expansion, EndpointSlice discovery). Each
 * source owns its own list; the pool holds their union, deduplicated by address. A source updating its list
 * never disturbs backends another source still names, nor connections to unchanged backends.
 */
import { formatAddress, type Address } from '../config/values.js';
import type { BackendSpec } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';
import { canonicalAddress } from './address-policy.js';

/** Tells apilb's own listeners from backends (an AddressPolicy). */
export interface OwnListeners {
  isOwn(a: Address): boolean;
}

/** The union of named backend sources, applied to a pool. */
export class BackendSet {
  private readonly pool: Pool;
  private readonly sources = new Map<string, readonly BackendSpec[]>();
  private own: OwnListeners | undefined;
  /** `HOST:PORT` of entries left out because they are apilb's own listeners (connecting would loop). */
  refused: string[] = [];

  constructor(pool: Pool) {
    this.pool = pool;
  }

  /** Replaces the list of source `name` (e.g. `static`, `dns:api.example:6443`, `endpointslices`) and reconciles. */
  set(name: string, specs: readonly BackendSpec[]): { added: string[]; removed: string[] } {
    this.sources.set(name, specs);
    return this.apply();
  }

  /**
   * From now on, entries naming apilb's own listeners (in any spelling) are left out of the union, whatever
   * their source: static seeds, DNS answers, discovery. Reconciles at once.
   */
  guard(own: OwnListeners): { added: string[]; removed: string[] } {
    this.own = own;
    return this.apply();
  }

  /** Drops source `name` entirely and reconciles. */
  delete(name: string): { added: string[]; removed: string[] } {
    this.sources.delete(name);
    return this.apply();
  }

  /** The current list of source `name`. */
  get(name: string): readonly BackendSpec[] | undefined {
    return this.sources.get(name);
  }

  /** Every source's name. */
  names(): string[] {
    return [...this.sources.keys()];
  }

  /**
   * The union in canonical spelling (`[::ffff:10.0.0.1]:6443` and `10.0.0.1:6443` are one backend), first source
   * to name an address wins (its serverName and source label are kept), apilb's own listeners left out.
   */
  union(): BackendSpec[] {
    const byId = new Map<string, BackendSpec>();
    const refused = new Set<string>();
    for (const list of this.sources.values()) {
      for (const spec of list) {
        const address = canonicalAddress(spec.address);
        const id = formatAddress(address);
        if (this.own?.isOwn(address)) refused.add(id);
        else if (!byId.has(id)) byId.set(id, address === spec.address ? spec : { ...spec, address });
      }
    }
    this.refused = [...refused];
    return [...byId.values()];
  }

  private apply(): { added: string[]; removed: string[] } {
    const r = this.pool.reconcile(this.union());
    return { added: r.added.map((b) => b.id), removed: r.removed.map((b) => b.id) };
  }
}
