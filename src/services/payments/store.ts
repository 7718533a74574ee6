import type { NatsConnection } from "@nats-io/transport-node";
import { VersionCache, openBucket, type KV, type Unchanged } from "../../lib/kv.js";
import type { Payment } from "./payment.js";

/** Name of the KV bucket holding one {@link Payment} per order id. */
export const PAYMENTS_BUCKET = "payments";

/**
 * The payments of every order, in the `payments` KV bucket (key = order id). Writes are compare-and-set,
 * so two replicas (or a redelivery racing a retry) never both win a transition.
 */
export class PaymentStore {
  readonly #kv: KV;
  /**
   * What this process last read or wrote per order: the next transition starts from it instead of reading
   * the key again (the compare-and-set still decides), which saves a KV round trip per step.
   */
  readonly #versions = new VersionCache<Payment>(20_000);

  constructor(kv: KV) {
    this.#kv = kv;
  }

  /** Opens (creating when absent) the bucket. */
  static async open(nc: NatsConnection, replicas = 1): Promise<PaymentStore> {
    const kv = await openBucket(nc, PAYMENTS_BUCKET, {
      replicas,
      description: "Payment state per order (payments service)",
    });
    return new PaymentStore(kv);
  }

  /**
   * The stored payment. With `probablyAbsent` (a first delivery of an order's first payment event) nothing is
   * read: the value this process remembers, or else absent is assumed, the next update tries a create, and
   * if a payment does exist the create fails and the update reads it and decides on it.
   */
  async get(orderId: string, opts: { probablyAbsent?: boolean } = {}): Promise<Payment | null> {
    if (opts.probablyAbsent) {
      const known = this.#versions.get(orderId);
      if (known) return known.value;
      this.#versions.set(orderId, { value: null, revision: 0 });
      return null;
    }
    return (await this.#versions.read(this.#kv, orderId)).value;
  }

  /**
   * Applies a pure transition with compare-and-set.
   * @returns the payment now stored (the current one when the transition did not apply) and whether it
   * was this call that changed it.
   */
  async update(
    orderId: string,
    transition: (cur: Payment | null) => Payment | typeof Unchanged,
  ): Promise<{ payment: Payment | null; changed: boolean }> {
    const r = await this.#versions.update(this.#kv, orderId, transition);
    return { payment: r.value, changed: r.changed };
  }
}
