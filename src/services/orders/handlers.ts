import { RetryableError } from "../../lib/errors.js";
import { makeEvent, type Envelope } from "../../lib/events/mod.js";
import { type HandlerContext, type HandlerMap } from "../../lib/messaging/consumer.js";
import { ConcurrencyError } from "../../lib/messaging/publisher.js";
import { decide, type Decision } from "./order.js";
import type { OrderStore } from "./store.js";

export const SOURCE = "orders";

/**
 * Loads an order, decides, and appends the resulting event with optimistic concurrency. On a
 * concurrency conflict it reloads and decides again: the order is then usually terminal and the
 * decision a no-op. Idempotent: a redelivered outcome finds the order decided and changes nothing.
 */
export async function applyDecision(
  store: OrderStore,
  orderId: string,
  decision: Decision,
  cause: Envelope,
  ctx: Pick<HandlerContext, "logger">,
): Promise<void> {
  for (let i = 0; i < 5; i++) {
    // First from what this process remembers (the conditional append catches a stale memory), then read.
    const { order, version } = (i === 0 ? store.recent(orderId) : undefined) ?? (await store.load(orderId));
    if (!order) {
      // The outcome arrived but the order's first event is not readable yet (a lagging replica of a
      // direct get); try again later, and after max attempts it goes to the DLQ with this reason.
      throw new RetryableError("ORDER_NOT_FOUND", `order ${orderId} has no events`);
    }
    const out = decide(order, decision);
    if (!out) {
      ctx.logger.debug({ status: order.status, decision: decision.kind }, "order already decided");
      return;
    }
    const event = makeEvent(out.type, out.data as never, { aggregateId: orderId, source: SOURCE, cause });
    try {
      await store.append(event, version);
      store.onDecided?.(order, event);
      // Confirmations (the happy path) at debug; cancellations stay at info.
      ctx.logger[out.type === "OrderConfirmed" ? "debug" : "info"](
        {
          status: out.type === "OrderConfirmed" ? "CONFIRMED" : "CANCELLED",
          reason: decision.kind === "cancel" ? decision.reason : undefined,
        },
        out.type === "OrderConfirmed" ? "order confirmed" : "order cancelled",
      );
      return;
    } catch (err) {
      if (!(err instanceof ConcurrencyError)) throw err;
    }
  }
  throw new RetryableError("ORDER_CONTENDED", `order ${orderId} kept changing while deciding`);
}

/** The saga's decisions on inventory and payment outcomes. */
export function sagaHandlers(store: OrderStore): HandlerMap {
  return {
    StockRejected: (e, ctx) =>
      applyDecision(
        store,
        e.data.orderId,
        {
          kind: "cancel",
          reason: e.data.reason === "invalid_order" ? "invalid_order" : "out_of_stock",
          detail: e.data.reason,
        },
        e,
        ctx,
      ),
    PaymentDeclined: (e, ctx) =>
      applyDecision(
        store,
        e.data.orderId,
        { kind: "cancel", reason: "payment_declined", detail: e.data.reason },
        e,
        ctx,
      ),
    PaymentCaptured: (e, ctx) =>
      applyDecision(store, e.data.orderId, { kind: "confirm", paymentId: e.data.paymentId }, e, ctx),
  };
}

/**
 * The order timeout as a timer held by the runner: OrderPlaced is delivered once and held (`{ outcome: "hold" }`,
 * unacknowledged, no heartbeats: the consumer's ack wait is above the order timeout) until the order's deadline,
 * then run again: an order still PENDING is cancelled with reason `timeout`, and the message acked — one delivery
 * and one ack per order. An order this process already knows to be terminal (the store's recent cache) is acked
 * without a read, on delivery or at the deadline. After a crash the server redelivers held messages after the ack
 * wait (the cancellation is late by at most that); a graceful stop hands them back at once. Past deadlines
 * (a backlog after a restart) are decided at once.
 */
export function timeoutHandlers(store: OrderStore, now: () => number = Date.now): HandlerMap {
  return {
    OrderPlaced: async (e, ctx) => {
      const known = store.recent(e.data.orderId);
      if (known && known.order.status !== "PENDING") return;
      const deadline = Date.parse(e.data.timeoutAt);
      if (deadline > now()) return { outcome: "hold", untilMs: deadline };
      await applyDecision(store, e.data.orderId, { kind: "cancel", reason: "timeout" }, e, ctx);
    },
  };
}
