/**
 * Messaging conformance, the happy paths (after Watermill's pubsub test suite): publish/subscribe, concurrent
 * handlers, ordering, consumers created after the fact, consumer groups, and continuing after a runner stops.
 * Every test runs against its own real nats-server.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { makeEvent } from "../../src/lib/events/mod.js";
import {
  Recorder,
  SOURCE,
  eventsOfOneOrder,
  orderId,
  orderPlacedEvents,
  publishAll,
  sleep,
  startMessaging,
} from "../helpers/messaging.js";

void describe("messaging conformance: publish/subscribe", () => {
  void it("publish/subscribe: every published event is handled, with its payload intact", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("pubsub");
    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers(), concurrency: 8 });

    const events = orderPlacedEvents(100, "ps");
    const seqs = await publishAll(f.publisher, events);
    assert.equal(new Set(seqs).size, events.length, "each publish stored as its own message");
    await rec.untilCompleted(
      events.map((e) => e.id),
      15_000,
    );

    for (const e of events) {
      const calls = rec.callsOf(e.id);
      assert.equal(calls.length, 1, `${e.id} handled once`);
      assert.deepEqual(calls[0]!.event, e, `${e.id} arrives as it was published`);
      assert.equal(calls[0]!.subject, `orders.${e.aggregate_id}`);
      assert.equal(calls[0]!.attempt, 1);
    }
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
    assert.deepEqual(f.logs.errors(), []);
  });

  void it("concurrent subscribe: handlers run in parallel up to `concurrency` and never beyond", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("concurrent", { ackWaitMs: 5_000 });
    const rec = new Recorder();
    const concurrency = 8;
    const events = orderPlacedEvents(200, "cc");
    await publishAll(f.publisher, events);
    await f.startRunner(spec, { handlers: rec.handlers(() => sleep(15)), concurrency });

    await rec.untilCompleted(
      events.map((e) => e.id),
      30_000,
    );
    assert.ok(rec.maxActive <= concurrency, `at most ${concurrency} at once, saw ${rec.maxActive}`);
    assert.equal(rec.maxActive, concurrency, "with a backlog every slot is used");
    assert.equal(rec.calls.length, events.length, "each handled once");
    await f.settled(spec);
  });

  void it("in-order delivery per subject at concurrency 1", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("ordered");
    const rec = new Recorder();
    // Three orders, each with its own subject; their events interleaved in the stream.
    const perOrder = ["ord-a", "ord-b", "ord-c"].map((id) => eventsOfOneOrder(id, 30));
    const published = perOrder[0]!.flatMap((_, k) => perOrder.map((evs) => evs[k]!));
    for (const e of published) await f.publisher.publish(e); // one at a time: defines the order
    await f.startRunner(spec, { handlers: rec.handlers(() => sleep(1)), concurrency: 1 });

    await rec.untilCompleted(
      published.map((e) => e.id),
      15_000,
    );
    assert.equal(rec.maxActive, 1);
    for (const evs of perOrder) {
      const subject = `orders.${evs[0]!.aggregate_id}`;
      const seen = rec.calls.filter((c) => c.subject === subject).map((c) => c.id);
      assert.deepEqual(
        seen,
        evs.map((e) => e.id),
        `${subject} handled in publish order`,
      );
    }
    const seqs = rec.calls.map((c) => c.streamSequence);
    assert.deepEqual(
      seqs,
      [...seqs].sort((a, b) => a - b),
      "whole stream in sequence order",
    );
  });

  void it("a new consumer receives the messages published before it existed", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const events = orderPlacedEvents(30, "old");
    await publishAll(f.publisher, events);
    assert.equal(await f.streamCount("ORDERS"), 30);

    const spec = await f.consumer("latecomer");
    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers() });
    await rec.untilCompleted(
      events.map((e) => e.id),
      10_000,
    );
    assert.equal(rec.calls.length, 30);
    await f.settled(spec);
  });

  void it("consumer groups: two runners on one durable share the work, each event handled exactly once", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("group", { ackWaitMs: 10_000 });
    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers(() => sleep(5), "r1"), concurrency: 4 });
    await f.startRunner(spec, { handlers: rec.handlers(() => sleep(5), "r2"), concurrency: 4 });

    const events = orderPlacedEvents(200, "grp");
    await publishAll(f.publisher, events);
    await rec.untilCompleted(
      events.map((e) => e.id),
      30_000,
    );
    for (const e of events) assert.equal(rec.callsOf(e.id).length, 1, `${e.id} handled exactly once`);
    const byRunner = (r: string) => rec.calls.filter((c) => c.runner === r).length;
    assert.ok(
      byRunner("r1") > 0 && byRunner("r2") > 0,
      `both got work: r1 ${byRunner("r1")}, r2 ${byRunner("r2")}`,
    );
    assert.equal(byRunner("r1") + byRunner("r2"), events.length);
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
  });

  void it("continues after a runner is stopped and a new one started: messages published in between arrive", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("restart");
    const first = new Recorder();
    const r1 = await f.startRunner(spec, { handlers: first.handlers() });
    const before = orderPlacedEvents(20, "before");
    await publishAll(f.publisher, before);
    await first.untilCompleted(
      before.map((e) => e.id),
      10_000,
    );
    assert.deepEqual(await r1.stop(), { abandoned: 0 });
    assert.equal(r1.ready, false);

    const between = orderPlacedEvents(20, "between");
    await publishAll(f.publisher, between);
    assert.equal((await f.info(spec)).num_pending, 20, "waiting in the stream while no runner runs");
    assert.equal(first.calls.length, 20, "the stopped runner takes nothing more");

    const second = new Recorder();
    await f.startRunner(spec, { handlers: second.handlers() });
    await second.untilCompleted(
      between.map((e) => e.id),
      10_000,
    );
    assert.deepEqual(
      [...second.completedIds].sort(),
      between.map((e) => e.id).sort(),
      "exactly the events published in between; the acked ones are not seen again",
    );
    await f.settled(spec);
  });

  void it("acknowledges known event types the consumer has no handler for, without calling anything", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("only-placed");
    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers(() => undefined, "r1", ["OrderPlaced"]) });
    const id = orderId("skip", 1);
    const confirmed = makeEvent(
      "OrderConfirmed",
      { orderId: id, paymentId: "pay-1", total: 100, currency: "EUR" },
      { aggregateId: id, source: SOURCE },
    );
    const placed = orderPlacedEvents(1, "skip-placed");
    await f.publisher.publish(confirmed);
    await publishAll(f.publisher, placed);
    await rec.untilCompleted([placed[0]!.id], 10_000);
    await f.settled(spec);
    assert.deepEqual(
      rec.calls.map((c) => c.type),
      ["OrderPlaced"],
    );
    assert.equal((await f.deadLetters()).length, 0);
  });
});
