import type { KV } from "../../lib/kv.js";
import type { Logger } from "../../lib/telemetry/logger.js";

/** A catalog entry as the inventory service publishes it in the `catalog` KV bucket. */
export interface CatalogEntry {
  sku: string;
  name: string;
  price: number;
  currency: string;
}

/**
 * A read-only, in-memory view of the catalog kept current by a KV watch. Prices on orders come from
 * here, never from the client. The catalog is reference data owned by inventory; reading its KV
 * bucket is the one place two services share storage, and it is read-only (docs/architecture.md).
 */
export class CatalogView {
  readonly #entries = new Map<string, CatalogEntry>();
  #stop: (() => void) | undefined;

  get size(): number {
    return this.#entries.size;
  }

  get(sku: string): CatalogEntry | undefined {
    return this.#entries.get(sku);
  }

  /** Loads every entry, then follows updates until {@link close}. */
  async start(kv: KV, logger: Logger): Promise<void> {
    const watch = await kv.watch();
    this.#stop = () => watch.stop();
    let initialDone: () => void = () => undefined;
    const initial = new Promise<void>((r) => (initialDone = r));
    void (async () => {
      for await (const e of watch) {
        if (e.operation === "PUT") {
          try {
            const v = e.json<CatalogEntry>();
            this.#entries.set(e.key, v);
          } catch (err) {
            logger.error({ err, sku: e.key }, "unreadable catalog entry ignored");
          }
        } else {
          this.#entries.delete(e.key);
        }
        if (e.delta === 0) initialDone();
      }
    })().catch((err: unknown) => logger.error({ err }, "catalog watch ended"));
    // An empty bucket sends no entries: don't wait for a delta that never comes.
    const status = await kv.status();
    if (status.values === 0) initialDone();
    await initial;
  }

  close(): void {
    this.#stop?.();
  }
}
