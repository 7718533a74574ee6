import { createHash } from "node:crypto";
import { KvWatchInclude } from "@nats-io/kv";
import { isRevisionConflict, type KV } from "../kv.js";
import { RecentMap } from "../recent-map.js";
import type { Logger } from "../telemetry/logger.js";
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

/** Sealing keys a process remembers (see {@link CustomerKeys.sealingKey}). */
const SEALING_CACHE_SIZE = 50_000;

/**
 * Customers' data keys in a JetStream KV bucket with one revision of history: at most one key per customer.
 * Erasing a customer purges the key (a rollup that removes the stored message from the bucket's stream, leaving a
 * data-free marker), so whatever was sealed under it cannot be opened again; the next key made for the customer is a
 * new one with a new id. Opening (reveal) always asks the bucket, so an erasure takes effect at once for every reader.
 * Sealing may use a key remembered from an earlier order of the customer while a watch of the bucket follows it
 * ({@link watchForSealing}): an erasure drops the remembered key as soon as the watch delivers the purge.
 */
export class CustomerKeys {
  readonly #sealing = new RecentMap<string, DataKey>(SEALING_CACHE_SIZE);
  /** Erasures seen by the watch (or made here): a key read while one happened is not remembered. */
  #erasures = 0;
  #watching = false;
  #stopWatch: (() => void) | undefined;

  constructor(readonly kv: KV) {}

  /**
   * Follows the bucket's changes so that {@link sealingKey} may remember keys: a purge or delete forgets the
   * customer's key, and so does a new key. Remembering stops (and what is remembered is forgotten) if the watch
   * ends. Resolves once the watch is set up.
   */
  async watchForSealing(logger: Logger): Promise<void> {
    const watch = await this.kv.watch({ include: KvWatchInclude.UpdatesOnly });
    this.#stopWatch = () => watch.stop();
    this.#watching = true;
    void (async () => {
      try {
        for await (const e of watch) {
          if (e.operation !== "PUT") this.#erasures++;
          this.#sealing.delete(e.key);
        }
      } catch (err) {
        logger.warn({ err }, "customer-keys watch failed: sealing reads every key from the bucket");
      } finally {
        this.#watching = false;
        this.#sealing.clear();
      }
    })();
  }

  /** Stops the watch of {@link watchForSealing}. */
  stopWatching(): void {
    this.#stopWatch?.();
  }

  /**
   * The key to seal a customer's new personal data with: {@link currentOrCreate}, remembered per customer while the
   * bucket is watched, so a returning customer's order reads no key. After an erasure, a key remembered here may
   * still seal for as long as the watch takes to deliver the purge (milliseconds): what it seals is unreadable at once,
   * like everything else under the erased key — never readable after the erasure.
   */
  async sealingKey(customerId: string): Promise<DataKey> {
    const name = customerKeyName(customerId);
    if (this.#watching) {
      const remembered = this.#sealing.get(name);
      if (remembered) return remembered;
    }
    const erasures = this.#erasures;
    const key = await this.currentOrCreate(customerId);
    // Not remembered when an erasure was seen meanwhile: the read may predate it.
    if (this.#watching && erasures === this.#erasures) this.#sealing.set(name, key);
    return key;
  }

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
    this.#erasures++;
    this.#sealing.delete(name);
    const e = await this.kv.get(name);
    const existed = e?.operation === "PUT";
    // A purge, not a delete: the rollup removes the key's message from the stream, not only hides it.
    if (e) await this.kv.purge(name);
    return existed;
  }
}
