import { createHash } from "node:crypto";
import { isRevisionConflict, type KV } from "../kv.js";
import { RetryableError } from "../errors.js";
import { newDataKey, type DataKey } from "./seal.js";

/** The KV bucket of customers' data keys (owned by orders; notifications reads it). */
export const CUSTOMER_KEYS_BUCKET = "customer-keys";
/** The bucket's description, as its owner and provisioning open it. */
export const CUSTOMER_KEYS_DESCRIPTION =
  "Customers' personal-data keys (crypto-shredding): sha256(customerId) → key";

/** A data key as stored in the bucket. */
interface StoredKey {
  keyId: string;
  /** base64 */
  key: string;
  createdAt: string;
}

/** The bucket key of a customer: customer ids are free text, bucket keys are not (and the id stays off subjects). */
export function customerKeyName(customerId: string): string {
  return createHash("sha256").update(customerId, "utf8").digest("hex");
}

/**
 * Customers' data keys in a JetStream KV bucket with one revision of history: at most one key per customer.
 * Erasing a customer purges the key (a rollup that removes the stored message from the bucket's stream, leaving a
 * data-free marker), so whatever was sealed under it cannot be opened again; the next key made for the customer is a
 * new one with a new id. Nothing is cached: every read asks the bucket, so an erasure takes effect at once in every
 * replica and service.
 */
export class CustomerKeys {
  constructor(readonly kv: KV) {}

  /** The customer's current key, or null when there is none (never made, or erased). */
  async current(customerId: string): Promise<DataKey | null> {
    const e = await this.kv.get(customerKeyName(customerId));
    if (!e || e.operation !== "PUT") return null;
    const stored = e.json<StoredKey>();
    return { keyId: stored.keyId, key: Buffer.from(stored.key, "base64") };
  }

  /**
   * The customer's current key, made when there is none. Concurrent callers (two replicas, two requests) agree: the
   * key is created with a compare-and-set, and the loser reads the winner's.
   */
  async currentOrCreate(customerId: string): Promise<DataKey> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const found = await this.current(customerId);
      if (found) return found;
      const made = newDataKey();
      const stored: StoredKey = {
        keyId: made.keyId,
        key: made.key.toString("base64"),
        createdAt: new Date().toISOString(),
      };
      try {
        await this.kv.create(customerKeyName(customerId), JSON.stringify(stored));
        return made;
      } catch (err) {
        if (!isRevisionConflict(err)) throw err;
      }
    }
    throw new RetryableError("PII_KEY_CONFLICT", "could not settle a customer's data key: retry");
  }

  /**
   * Destroys the customer's key: everything sealed under it becomes unreadable everywhere (streams, audit log, dead
   * letters). Idempotent.
   * @returns whether there was a key to destroy.
   */
  async erase(customerId: string): Promise<boolean> {
    const name = customerKeyName(customerId);
    const e = await this.kv.get(name);
    const existed = e?.operation === "PUT";
    // A purge, not a delete: the rollup removes the key's message from the stream, not only hides it.
    if (e) await this.kv.purge(name);
    return existed;
  }
}
