/**
 * Order timeouts as timers held by the runner (src/services/orders/handlers.ts timeoutHandlers, the runner's
 * `{ outcome: "hold" }`), against a real nats-server: every ack, nak and working() the runner sends for the
 * `orders-timeouts` consumer is watched on `$JS.ACK.ORDERS.orders-timeouts.>` from another connection.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { makeEvent } from "../../src/lib/events/mod.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { applyDecision, timeoutHandlers } from "../../src/services/orders/handlers.js";
import { OrderStore } from "../../src/services/orders/store.js";
import { SOURCE, eventually, orderPlacedData, startMessaging, type Messaging } from "../helpers/messaging.js";

const logger = createLogger({ service: "orders", level: "silent" });
const TIMEOUT_MS = 3_000;
/** As the service: ack wait = timeout + margin (9 s; heartbeats would be due every 3 s). */
const spec = {
  stream: "ORDERS",
  durable: "orders-timeouts",
  filterSubject: "orders.*",
  ackWaitMs: TIMEOUT_MS + 6_000,
  maxAckPending: 1_000,
  maxDeliveries: 1_000,
};

interface Act {
  seq: number;
  deliveries: number;
  what: string;
  at: number;
}

/** Records every response to a delivery of the consumer: +ACK, -NAK, +WPI, +TERM, by stream sequence. */
async function watchAcks(f: Messaging): Promise<Act[]> {
  const nc = await f.connect();
  const acts: Act[] = [];
  nc.subscribe(`$JS.ACK.ORDERS.${spec.durable}.>`, {
    callback: (_err, m) => {
      const t = m.subject.split(".");
      const at = t.length === 9 ? 4 : 6;
      acts.push({
        seq: Number(t[at + 1]),
        deliveries: Number(t[at]),
        what: m.string().split(" ")[0]!,
        at: Date.now(),
      });
    },
  });
  await nc.flush();
  return acts;
}

/** Appends an OrderPlaced due in `inMs`; returns its stream sequence and deadline. */
async function place(
  store: OrderStore,
  id: string,
  inMs: number,
): Promise<{ seq: number; deadline: number }> {
  const data = orderPlacedData(id);
  const deadline = Date.now() + inMs;
  data.timeoutAt = new Date(deadline).toISOString();
  const seq = await store.append(makeEvent("OrderPlaced", data, { aggregateId: id, source: SOURCE }), 0);
  return { seq, deadline };
}

void describe("orders: timeouts held by the runner", () => {
  void it("one delivery and one ack per order: PENDING cancelled at its deadline, CONFIRMED acked untouched, no working(), no slots taken", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const acts = await watchAcks(f);
    await f.consumer(spec.durable, spec);
    const store = new OrderStore(f.jsm, f.publisher);
    const pending = await Promise.all([1, 2, 3, 4].map((i) => place(store, `late-${i}`, TIMEOUT_MS)));
    const ok = await place(store, "paid-1", TIMEOUT_MS);
    const okLater = await place(store, "paid-2", TIMEOUT_MS);
    const placed = await store.load("paid-1");
    await applyDecision(store, "paid-1", { kind: "confirm", paymentId: "ch_1" }, placed.events[0]!, {
      logger,
    });

    // Concurrency 2, five timers held outside the slots (paid-1, known confirmed, is acked on delivery): they are held outside the slots, which stay free.
    const runner = await f.startRunner(spec, { handlers: timeoutHandlers(store), concurrency: 2 });
    await eventually(() => assert.equal(runner.held, 5, `five held (in flight ${runner.inFlight})`), 5_000);
    assert.equal(runner.inFlight, 0, "a held timer is not in flight");
    assert.equal(acts.filter((a) => a.what === "+WPI").length, 0);
    // paid-2 is confirmed while its timer is held (the usual path): at its deadline it is acked, nothing appended.
    const placed2 = await store.load("paid-2");
    await applyDecision(store, "paid-2", { kind: "confirm", paymentId: "ch_2" }, placed2.events[0]!, {
      logger,
    });

    for (const [i, p] of pending.entries()) {
      const id = `late-${i + 1}`;
      const { order, events } = await eventually(async () => {
        const o = await store.load(id);
        assert.equal(o.order?.status, "CANCELLED", `${id} cancelled`);
        return o;
      }, TIMEOUT_MS + 5_000);
      assert.equal(order?.status === "CANCELLED" && order.reason, "timeout");
      const cancelledAt = Date.parse(events[1]!.timestamp);
      assert.ok(cancelledAt >= p.deadline, `${id} not cancelled before its deadline`);
      assert.ok(
        cancelledAt - p.deadline < 1_500,
        `${id} cancelled ${cancelledAt - p.deadline} ms after its deadline`,
      );
    }
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
    for (const id of ["paid-1", "paid-2"]) {
      const paid = await store.load(id);
      assert.equal(paid.order?.status, "CONFIRMED");
      assert.equal(paid.events.length, 2, `no cancellation appended for the confirmed order ${id}`);
    }
    // Every message of the stream delivered exactly once (the cancellations and the confirmation are skips).
    assert.equal(ci.delivered.consumer_seq, await f.streamCount("ORDERS"));
    for (const p of [...pending, ok, okLater]) {
      const mine = acts.filter((a) => a.seq === p.seq);
      assert.deepEqual(
        mine.map((a) => [a.what, a.deliveries]),
        [["+ACK", 1]],
        `seq ${p.seq}: one delivery, one ack, no working() or nak`,
      );
      if (p === ok) assert.ok(mine[0]!.at < p.deadline, "known confirmed on delivery: acked at once");
      else assert.ok(mine[0]!.at >= p.deadline, "acked at its deadline, not before");
    }
    assert.equal(acts.filter((a) => a.what !== "+ACK").length, 0, "nothing but acks sent");
    assert.equal(runner.held, 0);
  });

  void it("stop hands a held timer back at once; a new runner (a new process) cancels the order at its deadline; a past deadline is decided at once", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const acts = await watchAcks(f);
    await f.consumer(spec.durable, spec);
    const first = new OrderStore(f.jsm, f.publisher);
    const p = await place(first, "handed-1", TIMEOUT_MS);
    const runner = await f.startRunner(spec, { handlers: timeoutHandlers(first) });
    await eventually(() => assert.equal(runner.held, 1), 5_000);
    const t0 = Date.now();
    const { abandoned } = await runner.stop(5_000);
    assert.equal(abandoned, 0);
    assert.ok(Date.now() - t0 < 2_500, `stop did not wait for the hold (${Date.now() - t0} ms)`);
    assert.equal(runner.held, 0);
    assert.equal(
      (await first.load("handed-1")).order?.status,
      "PENDING",
      "not decided by the stopped runner",
    );

    const second = new OrderStore(f.jsm, f.publisher);
    const next = await f.startRunner(spec, { handlers: timeoutHandlers(second) });
    const { events } = await eventually(async () => {
      const o = await second.load("handed-1");
      assert.equal(o.order?.status, "CANCELLED");
      return o;
    }, TIMEOUT_MS + 5_000);
    assert.ok(
      Date.parse(events[1]!.timestamp) >= p.deadline,
      "cancelled at its deadline, not at the hand-back",
    );
    // The cancellation is appended before the timer message is acked: wait for the ack to be seen.
    const mine = await eventually(() => {
      const seen = acts.filter((a) => a.seq === p.seq);
      assert.equal(seen.at(-1)?.what, "+ACK");
      return seen;
    }, 5_000);
    assert.equal(mine.at(-1)!.deliveries, 2, "delivered again once, after the hand-back");
    assert.equal(mine.filter((a) => a.what === "-NAK").length, 1, "one hand-back");

    // A backlog after a restart: a deadline passed before delivery is decided at once.
    const overdue = await place(second, "overdue-1", -1_000);
    const at = Date.now();
    await eventually(async () => {
      assert.equal((await second.load("overdue-1")).order?.status, "CANCELLED");
    }, 3_000);
    assert.ok(Date.now() - at < 2_000);
    await f.settled(spec);
    assert.deepEqual(
      acts.filter((a) => a.seq === overdue.seq).map((a) => a.what),
      ["+ACK"],
    );
    assert.equal(next.held, 0);
  });
});
