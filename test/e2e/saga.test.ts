import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { getJson, startSystem, type System } from "../helpers/system.js";
import { operatorFetch } from "../helpers/auth.js";

const catalog = [
  { sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 10_000 },
  { sku: "SKU-B", name: "Widget B", price: 399, currency: "EUR", stock: 10_000 },
  { sku: "SKU-FEW", name: "Scarce", price: 5000, currency: "EUR", stock: 3 },
  { sku: "SKU-RACE", name: "Contended", price: 100, currency: "EUR", stock: 50 },
];

const order = (customerId: string, items: { sku: string; quantity: number }[]) => ({
  customerId,
  email: `${customerId}@example.com`,
  items,
});

describe("order saga end to end", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({ catalog });
  });
  after(async () => {
    await sys?.stop();
  });

  test("happy path: placed → CONFIRMED, charged once, stock committed, e-mailed, audited", async () => {
    const res = await sys.placeOrder(
      order("alice", [
        { sku: "SKU-A", quantity: 2 },
        { sku: "SKU-B", quantity: 1 },
      ]),
    );
    assert.equal(res.status, 202);
    assert.equal(res.body.status, "PENDING");
    assert.equal(res.headers.get("location"), `/orders/${res.body.orderId}`);
    const id = res.body.orderId as string;
    const done = await sys.waitForTerminal(id);
    assert.equal(done.status, "CONFIRMED");
    assert.equal(done.total, 2 * 1250 + 399);
    assert.deepEqual(
      done.items.map((l: { sku: string; unitPrice: number }) => [l.sku, l.unitPrice]),
      [
        ["SKU-A", 1250],
        ["SKU-B", 399],
      ],
    );
    await sys.assertInvariants();
    const ledger = await getJson(`${sys.urls.gateway}/v1/ledger?orderId=${id}`);
    assert.equal(
      ledger.entries.filter(
        (e: { kind: string; status: string }) => e.kind === "charge" && e.status === "captured",
      ).length,
      1,
    );
    const timeline = await getJson(`${sys.urls.audit}/audit/orders/${id}`);
    const types = timeline.events.map((e: { type: string }) => e.type);
    for (const t of [
      "OrderPlaced",
      "StockReserved",
      "PaymentCaptured",
      "OrderConfirmed",
      "StockCommitted",
      "NotificationSent",
    ]) {
      assert.ok(types.includes(t), `timeline has ${t}: ${types.join(", ")}`);
    }
    assert.equal(types[0], "OrderPlaced");
    assert.ok(
      timeline.events.every((e: { trace_id: string }) => e.trace_id === timeline.events[0].trace_id),
      "one trace per order",
    );
    const verify = await getJson(`${sys.urls.audit}/audit/verify`);
    assert.equal(verify.ok, true);
  });

  test("out of stock → CANCELLED (out_of_stock), nothing charged, nothing held", async () => {
    const before = await getJson(`${sys.urls.inventory}/inventory/SKU-FEW`);
    const res = await sys.placeOrder(
      order("bob", [
        { sku: "SKU-A", quantity: 1 },
        { sku: "SKU-FEW", quantity: 4 },
      ]),
    );
    assert.equal(res.status, 202);
    const done = await sys.waitForTerminal(res.body.orderId);
    assert.equal(done.status, "CANCELLED");
    assert.equal(done.reason, "out_of_stock");
    const ledger = await getJson(`${sys.urls.gateway}/v1/ledger?orderId=${res.body.orderId}`);
    assert.equal(ledger.entries.length, 0);
    const after = await getJson(`${sys.urls.inventory}/inventory/SKU-FEW`);
    assert.equal(after.available, before.available);
    await sys.assertInvariants();
  });

  test("decline → CANCELLED (payment_declined), stock released", async () => {
    const before = await getJson(`${sys.urls.inventory}/inventory/SKU-B`);
    const res = await sys.placeOrder(order("decline-carol", [{ sku: "SKU-B", quantity: 3 }]));
    const done = await sys.waitForTerminal(res.body.orderId);
    assert.equal(done.status, "CANCELLED");
    assert.equal(done.reason, "payment_declined");
    await sys.until("stock released", async () => {
      const s = await getJson(`${sys.urls.inventory}/inventory/SKU-B`);
      return s.available === before.available && s.reserved === before.reserved;
    });
    await sys.assertInvariants();
  });

  test("duplicate POST with the same Idempotency-Key → one order; another body → 422", async () => {
    const body = order("dave", [{ sku: "SKU-A", quantity: 1 }]);
    const key = `key-${Date.now()}`;
    const first = await sys.placeOrder(body, { "idempotency-key": key });
    const second = await sys.placeOrder(body, { "idempotency-key": key });
    assert.equal(first.status, 202);
    assert.equal(second.status, 202);
    assert.equal(second.body.orderId, first.body.orderId);
    assert.equal(second.headers.get("idempotent-replayed"), "true");
    const other = await sys.placeOrder(order("dave", [{ sku: "SKU-A", quantity: 2 }]), {
      "idempotency-key": key,
    });
    assert.equal(other.status, 422);
    assert.match(other.headers.get("content-type") ?? "", /application\/problem\+json/);
    await sys.waitForTerminal(first.body.orderId);
    const list = await getJson(`${sys.urls.orders}/orders?customerId=dave`);
    assert.equal(list.orders.length, 1, "one order for the customer");
    await sys.assertInvariants();
  });

  test("invalid input → 400 problem+json naming the field; unknown SKU → 422; oversized → 413", async () => {
    const bad = await sys.placeOrder({
      customerId: "x",
      email: "not-an-email",
      items: [{ sku: "SKU-A", quantity: 0 }],
    });
    assert.equal(bad.status, 400);
    assert.match(bad.headers.get("content-type") ?? "", /application\/problem\+json/);
    const pointers = bad.body.errors.map((e: { pointer: string }) => e.pointer);
    assert.ok(pointers.includes("/body/email"), pointers.join());
    assert.ok(pointers.includes("/body/items/0/quantity"), pointers.join());
    const unknown = await sys.placeOrder(order("erin", [{ sku: "NOPE", quantity: 1 }]));
    assert.equal(unknown.status, 422);
    const huge = await sys.placeOrder({ customerId: "x".repeat(200_000), email: "a@b.c", items: [] });
    assert.equal(huge.status, 413);
    const notJson = await sys.placeOrder("{oops");
    assert.equal(notJson.status, 400);
    const missing = await operatorFetch(`${sys.urls.orders}/orders/ord_doesnotexist`);
    assert.equal(missing.status, 404);
  });

  test("200 concurrent orders for one SKU with stock 50 → exactly 50 units committed", async () => {
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        sys.placeOrder(order(`racer-${i}`, [{ sku: "SKU-RACE", quantity: 1 }])),
      ),
    );
    assert.ok(results.every((r) => r.status === 202));
    const finals = await Promise.all(results.map((r) => sys.waitForTerminal(r.body.orderId, 60_000)));
    const confirmed = finals.filter((o) => o.status === "CONFIRMED").length;
    assert.equal(confirmed, 50);
    assert.equal(finals.filter((o) => o.status === "CANCELLED" && o.reason === "out_of_stock").length, 150);
    const stock = await sys.until("race settled", async () => {
      const s = await getJson(`${sys.urls.inventory}/inventory/SKU-RACE`);
      return s.committed === 50 && s.reserved === 0 ? s : undefined;
    });
    assert.equal(stock.available, 0);
    await sys.assertInvariants();
  });

  test("gateway outage: orders wait, breaker opens, consumer pauses, all complete after recovery without burning attempts", async () => {
    await sys.setGatewayFaults({ outage: true });
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        sys.placeOrder(order(`outage-${i}`, [{ sku: "SKU-A", quantity: 1 }])),
      ),
    );
    assert.ok(results.every((r) => r.status === 202));
    // The breaker opens and pauses the payments consumer.
    await sys.until("payments consumer paused", async () => {
      const m = await (await fetch(`${sys.urls.payments}/metrics`)).text();
      return /shopstream_consumer_paused\{[^}]*consumer="payments-inventory"[^}]*\} 1/.test(m);
    });
    const pending = await getJson(`${sys.urls.orders}/orders/${results[0]!.body.orderId}`);
    assert.equal(pending.status, "PENDING", "orders wait during the outage");
    await sys.setGatewayFaults({ outage: false });
    const finals = await Promise.all(results.map((r) => sys.waitForTerminal(r.body.orderId, 60_000)));
    assert.ok(
      finals.every((o) => o.status === "CONFIRMED"),
      finals.map((o) => o.status).join(),
    );
    const metrics = await (await fetch(`${sys.urls.payments}/metrics`)).text();
    assert.doesNotMatch(metrics, /shopstream_dead_lettered_total\{[^}]*consumer="payments-inventory"/);
    const retries = [
      ...metrics.matchAll(
        /shopstream_messages_handled_total\{[^}]*consumer="payments-inventory"[^}]*outcome="retry"[^}]*\} (\d+)/g,
      ),
    ]
      .map((m) => Number(m[1]))
      .reduce((a, b) => a + b, 0);
    assert.ok(
      retries <= 10,
      `at most the calls that tripped the breaker used an attempt (retries=${retries})`,
    );
    await sys.assertInvariants();
  });
});
