/**
 * The payment of one order: a small state machine, pure (no I/O), driven by the payments handlers.
 *
 * ```
 *   (none) ──StockReserved──▶ charging ──gateway──▶ captured ──OrderCancelled──▶ refunding ──▶ refunded
 *      │                          └──────gateway──▶ declined
 *      └──OrderCancelled──▶ cancelled   (a later StockReserved charges nothing)
 * ```
 *
 * Every transition is a function `(current) → next | Unchanged` suitable for `casUpdate`: it may run
 * several times and must be pure. The gateway's idempotency keys ({@link chargeKey}, {@link refundKey})
 * make the external effects happen once whatever number of times a step is redone.
 */
import { Unchanged } from "../../lib/kv.js";

export type PaymentStatus = "charging" | "captured" | "declined" | "cancelled" | "refunding" | "refunded";

/** What the `payments` KV bucket holds per order id. */
export interface Payment {
  status: PaymentStatus;
  /** Gateway charge id, once captured. */
  paymentId?: string;
  /** Order total in minor units (0 when the order was cancelled before any reservation). */
  amount: number;
  /** ISO 4217; `XXX` ("no currency") when the order was cancelled before any reservation. */
  currency: string;
  /** Customer charged (kept so the charge request can be rebuilt exactly). */
  customerId?: string;
  /** Gateway refund id, once refunded. */
  refundId?: string;
  /** Gateway decline reason, when declined. */
  declineReason?: string;
  /** Last transition, ISO 8601. */
  updatedAt: string;
}

/** The currency recorded for an order cancelled before anything was reserved (ISO 4217 "no currency"). */
export const NO_CURRENCY = "XXX";

/** Idempotency key of an order's charge at the gateway. */
export const chargeKey = (orderId: string): string => `charge:${orderId}`;
/** Idempotency key of an order's refund at the gateway. */
export const refundKey = (orderId: string): string => `refund:${orderId}`;

/** What to do on StockReserved, given the stored payment. */
export type ReservedAction =
  /** Nothing stored yet: record `charging`, then charge. */
  | "start"
  /** A charge was started (maybe by a crashed attempt): charge again with the same key, then settle. */
  | "charge"
  /** Already settled: publish the outcome again (deterministic event id). */
  | "republish"
  /** The order was cancelled first, or the capture was already refunded: nothing to do. */
  | "ignore";

export function onStockReserved(p: Payment | null): ReservedAction {
  if (p === null) return "start";
  switch (p.status) {
    case "charging":
      return "charge";
    case "captured":
    case "declined":
      return "republish";
    case "cancelled":
    case "refunding":
    case "refunded":
      return "ignore";
  }
}

/** What to do on OrderCancelled, given the stored payment. */
export type CancelledAction =
  /** Nothing charged yet: record `cancelled` so that a later StockReserved charges nothing. */
  | "cancel"
  /** A charge is in flight: wait until it settles. */
  | "wait"
  /** Captured: refund it (record `refunding`, call the gateway, record `refunded`). */
  | "refund"
  /** A refund was started (maybe by a crashed attempt): call again with the same key, then settle. */
  | "resume_refund"
  /** Refunded: publish PaymentRefunded again (deterministic event id). */
  | "republish"
  /** Declined or already cancelled: no money moved, nothing to do. */
  | "ignore";

export function onOrderCancelled(p: Payment | null): CancelledAction {
  if (p === null) return "cancel";
  switch (p.status) {
    case "charging":
      return "wait";
    case "captured":
      return "refund";
    case "refunding":
      return "resume_refund";
    case "refunded":
      return "republish";
    case "declined":
    case "cancelled":
      return "ignore";
  }
}

/** The charge request's inputs, from StockReserved. */
export interface ChargeInput {
  amount: number;
  currency: string;
  customerId: string;
}

/** none → charging. */
export function startCharge(cur: Payment | null, input: ChargeInput, now: Date): Payment | typeof Unchanged {
  if (cur !== null) return Unchanged;
  return { status: "charging", ...input, updatedAt: now.toISOString() };
}

/** none → cancelled. */
export function cancelBeforeCharge(cur: Payment | null, now: Date): Payment | typeof Unchanged {
  if (cur !== null) return Unchanged;
  return { status: "cancelled", amount: 0, currency: NO_CURRENCY, updatedAt: now.toISOString() };
}

/** The gateway's verdict on a charge. */
export type ChargeOutcome =
  { status: "captured"; paymentId: string } | { status: "declined"; declineReason: string };

/** charging → captured | declined. */
export function settleCharge(
  cur: Payment | null,
  outcome: ChargeOutcome,
  now: Date,
): Payment | typeof Unchanged {
  if (cur?.status !== "charging") return Unchanged;
  return { ...cur, ...outcome, updatedAt: now.toISOString() };
}

/** captured → refunding. */
export function startRefund(cur: Payment | null, now: Date): Payment | typeof Unchanged {
  if (cur?.status !== "captured") return Unchanged;
  return { ...cur, status: "refunding", updatedAt: now.toISOString() };
}

/** refunding → refunded. */
export function settleRefund(cur: Payment | null, refundId: string, now: Date): Payment | typeof Unchanged {
  if (cur?.status !== "refunding") return Unchanged;
  return { ...cur, status: "refunded", refundId, updatedAt: now.toISOString() };
}

/**
 * Payment id recorded for an order whose total is 0: nothing is sent to the gateway (it takes amounts
 * of at least 1), and nothing needs refunding.
 */
export const freePaymentId = (orderId: string): string => `free_${orderId}`;
