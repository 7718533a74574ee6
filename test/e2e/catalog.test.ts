/**
 * The operators' catalog and stock API end to end (issue 13, part 3), on the whole system with NATS authentication
 * (each service on its own user): a product added is orderable, a price change prices new orders only (an order
 * placed before keeps its price), restocks and write-offs move `available` once per Idempotency-Key, each change is
 * one event on INVENTORY and on the audit trail, and the checker's I3 holds with the adjustments.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { decodeEvent, Streams, type AnyEnvelope } from "../../src/lib/events/mod.js";
import { directGet } from "../../src/lib/messaging/direct.js";
import { customerAuth, operatorFetch } from "../helpers/auth.js";
import { getJson, startSystem, type System } from "../helpers/system.js";

const catalog = [{ sku: "SKU-A", name: "Widget A", price: 1000, currency: "EUR", stock: 100 }];

/** Every event on INVENTORY whose aggregate is `sku`. */
async function skuEvents(sys: System, sku: string): Promise<AnyEnvelope[]> {
  const jsm = await jetstreamManager(sys.nc);
  const out: AnyEnvelope[] = [];
  const info = await jsm.streams.info(Streams.INVENTORY);
  for (let seq = 1; seq <= info.state.last_seq;) {
    const m = await directGet(jsm, Streams.INVENTORY, { seq, next_by_subj: `inventory.${sku}.*` });
    if (!m) break;
    out.push(decodeEvent(m.data));
    seq = m.seq + 1;
  }
  return out;
}

async function send(sys: System, method: string, path: string, body: unknown, headers = {}) {
  const res = await operatorFetch(`${sys.urls.inventory}${path}`, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type") ?? "", body: JSON.parse(text) };
}

/** Places orders of `sku` until one is priced at `price` (the orders service learns prices by a KV watch). */
async function orderAt(sys: System, customer: string, sku: string, price: number) {
  return sys.until(`an order of ${sku} priced ${price}`, async () => {
    const r = await sys.placeOrder({
      customerId: customer,
      email: "c@example.com",
      items: [{ sku, quantity: 1 }],
    });
    if (r.status !== 202) return undefined;
    const done = await sys.waitForTerminal(r.body.orderId as string);
    return done.items[0].unitPrice === price ? done : undefined;
  });
}

describe("operator catalog and stock, end to end", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({ catalog, auth: true });
  });
  after(async () => {
    await sys?.stop();
  });

  test("a product added is orderable at its price; adding it again changes nothing; another one is 409", async () => {
    const product = { sku: "SKU-NEW", name: "New thing", price: 750, currency: "EUR", stock: 3 };
    const created = await send(sys, "POST", "/inventory/products", product);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.deepEqual(created.body, {
      sku: "SKU-NEW",
      name: "New thing",
      price: 750,
      currency: "EUR",
      initial: 3,
      adjusted: 0,
      available: 3,
      reserved: 0,
      committed: 0,
    });
    const again = await send(sys, "POST", "/inventory/products", product);
    assert.equal(again.status, 200);
    const other = await send(sys, "POST", "/inventory/products", { ...product, price: 1 });
    assert.equal(other.status, 409);
    assert.match(other.type, /application\/problem\+json/);
    const done = await orderAt(sys, "cat-new", "SKU-NEW", 750);
    assert.equal(done.status, "CONFIRMED");
    const added = (await skuEvents(sys, "SKU-NEW")).filter((e) => e.type === "ProductAdded");
    assert.equal(added.length, 1, "one ProductAdded for two adds");
  });

  test("a price change prices new orders; an order placed before keeps its price", async () => {
    const before = await orderAt(sys, "cat-price", "SKU-A", 1000);
    const changed = await send(sys, "PUT", "/inventory/SKU-A/price", { price: 1200 });
    assert.equal(changed.status, 200, JSON.stringify(changed.body));
    assert.equal(changed.body.price, 1200);
    assert.equal(changed.body.previousPrice, 1000);
    // The same price again is no change and no second event.
    assert.equal((await send(sys, "PUT", "/inventory/SKU-A/price", { price: 1200 })).status, 200);
    const afterChange = await orderAt(sys, "cat-price", "SKU-A", 1200);
    assert.equal(afterChange.total, 1200);
    const old = await getJson(`${sys.urls.orders}/orders/${before.orderId}`);
    assert.equal(old.items[0].unitPrice, 1000, "the earlier order keeps its price");
    assert.equal(old.total, 1000);
    const changes = (await skuEvents(sys, "SKU-A")).filter((e) => e.type === "PriceChanged");
    assert.deepEqual(
      changes.map((e) => e.type === "PriceChanged" && [e.data.previousPrice, e.data.price, e.data.revision]),
      [[1000, 1200, changed.body.revision]],
    );
    assert.equal((await send(sys, "PUT", "/inventory/SKU-NONE/price", { price: 1 })).status, 404);
  });

  test("restock and write-off move available once per Idempotency-Key, with a reason on the event", async () => {
    const start = await getJson(`${sys.urls.inventory}/inventory/SKU-A`);
    const key = { "idempotency-key": "delivery-4711" };
    const restock = await send(
      sys,
      "POST",
      "/inventory/SKU-A/adjustments",
      { quantity: 5, reason: "restock" },
      key,
    );
    assert.equal(restock.status, 200, JSON.stringify(restock.body));
    assert.equal(restock.body.available, start.available + 5);
    assert.equal(restock.body.adjusted, start.adjusted + 5);
    assert.equal(restock.body.replayed, false);
    const retry = await send(
      sys,
      "POST",
      "/inventory/SKU-A/adjustments",
      { quantity: 5, reason: "restock" },
      key,
    );
    assert.equal(retry.status, 200);
    assert.equal(retry.body.replayed, true);
    assert.equal(retry.body.available, start.available + 5, "applied once");
    const reused = await send(
      sys,
      "POST",
      "/inventory/SKU-A/adjustments",
      { quantity: 6, reason: "restock" },
      key,
    );
    assert.equal(reused.status, 422);
    const tooMany = await send(sys, "POST", "/inventory/SKU-A/adjustments", {
      quantity: -(start.available + 6),
      reason: "damaged",
    });
    assert.equal(tooMany.status, 409);
    assert.match(tooMany.type, /application\/problem\+json/);
    const zero = await send(sys, "POST", "/inventory/SKU-A/adjustments", { quantity: 0, reason: "lost" });
    assert.equal(zero.status, 422);
    const writeOff = await send(sys, "POST", "/inventory/SKU-A/adjustments", {
      quantity: -2,
      reason: "damaged",
      note: "dropped",
    });
    assert.equal(writeOff.status, 200);
    assert.equal(writeOff.body.available, start.available + 3);
    assert.equal(writeOff.body.adjusted, start.adjusted + 3);
    const adjusted = (await skuEvents(sys, "SKU-A")).filter((e) => e.type === "StockAdjusted");
    assert.deepEqual(
      adjusted.map(
        (e) => e.type === "StockAdjusted" && [e.data.quantity, e.data.reason, e.data.note ?? null],
      ),
      [
        [5, "restock", null],
        [-2, "damaged", "dropped"],
      ],
    );
    assert.equal(
      (await send(sys, "POST", "/inventory/SKU-NONE/adjustments", { quantity: 1, reason: "found" })).status,
      404,
    );
  });

  test("the catalog routes are operator-only: a customer's token gets 403 and changes nothing", async () => {
    const res = await fetch(`${sys.urls.inventory}/inventory/SKU-A/price`, {
      method: "PUT",
      headers: { "content-type": "application/json", ...(await customerAuth("cat-mallory")) },
      body: JSON.stringify({ price: 1 }),
    });
    assert.equal(res.status, 403);
    assert.notEqual((await getJson(`${sys.urls.inventory}/inventory/SKU-A`)).price, 1);
  });

  test("every change is on the audit trail, and the invariants hold (I3 with the adjustments)", async () => {
    await sys.assertInvariants();
    const types = new Map<string, number>();
    for (let after = 0; ;) {
      const page = await getJson(`${sys.urls.audit}/audit/events?after=${after}&limit=1000`);
      for (const e of page.events as { type: string; order_id: string | null }[])
        if (["ProductAdded", "PriceChanged", "StockAdjusted"].includes(e.type)) {
          types.set(e.type, (types.get(e.type) ?? 0) + 1);
          assert.equal(e.order_id, null, "a catalog event is on no order's timeline");
        }
      if (!page.more) break;
      after = page.next;
    }
    assert.deepEqual(Object.fromEntries(types), { ProductAdded: 1, PriceChanged: 1, StockAdjusted: 2 });
  });
});
