/**
 * The inventory domain, pure: stock records and their moves, reservation records and their state machine.
 * Nothing here does I/O; the store applies these functions inside compare-and-set updates, so each may run
 * several times (on a fresh copy each time).
 *
 * Invariant I3, per SKU and at every stored revision: `initial + adjusted = available + reserved + committed`,
 * `available >= 0`, and `reserved` is the sum of the holds (`adjusted`: the operators' restocks and write-offs,
 * each also a StockAdjusted event on INVENTORY, so the checker holds the figure to the events).
 */
import type { AdjustmentReason } from "../../lib/events/catalog.js";
import { Unchanged } from "../../lib/kv.js";

/** Largest quantity of one line in the saga's events (the catalog's `StockLine.quantity`). */
export const MAX_LINE_QUANTITY = 10_000;

/** Stock of one SKU, stored in the `stock` bucket under the SKU. */
export interface StockRecord {
  sku: string;
  initial: number;
  available: number;
  reserved: number;
  committed: number;
  /** Units held for each order with a live reservation of this SKU. */
  holds: Record<string, number>;
  /** Sum of the operators' adjustments (restock > 0, write-off < 0); absent = 0 (records before adjustments). */
  adjusted?: number;
  /**
   * The latest adjustments applied, oldest first (at most {@link MAX_REMEMBERED_ADJUSTMENTS} published ones, oldest
   * dropped first): an adjustment retried with the same id is applied once. An entry whose StockAdjusted is not yet
   * known to be on the stream carries it (`unpublished`: the outbox, written in the same compare-and-set as the
   * stock) and is never dropped.
   */
  adjustments?: AdjustmentEntry[];
  /**
   * Units of each order that were sold (committed) and then returned to available because the order was cancelled
   * after its confirmation: the marker that makes {@link returnSale} idempotent. Absent until the first return; it
   * grows with returns only (not with sales).
   */
  returns?: Record<string, number>;
}

/** Adjustment ids a stock record remembers, so a retry is not applied twice. */
export const MAX_REMEMBERED_ADJUSTMENTS = 100;

/**
 * What an adjustment's StockAdjusted says beyond the stock record's entry, kept in the entry until the event is known
 * to be on INVENTORY (the outbox of src/services/inventory/adjustments.ts).
 */
export interface UnpublishedAdjustment {
  reason: AdjustmentReason;
  note?: string;
  operator: string;
  /** When it was applied (ISO 8601). */
  at: string;
  /** INVENTORY's last sequence before it was applied: its event, if published, is after it. */
  afterSeq: number;
}

/** One remembered adjustment of a stock record. */
export interface AdjustmentEntry {
  id: string;
  quantity: number;
  /** Present until its StockAdjusted is known to be on the stream. */
  unpublished?: UnpublishedAdjustment;
}

/** The adjustments of `s` whose StockAdjusted is not known to be on the stream, oldest first. */
export function unpublishedAdjustments(
  s: StockRecord,
): (AdjustmentEntry & { unpublished: UnpublishedAdjustment })[] {
  return (s.adjustments ?? []).filter(
    (a): a is AdjustmentEntry & { unpublished: UnpublishedAdjustment } => a.unpublished !== undefined,
  );
}

/** `entries` trimmed to {@link MAX_REMEMBERED_ADJUSTMENTS} published ones (oldest dropped); unpublished ones stay. */
function remembered(entries: AdjustmentEntry[]): AdjustmentEntry[] {
  let drop = entries.filter((a) => !a.unpublished).length - MAX_REMEMBERED_ADJUSTMENTS;
  return entries.filter((a) => a.unpublished || drop-- <= 0);
}

/** Marks adjustment `id` as published (its StockAdjusted is on the stream); no change when it is not pending. */
export function adjustmentPublished(id: string): StockMove<boolean> {
  return (s) => {
    const entry = s?.adjustments?.find((a) => a.id === id);
    if (!s || !entry?.unpublished) return { changed: false, result: false };
    s.adjustments = s.adjustments!.map((a) => (a.id === id ? { id: a.id, quantity: a.quantity } : a));
    return { changed: true, result: true };
  };
}

/** Outcome of an operator's adjustment of one SKU's stock. */
export type AdjustResult =
  | { kind: "applied" }
  /**
   * The same id was applied before (a retry): nothing changed. `quantity` is what that adjustment was; `unpublished`
   * its event when that is not yet known to be on the stream.
   */
  | { kind: "already_applied"; quantity: number; unpublished?: UnpublishedAdjustment }
  /** A write-off larger than the units available (reserved and sold units cannot be written off). */
  | { kind: "insufficient"; available: number }
  | { kind: "unknown" };

/**
 * Adds `quantity` units to available (a restock, > 0) or takes them away (a write-off, < 0), once per `id`:
 * `adjusted` follows, so `initial + adjusted = available + reserved + committed` still holds. With `unpublished`, the
 * entry keeps its event until {@link adjustmentPublished}.
 */
export function adjust(
  id: string,
  quantity: number,
  unpublished?: UnpublishedAdjustment,
): StockMove<AdjustResult> {
  return (s) => {
    if (s === null) return { changed: false, result: { kind: "unknown" } };
    const seen = s.adjustments ?? [];
    const before = seen.find((a) => a.id === id);
    if (before)
      return {
        changed: false,
        result: {
          kind: "already_applied",
          quantity: before.quantity,
          ...(before.unpublished ? { unpublished: before.unpublished } : {}),
        },
      };
    if (s.available + quantity < 0)
      return { changed: false, result: { kind: "insufficient", available: s.available } };
    s.available += quantity;
    s.adjusted = (s.adjusted ?? 0) + quantity;
    s.adjustments = remembered([...seen, { id, quantity, ...(unpublished ? { unpublished } : {}) }]);
    return { changed: true, result: { kind: "applied" } };
  };
}

/** A quantity of one SKU. */
export interface StockLine {
  sku: string;
  quantity: number;
}

export type ReservationStatus =
  "reserving" | "reserved" | "rejected" | "committed" | "released" | "returning" | "returned";
export type RejectReason = "out_of_stock" | "unknown_sku" | "invalid_order";

/** The reservation of one order, stored in the `reservations` bucket under the order id. */
export interface ReservationRecord {
  status: ReservationStatus;
  /** The order's lines, one per SKU (merged); empty for a tombstone (cancelled before reserved). */
  items: StockLine[];
  /** Why it was rejected (status `rejected` only). */
  reason?: RejectReason;
  /** The SKUs that could not be reserved (status `rejected` only). */
  skus?: string[];
}

/**
 * A move of one SKU's stock. It changes the record it is given in place (the store hands it a private copy,
 * freshly read, and applies several moves to it in one compare-and-set write) and says what it did.
 * `changed` must be true exactly when it changed the record.
 */
export type StockMove<R> = (s: StockRecord | null) => { changed: boolean; result: R };

/** Applies a move to a copy of `s`: the new record (or {@link Unchanged}) and the move's result. */
export function applyMove<R>(
  s: StockRecord | null,
  move: StockMove<R>,
): { next: StockRecord | typeof Unchanged; result: R } {
  const draft = s === null ? null : { ...s, holds: { ...s.holds } };
  const { changed, result } = move(draft);
  return { next: changed && draft !== null ? draft : Unchanged, result };
}

/** The stock record of a newly loaded SKU. */
export function newStock(sku: string, initial: number): StockRecord {
  return { sku, initial, available: initial, reserved: 0, committed: 0, holds: {} };
}

/** Merges lines of the same SKU (first appearance order kept), dropping other fields such as prices. */
export function mergeLines(lines: readonly StockLine[]): StockLine[] {
  const bySku = new Map<string, number>();
  for (const l of lines) bySku.set(l.sku, (bySku.get(l.sku) ?? 0) + l.quantity);
  return [...bySku].map(([sku, quantity]) => ({ sku, quantity }));
}

/**
 * Why an OrderPlaced cannot be reserved whatever the stock (its total is not the sum of its lines), or null.
 * Only orders writes OrderPlaced and prices it from the catalog, so this means a bug or a forged event:
 * nothing is held, and the order is rejected (`invalid_order`) before anything is charged.
 */
export function orderInconsistency(o: {
  items: readonly { quantity: number; unitPrice: number }[];
  total: number;
}): string | null {
  const sum = o.items.reduce((s, l) => s + l.quantity * l.unitPrice, 0);
  return sum === o.total ? null : `total ${o.total} is not the sum of the lines (${sum})`;
}

/** Outcome of trying to hold stock of one SKU for one order. */
export type HoldResult = "held" | "already_held" | "insufficient" | "unknown";

/** Holds `qty` units for `orderId` (available → reserved), unless it already has a hold or stock is short. */
export function hold(orderId: string, qty: number): StockMove<HoldResult> {
  return (s) => {
    if (s === null) return { changed: false, result: "unknown" };
    if (Object.hasOwn(s.holds, orderId)) return { changed: false, result: "already_held" };
    if (s.available < qty) return { changed: false, result: "insufficient" };
    s.available -= qty;
    s.reserved += qty;
    // defineProperty: an order id may be "__proto__", which plain assignment would not store.
    Object.defineProperty(s.holds, orderId, {
      value: qty,
      enumerable: true,
      writable: true,
      configurable: true,
    });
    return { changed: true, result: "held" };
  };
}

/** Gives the hold of `orderId` back to available (reserved → available). Result: units given back. */
export function giveBack(orderId: string): StockMove<number> {
  return (s) => {
    const qty = s !== null && Object.hasOwn(s.holds, orderId) ? s.holds[orderId] : undefined;
    if (s === null || qty === undefined) return { changed: false, result: 0 };
    s.available += qty;
    s.reserved -= qty;
    delete s.holds[orderId];
    return { changed: true, result: qty };
  };
}

/** Turns the hold of `orderId` into a sale (reserved → committed). Result: units committed. */
export function commitHold(orderId: string): StockMove<number> {
  return (s) => {
    const qty = s !== null && Object.hasOwn(s.holds, orderId) ? s.holds[orderId] : undefined;
    if (s === null || qty === undefined) return { changed: false, result: 0 };
    s.reserved -= qty;
    s.committed += qty;
    delete s.holds[orderId];
    return { changed: true, result: qty };
  };
}

/**
 * Returns the units `orderId` bought to available (committed → available), once: the order's entry in `returns`
 * records it, so a redo changes nothing. Result: units returned by this move (0 when already returned).
 */
export function returnSale(orderId: string, qty: number): StockMove<number> {
  return (s) => {
    if (s === null || (s.returns !== undefined && Object.hasOwn(s.returns, orderId)))
      return { changed: false, result: 0 };
    // Never below zero: a return larger than what is committed means the record is not what this order left.
    const units = Math.min(qty, s.committed);
    s.committed -= units;
    s.available += units;
    const returns = { ...s.returns };
    Object.defineProperty(returns, orderId, {
      value: units,
      enumerable: true,
      writable: true,
      configurable: true,
    });
    s.returns = returns;
    return { changed: true, result: units };
  };
}

/** Violations of I3 in one stock record (empty when it holds). */
export function stockViolations(s: StockRecord): string[] {
  const out: string[] = [];
  const adjusted = s.adjusted ?? 0;
  if (s.available + s.reserved + s.committed !== s.initial + adjusted)
    out.push(
      `${s.sku}: initial ${s.initial} + adjusted ${adjusted} != available ${s.available} + reserved ${s.reserved} + committed ${s.committed}`,
    );
  if (s.available < 0) out.push(`${s.sku}: available ${s.available} < 0`);
  if (s.reserved < 0) out.push(`${s.sku}: reserved ${s.reserved} < 0`);
  const held = Object.values(s.holds).reduce((a, b) => a + b, 0);
  if (held !== s.reserved) out.push(`${s.sku}: holds sum to ${held}, reserved is ${s.reserved}`);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Reservation state machine. Every decision is a compare-and-set on the order's record; the reserve's
// decision is a create (revision 0) taken after its holds, the others are taken before the stock moves they
// imply, so concurrent or redelivered handlers agree on one outcome and a crash between a decision and its
// moves is finished by the next delivery (the moves are idempotent). See handlers.ts for the crash points.
//
//   (absent) ─OrderPlaced (holds placed)→ reserved ─OrderConfirmed→ committed
//                                    │         └─OrderCancelled→ released
//                                    └→ rejected
//   (absent) ─OrderCancelled→ released (tombstone, items [])
//   committed ─OrderCancelled (on request, after the confirmation)→ returning ─(sold units back)→ returned
//
// `reserving` was written before the holds by earlier versions; it is no longer written, but a record left
// in that state is still decided (decideReserveOnce) or released (decideRelease) as before.
// ---------------------------------------------------------------------------------------------------

/** The lines of `a`, then those of `b` whose SKU is not in `a` (give-backs of either are idempotent). */
export function unionLines(a: readonly StockLine[], b: readonly StockLine[]): StockLine[] {
  const skus = new Set(a.map((l) => l.sku));
  return [...a, ...b.filter((l) => !skus.has(l.sku))];
}

/** What reserving every line of an order came to. */
export type ReserveOutcome = { ok: true } | { ok: false; reason: RejectReason; skus: string[] };

/**
 * The reserve's decision, once its holds are placed: created when there is no record; a legacy `reserving`
 * record is decided as before; any other record (another delivery's decision, a tombstone) is left as it is.
 */
export function decideReserveOnce(
  r: ReservationRecord | null,
  items: StockLine[],
  outcome: ReserveOutcome,
): ReservationRecord | typeof Unchanged {
  if (r === null) return decideReserve({ status: "reserving", items }, outcome);
  return decideReserve(r, outcome);
}

/** Decides the outcome of a reservation still `reserving`; any other record is left as it is. */
export function decideReserve(
  r: ReservationRecord | null,
  outcome: ReserveOutcome,
): ReservationRecord | typeof Unchanged {
  if (r?.status !== "reserving") return Unchanged;
  return outcome.ok
    ? { status: "reserved", items: r.items }
    : { status: "rejected", items: r.items, reason: outcome.reason, skus: outcome.skus };
}

/** Marks a `reserved` record `committed` (stock already moved); any other record is left as it is. */
export function decideCommit(r: ReservationRecord | null): ReservationRecord | typeof Unchanged {
  return r?.status === "reserved" ? { status: "committed", items: r.items } : Unchanged;
}

/**
 * Marks a `reserved` record `released`, or creates a `released` tombstone when there is no record (the order
 * was cancelled before its OrderPlaced was handled); any other record is left as it is.
 *
 * A (legacy) record still `reserving` is released too: the cancellation must not wait for a reserve that may
 * have been cut off (its OrderPlaced comes back only after the ack wait, and the cancellation would use up its
 * attempts meanwhile and be dead-lettered, leaving the stock held for good). The reserve, when it goes on,
 * finds the record `released` and gives back whatever it held. The same holds for a tombstone: a reserve that
 * held before it and decides after finds it and gives back its holds.
 */
export function decideRelease(r: ReservationRecord | null): ReservationRecord | typeof Unchanged {
  if (r === null) return { status: "released", items: [] };
  return r.status === "reserved" || r.status === "reserving"
    ? { status: "released", items: r.items }
    : Unchanged;
}

/**
 * Marks a `committed` record `returning`: the order was cancelled after its confirmation, and its sold units go
 * back to available (recorded before the stock moves, like a release); any other record is left as it is.
 */
export function decideReturn(r: ReservationRecord | null): ReservationRecord | typeof Unchanged {
  return r?.status === "committed" ? { status: "returning", items: r.items } : Unchanged;
}

/** Marks a `returning` record `returned`, once every line's sold units are back; any other is left as it is. */
export function finishReturn(r: ReservationRecord | null): ReservationRecord | typeof Unchanged {
  return r?.status === "returning" ? { status: "returned", items: r.items } : Unchanged;
}

/** Statuses in which the order may hold no stock (any hold found is given back). */
export function holdsForbidden(status: ReservationStatus): boolean {
  return status !== "reserving" && status !== "reserved";
}
