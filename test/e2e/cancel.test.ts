/**
 * Cancellation on request end to end, on the real stack (real nats-server, every service, both simulators):
 * `POST /orders/{id}/cancel` of a PENDING order and of a CONFIRMED one within the window (refunded, sold units
 * returned, e-mailed), its idempotency, who may call it, the closed window (409), and a thousand cancellations
 * racing their captures, each order ending in exactly one outcome with money and stock consistent (the checker's
 * invariants, with the cancellation window).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { customerAuth, operatorAuth } from "../helpers/auth.js";
import { getJson, startSystem, type System } from "../helpers/system.js";

const WINDOW_MS = 8_000;

const catalog = [
  { sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 100_000 },
  { sku: "SKU-B", name: "Widget B", price: 399, currency: "EUR", stock: 100_000 },
  { sku: "SKU-RACE", name: "Contended", price: 100, currency: "EUR", stock: 400 },
];

async function cancel(
  sys: System,
  orderId: string,
  auth: { authorization: string } | null,
): Promise<{ status: number; type: string | null; body: any }> {
  const res = await fetch(`${sys.urls.orders}/orders/${orderId}/cancel`, {
    method: "POST",
    headers: auth ?? {},
  });
  return { status: res.status, type: res.headers.get("content-type"), body: await res.json() };
}

/** The order as the orders API shows it to an operator. */
const orderOf = (sys: System, id: string) => getJson(`${sys.urls.orders}/orders/${id}`);

/** The gateway's summary of one order's money (captured, refunded, net, charges, refunds). */
async function moneyOf(sys: System, id: string) {
  const s = await getJson(`${sys.urls.gateway}/v1/ledger/summary`);
  return s.orders.find((o: { orderId: string }) => o.orderId === id) ?? { captured: 0, refunded: 0, net: 0 };
}

describe("order cancellation end to end", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({
      catalog,
      env: {
        CANCEL_WINDOW_MS: String(WINDOW_MS),
        // The race places a thousand orders from a few customers as fast as it can.
        ORDER_RATE_LIMIT_MAX: "0",
        MAX_ORDERS_IN_FLIGHT: "0",
        SKU_UNITS_PER_CUSTOMER: "0",
      },
    });
  });
  after(async () => {
    await sys?.stop();
  });

  test("a PENDING order is cancelled: nothing kept, stock released, e-mailed once", async () => {
    // A slow gateway keeps the order PENDING while the customer cancels it.
    await sys.setGatewayFaults({ latencyMs: 1_500 });
    try {
      const placed = await sys.placeOrder({
        customerId: "cus-pending",
        email: "p@example.com",
        items: [{ sku: "SKU-B", quantity: 3 }],
      });
      assert.equal(placed.status, 202);
      const id = placed.body.orderId as string;
      const r = await cancel(sys, id, await customerAuth("cus-pending"));
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.status, "CANCELLED");
      assert.equal(r.body.reason, "customer_request");
      const done = await sys.waitForTerminal(id);
      assert.equal(done.status, "CANCELLED");
    } finally {
      await sys.setGatewayFaults({ latencyMs: 0 });
    }
    await sys.assertInvariants();
  });

  test("a CONFIRMED order is cancelled within the window: refunded, units returned, told", async () => {
    const before = await getJson(`${sys.urls.inventory}/inventory/SKU-A`);
    const placed = await sys.placeOrder({
      customerId: "cus-confirmed",
      email: "c@example.com",
      items: [{ sku: "SKU-A", quantity: 2 }],
    });
    const id = placed.body.orderId as string;
    assert.equal((await sys.waitForTerminal(id)).status, "CONFIRMED");
    const r = await cancel(sys, id, await customerAuth("cus-confirmed"));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual([r.body.status, r.body.reason], ["CANCELLED", "customer_request"]);
    assert.deepEqual([(await orderOf(sys, id)).status], ["CANCELLED"]);
    // Idempotent: cancelling again answers the same and appends nothing.
    const again = await cancel(sys, id, await customerAuth("cus-confirmed"));
    assert.equal(again.status, 200);
    assert.deepEqual(again.body, r.body);

    const report = await sys.assertInvariants({ cancelWindowMs: WINDOW_MS });
    assert.ok(report.orders.cancelled >= 1);
    const money = await moneyOf(sys, id);
    assert.deepEqual([money.captured, money.refunded, money.net], [2500, 2500, 0]);
    const after = await getJson(`${sys.urls.inventory}/inventory/SKU-A`);
    assert.deepEqual(
      [after.available, after.committed],
      [before.available, before.committed],
      "the sold units are back",
    );
    const timeline = await getJson(`${sys.urls.audit}/audit/orders/${id}`);
    const types = timeline.events.map((e: { type: string }) => e.type);
    for (const t of [
      "OrderConfirmed",
      "StockCommitted",
      "OrderCancelled",
      "StockReleased",
      "PaymentRefunded",
    ])
      assert.ok(types.includes(t), `timeline has ${t}: ${types.join(", ")}`);
    assert.equal(types.filter((t: string) => t === "OrderCancelled").length, 1);
    assert.equal(types.filter((t: string) => t === "NotificationSent").length, 2, "both e-mails recorded");
    const mails = await getJson(`${sys.urls.mail}/v1/messages`);
    const kinds = mails.messages
      .filter((m: { tags?: Record<string, string> }) => m.tags?.["orderId"] === id)
      .map((m: { tags: Record<string, string> }) => m.tags["kind"])
      .sort();
    assert.deepEqual(kinds, ["order_cancelled", "order_confirmed"]);
  });

  test("only the owner or an operator cancels: another customer gets 404, no token 401", async () => {
    const placed = await sys.placeOrder({
      customerId: "cus-owner",
      email: "o@example.com",
      items: [{ sku: "SKU-B", quantity: 1 }],
    });
    const id = placed.body.orderId as string;
    await sys.waitForTerminal(id);
    const stranger = await cancel(sys, id, await customerAuth("cus-stranger"));
    assert.equal(stranger.status, 404);
    assert.match(stranger.type ?? "", /application\/problem\+json/);
    const anonymous = await cancel(sys, id, null);
    assert.equal(anonymous.status, 401);
    const unknown = await cancel(sys, "ord_000000000ffffffffffffffff", await operatorAuth());
    assert.equal(unknown.status, 404);
    const malformed = await cancel(sys, "not an id", await operatorAuth());
    assert.equal(malformed.status, 400);
    assert.notEqual((await orderOf(sys, id)).status, "CANCELLED", "nothing changed by the refusals");
    const operator = await cancel(sys, id, await operatorAuth());
    assert.equal(operator.status, 200, JSON.stringify(operator.body));
    assert.equal(operator.body.reason, "operator_request");
    await sys.assertInvariants();
  });

  test("after the window a CONFIRMED order is not cancelled: 409 problem+json, nothing changes", async () => {
    const placed = await sys.placeOrder({
      customerId: "cus-late",
      email: "l@example.com",
      items: [{ sku: "SKU-B", quantity: 1 }],
    });
    const id = placed.body.orderId as string;
    const confirmed = await sys.waitForTerminal(id);
    assert.equal(confirmed.status, "CONFIRMED");
    // The window is a span of time: wait it out (the clock is the thing under test).
    const closesAt = Date.parse(confirmed.updatedAt) + WINDOW_MS;
    await new Promise((r) => setTimeout(r, Math.max(0, closesAt - Date.now()) + 100));
    const r = await cancel(sys, id, await customerAuth("cus-late"));
    assert.equal(r.status, 409, JSON.stringify(r.body));
    assert.match(r.type ?? "", /application\/problem\+json/);
    assert.equal(r.body.type.endsWith("/cancel-window-closed"), true, r.body.type);
    assert.equal((await orderOf(sys, id)).status, "CONFIRMED");
    assert.equal((await moneyOf(sys, id)).net, 1 * 399);
    await sys.assertInvariants();
  });

  test("a thousand cancellations racing their captures: one outcome per order, money and stock consistent", async () => {
    const N = 1_000;
    const CUSTOMERS = 20;
    const CONCURRENCY = 60;
    // A gateway answering in 30–90 ms puts the capture inside the spread of the cancels' delays below.
    await sys.setGatewayFaults({ latencyMs: 30, latencyJitterMs: 60 });
    // Which orders were confirmed before their cancellation landed (the capture won) — read off the ORDERS subjects.
    const confirmedFirst = new Set<string>();
    const sub = sys.nc.subscribe("orders.*", {
      callback: (_err, m) => {
        try {
          const e = decodeEvent(m.data);
          if (e.type === "OrderConfirmed") confirmedFirst.add(e.aggregate_id);
        } catch {
          /* not an event */
        }
      },
    });
    const t0 = Date.now();
    const outcomes: { id: string; cancel: number; body: any }[] = [];
    let next = 0;
    const worker = async () => {
      while (next < N) {
        const i = next++;
        const customerId = `race-${i % CUSTOMERS}`;
        const placed = await sys.placeOrder({
          customerId,
          email: `${customerId}@example.com`,
          items: [
            { sku: "SKU-RACE", quantity: 1 },
            { sku: "SKU-A", quantity: 1 },
          ],
        });
        assert.equal(placed.status, 202, JSON.stringify(placed.body));
        const id = placed.body.orderId as string;
        // Cancel after 0–300 ms: before the reservation, during the charge, or after the confirmation.
        await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 300)));
        const r = await cancel(sys, id, await customerAuth(customerId));
        outcomes.push({ id, cancel: r.status, body: r.body });
      }
    };
    try {
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    } finally {
      await sys.setGatewayFaults({ latencyMs: 0, latencyJitterMs: 0 });
    }
    const elapsed = Date.now() - t0;
    // Every cancel is answered CANCELLED (within the window) — none refused, none failed.
    const answers = new Map<number, number>();
    for (const o of outcomes) answers.set(o.cancel, (answers.get(o.cancel) ?? 0) + 1);
    assert.deepEqual([...answers], [[200, N]], `cancel answers: ${JSON.stringify([...answers])}`);
    assert.ok(outcomes.every((o) => o.body.status === "CANCELLED"));

    // Every invariant, with the window: no cancellation after it.
    const report = await sys.assertInvariants({ cancelWindowMs: WINDOW_MS });
    assert.equal(report.orders.pending, 0);
    sub.unsubscribe();

    // Both sides of the race were hit: orders cancelled before any capture, and captures refunded.
    const ledger = await getJson(`${sys.urls.gateway}/v1/ledger/summary`);
    const byId = new Map<string, { captured: number; refunded: number; net: number; refunds: number }>(
      ledger.orders.map((o: { orderId: string }) => [o.orderId, o]),
    );
    let neverCharged = 0;
    let refunded = 0;
    for (const o of outcomes) {
      const m = byId.get(o.id);
      assert.equal(m?.net ?? 0, 0, `order ${o.id} nets zero`);
      if (!m || m.captured === 0) neverCharged++;
      else if (m.refunds === 1) refunded++;
    }
    assert.equal(neverCharged + refunded, N);
    // Both sides of the capture: cancels that found the order PENDING (charged or not) and cancels after it.
    const afterCapture = outcomes.filter((o) => confirmedFirst.has(o.id)).length;
    const split = `never charged ${neverCharged}, refunded ${refunded} (${afterCapture} of them cancelled after their confirmation)`;
    assert.ok(afterCapture > 0 && afterCapture < N, split);
    const stock = await getJson(`${sys.urls.inventory}/inventory/SKU-RACE`);
    assert.deepEqual([stock.available, stock.reserved, stock.committed], [400, 0, 0]);
    console.log(`# ${N} cancels racing captures in ${elapsed} ms (then drained and checked): ${split}`);
  });
});
