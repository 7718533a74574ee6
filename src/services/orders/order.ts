import type { AnyEnvelope, CancelReason, EventData } from "../../lib/events/mod.js";

/** The states of an order; CONFIRMED and CANCELLED are terminal. */
export type OrderStatus = "PENDING" | "CONFIRMED" | "CANCELLED";

/** The Order aggregate, rebuilt from its events. */
export interface Order {
  orderId: string;
  status: OrderStatus;
  reason?: CancelReason;
  customerId: string;
  /** As stored: sealed under the customer's data key (`pii:v1:…`, src/lib/pii), or plain for orders from before sealing. */
  email: string;
  items: EventData<"OrderPlaced">["items"];
  total: number;
  currency: string;
  createdAt: string;
  updatedAt: string;
  timeoutAt: string;
  paymentId?: string;
}

/** Applies one event to the aggregate. Events of other aggregates' streams are ignored. */
export function evolve(state: Order | null, e: AnyEnvelope): Order | null {
  switch (e.type) {
    case "OrderPlaced":
      // An order is placed once: a second OrderPlaced on its subject must not reopen it.
      if (state) return state;
      return {
        orderId: e.data.orderId,
        status: "PENDING",
        customerId: e.data.customerId,
        email: e.data.email,
        items: e.data.items,
        total: e.data.total,
        currency: e.data.currency,
        createdAt: e.data.placedAt,
        updatedAt: e.timestamp,
        timeoutAt: e.data.timeoutAt,
      };
    case "OrderConfirmed":
      return state && { ...state, status: "CONFIRMED", paymentId: e.data.paymentId, updatedAt: e.timestamp };
    case "OrderCancelled":
      return state && { ...state, status: "CANCELLED", reason: e.data.reason, updatedAt: e.timestamp };
    default:
      return state;
  }
}

/** A decision the saga asks of an order. */
export type Decision =
  { kind: "confirm"; paymentId: string } | { kind: "cancel"; reason: CancelReason; detail?: string };

/** The event a decision produces, or null when the order is already terminal (first decision wins). */
export type DecisionEvent =
  | { type: "OrderConfirmed"; data: EventData<"OrderConfirmed"> }
  | { type: "OrderCancelled"; data: EventData<"OrderCancelled"> };

/**
 * Decides: a PENDING order is confirmed or cancelled; a terminal order never changes again, so a
 * late or duplicated outcome (a capture after a timeout, a redelivered decline) produces nothing.
 */
export function decide(order: Order, d: Decision): DecisionEvent | null {
  if (order.status !== "PENDING") return null;
  if (d.kind === "confirm") {
    return {
      type: "OrderConfirmed",
      data: { orderId: order.orderId, paymentId: d.paymentId, total: order.total, currency: order.currency },
    };
  }
  return {
    type: "OrderCancelled",
    data: {
      orderId: order.orderId,
      reason: d.reason,
      ...(d.detail ? { detail: d.detail.slice(0, 1000) } : {}),
    },
  };
}
