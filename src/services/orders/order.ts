import {
  isRequestedCancel,
  type AnyEnvelope,
  type CancelReason,
  type EventData,
} from "../../lib/events/mod.js";

/**
 * The states of an order; CONFIRMED and CANCELLED are terminal for the saga. A CONFIRMED order may still be
 * cancelled on request within the cancellation window ({@link decideCancelRequest}); CANCELLED is final.
 */
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
  /** When it was confirmed (its OrderConfirmed's timestamp): the cancellation window runs from here. */
  confirmedAt?: string;
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
      // Only a PENDING order is confirmed: a copy of OrderConfirmed after a cancellation must not reopen it.
      if (state?.status !== "PENDING") return state;
      return {
        ...state,
        status: "CONFIRMED",
        paymentId: e.data.paymentId,
        confirmedAt: e.timestamp,
        updatedAt: e.timestamp,
      };
    case "OrderCancelled":
      if (!state || state.status === "CANCELLED") return state;
      return { ...state, status: "CANCELLED", reason: e.data.reason, updatedAt: e.timestamp };
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

/** Who asks for a cancellation (`POST /orders/{id}/cancel`): the order's customer or an operator. */
export type CancelRequester = "customer" | "operator";

/** What a cancellation request comes to. */
export type CancelRequestDecision =
  /** Append this OrderCancelled (the order was PENDING, or CONFIRMED within the window). */
  | { kind: "cancel"; event: { type: "OrderCancelled"; data: EventData<"OrderCancelled"> } }
  /** Already cancelled (by a request or by the saga): nothing to append; the answer is the order as it is. */
  | { kind: "already_cancelled" }
  /** CONFIRMED longer ago than the window: refused (409). */
  | { kind: "window_closed"; confirmedAt: string; windowMs: number };

/**
 * Decides a cancellation request. A PENDING order is cancelled (the saga's late outcomes then change nothing:
 * a capture landing afterwards is refunded by payments, the reservation released by inventory); a CONFIRMED order
 * is cancelled if it was confirmed at most `windowMs` ago (payments refunds the capture, inventory returns the
 * sold units); a cancelled order stays as it is (idempotent: a repeated request is answered the same).
 */
export function decideCancelRequest(
  order: Order,
  req: { by: CancelRequester; now: Date; windowMs: number },
): CancelRequestDecision {
  if (order.status === "CANCELLED") return { kind: "already_cancelled" };
  if (order.status === "CONFIRMED") {
    const confirmedAt = order.confirmedAt ?? order.updatedAt;
    if (req.now.getTime() - Date.parse(confirmedAt) > req.windowMs)
      return { kind: "window_closed", confirmedAt, windowMs: req.windowMs };
  }
  const reason: CancelReason = req.by === "operator" ? "operator_request" : "customer_request";
  return { kind: "cancel", event: { type: "OrderCancelled", data: { orderId: order.orderId, reason } } };
}

/** Was this order cancelled on request after it had been confirmed (so a refund and a stock return follow)? */
export function cancelledAfterConfirmation(order: Order): boolean {
  return order.status === "CANCELLED" && order.confirmedAt !== undefined && isRequestedCancel(order.reason!);
}
