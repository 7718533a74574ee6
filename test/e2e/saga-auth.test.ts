/**
 * The saga with NATS authentication on: provisioning as `admin`, every service on its own restricted user
 * (src/lib/messaging/permissions.ts). A permission a service lacks shows up here as a service that does not start,
 * an order that never completes, or a permissions violation in the server's log.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { getJson, startSystem, type System } from "../helpers/system.js";

const catalog = [
  { sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 100 },
  { sku: "SKU-FEW", name: "Scarce", price: 5000, currency: "EUR", stock: 1 },
];

const order = (customerId: string, items: { sku: string; quantity: number }[]) => ({
  customerId,
  email: `${customerId}@example.com`,
  items,
});

describe("order saga with NATS authentication, each service on its own user", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({ catalog, auth: true });
  });
  after(async () => {
    await sys?.stop();
  });

  test("confirmed and cancelled orders complete, every service ready, no permissions violation", async () => {
    await sys.untilAllReady();
    const ok = await sys.placeOrder(order("auth-alice", [{ sku: "SKU-A", quantity: 2 }]));
    assert.equal(ok.status, 202);
    const few = await sys.placeOrder(order("auth-bob", [{ sku: "SKU-FEW", quantity: 2 }]));
    assert.equal(few.status, 202);
    assert.equal((await sys.waitForTerminal(ok.body.orderId)).status, "CONFIRMED");
    assert.equal((await sys.waitForTerminal(few.body.orderId)).status, "CANCELLED");
    await sys.assertInvariants();
    const timeline = await getJson(`${sys.urls.audit}/audit/orders/${ok.body.orderId}`);
    const types = timeline.events.map((e: { type: string }) => e.type);
    for (const t of ["OrderPlaced", "StockReserved", "PaymentCaptured", "OrderConfirmed", "NotificationSent"])
      assert.ok(types.includes(t), `audit timeline lacks ${t}: ${types.join(", ")}`);
    const customers = await getJson(`${sys.urls.orders}/orders?customerId=auth-alice`);
    assert.ok(JSON.stringify(customers).includes(ok.body.orderId));
    const violations = sys.nats.output.filter((l) => /Violation/.test(l));
    assert.deepEqual(violations, []);
  });
});
