/**
 * The payment state machine (`src/services/payments/payment.ts`): pure decisions and transitions; and the
 * handlers' check that an order exists before it is charged.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { trace } from "@opentelemetry/api";
import type { Histogram } from "prom-client";
import { makeEvent, type Envelope } from "../../src/lib/events/envelope.js";
import { Unchanged } from "../../src/lib/kv.js";
import type { HandlerContext } from "../../src/lib/messaging/consumer.js";
import type { Publisher } from "../../src/lib/messaging/publisher.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import type { PaymentGateway } from "../../src/services/payments/gateway.js";
import { paymentHandlers } from "../../src/services/payments/handlers.js";
import type { PaymentStore } from "../../src/services/payments/store.js";
import {
  NO_CURRENCY,
  cancelBeforeCharge,
  chargeKey,
  onOrderCancelled,
  onStockReserved,
  refundKey,
  settleCharge,
  settleRefund,
  startCharge,
  startRefund,
  type Payment,
  type PaymentStatus,
} from "../../src/services/payments/payment.js";

const now = new Date("2030-01-01T00:00:00.000Z");
const input = { amount: 1250, currency: "EUR", customerId: "cus_1" };
const at = (status: PaymentStatus, extra: Partial<Payment> = {}): Payment => ({
  status,
  ...input,
  updatedAt: now.toISOString(),
  ...extra,
});

void describe("payment decisions", () => {
  void it("StockReserved: charge once, republish settled outcomes, never charge a cancelled order", () => {
    assert.equal(onStockReserved(null), "start");
    assert.equal(onStockReserved(at("charging")), "charge");
    assert.equal(onStockReserved(at("captured")), "republish");
    assert.equal(onStockReserved(at("declined")), "republish");
    assert.equal(onStockReserved(at("cancelled")), "ignore");
    assert.equal(onStockReserved(at("refunding")), "ignore");
    assert.equal(onStockReserved(at("refunded")), "ignore");
  });

  void it("OrderCancelled: cancel first, wait for a charge in flight, refund a capture once", () => {
    assert.equal(onOrderCancelled(null), "cancel");
    assert.equal(onOrderCancelled(at("charging")), "wait");
    assert.equal(onOrderCancelled(at("captured")), "refund");
    assert.equal(onOrderCancelled(at("refunding")), "resume_refund");
    assert.equal(onOrderCancelled(at("refunded")), "republish");
    assert.equal(onOrderCancelled(at("declined")), "ignore");
    assert.equal(onOrderCancelled(at("cancelled")), "ignore");
  });

  void it("uses one deterministic idempotency key per order and operation", () => {
    assert.equal(chargeKey("o1"), "charge:o1");
    assert.equal(refundKey("o1"), "refund:o1");
  });
});

void describe("payment transitions", () => {
  void it("only move forward from the expected state", () => {
    assert.deepEqual(startCharge(null, input, now), at("charging"));
    assert.equal(startCharge(at("cancelled"), input, now), Unchanged);
    assert.deepEqual(cancelBeforeCharge(null, now), {
      status: "cancelled",
      amount: 0,
      currency: NO_CURRENCY,
      updatedAt: now.toISOString(),
    });
    assert.equal(cancelBeforeCharge(at("charging"), now), Unchanged);
    assert.deepEqual(settleCharge(at("charging"), { status: "captured", paymentId: "ch_1" }, now), {
      ...at("captured"),
      paymentId: "ch_1",
    });
    assert.deepEqual(
      settleCharge(at("charging"), { status: "declined", declineReason: "card_declined" }, now),
      {
        ...at("declined"),
        declineReason: "card_declined",
      },
    );
    assert.equal(
      settleCharge(at("captured", { paymentId: "a" }), { status: "captured", paymentId: "b" }, now),
      Unchanged,
    );
    assert.equal(settleCharge(null, { status: "captured", paymentId: "b" }, now), Unchanged);
    assert.deepEqual(
      startRefund(at("captured", { paymentId: "ch_1" }), now),
      at("refunding", { paymentId: "ch_1" }),
    );
    assert.equal(startRefund(at("declined"), now), Unchanged);
    assert.deepEqual(settleRefund(at("refunding"), "re_1", now), at("refunded", { refundId: "re_1" }));
    assert.equal(settleRefund(at("refunded", { refundId: "re_1" }), "re_2", now), Unchanged);
  });
});

void describe("payments handlers: only orders that exist are charged", () => {
  const ctx = (): HandlerContext => ({
    attempt: 1,
    subject: "inventory.o1.StockReserved",
    streamSequence: 1,
    logger: createLogger({ service: "payments", level: "silent" }),
    span: trace.getTracer("test").startSpan("t"),
    working: () => undefined,
  });

  function harness(exists: boolean) {
    const lookups: string[] = [];
    const charges: string[] = [];
    const stored = new Map<string, Payment>();
    const store = {
      get: async (id: string) => stored.get(id) ?? null,
      update: async (id: string, t: (cur: Payment | null) => Payment | typeof Unchanged) => {
        const cur = stored.get(id) ?? null;
        const next = t(cur);
        if (next === Unchanged) return { payment: cur, changed: false };
        stored.set(id, next);
        return { payment: next, changed: true };
      },
    } as unknown as PaymentStore;
    const gateway = {
      charge: async (r: { orderId: string }) => {
        charges.push(r.orderId);
        return { status: "captured", paymentId: `ch_${r.orderId}` };
      },
    } as unknown as PaymentGateway;
    const published: Envelope[] = [];
    const publisher = { publish: async (e: Envelope) => void published.push(e) } as unknown as Publisher;
    const processDuration = { startTimer: () => () => 0 } as unknown as Histogram<"status">;
    const handlers = paymentHandlers({
      store,
      gateway,
      publisher,
      source: "payments",
      processDuration,
      chargeSettleWaitMs: 1_000,
      orderExists: async (id) => {
        lookups.push(id);
        return exists;
      },
    });
    return { handlers, lookups, charges, published };
  }

  const reserved = (orderId: string) =>
    makeEvent(
      "StockReserved",
      {
        orderId,
        customerId: "cus_1",
        items: [{ sku: "SKU-1", quantity: 1 }],
        total: 1250,
        currency: "EUR",
        expiresAt: null,
      },
      { aggregateId: orderId, source: "inventory" },
    );
  const placed = (orderId: string) =>
    makeEvent(
      "OrderPlaced",
      {
        orderId,
        customerId: "cus_1",
        email: "ada@example.com",
        items: [{ sku: "SKU-1", quantity: 1, unitPrice: 1250 }],
        total: 1250,
        currency: "EUR",
        placedAt: now.toISOString(),
        timeoutAt: now.toISOString(),
      },
      { aggregateId: orderId, source: "orders" },
    );

  void it("charges an order whose OrderPlaced it received, without looking the order up", async () => {
    const h = harness(false);
    await h.handlers.orders.OrderPlaced!(placed("o1"), ctx());
    await h.handlers.inventory.StockReserved!(reserved("o1"), ctx());
    assert.deepEqual(h.lookups, []);
    assert.deepEqual(h.charges, ["o1"]);
    assert.deepEqual(
      h.published.map((e) => e.type),
      ["PaymentCaptured"],
    );
  });

  void it("looks up an order it did not see: charges it if it exists, refuses (ORDER_NOT_FOUND) if not", async () => {
    const yes = harness(true);
    await yes.handlers.inventory.StockReserved!(reserved("o2"), ctx());
    assert.deepEqual(yes.lookups, ["o2"]);
    assert.deepEqual(yes.charges, ["o2"]);
    const no = harness(false);
    await assert.rejects(
      no.handlers.inventory.StockReserved!(reserved("o3"), ctx()),
      /ORDER_NOT_FOUND|has no OrderPlaced/,
    );
    assert.deepEqual(no.charges, []);
    assert.deepEqual(no.published, []);
  });
});
