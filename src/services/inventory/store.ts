/**
 * Inventory state in JetStream KV: the `catalog`, `stock` and `reservations` buckets, every write a
 * compare-and-set on the key's revision.
 *
 * Writes to one stock key from this process are coalesced: while one compare-and-set of a SKU is in flight,
 * further moves of that SKU queue and are applied together in the next one (each move still sees the state
 * the previous one left). A hot SKU then costs one KV round trip per batch instead of a storm of lost races
 * between this process's own handlers; races with other replicas are settled by the compare-and-set.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import {
  Unchanged,
  VersionCache,
  casUpdate,
  openBucket,
  readJson,
  type KV,
  type Versioned,
} from "../../lib/kv.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { entryOf, type CatalogEntry, type CatalogSeedItem } from "./catalog.js";
import {
  adjust,
  adjustmentPublished,
  newStock,
  type AdjustResult,
  type UnpublishedAdjustment,
  type ReservationRecord,
  type StockMove,
  type StockRecord,
} from "./inventory.js";

export const Buckets = {
  catalog: "catalog",
  stock: "stock",
  reservations: "reservations",
} as const;

/** Lost compare-and-set races tolerated per write before it fails (retryably). */
const CAS_RETRIES = 200;
/** Most moves applied in one stock write. */
const MAX_BATCH = 256;

interface QueuedMove {
  apply: StockMove<unknown>;
  resolve: (result: unknown) => void;
  reject: (err: unknown) => void;
}

/** Per-key write coalescing over {@link casUpdate}. */
class StockWriter {
  readonly #kv: KV;
  readonly #queues = new Map<string, QueuedMove[]>();
  /**
   * The record of each SKU as this process last wrote (or read) it, and its revision: the next batch applies its
   * moves to it and writes at that revision without reading first (one round trip and one JSON parse saved per
   * batch); if another writer got there first, the compare-and-set fails and the key is read. The moves change
   * the record in place, so an entry is replaced by the result of every write and dropped when one fails.
   */
  readonly #known = new Map<string, Versioned<StockRecord>>();

  constructor(kv: KV) {
    this.#kv = kv;
  }

  /** Applies `move` to the stock of `sku` in a compare-and-set write; resolves with its result once stored. */
  apply<R>(sku: string, move: StockMove<R>): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      const q = this.#queues.get(sku);
      const entry: QueuedMove = { apply: move, resolve: resolve as (r: unknown) => void, reject };
      if (q) {
        q.push(entry);
        return;
      }
      this.#queues.set(sku, [entry]);
      void this.#drain(sku);
    });
  }

  async #drain(sku: string): Promise<void> {
    for (;;) {
      const queue = this.#queues.get(sku);
      if (!queue || queue.length === 0) {
        this.#queues.delete(sku);
        return;
      }
      const batch = queue.splice(0, MAX_BATCH);
      let results: unknown[] = [];
      try {
        const written = await casUpdate<StockRecord>(
          this.#kv,
          sku,
          // `current` is freshly read (parsed) on every attempt, so the moves may change it in place.
          (current) => {
            results = [];
            let changed = false;
            for (const m of batch) {
              const r = m.apply(current);
              results.push(r.result);
              changed ||= r.changed;
            }
            return changed && current !== null ? current : Unchanged;
          },
          { maxRetries: CAS_RETRIES, known: this.#known.get(sku) },
        );
        this.#known.set(sku, { value: written.value, revision: written.revision });
        batch.forEach((m, i) => m.resolve(results[i]));
      } catch (err) {
        this.#known.delete(sku);
        for (const m of batch) m.reject(err);
      }
    }
  }
}

/**
 * A catalog entry as stored: the entry, plus the price it had before its last change (absent until an operator
 * changes it), so that a PriceChanged cut off by a crash can be published again with the same figures.
 */
export type StoredCatalogEntry = CatalogEntry & { previousPrice?: number };

/** A catalog entry with its stock figures, as the HTTP API shows it (`adjusted`: the operators' adjustments). */
export type StockView = CatalogEntry &
  Pick<StockRecord, "initial" | "available" | "reserved" | "committed"> & { adjusted: number };

/** What adding a product came to. */
export type AddProductResult =
  | { kind: "created" | "exists"; entry: CatalogEntry; stock: number }
  /** The SKU exists with another name, price or currency. */
  | { kind: "conflict"; entry: CatalogEntry };

/** What a price change came to: the entry now stored, its revision, and whether this call wrote it. */
export type SetPriceResult =
  { kind: "unknown" } | { kind: "set"; entry: StoredCatalogEntry; revision: number; changed: boolean };

/** The inventory's KV buckets and the operations on them. */
export class InventoryStore {
  readonly catalog: KV;
  readonly stock: KV;
  readonly reservations: KV;
  readonly #writer: StockWriter;
  /** Reservation records this process last read or wrote (see {@link VersionCache}). */
  readonly #reservations = new VersionCache<ReservationRecord>(20_000);

  private constructor(catalog: KV, stock: KV, reservations: KV) {
    this.catalog = catalog;
    this.stock = stock;
    this.reservations = reservations;
    this.#writer = new StockWriter(stock);
  }

  /** Opens (creating when absent) the three buckets with `replicas` replicas. Idempotent. */
  static async open(nc: NatsConnection, opts: { replicas: number }): Promise<InventoryStore> {
    const [catalog, stock, reservations] = await Promise.all([
      openBucket(nc, Buckets.catalog, {
        replicas: opts.replicas,
        description: "ShopStream catalog: sku → {sku, name, price, currency}",
      }),
      openBucket(nc, Buckets.stock, {
        replicas: opts.replicas,
        description: "ShopStream stock: sku → {initial, available, reserved, committed, holds}",
      }),
      openBucket(nc, Buckets.reservations, {
        replicas: opts.replicas,
        description: "ShopStream reservations: orderId → {status, items}",
      }),
    ]);
    return new InventoryStore(catalog, stock, reservations);
  }

  /**
   * Loads SKUs that are not stored yet: stock first, then the catalog entry (a SKU becomes orderable only once
   * its stock exists). Existing stock and entries are never overwritten, so a restart or a second replica
   * changes nothing; an entry that differs from the source is reported and kept.
   */
  async seed(items: readonly CatalogSeedItem[], logger: Logger): Promise<{ created: number; kept: number }> {
    let created = 0;
    const differing: string[] = [];
    await Promise.all(
      items.map(async (item) => {
        await casUpdate<StockRecord>(this.stock, item.sku, (cur) => cur ?? newStock(item.sku, item.stock));
        const entry = entryOf(item);
        const r = await casUpdate<CatalogEntry>(this.catalog, item.sku, (cur) => cur ?? entry);
        if (r.changed) created++;
        else if (JSON.stringify(r.value) !== JSON.stringify(entry)) differing.push(item.sku);
      }),
    );
    if (differing.length > 0)
      logger.warn(
        { skus: differing.sort() },
        "catalog entries differ from the catalog source; the stored entries are kept",
      );
    return { created, kept: items.length - created };
  }

  /** Applies a stock move of `sku` (compare-and-set, coalesced per SKU). */
  moveStock<R>(sku: string, move: StockMove<R>): Promise<R> {
    return this.#writer.apply(sku, move);
  }

  async getStock(sku: string): Promise<StockRecord | null> {
    return (await readJson<StockRecord>(this.stock, sku)).value;
  }

  async getEntry(sku: string): Promise<CatalogEntry | null> {
    const stored = (await readJson<StoredCatalogEntry>(this.catalog, sku)).value;
    return stored && entryOf({ ...stored, stock: 0 });
  }

  /**
   * Adds a product: its stock first, then its catalog entry (it becomes orderable only once both exist), each a
   * create that leaves an existing record alone. Adding the same product again is no change (`exists`); a SKU
   * already in the catalog with another name, price or currency is a `conflict`. `stock` in the result is the
   * stock record's `initial` (the first add's, when it is a repeat).
   */
  async addProduct(item: CatalogSeedItem): Promise<AddProductResult> {
    const entry = entryOf(item);
    const current = await this.getEntry(item.sku);
    if (current && JSON.stringify(current) !== JSON.stringify(entry))
      return { kind: "conflict", entry: current };
    const stock = await casUpdate<StockRecord>(this.stock, item.sku, (cur) =>
      cur === null ? newStock(item.sku, item.stock) : Unchanged,
    );
    const r = await casUpdate<StoredCatalogEntry>(this.catalog, item.sku, (cur) =>
      cur === null ? entry : Unchanged,
    );
    const stored = entryOf({ ...r.value!, stock: 0 });
    if (!r.changed && JSON.stringify(stored) !== JSON.stringify(entry))
      return { kind: "conflict", entry: stored };
    return { kind: r.changed ? "created" : "exists", entry: stored, stock: stock.value!.initial };
  }

  /**
   * Sets the unit price of `sku` (compare-and-set; the same price again writes nothing). Orders price new orders
   * from the entry (their KV watch); orders already placed keep the prices in their OrderPlaced.
   */
  async setPrice(sku: string, price: number): Promise<SetPriceResult> {
    const r = await casUpdate<StoredCatalogEntry>(this.catalog, sku, (cur) =>
      cur === null || cur.price === price ? Unchanged : { ...cur, price, previousPrice: cur.price },
    );
    if (r.value === null) return { kind: "unknown" };
    return { kind: "set", entry: r.value, revision: r.revision, changed: r.changed };
  }

  /**
   * Applies an operator's adjustment of `sku`'s stock, once per `id` (see {@link adjust}); with `unpublished`, its
   * StockAdjusted is kept in the same write until {@link markAdjustmentPublished}.
   */
  adjustStock(
    sku: string,
    id: string,
    quantity: number,
    unpublished?: UnpublishedAdjustment,
  ): Promise<AdjustResult> {
    return this.moveStock(sku, adjust(id, quantity, unpublished));
  }

  /** Drops adjustment `id`'s kept event: its StockAdjusted is on the stream. Resolves whether there was one. */
  markAdjustmentPublished(sku: string, id: string): Promise<boolean> {
    return this.moveStock(sku, adjustmentPublished(id));
  }

  /** Every SKU with a stock record. */
  async stockSkus(): Promise<string[]> {
    const skus: string[] = [];
    for await (const k of await this.stock.keys()) skus.push(k);
    return skus.sort();
  }

  /** The catalog entry of `sku` with its stock, or null when either is absent. */
  async view(sku: string): Promise<StockView | null> {
    const [entry, stock] = await Promise.all([this.getEntry(sku), this.getStock(sku)]);
    if (!entry || !stock) return null;
    return {
      ...entry,
      initial: stock.initial,
      available: stock.available,
      reserved: stock.reserved,
      committed: stock.committed,
      adjusted: stock.adjusted ?? 0,
    };
  }

  /** Every catalog entry with its stock, by SKU. */
  async list(): Promise<StockView[]> {
    const skus: string[] = [];
    for await (const k of await this.catalog.keys()) skus.push(k);
    skus.sort();
    const views = await Promise.all(skus.map((s) => this.view(s)));
    return views.filter((v): v is StockView => v !== null);
  }

  async getReservation(orderId: string): Promise<ReservationRecord | null> {
    return (await this.#reservations.read(this.reservations, orderId)).value;
  }

  /** Compare-and-set update of an order's reservation record; resolves with the record now stored. */
  async updateReservation(
    orderId: string,
    mutate: (r: ReservationRecord | null) => ReservationRecord | typeof Unchanged,
  ): Promise<Versioned<ReservationRecord> & { changed: boolean }> {
    // Unknown here usually means new (the first event of an order): try a create before reading.
    return this.#reservations.update(this.reservations, orderId, mutate, {
      ifUnknown: { value: null, revision: 0 },
    });
  }
}
