/**
 * Abuse limits of POST /orders (issue 11 part 4; docs/security.md, OWASP API4 and API6) on a whole in-process system
 * with tight limits: a per-customer rate limit (429 problem+json with Retry-After, other customers unaffected), caps
 * on units per line and per order, and a per-customer cap on one SKU so that one greedy buyer cannot take a hot
 * SKU's stock in a race against everyone else.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { getJson, startSystem, type System } from "../helpers/system.js";

const RATE = 8;
const SKU_CAP = 3;
const HOT_STOCK = 12;
const catalog = [
  { sku: "SKU-A", name: "A", price: 100, currency: "EUR", stock: 10_000 },
  { sku: "SKU-B", name: "B", price: 200, currency: "EUR", stock: 10_000 },
  { sku: "SKU-C", name: "C", price: 300, currency: "EUR", stock: 10_000 },
  { sku: "SKU-D", name: "D", price: 400, currency: "EUR", stock: 10_000 },
  { sku: "SKU-HOT", name: "Hot", price: 5_000, currency: "EUR", stock: HOT_STOCK },
];
const order = (customerId: string, items: { sku: string; quantity: number }[]) => ({
  customerId,
  email: `${customerId}@example.com`,
  items,
});

describe("abuse limits of POST /orders", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({
      catalog,
      env: {
        ORDER_RATE_LIMIT_MAX: String(RATE),
        ORDER_RATE_LIMIT_WINDOW_MS: "60000",
        MAX_LINE_QUANTITY: "10",
        MAX_ORDER_QUANTITY: "15",
        SKU_UNITS_PER_CUSTOMER: String(SKU_CAP),
      },
    });
  });
  after(async () => {
    await sys?.stop();
  });

  test("a customer over the rate limit gets 429 problem+json with Retry-After; another customer is not slowed", async () => {
    const burst = await Promise.all(
      // Three of each of four SKUs: whichever requests are admitted stay within the customer's share of each.
      Array.from({ length: RATE + 4 }, (_, i) =>
        sys.placeOrder(order("hasty", [{ sku: ["SKU-A", "SKU-B", "SKU-C", "SKU-D"][i % 4]!, quantity: 1 }])),
      ),
    );
    const accepted = burst.filter((r) => r.status === 202);
    const limited = burst.filter((r) => r.status === 429);
    assert.equal(accepted.length, RATE, burst.map((r) => r.status).join());
    assert.equal(limited.length, 4);
    for (const r of limited) {
      assert.match(r.headers.get("content-type") ?? "", /^application\/problem\+json/);
      assert.match(r.body.type, /\/rate-limited$/);
      assert.equal(r.body.status, 429);
      assert.ok(Number(r.headers.get("retry-after")) > 0, `Retry-After ${r.headers.get("retry-after")}`);
    }
    const calm = await sys.placeOrder(order("calm", [{ sku: "SKU-A", quantity: 1 }]));
    assert.equal(calm.status, 202, "the limit is per customer");
    for (const r of [...accepted, calm]) await sys.waitForTerminal(r.body.orderId);
  });

  test("units per line and per order are capped; a customer's share of one SKU too", async () => {
    const line = await sys.placeOrder(order("bulk", [{ sku: "SKU-A", quantity: 11 }]));
    assert.equal(line.status, 400, JSON.stringify(line.body));
    assert.ok(line.body.errors.some((e: { pointer: string }) => e.pointer === "/body/items/0/quantity"));
    const total = await sys.placeOrder(
      order("bulk", [
        { sku: "SKU-A", quantity: 10 },
        { sku: "SKU-B", quantity: 6 },
      ]),
    );
    assert.equal(total.status, 422, JSON.stringify(total.body));
    assert.match(total.body.type, /\/order-too-large$/);
    const share = await sys.placeOrder(order("bulk", [{ sku: "SKU-C", quantity: SKU_CAP + 1 }]));
    assert.equal(share.status, 422, JSON.stringify(share.body));
    assert.match(share.body.type, /\/sku-limit$/);
    assert.equal(share.body.errors[0].pointer, "/body/items/0/quantity");
    const fits = await sys.placeOrder(order("bulk", [{ sku: "SKU-C", quantity: SKU_CAP }]));
    assert.equal(fits.status, 202);
    const more = await sys.placeOrder(order("bulk", [{ sku: "SKU-C", quantity: 1 }]));
    assert.equal(more.status, 422, "the share counts across orders");
    const other = await sys.placeOrder(order("bulk", [{ sku: "SKU-B", quantity: 1 }]));
    assert.equal(other.status, 202, "other SKUs have their own share");
    await sys.waitForTerminal(fits.body.orderId);
    await sys.waitForTerminal(other.body.orderId);
  });

  test("the hot-SKU race with one greedy customer: the greedy one gets its share, the others the rest", async () => {
    const greedy = Array.from({ length: 6 }, () =>
      sys.placeOrder(order("greedy-bot", [{ sku: "SKU-HOT", quantity: 1 }])),
    );
    const others = Array.from({ length: 12 }, (_, i) =>
      sys.placeOrder(order(`fan-${i}`, [{ sku: "SKU-HOT", quantity: 1 }])),
    );
    const [g, o] = await Promise.all([Promise.all(greedy), Promise.all(others)]);
    const greedyAccepted = g.filter((r) => r.status === 202);
    assert.equal(greedyAccepted.length, SKU_CAP, g.map((r) => r.status).join());
    assert.ok(
      g.filter((r) => r.status !== 202).every((r) => r.status === 422 && /sku-limit$/.test(r.body.type)),
    );
    assert.ok(o.every((r) => r.status === 202));
    const finals = await Promise.all(
      [...greedyAccepted, ...o].map((r) => sys.waitForTerminal(r.body.orderId, 60_000)),
    );
    const confirmed = finals.filter((f) => f.status === "CONFIRMED");
    assert.equal(confirmed.length, HOT_STOCK, "the stock is sold out, to several buyers");
    assert.ok(confirmed.filter((f) => f.customerId === "greedy-bot").length <= SKU_CAP);
    const stock = await sys.until("hot SKU settled", async () => {
      const s = await getJson(`${sys.urls.inventory}/inventory/SKU-HOT`);
      return s.reserved === 0 ? s : undefined;
    });
    assert.equal(stock.committed, HOT_STOCK);
    await sys.assertInvariants();
  });
});
