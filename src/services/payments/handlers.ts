import type { Histogram } from "prom-client";
import { RetryableError } from "../../lib/errors.js";
import { makeEvent, type Envelope } from "../../lib/events/envelope.js";
import { DeferError, type HandlerContext, type HandlerMap } from "../../lib/messaging/consumer.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import { RecentMap } from "../../lib/recent-map.js";
import type { PaymentGateway } from "./gateway.js";
import {
  cancelBeforeCharge,
  freePaymentId,
  onOrderCancelled,
  onStockReserved,
  settleCharge,
  settleRefund,
  startCharge,
  startRefund,
  type ChargeOutcome,
  type Payment,
} from "./payment.js";
import type { PaymentStore } from "./store.js";

/** What the payments handlers need. */
export interface PaymentsDeps {
  store: PaymentStore;
  gateway: PaymentGateway;
  publisher: Publisher;
  /** The publishing service (`source` of events). */
  source: string;
  /** `payment_process_duration_seconds{status}`: captured | declined | error. */
  processDuration: Histogram<"status">;
  /** How long an OrderCancelled defers while a charge is in flight before it fails like any error. */
  chargeSettleWaitMs: number;
  /**
   * Does the order exist (its OrderPlaced is on the ORDERS stream)? When given, a StockReserved is charged
   * only for an order that does: otherwise a RetryableError `ORDER_NOT_FOUND` (a lagging replica may not
   * have it yet), so after the last attempt it is dead-lettered, never charged.
   */
  orderExists?: (orderId: string) => Promise<boolean>;
  now?: () => Date;
  /** Orders whose OrderPlaced this process received, remembered at most (default 50,000). */
  maxRemembered?: number;
}

/** How many state transitions one event can cause at most (a guard against a logic loop). */
const MAX_STEPS = 6;

/**
 * The payments handlers. Both are idempotent: state moves only forward with compare-and-set, gateway
 * calls carry the order's idempotency key, and events have deterministic ids.
 */
export function paymentHandlers(deps: PaymentsDeps): { inventory: HandlerMap; orders: HandlerMap } {
  const now = deps.now ?? (() => new Date());
  const { store } = deps;
  // The orders consumer receives every OrderPlaced anyway: remembering their ids makes the existence check
  // free for nearly every order; one not seen here (a restart, another replica, a lagging consumer) is
  // looked up on the stream.
  const placed = new RecentMap<string, true>(deps.maxRemembered ?? 50_000);
  const onOrderPlaced = (event: Envelope<"OrderPlaced">): Promise<void> => {
    placed.set(event.data.orderId, true);
    return Promise.resolve();
  };
  const orderExists = deps.orderExists;

  /** Has a reservation lapsed? `null`: no expiry known (an event written at StockReserved version 1). */
  const lapsed = (expiresAt: string | null): boolean =>
    expiresAt !== null && Date.parse(expiresAt) <= now().getTime();

  const publishOutcome = async (p: Payment, orderId: string, cause: Envelope) => {
    const opts = { aggregateId: orderId, source: deps.source, cause };
    if (p.status === "declined") {
      await deps.publisher.publish(
        makeEvent("PaymentDeclined", { orderId, reason: p.declineReason ?? "declined" }, opts),
      );
    } else if (p.paymentId !== undefined) {
      await deps.publisher.publish(
        makeEvent(
          "PaymentCaptured",
          { orderId, paymentId: p.paymentId, amount: p.amount, currency: p.currency },
          opts,
        ),
      );
    }
  };

  const charge = async (p: Payment, orderId: string, h: HandlerContext): Promise<ChargeOutcome> => {
    if (p.amount === 0) return { status: "captured", paymentId: freePaymentId(orderId) };
    const end = deps.processDuration.startTimer();
    try {
      const outcome = await deps.gateway.charge({
        orderId,
        customerId: p.customerId ?? "",
        amount: p.amount,
        currency: p.currency,
      });
      end({ status: outcome.status });
      return outcome;
    } catch (err) {
      // A breaker rejection is no payment attempt: it is not timed.
      if (!(err instanceof DeferError)) end({ status: "error" });
      else h.logger.debug("gateway circuit open; charge deferred");
      throw err;
    }
  };

  const onStockReservedEvent = async (event: Envelope<"StockReserved">, h: HandlerContext) => {
    const { orderId, customerId, total, currency } = event.data;
    let p = await store.get(orderId, { probablyAbsent: h.attempt === 1 });
    for (let step = 0; step < MAX_STEPS; step++) {
      switch (onStockReserved(p)) {
        case "start":
          if (orderExists && !placed.has(orderId) && !(await orderExists(orderId)))
            throw new RetryableError("ORDER_NOT_FOUND", `order ${orderId} has no OrderPlaced; not charged`);
          placed.delete(orderId);
          if (lapsed(event.data.expiresAt)) {
            // Past the order's deadline orders cancels it: a charge now would only be refunded. Recorded as
            // cancelled before any charge, like an OrderCancelled that came first; the timeout does the rest.
            await store.update(orderId, (cur) => cancelBeforeCharge(cur, now()));
            h.logger.info(
              { expires_at: event.data.expiresAt },
              "reservation lapsed before the charge; not charged",
            );
            return;
          }
          p = (
            await store.update(orderId, (cur) =>
              startCharge(cur, { amount: total, currency, customerId }, now()),
            )
          ).payment;
          continue;
        case "charge": {
          const outcome = await charge(p!, orderId, h);
          p = (await store.update(orderId, (cur) => settleCharge(cur, outcome, now()))).payment;
          // Captures (the happy path) at debug; declines stay at info.
          h.logger[p?.status === "captured" ? "debug" : "info"](
            { status: p?.status, payment_id: p?.paymentId, amount: p?.amount },
            `payment ${p?.status ?? "unknown"}`,
          );
          continue;
        }
        case "republish":
          await publishOutcome(p!, orderId, event);
          return;
        case "ignore":
          h.logger.info({ status: p?.status }, "stock reserved for a cancelled order; nothing charged");
          return;
      }
    }
    throw new RetryableError("PAYMENT_STATE_LOOP", `payment of ${orderId} did not settle`);
  };

  const onOrderCancelledEvent = async (event: Envelope<"OrderCancelled">, h: HandlerContext) => {
    const { orderId } = event.data;
    let p = await store.get(orderId);
    for (let step = 0; step < MAX_STEPS; step++) {
      switch (onOrderCancelled(p)) {
        case "cancel":
          p = (await store.update(orderId, (cur) => cancelBeforeCharge(cur, now()))).payment;
          if (p?.status === "cancelled") {
            h.logger.info("order cancelled before any charge; a later reservation charges nothing");
            return;
          }
          continue;
        case "wait": {
          const age = now().getTime() - Date.parse(p!.updatedAt);
          const msg = `charge of ${orderId} still in flight`;
          // No attempt used while the charge is young; past the bound it fails normally (→ DLQ eventually).
          if (age < deps.chargeSettleWaitMs) throw new DeferError(msg, 500);
          throw new RetryableError("CHARGE_IN_FLIGHT", `${msg} after ${age} ms`);
        }
        case "refund":
          p = (await store.update(orderId, (cur) => startRefund(cur, now()))).payment;
          continue;
        case "resume_refund": {
          const cur = p!;
          const refundId =
            cur.amount === 0
              ? freePaymentId(orderId)
              : await deps.gateway.refund({ orderId, chargeId: cur.paymentId ?? "", amount: cur.amount });
          p = (await store.update(orderId, (c) => settleRefund(c, refundId, now()))).payment;
          h.logger.info({ refund_id: p?.refundId, amount: cur.amount }, "payment refunded");
          continue;
        }
        case "republish": {
          const cur = p!;
          await deps.publisher.publish(
            makeEvent(
              "PaymentRefunded",
              {
                orderId,
                paymentId: cur.paymentId ?? "",
                refundId: cur.refundId ?? "",
                amount: cur.amount,
                currency: cur.currency,
              },
              { aggregateId: orderId, source: deps.source, cause: event },
            ),
          );
          return;
        }
        case "ignore":
          return;
      }
    }
    throw new RetryableError("PAYMENT_STATE_LOOP", `payment of ${orderId} did not settle`);
  };

  return {
    inventory: { StockReserved: onStockReservedEvent },
    orders: { OrderPlaced: onOrderPlaced, OrderCancelled: onOrderCancelledEvent },
  };
}
