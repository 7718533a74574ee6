/** The payment state machine (`src/services/payments/payment.ts`): pure decisions and transitions. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Unchanged } from "../../src/lib/kv.js";
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
