/**
 * The inventory reserve without a `reserving` record, against a real nats-server: the handlers driven directly
 * (no consumer, so each delivery, crash and race is placed exactly), with a crash injected at each point of the
 * reserve — after the holds and before the decision, after a rejection before its give-back — and two
 * "replicas" (two handler instances, each with its own store and per-order queue) racing on the same orders
 * while cancellations arrive. After each: I3 on every SKU, and a hold exists exactly for a `reserved` order.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { trace } from "@opentelemetry/api";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { makeEvent, type Envelope } from "../../src/lib/events/envelope.js";
import type { HandlerContext } from "../../src/lib/messaging/handler.js";
import { InventoryHandlers } from "../../src/services/inventory/handlers.js";
import { stockViolations, type StockRecord } from "../../src/services/inventory/inventory.js";
import { InventoryStore } from "../../src/services/inventory/store.js";
import { startMessaging, type Messaging } from "../helpers/messaging.js";

class Crash extends Error {
  override readonly name = "Crash";
}

const skus = { A: "C-A", B: "C-B", SCARCE: "C-SCARCE" } as const;

void describe("inventory reserve: crash points and races (real nats-server)", () => {
  let m: Messaging;
  let store: InventoryStore;

  before(async () => {
    m = await startMessaging();
    store = await InventoryStore.open(m.nc, { replicas: 1 });
    await store.seed(
      [
        { sku: skus.A, name: "A", price: 100, currency: "EUR", stock: 10 },
        { sku: skus.B, name: "B", price: 100, currency: "EUR", stock: 3 },
        { sku: skus.SCARCE, name: "S", price: 100, currency: "EUR", stock: 7 },
      ],
      m.logger,
    );
  });

  after(async () => {
    await m?.close();
  });

  /** A handler instance (one "replica") over its own store; `crash` decides, per call, whether to throw. */
  async function replica(crash: { update?: () => boolean; move?: () => boolean } = {}) {
    const own = await InventoryStore.open(m.nc, { replicas: 1 });
    const wrapped = {
      getReservation: (o: string) => own.getReservation(o),
      getStock: (s: string) => own.getStock(s),
      updateReservation: (...a: Parameters<InventoryStore["updateReservation"]>) => {
        if (crash.update?.()) return Promise.reject(new Crash("crash before the decision"));
        return own.updateReservation(...a);
      },
      moveStock: (...a: Parameters<InventoryStore["moveStock"]>) => {
        if (crash.move?.()) return Promise.reject(new Crash("crash before a stock move"));
        return own.moveStock(...a);
      },
    } as unknown as InventoryStore;
    return new InventoryHandlers({ store: wrapped, publisher: m.publisher, jsm: m.jsm, source: "inventory" });
  }

  const ctx = (attempt = 1): HandlerContext => ({
    attempt,
    subject: "orders.x",
    streamSequence: 1,
    logger: m.logger,
    span: trace.getTracer("test").startSpan("t"),
    working: () => undefined,
  });

  /** Publishes an OrderPlaced to ORDERS (nothing consumes it here: the tests deliver it themselves). */
  async function placed(orderId: string, lines: [string, number][]): Promise<Envelope<"OrderPlaced">> {
    const items = lines.map(([sku, quantity]) => ({ sku, quantity, unitPrice: 100 }));
    const now = new Date();
    const ev = makeEvent(
      "OrderPlaced",
      {
        orderId,
        customerId: "c",
        email: "x@example.com",
        items,
        total: items.reduce((t, l) => t + l.quantity * 100, 0),
        currency: "EUR",
        placedAt: now.toISOString(),
        timeoutAt: new Date(now.getTime() + 30_000).toISOString(),
      },
      { aggregateId: orderId, source: "orders" },
    );
    await m.publisher.publish(ev);
    return ev;
  }
  const cancelled = (orderId: string) =>
    makeEvent("OrderCancelled", { orderId, reason: "timeout" }, { aggregateId: orderId, source: "orders" });

  async function stock(sku: string): Promise<StockRecord> {
    const s = await store.getStock(sku);
    assert.ok(s);
    return s;
  }

  /** Inventory events stored for an order, by type. */
  async function stored(orderId: string): Promise<Record<string, Envelope[]>> {
    const info = await m.jsm.streams.info("INVENTORY", { subjects_filter: `inventory.${orderId}.>` });
    const out: Record<string, Envelope[]> = {};
    for (const subject of Object.keys(info.state.subjects ?? {})) {
      const msg = await m.jsm.streams.getMessage("INVENTORY", { last_by_subj: subject });
      const e = decodeEvent(msg!.data);
      (out[e.type] ??= []).push(e);
    }
    return out;
  }

  async function assertNoViolations(): Promise<void> {
    for (const sku of Object.values(skus)) assert.deepEqual(stockViolations(await stock(sku)), [], sku);
  }

  void it("crash after the holds, before the decision: the redelivery decides once, holding each line once", async () => {
    const ev = await placed("cr-1", [
      [skus.A, 2],
      [skus.B, 1],
    ]);
    const before = { a: (await stock(skus.A)).available, b: (await stock(skus.B)).available };
    const crashing = await replica({ update: () => true });
    await assert.rejects(crashing.reserve(ev, ctx(1)), Crash);
    assert.equal(await store.getReservation("cr-1"), null, "nothing recorded");
    assert.equal((await stock(skus.A)).holds["cr-1"], 2, "the holds were placed");

    const healthy = await replica();
    await healthy.reserve(ev, ctx(2));
    assert.equal((await store.getReservation("cr-1"))?.status, "reserved");
    assert.equal((await stock(skus.A)).available, before.a - 2);
    assert.equal((await stock(skus.B)).available, before.b - 1);
    assert.equal((await stored("cr-1"))["StockReserved"]?.length, 1);
    await healthy.release(cancelled("cr-1"), ctx(1));
    await assertNoViolations();
  });

  void it("crash after the holds, OrderPlaced never redelivered: the cancellation's tombstone gives them back", async () => {
    const ev = await placed("cr-2", [
      [skus.A, 3],
      [skus.B, 1],
    ]);
    const before = { a: (await stock(skus.A)).available, b: (await stock(skus.B)).available };
    const crashing = await replica({ update: () => true });
    await assert.rejects(crashing.reserve(ev, ctx(1)), Crash);
    assert.equal((await stock(skus.B)).holds["cr-2"], 1);

    const healthy = await replica();
    await healthy.release(cancelled("cr-2"), ctx(1));
    assert.deepEqual(await store.getReservation("cr-2"), { status: "released", items: [] });
    assert.equal((await stock(skus.A)).available, before.a);
    assert.equal((await stock(skus.B)).available, before.b);
    assert.equal((await stock(skus.A)).holds["cr-2"], undefined);
    const released = (await stored("cr-2"))["StockReleased"];
    assert.deepEqual(released?.[0]?.data, { orderId: "cr-2", items: [] });

    // The OrderPlaced comes back after all (a redelivery, and a copy delivered as a first delivery): it holds
    // nothing for good and publishes no outcome.
    await healthy.reserve(ev, ctx(2));
    await healthy.reserve(ev, ctx(1));
    assert.equal((await stock(skus.A)).available, before.a);
    assert.equal((await stock(skus.B)).available, before.b);
    assert.deepEqual(Object.keys(await stored("cr-2")), ["StockReleased"]);
    await assertNoViolations();
  });

  void it("crash after a rejection, before its give-back: the redelivery gives back", async () => {
    // A holds, B is short: decided `rejected`; the crash hits the first give-back move.
    const ev = await placed("cr-3", [
      [skus.A, 1],
      [skus.B, 100],
    ]);
    const before = (await stock(skus.A)).available;
    let moves = 0;
    const crashing = await replica({ move: () => ++moves >= 3 });
    await assert.rejects(crashing.reserve(ev, ctx(1)), Crash);
    assert.equal((await store.getReservation("cr-3"))?.status, "rejected");
    assert.equal((await stock(skus.A)).holds["cr-3"], 1, "the hold is still there");

    await (await replica()).reserve(ev, ctx(2));
    assert.equal((await stock(skus.A)).available, before);
    assert.equal((await stock(skus.A)).holds["cr-3"], undefined);
    assert.deepEqual((await stored("cr-3"))["StockRejected"]?.[0]?.data, {
      orderId: "cr-3",
      reason: "out_of_stock",
      skus: [skus.B],
    });
    await assertNoViolations();
  });

  void it("two replicas race on every OrderPlaced while cancellations arrive: one decision each, no stray hold", async () => {
    const [r1, r2, r3] = await Promise.all([replica(), replica(), replica()]);
    const initial = await stock(skus.SCARCE);
    const n = 24;
    const events = await Promise.all(
      Array.from({ length: n }, (_, i) => placed(`race-${i}`, [[skus.SCARCE, 1 + (i % 2)]])),
    );
    await Promise.all(
      events.flatMap((ev, i) => [
        r1.reserve(ev, ctx(1)),
        r2.reserve(ev, ctx(1)),
        ...(i % 3 === 0 ? [r3.release(cancelled(ev.data.orderId), ctx(1))] : []),
      ]),
    );
    const s = await stock(skus.SCARCE);
    assert.deepEqual(stockViolations(s), []);
    let held = 0;
    for (const [i, ev] of events.entries()) {
      const orderId = ev.data.orderId;
      const r = await store.getReservation(orderId);
      assert.ok(r, `${orderId} decided`);
      const out = await stored(orderId);
      if (r.status === "reserved") {
        assert.equal(s.holds[orderId], r.items[0]!.quantity, `${orderId} reserved and held`);
        held += r.items[0]!.quantity;
        assert.equal(out["StockReserved"]?.length, 1);
        assert.equal(out["StockRejected"], undefined);
      } else {
        assert.equal(s.holds[orderId], undefined, `${orderId} is ${r.status} but holds stock`);
        if (r.status === "rejected") assert.equal(out["StockReserved"], undefined, `${orderId} rejected`);
        else {
          assert.equal(r.status, "released");
          assert.equal(i % 3, 0, `${orderId} released but never cancelled`);
          assert.equal(out["StockReleased"]?.length, 1);
        }
      }
    }
    assert.equal(s.reserved, held);
    assert.equal(s.available, initial.available - held);
    assert.ok(held <= initial.available, "no oversell");
  });
});
