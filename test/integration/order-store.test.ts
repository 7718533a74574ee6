/**
 * The orders event store's memory (`OrderStore.recent`), against a real nats-server: a decision starts from the
 * order this process last loaded or appended, and when another writer (a second replica) has appended since,
 * the conditional append fails, the order is read back, and the decision is taken on what is really stored.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { makeEvent, subjectOf, type AnyEnvelope } from "../../src/lib/events/mod.js";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { applyDecision } from "../../src/services/orders/handlers.js";
import { OrderStore } from "../../src/services/orders/store.js";
import { SOURCE, orderPlacedData, startMessaging, type Messaging } from "../helpers/messaging.js";

let f: Messaging;
const logger = createLogger({ service: "orders", level: "silent" });

before(async () => {
  f = await startMessaging();
});
after(async () => {
  await f?.close();
});

/** Every event stored on the order's subject, in order. */
async function eventsOf(orderId: string): Promise<AnyEnvelope[]> {
  const out: AnyEnvelope[] = [];
  for (let seq = 1; ;) {
    const m = await f.jsm.direct
      .getMessage("ORDERS", { seq, next_by_subj: `orders.${orderId}` })
      .catch(() => null);
    if (!m) return out;
    out.push(decodeEvent(m.data));
    seq = m.seq + 1;
  }
}

void describe("orders: deciding from memory", () => {
  void it("remembers what it appended, and decides on it without reading the order back", async () => {
    // The store's only reads are direct gets: count them.
    let reads = 0;
    const jsm = {
      direct: {
        getMessage: (...args: Parameters<JetStreamManager["direct"]["getMessage"]>) => {
          reads++;
          return f.jsm.direct.getMessage(...args);
        },
      },
    } as unknown as JetStreamManager;
    const store = new OrderStore(jsm, f.publisher);
    const placed = makeEvent("OrderPlaced", orderPlacedData("mem-1"), {
      aggregateId: "mem-1",
      source: SOURCE,
    });
    const seq = await store.append(placed, 0);
    assert.equal(store.recent("mem-1")?.version, seq);
    assert.equal(store.recent("mem-1")?.order.status, "PENDING");
    await applyDecision(store, "mem-1", { kind: "confirm", paymentId: "ch_1" }, placed, { logger });
    assert.equal(store.recent("mem-1")?.order.status, "CONFIRMED");
    assert.equal(reads, 0, "decided from memory");
    // A late duplicate outcome finds the order terminal in memory: nothing read, nothing appended.
    await applyDecision(store, "mem-1", { kind: "cancel", reason: "timeout" }, placed, { logger });
    assert.equal(reads, 0);
    assert.deepEqual(
      (await eventsOf("mem-1")).map((e) => e.type),
      ["OrderPlaced", "OrderConfirmed"],
    );
  });

  void it("a stale memory (another replica decided first) ends in a conflict, a read, and no second decision", async () => {
    // Two replicas of orders: their own connections, publishers and memories.
    const a = new OrderStore(f.jsm, f.publisher);
    const other = await f.connect();
    const b = new OrderStore(await jetstreamManager(other), new Publisher(jetstream(other)));
    const placed = makeEvent("OrderPlaced", orderPlacedData("mem-2"), {
      aggregateId: "mem-2",
      source: SOURCE,
    });
    await a.append(placed, 0);
    // Replica B cancels the order (the timeout fired there); A still remembers it PENDING.
    await applyDecision(b, "mem-2", { kind: "cancel", reason: "timeout" }, placed, { logger });
    assert.equal(a.recent("mem-2")!.order.status, "PENDING", "A's memory is stale");
    // The capture reaches A: its append at the remembered version is refused, it reads, finds CANCELLED.
    await applyDecision(a, "mem-2", { kind: "confirm", paymentId: "ch_2" }, placed, { logger });
    const events = await eventsOf("mem-2");
    assert.deepEqual(
      events.map((e) => e.type),
      ["OrderPlaced", "OrderCancelled"],
      "one terminal event: the first decision wins",
    );
    assert.equal(a.recent("mem-2")!.order.status, "CANCELLED", "A now remembers what is stored");
    assert.equal(subjectOf(events[1]!), "orders.mem-2");
  });
});
