/**
 * Handlers of the `inventory-orders` consumer: OrderPlaced reserves, OrderConfirmed commits, OrderCancelled
 * releases. Business logic only; the consumer runner acks, retries and dead-letters.
 *
 * Idempotence and crash safety: each handler first reads or decides the order's reservation record (a
 * compare-and-set), then applies idempotent stock moves keyed by the order id (a hold exists or it does
 * not), then publishes its outcome with a deterministic event id. A redelivery after a crash at any point
 * finishes the same work; a duplicate changes nothing. Handlers of one order are serialised in this
 * process; across replicas the record's compare-and-set decides one outcome.
 *
 * Order of steps, chosen so that no stray hold survives: a rejection and a release are recorded before
 * their holds are given back, and a commit after its holds became sales. So in the states `rejected`,
 * `released` and `committed` no hold of the order is legitimate, and whoever sees one gives it back.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { NonRetryableError, RetryableError } from "../../lib/errors.js";
import { Streams, type EventData } from "../../lib/events/catalog.js";
import { makeEvent, subjectOf, type Envelope } from "../../lib/events/envelope.js";
import { KeyedQueue } from "../../lib/keyed-queue.js";
import type { HandlerContext, HandlerMap } from "../../lib/messaging/consumer.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import {
  MAX_LINE_QUANTITY,
  beginReserve,
  commitHold,
  decideCommit,
  decideRelease,
  decideReserve,
  giveBack,
  hold,
  holdsForbidden,
  mergeLines,
  orderInconsistency,
  type RejectReason,
  type ReserveOutcome,
  type ReservationRecord,
  type StockLine,
} from "./inventory.js";
import type { InventoryStore } from "./store.js";

/** What the handlers need. */
export interface InventoryDeps {
  store: InventoryStore;
  publisher: Publisher;
  jsm: JetStreamManager;
  /** The publishing service's name (`source` of the events). */
  source: string;
}

/** The handlers of the `inventory-orders` consumer. */
export function createHandlers(deps: InventoryDeps): HandlerMap {
  const inventory = new InventoryHandlers(deps);
  return {
    OrderPlaced: (event, ctx) => inventory.reserve(event, ctx),
    OrderConfirmed: (event, ctx) => inventory.commit(event, ctx),
    OrderCancelled: (event, ctx) => inventory.release(event, ctx),
  };
}

type OutcomeType = "StockReserved" | "StockRejected" | "StockCommitted" | "StockReleased";
type Cause = Envelope<"OrderPlaced" | "OrderConfirmed" | "OrderCancelled">;

/** The reserve/commit/release logic; exported for tests. */
export class InventoryHandlers {
  readonly #d: InventoryDeps;
  readonly #orders = new KeyedQueue();

  constructor(deps: InventoryDeps) {
    this.#d = deps;
  }

  /** OrderPlaced: reserve every line, all or nothing → StockReserved or StockRejected. */
  reserve(event: Envelope<"OrderPlaced">, ctx: HandlerContext): Promise<void> {
    return this.#orders.run(event.data.orderId, () => this.#reserve(event, ctx));
  }

  /** OrderConfirmed: turn the reservation into a sale → StockCommitted. */
  commit(event: Envelope<"OrderConfirmed">, ctx: HandlerContext): Promise<void> {
    return this.#orders.run(event.data.orderId, () => this.#commit(event, ctx));
  }

  /** OrderCancelled: give the reservation back (or leave a tombstone) → StockReleased. */
  release(event: Envelope<"OrderCancelled">, ctx: HandlerContext): Promise<void> {
    return this.#orders.run(event.data.orderId, () => this.#release(event, ctx));
  }

  async #reserve(event: Envelope<"OrderPlaced">, ctx: HandlerContext): Promise<void> {
    const { store } = this.#d;
    const orderId = event.data.orderId;
    const { value: record } = await store.updateReservation(orderId, (r) =>
      beginReserve(r, mergeLines(event.data.items)),
    );
    if (!record) throw new RetryableError("RESERVATION_MISSING", `reservation ${orderId} vanished`);
    if (record.status !== "reserving") {
      ctx.logger.debug({ status: record.status }, "reservation already decided");
      await this.#afterReserveDecided(event, record, true);
      return;
    }
    // Hold line by line; after the first line that fails, only look at the rest (to name every SKU).
    const failed: { sku: string; why: "insufficient" | "unknown" }[] = [];
    const inconsistent = orderInconsistency(event.data);
    for (const line of inconsistent ? [] : record.items) {
      if (failed.length > 0 || line.quantity > MAX_LINE_QUANTITY) {
        const stock = await store.getStock(line.sku);
        if (!stock) failed.push({ sku: line.sku, why: "unknown" });
        else if (line.quantity > MAX_LINE_QUANTITY || stock.available < line.quantity)
          failed.push({ sku: line.sku, why: "insufficient" });
        continue;
      }
      const result = await store.moveStock(line.sku, hold(orderId, line.quantity));
      if (result === "unknown" || result === "insufficient")
        failed.push({ sku: line.sku, why: result === "unknown" ? "unknown" : "insufficient" });
      ctx.working();
    }
    const reason: RejectReason = failed.some((f) => f.why === "unknown") ? "unknown_sku" : "out_of_stock";
    const outcome: ReserveOutcome = inconsistent
      ? { ok: false, reason: "invalid_order", skus: [] }
      : failed.length === 0
        ? { ok: true }
        : { ok: false, reason, skus: failed.map((f) => f.sku) };
    if (inconsistent) ctx.logger.warn({ problem: inconsistent }, "inconsistent order rejected");
    const { value: decided } = await store.updateReservation(orderId, (r) => decideReserve(r, outcome));
    if (!decided) throw new RetryableError("RESERVATION_MISSING", `reservation ${orderId} vanished`);
    // The happy path at debug: one info line per event costs more CPU than the event under load.
    ctx.logger[decided.status === "reserved" ? "debug" : "info"](
      { status: decided.status, ...(decided.reason ? { reason: decided.reason, skus: decided.skus } : {}) },
      "reservation decided",
    );
    await this.#afterReserveDecided(event, decided, false);
  }

  /**
   * Finishes a reservation whose record is no longer `reserving`: gives back holds the order may not have
   * (a crash between a decision and its stock moves, or a concurrent duplicate that held after the
   * decision), then publishes the outcome the record implies (`republish`: only if not on the stream yet).
   */
  async #afterReserveDecided(
    event: Envelope<"OrderPlaced">,
    record: ReservationRecord,
    republish: boolean,
  ): Promise<void> {
    const orderId = event.data.orderId;
    if (holdsForbidden(record.status)) await this.#giveBackAll(orderId, record.items);
    switch (record.status) {
      case "reserved": {
        const { customerId, total, currency } = event.data;
        await this.#publish(
          "StockReserved",
          { orderId, customerId, items: record.items, total, currency },
          event,
          republish,
        );
        return;
      }
      case "rejected":
        await this.#publish(
          "StockRejected",
          { orderId, reason: record.reason ?? "out_of_stock", skus: record.skus ?? [] },
          event,
          republish,
        );
        return;
      // Cancelled before (tombstone) or after it was reserved, or already sold: the saga has moved on and
      // the outcome, if any, was published then. Nothing to do.
      case "released":
      case "committed":
      case "reserving":
        return;
    }
  }

  async #commit(event: Envelope<"OrderConfirmed">, ctx: HandlerContext): Promise<void> {
    const { store } = this.#d;
    const orderId = event.data.orderId;
    const record = await store.getReservation(orderId);
    if (record?.status === "reserving")
      throw new RetryableError("RESERVATION_PENDING", `order ${orderId} is still being reserved`);
    if (record?.status === "committed") {
      await this.#giveBackAll(orderId, record.items);
      await this.#publish("StockCommitted", { orderId, items: record.items }, event, true);
      return;
    }
    if (record?.status !== "reserved") throw this.#breach("confirmed", orderId, record);
    // Convert every hold into a sale first, then record the decision: once the record says `committed`, no
    // hold of this order is legitimate, so any found later is given back.
    await Promise.all(record.items.map((l) => store.moveStock(l.sku, commitHold(orderId))));
    const { value: decided } = await store.updateReservation(orderId, decideCommit);
    if (decided?.status !== "committed") throw this.#breach("confirmed", orderId, decided);
    // No give-back here: every hold of the order just became a sale under this order's lock, and a hold placed
    // later by a duplicate reservation elsewhere is given back by that reservation itself (it finds the record
    // committed). A redo (the record already committed, above) does give back.
    ctx.logger.debug({ items: decided.items }, "reservation committed");
    await this.#publish("StockCommitted", { orderId, items: decided.items }, event, false);
  }

  async #release(event: Envelope<"OrderCancelled">, ctx: HandlerContext): Promise<void> {
    const { store } = this.#d;
    const orderId = event.data.orderId;
    // Record the decision first (a tombstone when there is no reservation), then give the stock back.
    const { value: record, changed } = await store.updateReservation(orderId, decideRelease);
    if (!record) throw new RetryableError("RESERVATION_MISSING", `reservation ${orderId} vanished`);
    switch (record.status) {
      case "reserving":
        throw new RetryableError("RESERVATION_PENDING", `order ${orderId} is still being reserved`);
      case "committed":
        throw this.#breach("cancelled", orderId, record);
      case "reserved":
        throw new RetryableError("RESERVATION_CHANGED", `reservation ${orderId} changed concurrently`);
      case "rejected":
      case "released": {
        await this.#giveBackAll(orderId, record.items);
        const items = record.status === "released" ? record.items : [];
        if (changed) ctx.logger.info({ items, tombstone: record.items.length === 0 }, "reservation released");
        await this.#publish("StockReleased", { orderId, items }, event, !changed);
        return;
      }
    }
  }

  /** Gives back every hold `orderId` still has on `items` (idempotent). */
  async #giveBackAll(orderId: string, items: readonly StockLine[]): Promise<void> {
    await Promise.all(items.map((l) => this.#d.store.moveStock(l.sku, giveBack(orderId))));
  }

  #breach(
    what: "confirmed" | "cancelled",
    orderId: string,
    record: ReservationRecord | null,
  ): NonRetryableError {
    const state = record ? `is ${record.status}` : "does not exist";
    return new NonRetryableError(
      "INVARIANT_BREACH",
      `order ${orderId} was ${what} but its reservation ${state}`,
      { status: 409 },
    );
  }

  /**
   * Publishes an outcome (id `<orderId>:<Type>`, de-duplicated by the server within its window). On a redo
   * (`once`), it first looks whether the stream already holds the event, so a redelivery long after the
   * duplicate window does not append it twice.
   */
  async #publish<T extends OutcomeType>(
    type: T,
    data: EventData<T>,
    cause: Cause,
    once: boolean,
  ): Promise<void> {
    const event = makeEvent(type, data, { aggregateId: data.orderId, source: this.#d.source, cause });
    if (once) {
      const stored = await this.#d.jsm.streams.getMessage(Streams.INVENTORY, {
        last_by_subj: subjectOf(event),
      });
      if (stored) return;
    }
    await this.#d.publisher.publish(event);
  }
}
