/**
 * Handlers of the `inventory-orders` consumer: OrderPlaced reserves, OrderConfirmed commits, OrderCancelled
 * releases. Business logic only; the consumer runner acks, retries and dead-letters.
 *
 * State: per SKU a stock record with a hold per order (`hold`/`giveBack`/`commitHold` are idempotent: a
 * hold of an order exists or it does not), per order a reservation record whose every write is a
 * compare-and-set. Outcomes are published with deterministic ids (`<orderId>:<Type>`). Handlers of one order
 * are serialised in this process; across replicas the record's compare-and-set decides one outcome.
 *
 * The rule that keeps holds from straying: in the states `rejected`, `released` and `committed` no hold of the
 * order is legitimate, and whoever sees one gives it back. A rejection and a release are recorded before their
 * holds are given back, and a commit after its holds became sales.
 *
 * Reserve (OrderPlaced), happy path: holds, then ONE record write — a create at revision 0 of the decided record
 * (`reserved`/`rejected`), then the outcome. Earlier versions first created a record `reserving` so that a
 * cancellation arriving mid-reservation knew which lines to give back; that write is gone. Instead:
 * - a cancellation that finds no record creates a tombstone `released` (items []) and gives back the lines of
 *   the order's OrderPlaced, read from ORDERS (only on that rare path, and again on every redelivery of it);
 * - a reserve whose create loses (a tombstone, or another copy's decision) reads the winner's record and gives
 *   back its own lines if that record forbids holds (`released`, `rejected`, `committed`); if it says
 *   `reserved`, the holds are the order's (keyed by order id, so both copies' holds are the same holds).
 * A redelivery (attempt > 1) reads the record first and, when decided, only finishes it (give back what the
 * decision forbids, republish the outcome if not on the stream yet); a first delivery skips that read.
 *
 * Crash points of the reserve and who finishes them:
 * 1. after some holds, before the decision: the OrderPlaced is redelivered and holds again (already held →
 *    no change), then decides. If it is never redelivered (dead-lettered after MAX_DELIVERIES), the order
 *    times out: its OrderCancelled finds no record, writes the tombstone and gives back the OrderPlaced's
 *    lines. If a cancellation came first (tombstone), the redelivery's create loses and it gives back.
 * 2. after the decision, before giving back a rejection's holds: the redelivery reads `rejected` and gives
 *    back (a cancellation, finding `rejected`, does too).
 * 3. after the decision, before publishing: the redelivery reads the record and publishes the outcome, unless
 *    the INVENTORY stream already has it.
 * Races: two copies of one OrderPlaced (two replicas) both hold (the second sees `already_held` for lines the
 * first holds, or holds lines the first could not) and both try the create; one wins. If the winner said
 * `reserved`, every line is held by the order (each line was held by one copy or the other, and nobody gives
 * back before losing or deciding a forbidding state); if it said `rejected`, both give back everything. A
 * tombstone created while a reserve holds: the reserve's create loses to it and gives back; the
 * cancellation's own give-back covers holds placed before it. A hold placed after the tombstone's give-back is
 * from a reserve whose create comes later and loses, so it gives that hold back itself.
 *
 * Commit (OrderConfirmed): holds → sales, then the record `reserved` → `committed` (a crash in between: the
 * redelivery commits the remaining holds — `commitHold` of a hold already committed is no change — and
 * records). Release (OrderCancelled): the record first (`released`, or a tombstone), then the give-back.
 * Both unchanged by this redesign; a cheaper commit (StockCommitted on the stream as the fact) is left open.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { NonRetryableError, RetryableError } from "../../lib/errors.js";
import { isRequestedCancel, Streams, type EventData } from "../../lib/events/catalog.js";
import { decodeEvent } from "../../lib/events/codec.js";
import { makeEvent, subjectOf, type Envelope } from "../../lib/events/envelope.js";
import { KeyedQueue } from "../../lib/keyed-queue.js";
import type { HandlerContext, HandlerMap } from "../../lib/messaging/consumer.js";
import { directGet } from "../../lib/messaging/direct.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import {
  MAX_LINE_QUANTITY,
  commitHold,
  decideCommit,
  decideRelease,
  decideReserveOnce,
  decideReturn,
  finishReturn,
  giveBack,
  hold,
  holdsForbidden,
  mergeLines,
  orderInconsistency,
  returnSale,
  type RejectReason,
  type ReserveOutcome,
  type ReservationRecord,
  type StockLine,
  unionLines,
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
    const items = mergeLines(event.data.items);
    // A redelivery may follow a decision (crash after it, or a lost ack): look first, so a decided order is not
    // held again. A first delivery has not been handled before; a copy that was (a duplicate, another replica)
    // is caught by the create below.
    if (ctx.attempt > 1) {
      const known = await store.getReservation(orderId);
      if (known && known.status !== "reserving") {
        ctx.logger.debug({ status: known.status }, "reservation already decided");
        await this.#afterReserveDecided(event, known, items, true);
        return;
      }
    }
    // Hold line by line (idempotent per order id); after the first line that fails, only look at the rest (to
    // name every SKU). Nothing is recorded before the holds: see the header comment for why no hold can stray.
    const failed: { sku: string; why: "insufficient" | "unknown" }[] = [];
    const inconsistent = orderInconsistency(event.data);
    for (const line of inconsistent ? [] : items) {
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
    // The decision: a create at revision 0. Whoever created the record first (another copy of this event, a
    // cancellation's tombstone) decided; the loser reads that decision and gives back holds it forbids.
    const { value: decided, changed } = await store.updateReservation(orderId, (r) =>
      decideReserveOnce(r, items, outcome),
    );
    if (!decided) throw new RetryableError("RESERVATION_MISSING", `reservation ${orderId} vanished`);
    if (!changed) ctx.logger.debug({ status: decided.status }, "reservation decided by another delivery");
    // The happy path at debug: one info line per event costs more CPU than the event under load.
    else
      ctx.logger[decided.status === "reserved" ? "debug" : "info"](
        { status: decided.status, ...(decided.reason ? { reason: decided.reason, skus: decided.skus } : {}) },
        "reservation decided",
      );
    await this.#afterReserveDecided(event, decided, items, !changed);
  }

  /**
   * Finishes a decided reservation: gives back holds the order may not have (a crash between a decision and
   * its stock moves, a duplicate or a reserve that lost the decision to a tombstone after holding), then
   * publishes the outcome the record implies (`republish`: only if not on the stream yet). `held` are the
   * lines this OrderPlaced holds (a tombstone's record has none, but the reserve that lost to it may hold them).
   */
  async #afterReserveDecided(
    event: Envelope<"OrderPlaced">,
    record: ReservationRecord,
    held: readonly StockLine[],
    republish: boolean,
  ): Promise<void> {
    const orderId = event.data.orderId;
    if (holdsForbidden(record.status)) await this.#giveBackAll(orderId, unionLines(record.items, held));
    switch (record.status) {
      case "reserved": {
        const { customerId, total, currency, timeoutAt } = event.data;
        // The reservation lapses at the order's deadline: orders cancels it then unless it was paid.
        await this.#publish(
          "StockReserved",
          { orderId, customerId, items: record.items, total, currency, expiresAt: timeoutAt },
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
      case "returning":
      case "returned":
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
    if (record?.status === "committed" || record?.status === "returning" || record?.status === "returned") {
      // Committed before (a redelivery), maybe returned since (cancelled after its confirmation): finish the commit.
      await this.#giveBackAll(orderId, record.items);
      await this.#publish("StockCommitted", { orderId, items: record.items }, event, true);
      return;
    }
    if (record?.status === "released") {
      // Released before this commit ran: the order was cancelled on request right after its confirmation, and that
      // cancellation was handled first (this OrderConfirmed was being retried). Nothing is sold; the release stands.
      ctx.logger.warn(
        "confirmed order already released (cancelled after its confirmation); nothing committed",
      );
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
      case "returning":
      case "returned":
        // Only a cancellation on request may follow a confirmation (within the window); any other is a forked order.
        if (!isRequestedCancel(event.data.reason)) throw this.#breach("cancelled", orderId, record);
        await this.#returnSold(event, ctx);
        return;
      case "reserved":
        throw new RetryableError("RESERVATION_CHANGED", `reservation ${orderId} changed concurrently`);
      case "rejected":
      case "released": {
        // A tombstone names no lines, but a reserve may hold some: one cut off after its holds, before its
        // decision, whose OrderPlaced may never come back (dead-lettered after its deliveries). Its lines are
        // read from the OrderPlaced on ORDERS (a direct get, only on this rare path).
        const tombstone = record.status === "released" && record.items.length === 0;
        await this.#giveBackAll(orderId, tombstone ? await this.#placedLines(orderId) : record.items);
        const items = record.status === "released" ? record.items : [];
        if (changed) ctx.logger.info({ items, tombstone: record.items.length === 0 }, "reservation released");
        await this.#publish("StockReleased", { orderId, items }, event, !changed);
        return;
      }
    }
  }

  /**
   * OrderCancelled of a CONFIRMED order (a cancellation on request within the window): its sold units go back to
   * available. The record first (`committed` → `returning`), then each SKU's {@link returnSale} (once per order and
   * SKU: the stock record remembers the return), then `returned`, then StockReleased with the lines returned. A
   * crash anywhere is finished by the redelivery: `returning` redoes the moves (no change where done).
   */
  async #returnSold(event: Envelope<"OrderCancelled">, ctx: HandlerContext): Promise<void> {
    const { store } = this.#d;
    const orderId = event.data.orderId;
    const { value: record, changed } = await store.updateReservation(orderId, decideReturn);
    if (record?.status === "returning") {
      await Promise.all(record.items.map((l) => store.moveStock(l.sku, returnSale(orderId, l.quantity))));
      const { value: done } = await store.updateReservation(orderId, finishReturn);
      if (done?.status !== "returned") throw this.#breach("cancelled", orderId, done);
      ctx.logger.info({ items: done.items }, "sold units returned");
      await this.#publish("StockReleased", { orderId, items: done.items }, event, !changed);
      return;
    }
    if (record?.status !== "returned") throw this.#breach("cancelled", orderId, record);
    await this.#publish("StockReleased", { orderId, items: record.items }, event, true);
  }

  /** The merged lines of the order's OrderPlaced on ORDERS, or none when it is not there. */
  async #placedLines(orderId: string): Promise<StockLine[]> {
    const subject = subjectOf({ type: "OrderPlaced", aggregate_id: orderId });
    const m = await directGet(this.#d.jsm, Streams.ORDERS, { seq: 1, next_by_subj: subject });
    if (!m) return [];
    const placed = decodeEvent(m.data);
    return placed.type === "OrderPlaced" ? mergeLines(placed.data.items) : [];
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
