/**
 * What the customer is told, and when: pure functions from the saga's events to an e-mail. The text is
 * built from the events only (no clock, no randomness), so a redelivery rebuilds the same request and the
 * mail provider recognises it by its idempotency key.
 */
import type { CancelReason, EventData, NotificationKind } from "../../lib/events/catalog.js";

export type { NotificationKind } from "../../lib/events/catalog.js";

/** The events that cause an e-mail. */
export type NotifiedEvent = "OrderConfirmed" | "OrderCancelled";

/** The kind of e-mail an event causes. */
export function kindOf(type: NotifiedEvent): NotificationKind {
  return type === "OrderConfirmed" ? "order_confirmed" : "order_cancelled";
}

/** Idempotency key at the mail provider: one e-mail per (order, kind). */
export const mailKey = (orderId: string, kind: NotificationKind): string => `${orderId}:${kind}`;

/** A sent e-mail as recorded by notifications (no address: it is PII and lives in the ORDERS stream). */
export interface SentNotification {
  orderId: string;
  kind: NotificationKind;
  messageId: string;
  sentAt: string;
}

/** `1250, "EUR"` → `12.50 EUR`. */
export function formatAmount(cents: number, currency: string): string {
  return `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, "0")} ${currency}`;
}

const cancelReasons: Record<CancelReason, string> = {
  out_of_stock: "some items are out of stock",
  payment_declined: "the payment was declined",
  timeout: "it could not be completed in time",
  invalid_order: "it could not be processed",
  customer_request: "you asked us to cancel it",
  operator_request: "our customer service cancelled it",
};

/** Subject and text of the e-mail for an outcome. */
export interface MailContent {
  subject: string;
  text: string;
}

export function confirmedMail(order: EventData<"OrderPlaced">, e: EventData<"OrderConfirmed">): MailContent {
  const lines = order.items.map((l) => `  ${l.quantity} × ${l.sku}`);
  return {
    subject: `Your order ${e.orderId} is confirmed`,
    text: [
      `Thank you for your order ${e.orderId}.`,
      "",
      ...lines,
      "",
      `Total charged: ${formatAmount(e.total, e.currency)}.`,
    ].join("\n"),
  };
}

export function cancelledMail(order: EventData<"OrderPlaced">, e: EventData<"OrderCancelled">): MailContent {
  return {
    subject: `Your order ${e.orderId} was cancelled`,
    text: [
      `We are sorry: your order ${e.orderId} was cancelled because ${cancelReasons[e.reason]}.`,
      `Any amount charged (${formatAmount(order.total, order.currency)} at most) is refunded.`,
    ].join("\n"),
  };
}
