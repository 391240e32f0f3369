/**
 * Backends come from several sources at once (static seeds, DNS expansion, EndpointSlice discovery). Each
 * source owns its own list; the pool holds their union, deduplicated by address. A source updating its list
 * never disturbs backends another source still names, nor connections to unchanged backends.
 */
import { formatAddress } from '../config/values.js';
import type { BackendSpec } from '../pool/backend.js';
import type { Pool } from '../pool/pool.js';

/** The union of named backend sources, applied to a pool. */
export class BackendSet {
  private readonly pool: Pool;
  private readonly sources = new Map<string, readonly BackendSpec[]>();

  constructor(pool: Pool) {
    this.pool = pool;
  }

  /** Replaces the list of source `name` (e.g. `static`, `dns:api.example:6443`, `endpointslices`) and reconciles. */
  set(name: string, specs: readonly BackendSpec[]): { added: string[]; removed: string[] } {
    this.sources.set(name, specs);
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

  /** The union, first source to name an address wins (its serverName and source label are kept). */
  union(): BackendSpec[] {
    const byId = new Map<string, BackendSpec>();
    for (const list of this.sources.values()) {
      for (const spec of list) {
        const id = formatAddress(spec.address);
        if (!byId.has(id)) byId.set(id, spec);
      }
    }
    return [...byId.values()];
  }

  private apply(): { added: string[]; removed: string[] } {
    const r = this.pool.reconcile(this.union());
    return { added: r.added.map((b) => b.id), removed: r.removed.map((b) => b.id) };
  }
}
