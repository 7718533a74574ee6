import { RecentMap } from "../../lib/recent-map.js";

/**
 * How many units of each SKU each customer ordered in the current window, on this replica (docs/security.md):
 * `take` admits an order's lines only when every one stays within the cap, and then counts them. Kept in memory
 * for at most `maxTracked` (customer, SKU) pairs, the least recently used forgotten first; a restart forgets all.
 * With N replicas behind a load balancer a customer can reach N × the cap: a shared counter (NATS KV) is the
 * next step if that matters.
 */
export class SkuQuota {
  readonly #used: RecentMap<string, { units: number; since: number }>;

  constructor(
    readonly cap: number,
    readonly windowMs: number,
    maxTracked = 200_000,
    private readonly now: () => number = Date.now,
  ) {
    this.#used = new RecentMap(maxTracked);
  }

  /**
   * Counts `lines` against the customer's quota, or returns the lines that would exceed it (counting nothing).
   * A cap of 0 admits everything.
   */
  take(
    customerId: string,
    lines: readonly { sku: string; quantity: number }[],
  ): { sku: string; index: number; left: number }[] {
    if (this.cap === 0) return [];
    const t = this.now();
    const current = (sku: string) => {
      const u = this.#used.get(JSON.stringify([customerId, sku]));
      return u && t - u.since < this.windowMs ? u : { units: 0, since: t };
    };
    const over = lines.flatMap((l, index) => {
      const left = this.cap - current(l.sku).units;
      return l.quantity > left ? [{ sku: l.sku, index, left: Math.max(0, left) }] : [];
    });
    if (over.length > 0) return over;
    for (const l of lines) {
      const u = current(l.sku);
      this.#used.set(JSON.stringify([customerId, l.sku]), { units: u.units + l.quantity, since: u.since });
    }
    return [];
  }
}
