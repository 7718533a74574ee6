/**
 * Admission control of POST /orders (docs/architecture.md, "Admission control"): beyond MAX_ORDERS_IN_FLIGHT orders
 * placed and not yet closed on a replica, a new order is shed with 503 problem+json and Retry-After, before anything
 * is claimed, written, reserved or charged; it is accepted again once orders close (confirmed, cancelled, timed out),
 * and replicas count only their own orders, whoever decides them.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { startService, type RunningService } from "../../src/lib/service.js";
import { createOrdersService } from "../../src/services/orders/service.js";
import { runLoad, summarizeLoad } from "../../src/load/generator.js";
import { customerOf, getJson, startSystem, type System } from "../helpers/system.js";
import { AUTH_ENV, customerAuth, testTokens } from "../helpers/auth.js";

const LIMIT = 3;
const ORDER_TIMEOUT_MS = 8_000;

const catalog = [
  { sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 10_000 },
  // Ordered only by requests that are shed: its stock must never move.
  { sku: "SKU-SHED", name: "Never reserved", price: 700, currency: "EUR", stock: 100 },
];

const order = (customerId: string, sku = "SKU-A") => ({
  customerId,
  email: `${customerId}@example.com`,
  items: [{ sku, quantity: 1 }],
});

/** A gauge or counter of the orders service's /metrics (0 when absent). */
async function metric(ordersUrl: string, name: string): Promise<number> {
  const text = await (await fetch(`${ordersUrl}/metrics`)).text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}
const inFlight = (url: string) => metric(url, "shopstream_orders_in_flight");

/** POST /orders to a given orders replica. */
async function post(ordersUrl: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${ordersUrl}/orders`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(await customerAuth(customerOf(body))), ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as any };
}

function assertShed(res: { status: number; headers: Headers; body: any }, what: string): void {
  assert.equal(res.status, 503, `${what}: ${JSON.stringify(res.body)}`);
  assert.match(res.headers.get("content-type") ?? "", /^application\/problem\+json/, what);
  assert.match(res.headers.get("retry-after") ?? "", /^[12]$/, `${what}: Retry-After in seconds, 1 or 2`);
  assert.equal(res.body.status, 503, what);
  assert.match(res.body.type, /\/overloaded$/, what);
  assert.equal(res.body.orderId, undefined, what);
}

/** Customer ids of every OrderPlaced on the ORDERS stream. */
async function placedCustomers(sys: System): Promise<string[]> {
  const jsm = await jetstreamManager(sys.nc);
  const info = await jsm.streams.info("ORDERS");
  const out: string[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage("ORDERS", { seq }).catch(() => null);
    if (!m) continue;
    const e = decodeEvent(m.data);
    if (e.type === "OrderPlaced") out.push(e.data.customerId);
  }
  return out;
}

describe("admission control of POST /orders", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({
      catalog,
      orderTimeoutMs: ORDER_TIMEOUT_MS,
      // Charges answered after seconds must not time out at the client: the orders stay in flight, that is all.
      env: { MAX_ORDERS_IN_FLIGHT: String(LIMIT), GATEWAY_TIMEOUT_MS: "30000" },
    });
  });
  after(async () => {
    await sys?.stop();
  });

  test("beyond the limit a POST is shed (503 problem+json, Retry-After) with nothing placed, reserved or charged; accepted again once orders complete", async () => {
    const shedSkuBefore = await getJson(`${sys.urls.inventory}/inventory/SKU-SHED`);
    const skuABefore = await getJson(`${sys.urls.inventory}/inventory/SKU-A`);
    // Every charge takes 4 s: the admitted orders stay in flight while the rest is refused.
    await sys.setGatewayFaults({ latencyMs: 4_000 });

    // Twice the limit at once: exactly the limit is admitted (no overshoot between admission and append).
    const burst = await Promise.all(
      Array.from({ length: 2 * LIMIT }, (_, i) => sys.placeOrder(order(`burst-${i}`))),
    );
    const accepted = burst.filter((r) => r.status === 202);
    const refused = burst.filter((r) => r.status !== 202);
    assert.equal(accepted.length, LIMIT, burst.map((r) => r.status).join(","));
    for (const r of refused) assertShed(r, "burst");
    assert.equal(await inFlight(sys.urls.orders), LIMIT);

    // A keyed request shed now must not leave its key claimed.
    const keyed = order("shed-keyed", "SKU-SHED");
    const key = `admission-${Date.now()}`;
    assertShed(await sys.placeOrder(keyed, { "idempotency-key": key }), "keyed");
    assertShed(await sys.placeOrder(order("shed-plain", "SKU-SHED")), "plain");
    // The load generator counts shed requests apart: neither accepted nor failed.
    const load = await runLoad({
      ordersUrl: sys.urls.orders,
      mode: { kind: "open", ratePerSec: 20, durationMs: 500 },
      body: (i) => order(`shed-load-${i}`, "SKU-SHED"),
      token: async (customerId) => (await testTokens()).token(customerId),
    });
    const summary = summarizeLoad(load, 500);
    assert.ok(summary.shed > 0, JSON.stringify(summary));
    assert.deepEqual(summary, {
      sent: load.length,
      accepted: 0,
      shed: load.length,
      shedPerSec: summary.shed * 2,
      failed: 0,
    });
    for (const r of load) assert.deepEqual([r.httpStatus, r.shed, r.retryAfterS], [503, true, 1]);
    assert.equal(await metric(sys.urls.orders, "shopstream_orders_shed_total"), LIMIT + 2 + load.length);
    assert.equal(await metric(sys.urls.orders, "shopstream_orders_in_flight_limit"), LIMIT);

    await sys.setGatewayFaults({ latencyMs: 0 });
    for (const r of accepted) assert.equal((await sys.waitForTerminal(r.body.orderId)).status, "CONFIRMED");
    await sys.until("no order in flight", async () => (await inFlight(sys.urls.orders)) === 0);

    // Nothing was placed, indexed, reserved or charged for the shed requests.
    const acceptedIds = new Set(accepted.map((r) => r.body.orderId as string));
    const placed = await placedCustomers(sys);
    assert.equal(placed.length, LIMIT, placed.join(","));
    for (const c of placed) assert.match(c, /^burst-/);
    const shedCustomers = burst
      .map((r, i) => [r, `burst-${i}`] as const)
      .filter(([r]) => r.status !== 202)
      .map(([, c]) => c);
    for (const c of [...shedCustomers, "shed-keyed", "shed-plain", ...load.map((r) => `shed-load-${r.i}`)]) {
      assert.ok(!placed.includes(c), `no OrderPlaced for ${c}`);
      const list = await getJson(`${sys.urls.orders}/orders?customerId=${c}`);
      assert.deepEqual(list.orders, [], `no order indexed for ${c}`);
    }
    assert.deepEqual(await getJson(`${sys.urls.inventory}/inventory/SKU-SHED`), shedSkuBefore);
    const skuA = await getJson(`${sys.urls.inventory}/inventory/SKU-A`);
    assert.equal(skuABefore.available - skuA.available, LIMIT, "only the accepted orders took stock");
    const ledger = await getJson(`${sys.urls.gateway}/v1/ledger`);
    for (const e of ledger.entries as { orderId: string }[])
      assert.ok(acceptedIds.has(e.orderId), `ledger entry of ${e.orderId} is an accepted order's`);

    // Accepted again: the keyed request is a new order now (its 503 was not stored as the key's answer), and its
    // retry is the usual replay.
    const again = await sys.placeOrder(keyed, { "idempotency-key": key });
    assert.equal(again.status, 202, JSON.stringify(again.body));
    assert.equal(again.headers.get("idempotent-replayed"), null);
    const replay = await sys.placeOrder(keyed, { "idempotency-key": key });
    assert.equal(replay.status, 202);
    assert.equal(replay.headers.get("idempotent-replayed"), "true");
    assert.equal(replay.body.orderId, again.body.orderId);
    assert.equal((await sys.waitForTerminal(again.body.orderId)).status, "CONFIRMED");
    await sys.until("no order in flight", async () => (await inFlight(sys.urls.orders)) === 0);
    await sys.assertInvariants();
  });

  test("orders that time out close too: their places are free again after the timeout", async () => {
    await sys.setGatewayFaults({ outage: true });
    const placed = await Promise.all(
      Array.from({ length: LIMIT }, (_, i) => sys.placeOrder(order(`slow-${i}`))),
    );
    for (const r of placed) assert.equal(r.status, 202);
    assertShed(await sys.placeOrder(order("slow-extra")), "full while the gateway is down");
    for (const r of placed) {
      const done = await sys.waitForTerminal(r.body.orderId, ORDER_TIMEOUT_MS + 20_000);
      assert.equal(done.status, "CANCELLED");
      assert.equal(done.reason, "timeout");
    }
    await sys.until("no order in flight", async () => (await inFlight(sys.urls.orders)) === 0);
    await sys.setGatewayFaults({ outage: false });
    const next = await sys.placeOrder(order("after-timeouts"));
    assert.equal(next.status, 202, JSON.stringify(next.body));
    assert.equal((await sys.waitForTerminal(next.body.orderId)).status, "CONFIRMED");
    await sys.assertInvariants();
  });

  test("each replica counts its own orders, and learns of those another replica decides", async () => {
    const a = sys.urls.orders;
    let replicaB: RunningService<never> | undefined;
    try {
      replicaB = (await startService(createOrdersService(), {
        ...AUTH_ENV,
        NATS_URL: sys.nats.url,
        PORT: "0",
        LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
        ORDER_TIMEOUT_MS: String(ORDER_TIMEOUT_MS),
        MAX_ORDERS_IN_FLIGHT: String(LIMIT),
      })) as RunningService<never>;
      const b = replicaB.url;
      // From now on replica B makes every decision: A appends nothing but its OrderPlaced events, so A can only
      // learn that its orders closed from B's terminal events.
      await Promise.all([...sys.services.orders.ctx.runners.values()].map((r) => r.stop(5_000)));
      await sys.setGatewayFaults({ latencyMs: 3_000 });

      const onA = await Promise.all(
        Array.from({ length: LIMIT }, (_, i) => sys.placeOrder(order(`on-a-${i}`))),
      );
      for (const r of onA) assert.equal(r.status, 202);
      assertShed(await sys.placeOrder(order("on-a-extra")), "A is full");
      // A's orders do not count on B.
      const onB = await post(b, order("on-b"));
      assert.equal(onB.status, 202, JSON.stringify(onB.body));
      sys.accepted.add(onB.body.orderId);
      assert.equal(await inFlight(b), 1);
      assert.equal(await inFlight(a), LIMIT);

      await sys.setGatewayFaults({ latencyMs: 0 });
      // Read through B: a read on A is not how A may learn it.
      for (const id of [...onA.map((r) => r.body.orderId as string), onB.body.orderId as string])
        await sys.until(
          `${id} confirmed`,
          async () => (await getJson(`${b}/orders/${id}`)).status === "CONFIRMED",
        );
      await sys.until("A's orders closed on A", async () => (await inFlight(a)) === 0);
      await sys.until("B's order closed on B", async () => (await inFlight(b)) === 0);
      // B's order's terminal event reached A too, and changed nothing there (no negative count).
      assert.equal(await inFlight(a), 0);
      const next = await sys.placeOrder(order("on-a-next"));
      assert.equal(next.status, 202, JSON.stringify(next.body));
      await sys.until(
        "the next order confirmed",
        async () => (await getJson(`${b}/orders/${next.body.orderId}`)).status === "CONFIRMED",
      );
      await sys.until("A's next order closed on A", async () => (await inFlight(a)) === 0);
      await sys.assertInvariants();
    } finally {
      await replicaB?.stop();
    }
  });
});
