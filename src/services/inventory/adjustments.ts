/**
 * The outbox of the operators' stock adjustments: an adjustment's StockAdjusted is written into the stock record in
 * the same compare-and-set as the stock it moves (the entry's `unpublished`), so the stock never changes without its
 * event being owed. The route publishes it at once and then drops the kept copy; what a crash, a lost connection or
 * a failed publish leaves kept is published by {@link AdjustmentOutbox.sweep} — when the service starts, and after a
 * failure, again with backoff until nothing is left.
 *
 * Exactly once on the stream: the event's id is deterministic (`<sku>:StockAdjusted:<adjustmentId>`), so a publish
 * repeated within the server's duplicate window is dropped, and before publishing a kept event the outbox reads the
 * SKU's StockAdjusted subject after the stream position recorded when the adjustment was applied (`afterSeq`): a
 * copy already there (published, then the process died before dropping the kept one) is not published again.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { Streams } from "../../lib/events/catalog.js";
import { decodeEvent } from "../../lib/events/codec.js";
import { makeEvent, subjectOf, type Envelope } from "../../lib/events/envelope.js";
import { backoffDelay, type BackoffOptions } from "../../lib/messaging/backoff.js";
import { directGet } from "../../lib/messaging/direct.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { unpublishedAdjustments, type AdjustmentEntry, type UnpublishedAdjustment } from "./inventory.js";
import type { InventoryStore } from "./store.js";

/** What the outbox needs besides the store. */
export interface AdjustmentOutboxDeps {
  publisher: Publisher;
  jsm: JetStreamManager;
  logger: Logger;
  /** The publishing service (`source` of the events). */
  source: string;
  /** Delays between sweeps after a failure (default 1 s doubling to 60 s). */
  backoff?: BackoffOptions;
}

/** An adjustment whose event is kept in its stock record. */
export type PendingAdjustment = AdjustmentEntry & { unpublished: UnpublishedAdjustment };

/** The StockAdjusted of an adjustment of `sku` (the same id, data and time however often it is made). */
export function adjustmentEvent(
  sku: string,
  a: PendingAdjustment,
  source: string,
): Envelope<"StockAdjusted"> {
  const { reason, note, operator, at } = a.unpublished;
  return makeEvent(
    "StockAdjusted",
    {
      sku,
      adjustmentId: a.id,
      quantity: a.quantity,
      reason,
      ...(note !== undefined ? { note } : {}),
      operator,
    },
    { aggregateId: sku, source, idSuffix: a.id, now: new Date(at) },
  );
}

export class AdjustmentOutbox {
  readonly #store: InventoryStore;
  readonly #d: AdjustmentOutboxDeps;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<number> | undefined;
  #stopped = false;

  constructor(store: InventoryStore, deps: AdjustmentOutboxDeps) {
    this.#store = store;
    this.#d = deps;
  }

  /** INVENTORY's last sequence: the event of an adjustment applied after this read, if published, is after it. */
  async streamPosition(): Promise<number> {
    return (await this.#d.jsm.streams.info(Streams.INVENTORY)).state.last_seq;
  }

  /**
   * Publishes the adjustment's StockAdjusted unless it is on the stream already, then drops the kept copy. Throws
   * (the copy stays kept) when the stream or the state is not reachable.
   */
  async publish(sku: string, a: PendingAdjustment): Promise<void> {
    const event = adjustmentEvent(sku, a, this.#d.source);
    if (!(await this.#onStream(event, a.unpublished.afterSeq))) await this.#d.publisher.publish(event);
    await this.#store.markAdjustmentPublished(sku, a.id);
  }

  /** Publishes every kept adjustment event of every SKU, oldest first per SKU; resolves with how many. */
  sweep(): Promise<number> {
    // One sweep at a time: a second caller shares the running one.
    this.#running ??= this.#sweep().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async #sweep(): Promise<number> {
    let published = 0;
    for (const sku of await this.#store.stockSkus()) {
      const stock = await this.#store.getStock(sku);
      for (const a of stock ? unpublishedAdjustments(stock) : []) {
        await this.publish(sku, a);
        published++;
      }
    }
    if (published > 0) this.#d.logger.info({ published }, "kept stock adjustment events published");
    return published;
  }

  /**
   * Sweeps in the background now, and after a failed sweep again with backoff, until one succeeds (or {@link stop}).
   * Called when the service starts and after a publish the route could not make.
   */
  schedule(delayMs = 0): void {
    if (this.#stopped || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.sweep().then(
        () => {
          this.#failures = 0;
        },
        (err: unknown) => {
          this.#failures++;
          const next = backoffDelay(
            this.#failures,
            this.#d.backoff ?? { initialMs: 1000, maxMs: 60_000, multiplier: 2, jitter: 0.2 },
          );
          this.#d.logger.warn(
            { err, failures: this.#failures, retry_in_ms: next },
            "kept stock adjustment events not published yet: retrying",
          );
          this.schedule(next);
        },
      );
    }, delayMs);
    this.#timer.unref();
  }

  /** Stops scheduling sweeps (a running one finishes); waits for it. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running?.catch(() => undefined);
  }

  /** Is `event` on its subject after `afterSeq`? (Direct gets along the SKU's StockAdjusted subject: a few.) */
  async #onStream(event: Envelope<"StockAdjusted">, afterSeq: number): Promise<boolean> {
    const subject = subjectOf(event);
    for (let seq = afterSeq; ;) {
      const m = await directGet(this.#d.jsm, Streams.INVENTORY, { seq: seq + 1, next_by_subj: subject });
      if (!m) return false;
      seq = m.seq;
      try {
        if (decodeEvent(m.data).id === event.id) return true;
      } catch {
        /* not an event (dead-lettered by its readers): not ours */
      }
    }
  }
}
