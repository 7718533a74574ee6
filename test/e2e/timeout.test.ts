import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { getJson, startSystem, type System } from "../helpers/system.js";
import { operatorFetch } from "../helpers/auth.js";

const order = (customerId: string) => ({
  customerId,
  email: `${customerId}@example.com`,
  items: [{ sku: "SKU-MUG", quantity: 1 }],
});

describe("order timeout", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({ orderTimeoutMs: 2_000 });
  });
  after(async () => {
    await sys?.stop();
  });

  test("an order still pending at its deadline is cancelled (timeout), stock released, money nets zero", async () => {
    const stockBefore = await getJson(`${sys.urls.inventory}/inventory/SKU-MUG`);
    await sys.setGatewayFaults({ outage: true });
    const res = await sys.placeOrder(order("slowpoke"));
    assert.equal(res.status, 202);
    const done = await sys.waitForTerminal(res.body.orderId, 20_000);
    assert.equal(done.status, "CANCELLED");
    assert.equal(done.reason, "timeout");
    await sys.setGatewayFaults({ outage: false });
    // The charge was already in flight when the order timed out (payments cannot know whether the
    // gateway saw it), so after the outage it settles and is refunded: the order nets zero.
    await sys.until("payment settled", async () => {
      const p = await operatorFetch(`${sys.urls.payments}/payments/${res.body.orderId}`);
      const status = p.status === 200 ? ((await p.json()) as { status: string }).status : undefined;
      return status === "cancelled" || status === "refunded";
    });
    await sys.until("stock released", async () => {
      const s = await getJson(`${sys.urls.inventory}/inventory/SKU-MUG`);
      return s.available === stockBefore.available && s.reserved === stockBefore.reserved;
    });
    const summary = await getJson(`${sys.urls.gateway}/v1/ledger/summary?orderId=${res.body.orderId}`);
    assert.equal(summary.orders[0]?.net ?? 0, 0);
    await sys.assertInvariants();
  });

  test("a capture that lands after the timeout is refunded: the order nets zero", async () => {
    // The gateway answers after the client timeout: each attempt is captured at the gateway but
    // unheard by payments, which retries with the same idempotency key while the order times out.
    await sys.setGatewayFaults({ latencyMs: 2_500 });
    const res = await sys.placeOrder(order("late-capture"));
    const done = await sys.waitForTerminal(res.body.orderId, 20_000);
    assert.equal(done.status, "CANCELLED");
    assert.equal(done.reason, "timeout");
    await sys.setGatewayFaults({ latencyMs: 0 });
    await sys.until("capture refunded", async () => {
      const s = await getJson(`${sys.urls.gateway}/v1/ledger/summary?orderId=${res.body.orderId}`);
      const o = s.orders[0];
      return o && o.captured > 0 && o.net === 0 ? o : undefined;
    });
    await sys.assertInvariants();
  });
});
