/**
 * The Order aggregate's pure rules (src/services/orders/order.ts): a cancellation on request, the window after a
 * confirmation, and that the saga's own late outcomes never reopen or flip a decided order.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { makeEvent, type AnyEnvelope } from "../../src/lib/events/envelope.js";
import {
  cancelledAfterConfirmation,
  decide,
  decideCancelRequest,
  evolve,
  type Order,
} from "../../src/services/orders/order.js";

const at = (iso: string) => new Date(iso);
const placed = makeEvent(
  "OrderPlaced",
  {
    orderId: "ord_1",
    customerId: "cus_1",
    email: "a@example.com",
    items: [{ sku: "A", quantity: 1, unitPrice: 100 }],
    total: 100,
    currency: "EUR",
    placedAt: "2030-01-01T00:00:00.000Z",
    timeoutAt: "2030-01-01T00:01:00.000Z",
  },
  { aggregateId: "ord_1", source: "orders", now: at("2030-01-01T00:00:00.000Z") },
);
const confirmed = makeEvent(
  "OrderConfirmed",
  { orderId: "ord_1", paymentId: "ch_1", total: 100, currency: "EUR" },
  { aggregateId: "ord_1", source: "orders", now: at("2030-01-01T00:00:01.000Z") },
);
const cancelled = (reason: "customer_request" | "timeout") =>
  makeEvent("OrderCancelled", { orderId: "ord_1", reason }, { aggregateId: "ord_1", source: "orders" });

const fold = (events: AnyEnvelope[]): Order => events.reduce<Order | null>(evolve, null)!;

void describe("order: cancellation on request", () => {
  const req = (now: string, windowMs = 60_000) => ({ by: "customer", now: at(now), windowMs }) as const;

  void it("cancels a PENDING order with the requester's reason", () => {
    const d = decideCancelRequest(fold([placed]), req("2030-01-01T00:00:00.500Z"));
    assert.deepEqual(d, {
      kind: "cancel",
      event: { type: "OrderCancelled", data: { orderId: "ord_1", reason: "customer_request" } },
    });
    const byOperator = decideCancelRequest(fold([placed]), {
      ...req("2030-01-01T00:00:00.500Z"),
      by: "operator",
    });
    assert.equal(byOperator.kind === "cancel" && byOperator.event.data.reason, "operator_request");
  });

  void it("cancels a CONFIRMED order within the window from its confirmation, and refuses after it", () => {
    const order = fold([placed, confirmed]);
    assert.equal(order.confirmedAt, "2030-01-01T00:00:01.000Z");
    assert.equal(decideCancelRequest(order, req("2030-01-01T00:01:01.000Z")).kind, "cancel", "at the edge");
    assert.deepEqual(decideCancelRequest(order, req("2030-01-01T00:01:01.001Z")), {
      kind: "window_closed",
      confirmedAt: "2030-01-01T00:00:01.000Z",
      windowMs: 60_000,
    });
    assert.equal(decideCancelRequest(order, req("2030-01-01T00:00:01.001Z", 0)).kind, "window_closed");
  });

  void it("answers a cancelled order as it is (idempotent), whoever cancelled it", () => {
    for (const events of [
      [placed, cancelled("timeout")],
      [placed, cancelled("customer_request")],
      [placed, confirmed, cancelled("customer_request")],
    ])
      assert.deepEqual(decideCancelRequest(fold(events), req("2030-01-01T00:00:02.000Z")), {
        kind: "already_cancelled",
      });
  });

  void it("an order cancelled after its confirmation is CANCELLED and known as such", () => {
    const order = fold([placed, confirmed, cancelled("customer_request")]);
    assert.deepEqual([order.status, order.reason], ["CANCELLED", "customer_request"]);
    assert.equal(cancelledAfterConfirmation(order), true);
    assert.equal(cancelledAfterConfirmation(fold([placed, cancelled("customer_request")])), false);
  });

  void it("the saga's late outcomes change nothing: no confirmation after a cancellation, no timeout after either", () => {
    const early = fold([placed, cancelled("customer_request")]);
    assert.equal(decide(early, { kind: "confirm", paymentId: "ch_1" }), null);
    assert.equal(decide(fold([placed, confirmed]), { kind: "cancel", reason: "timeout" }), null);
    // A copy of OrderConfirmed stored after the cancellation does not reopen the order.
    assert.equal(fold([placed, cancelled("customer_request"), confirmed]).status, "CANCELLED");
  });
});
