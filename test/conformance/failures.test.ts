/**
 * Messaging conformance, the failure paths: redelivery after handler errors and missing acks, heartbeats, backoff,
 * dead-lettering (after max attempts, at once for non-retryable and schema-invalid messages) with its metadata and
 * redrive, and de-duplication of retried publishes. Every test runs against its own real nats-server.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { jetstream } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { NonRetryableError, RetryableError } from "../../src/lib/errors.js";
import {
  DecodeErrorCode,
  EventVersions,
  encodeEvent,
  makeEvent,
  type EventType,
} from "../../src/lib/events/mod.js";
import { RedeliverLaterError } from "../../src/lib/messaging/consumer.js";
import { inspectDeadLetter, redriveDeadLetter } from "../../src/lib/messaging/dlq.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { Metrics } from "../../src/lib/telemetry/metrics.js";
import {
  Recorder,
  SOURCE,
  eventually,
  orderPlacedData,
  orderPlacedEvents,
  publishAll,
  sleep,
  startMessaging,
} from "../helpers/messaging.js";

const enc = new TextEncoder();
/** Bytes as a Buffer, so that deep equality compares content and not the typed-array class. */
const bytes = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** A promise and its resolver, to hold a handler until the test lets it go. */
function latch(): { promise: Promise<void>; release: () => void } {
  let release!: () => void;
  const promise = new Promise<void>((r) => (release = r));
  return { promise, release };
}

void describe("messaging conformance: failures", () => {
  void it("resend on handler error: a failed attempt is redelivered and then acked", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("resend");
    const rec = new Recorder();
    const [plain, coded] = orderPlacedEvents(2, "resend");
    await f.startRunner(spec, {
      handlers: rec.handlers((e, ctx) => {
        if (ctx.attempt > 1) return;
        // Any error that is not a ShopStreamError counts as retryable, like an explicit RetryableError.
        if (e.id === plain!.id) throw new Error("connection reset");
        throw new RetryableError("STORE_BUSY", "compare-and-set lost");
      }),
    });
    await publishAll(f.publisher, [plain!, coded!]);

    await rec.untilCompleted([plain!.id, coded!.id], 10_000);
    for (const e of [plain!, coded!]) {
      assert.deepEqual(
        rec.callsOf(e.id).map((c) => [c.attempt, c.outcome]),
        [
          [1, "error"],
          [2, "ok"],
        ],
      );
    }
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0, "nothing left being redelivered");
    assert.deepEqual(await f.deadLetters(), []);
  });

  void it("no ack: a message a crashed consumer fetched and never acked is redelivered after the ack wait", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const ackWaitMs = 1_000;
    const spec = await f.consumer("crash", { ackWaitMs });
    const [event] = orderPlacedEvents(1, "crash");
    await f.publisher.publish(event!);

    // Another process takes the message and dies without acking it.
    const nc2 = await f.connect();
    const stolen = await (
      await jetstream(nc2).consumers.get(spec.stream, spec.durable)
    ).next({ expires: 5_000 });
    const fetchedAt = performance.now();
    assert.ok(stolen, "the crashed process got the message");
    assert.equal(stolen.info.deliveryCount, 1);
    await nc2.close();

    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers() });
    await rec.untilCompleted([event!.id], 10_000);
    const [call] = rec.callsOf(event!.id);
    assert.equal(call!.attempt, 2, "it is a redelivery");
    const waited = call!.at - fetchedAt;
    assert.ok(waited >= ackWaitMs * 0.9, `redelivered after the ack wait (${Math.round(waited)} ms)`);
    await f.settled(spec);
  });

  void it("no ack: a handler hanging past the ack wait without heartbeats gets its message redelivered", async (t) => {
    const f = await startMessaging();
    const hang = latch();
    t.after(async () => {
      hang.release();
      await f.close();
    });
    const ackWaitMs = 1_000;
    const spec = await f.consumer("hang", { ackWaitMs });
    const rec = new Recorder();
    await f.startRunner(spec, {
      concurrency: 2,
      heartbeatMs: 600_000, // no automatic working(): the hung handler looks like a dead one
      handlers: rec.handlers((_e, ctx) => (ctx.attempt === 1 ? hang.promise : undefined)),
    });
    const [event] = orderPlacedEvents(1, "hang");
    await f.publisher.publish(event!);

    await rec.untilCompleted([event!.id], 10_000);
    const [first, second] = rec.callsOf(event!.id);
    assert.equal(first!.outcome, "running", "the first attempt is still hanging");
    assert.equal(second!.attempt, 2);
    assert.ok(second!.at - first!.at >= ackWaitMs * 0.9, `after the ack wait (${second!.at - first!.at} ms)`);
  });

  void it("heartbeats: a handler running longer than the ack wait is not redelivered", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const ackWaitMs = 1_000;
    const spec = await f.consumer("slow", { ackWaitMs });
    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers(() => sleep(ackWaitMs * 2.5)) });
    const [event] = orderPlacedEvents(1, "slow");
    await f.publisher.publish(event!);

    await rec.untilCompleted([event!.id], 10_000);
    assert.equal(rec.calls.length, 1, "handled once: working() kept the message");
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
    assert.equal(ci.delivered.consumer_seq, 1, "delivered once");
  });

  void it("continues after errors: messages failing a few times are all eventually acked", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("flaky");
    const rec = new Recorder();
    const events = orderPlacedEvents(60, "flaky");
    const failing = new Set(events.filter((_, i) => i % 3 === 0).map((e) => e.id));
    await f.startRunner(spec, {
      concurrency: 8,
      maxAttempts: 5,
      handlers: rec.handlers((e, ctx) => {
        if (failing.has(e.id) && ctx.attempt <= 2) throw new Error(`flaky ${ctx.attempt}`);
      }),
    });
    await publishAll(f.publisher, events);

    await rec.untilCompleted(
      events.map((e) => e.id),
      20_000,
    );
    for (const e of events) {
      const attempts = rec.callsOf(e.id).map((c) => c.attempt);
      assert.deepEqual(attempts, failing.has(e.id) ? [1, 2, 3] : [1], e.id);
    }
    await f.settled(spec);
    assert.deepEqual(await f.deadLetters(), []);
  });

  void it("RedeliverLaterError: redelivered after its delay, not a failure, never dead-lettered", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("later");
    const rec = new Recorder();
    const delayMs = 400;
    await f.startRunner(spec, {
      maxAttempts: 1, // a failure would be dead-lettered at once
      handlers: rec.handlers((_e, ctx) => {
        if (ctx.attempt === 1) throw new RedeliverLaterError(delayMs);
      }),
    });
    const [event] = orderPlacedEvents(1, "later");
    await f.publisher.publish(event!);

    await rec.untilCompleted([event!.id], 10_000);
    const [first, second] = rec.callsOf(event!.id);
    assert.equal(second!.attempt, 2);
    assert.ok(second!.at - first!.at >= delayMs * 0.9, `not before the delay (${second!.at - first!.at} ms)`);
    await f.settled(spec);
    assert.deepEqual(await f.deadLetters(), []);
  });

  void it("dead-letters after maxAttempts with its metadata, and redrive hands it to the handler again", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("payments-svc");
    const rec = new Recorder();
    const maxAttempts = 3;
    const [poison, good] = orderPlacedEvents(2, "poison");
    let gatewayUp = false;
    await f.startRunner(spec, {
      maxAttempts,
      handlers: rec.handlers((e) => {
        if (e.id === poison!.id && !gatewayUp)
          throw new RetryableError("GATEWAY_DOWN", "payment gateway: 503");
      }),
    });
    const [poisonSeq] = await publishAll(f.publisher, [poison!, good!]);

    const [dl] = await eventually(async () => {
      const dls = await f.deadLetters(spec.durable);
      assert.equal(dls.length, 1);
      return dls;
    });
    assert.equal(dl!.consumer, spec.durable);
    assert.equal(dl!.code, "GATEWAY_DOWN");
    assert.match(dl!.error, /payment gateway: 503/);
    assert.equal(dl!.attempts, maxAttempts);
    assert.equal(dl!.stream, "ORDERS");
    assert.equal(dl!.subject, `orders.${poison!.aggregate_id}`);
    assert.equal(dl!.sequence, poisonSeq);
    assert.equal(dl!.type, "OrderPlaced");
    assert.ok(!Number.isNaN(Date.parse(dl!.at)));
    assert.deepEqual(JSON.parse(new TextDecoder().decode(dl!.data)), poison, "the body is kept as it was");
    assert.equal(dl!.bodyOmitted, false);
    const inspected = await inspectDeadLetter(f.jsm, dl!.dlqSequence);
    assert.deepEqual({ ...inspected!, data: bytes(inspected!.data) }, { ...dl!, data: bytes(dl!.data) });

    // term'd, not redelivered again: exactly maxAttempts calls and nothing left unacknowledged.
    await f.settled(spec);
    assert.deepEqual(
      rec.callsOf(poison!.id).map((c) => [c.attempt, c.outcome]),
      [
        [1, "error"],
        [2, "error"],
        [3, "error"],
      ],
    );
    assert.equal(rec.completed.get(good!.id), 1, "the other message was not held up");

    gatewayUp = true;
    const redriven = await redriveDeadLetter(f.jsm, f.publisher, dl!.dlqSequence);
    assert.equal(redriven.subject, dl!.subject);
    await rec.untilCompleted([poison!.id], 10_000);
    const last = rec.callsOf(poison!.id).at(-1)!;
    assert.equal(last.attempt, 1, "a fresh message with a fresh attempt count");
    assert.equal(last.streamSequence, redriven.seq);
    const stored = await f.jsm.streams.getMessage("ORDERS", { seq: redriven.seq });
    assert.equal(stored!.header.get(Hdr.Redrive), String(dl!.dlqSequence));
    assert.deepEqual(await f.deadLetters(), [], "the DLQ entry is removed");
    assert.equal(await inspectDeadLetter(f.jsm, dl!.dlqSequence), null);
    await f.settled(spec);
  });

  void it("a non-retryable handler error is dead-lettered at once", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("strict");
    const rec = new Recorder();
    await f.startRunner(spec, {
      maxAttempts: 5,
      handlers: rec.handlers(() => {
        throw new NonRetryableError("ORDER_INVALID", "order total does not match its lines");
      }),
    });
    const [event] = orderPlacedEvents(1, "strict");
    await f.publisher.publish(event!);

    const [dl] = await eventually(async () => {
      const dls = await f.deadLetters();
      assert.equal(dls.length, 1);
      return dls;
    });
    assert.equal(dl!.code, "ORDER_INVALID");
    assert.equal(dl!.attempts, 1);
    await f.settled(spec);
    assert.equal(rec.calls.length, 1);
  });

  void it("schema-invalid messages go to the DLQ at once (attempts 1) and good messages go on being handled", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("validating");
    const rec = new Recorder();
    await f.startRunner(spec, { maxAttempts: 5, handlers: rec.handlers() });

    const base = makeEvent("OrderPlaced", orderPlacedData("bad-1"), { aggregateId: "bad-1", source: SOURCE });
    const bad: { name: string; subject: string; body: Uint8Array; code: string; type?: string }[] = [
      {
        name: "not JSON",
        subject: "orders.bad-0",
        body: enc.encode("{not json"),
        code: DecodeErrorCode.Malformed,
      },
      {
        name: "wrong data",
        subject: "orders.bad-1",
        body: enc.encode(JSON.stringify({ ...base, data: { ...base.data, total: "ten euros" } })),
        code: DecodeErrorCode.SchemaInvalid,
        type: "OrderPlaced",
      },
      {
        name: "unknown type",
        subject: "orders.bad-2",
        body: enc.encode(JSON.stringify({ ...base, id: "bad-2:OrderTeleported", type: "OrderTeleported" })),
        code: DecodeErrorCode.UnknownType,
      },
      {
        name: "version 0 (no version)",
        subject: "orders.bad-3",
        body: enc.encode(JSON.stringify({ ...base, id: "bad-3:OrderPlaced", version: 0 })),
        code: DecodeErrorCode.SchemaInvalid,
        type: "OrderPlaced",
      },
      {
        name: "not UTF-8",
        subject: "orders.bad-4",
        body: Uint8Array.from([0x7b, 0xff, 0xfe, 0x7d]),
        code: DecodeErrorCode.Malformed,
      },
    ];
    const goodBefore = orderPlacedEvents(10, "good-before");
    const goodAfter = orderPlacedEvents(10, "good-after");
    await publishAll(f.publisher, goodBefore);
    const badSeqs = new Map<number, (typeof bad)[number]>();
    for (const [i, b] of bad.entries()) {
      const h = natsHeaders();
      if (b.type) h.set(Hdr.Type, b.type);
      const ack = await f.js.publish(b.subject, b.body, { msgID: `raw-bad-${i}`, headers: h });
      badSeqs.set(ack.seq, b);
    }
    await publishAll(f.publisher, goodAfter);

    await rec.untilCompleted(
      [...goodBefore, ...goodAfter].map((e) => e.id),
      10_000,
    );
    const dls = await eventually(async () => {
      const all = await f.deadLetters(spec.durable);
      assert.equal(all.length, bad.length);
      return all;
    });
    for (const dl of dls) {
      const b = badSeqs.get(dl.sequence);
      assert.ok(b, `DLQ entry for stream sequence ${dl.sequence}`);
      assert.equal(dl.code, b.code, b.name);
      assert.equal(dl.attempts, 1, `${b.name}: dead-lettered on the first attempt`);
      assert.equal(dl.subject, b.subject);
      assert.deepEqual(bytes(dl.data), bytes(b.body), `${b.name}: body kept byte for byte`);
    }
    assert.equal(rec.calls.length, 20, "the handler never saw a bad message");
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0, "none was retried");
  });

  void it("a version newer than read is kept (no attempt used) and handed back on stop to a runner that reads it", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("versions", {
      stream: "INVENTORY",
      filterSubject: "inventory.*.StockReserved",
    });
    const rec = new Recorder();
    const types: EventType[] = ["StockReserved"];
    // A replica of the release before StockReserved version 2: it reads version 1 only.
    const v1Reader = EventVersions.parse(undefined, "StockReserved=1");
    const old = await f.startRunner(spec, {
      handlers: rec.handlers(undefined, "old", types),
      versions: v1Reader,
      futureVersionWaitMs: 60_000,
    });
    const reserved = (id: string, version: 1 | 2) =>
      encodeEvent(
        makeEvent(
          "StockReserved",
          {
            orderId: id,
            customerId: "c-1",
            items: [{ sku: "SKU-1", quantity: 1 }],
            total: 100,
            currency: "EUR",
            expiresAt: "2030-01-01T00:00:00.000Z",
          },
          { aggregateId: id, source: SOURCE },
        ),
        version === 1 ? EventVersions.parse("StockReserved=1", undefined) : EventVersions.CURRENT,
      );
    const put = (id: string, body: Uint8Array) =>
      f.js.publish(`inventory.${id}.StockReserved`, body, { msgID: `${id}:StockReserved` });
    await put("v1-a", reserved("v1-a", 1));
    await put("v2-a", reserved("v2-a", 2));
    await put("v1-b", reserved("v1-b", 1));
    // The old replica handles version 1 and keeps version 2, past its ack wait (2 s), without using a delivery.
    await rec.untilCompleted([`v1-a:StockReserved`, `v1-b:StockReserved`], 10_000);
    // Past the ack wait (2 s): a message that was not kept alive would be redelivered meanwhile.
    await sleep(3_000);
    assert.equal(rec.calls.filter((c) => c.id === "v2-a:StockReserved").length, 0, "version 2 not handled");
    const kept = await f.info(spec);
    assert.equal(kept.num_ack_pending, 1, "version 2 kept by the old replica");
    assert.equal(kept.num_redelivered, 0, "kept, not redelivered");
    // A replica of the new release starts, the old one stops (a rolling deploy): version 2 is handed over.
    await f.startRunner(spec, {
      handlers: rec.handlers(undefined, "new", types),
      futureVersionWaitMs: 60_000,
    });
    await old.stop();
    await rec.untilCompleted([`v2-a:StockReserved`], 20_000);
    const call = rec.calls.find((c) => c.id === "v2-a:StockReserved")!;
    assert.equal(call.runner, "new");
    assert.equal(call.attempt, 2, "one delivery to the old replica, then the new one");
    assert.equal((call.event.data as { expiresAt: string | null }).expiresAt, "2030-01-01T00:00:00.000Z");
    assert.equal(rec.calls.find((c) => c.id === "v1-a:StockReserved")!.runner, "old");
    assert.deepEqual(await f.deadLetters(spec.durable), []);
  });

  void it("a version newer than read, with no replica that reads it, is dead-lettered as EVENT_VERSION_AHEAD once its wait is over", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("versions-alone", {
      stream: "INVENTORY",
      filterSubject: "inventory.*.StockReserved",
    });
    const rec = new Recorder();
    await f.startRunner(spec, {
      handlers: rec.handlers(undefined, "old", ["StockReserved"]),
      versions: EventVersions.parse(undefined, "StockReserved=1"),
      futureVersionWaitMs: 2_500,
    });
    const body = encodeEvent(
      makeEvent(
        "StockReserved",
        {
          orderId: "v2-x",
          customerId: "c-1",
          items: [{ sku: "SKU-1", quantity: 1 }],
          total: 100,
          currency: "EUR",
          expiresAt: null,
        },
        { aggregateId: "v2-x", source: SOURCE },
      ),
    );
    const ack = await f.js.publish("inventory.v2-x.StockReserved", body, { msgID: "v2-x:StockReserved" });
    const [dl] = await eventually(async () => {
      const all = await f.deadLetters(spec.durable);
      assert.equal(all.length, 1);
      return all;
    });
    assert.equal(dl!.code, DecodeErrorCode.VersionAhead);
    assert.equal(dl!.sequence, ack.seq);
    assert.equal(dl!.attempts, 1, "kept on its first delivery until the wait was over");
    assert.match(dl!.error, /StockReserved version 2 is newer than this release reads \(up to 1\).*redrive/);
    assert.equal(rec.calls.length, 0);
  });

  void it("a schema-invalid message near max_msg_size is dead-lettered at once too, and redrive republishes it whole", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("big");
    const rec = new Recorder();
    await f.startRunner(spec, { maxAttempts: 5, handlers: rec.handlers() });

    const maxMsgSize = (await f.jsm.streams.info("ORDERS")).config.max_msg_size;
    const maxPayload = f.nc.info!.max_payload;
    assert.ok(maxMsgSize > 0 && maxMsgSize <= maxPayload);
    // An envelope whose data has an extra field: valid JSON, invalid schema, 256 bytes under the stream's limit
    // (room for its own headers, not for the DLQ's).
    const size = maxMsgSize - 256;
    const base = makeEvent("OrderPlaced", orderPlacedData("huge-1"), {
      aggregateId: "huge-1",
      source: SOURCE,
    });
    const skeleton = JSON.stringify({ ...base, data: { ...base.data, notes: "" } });
    const body = enc.encode(
      JSON.stringify({ ...base, data: { ...base.data, notes: "x".repeat(size - skeleton.length) } }),
    );
    assert.equal(body.length, size);
    const h = natsHeaders();
    h.set(Hdr.Type, "OrderPlaced");
    const { seq } = await f.js.publish("orders.huge-1", body, { msgID: base.id, headers: h });
    const [good] = orderPlacedEvents(1, "after-huge");
    await f.publisher.publish(good!);

    await rec.untilCompleted([good!.id], 10_000);
    const [dl] = await eventually(async () => {
      const dls = await f.deadLetters(spec.durable);
      assert.equal(dls.length, 1, "dead-lettered");
      return dls;
    });
    assert.equal(dl!.code, DecodeErrorCode.SchemaInvalid);
    assert.equal(dl!.attempts, 1);
    assert.equal(dl!.sequence, seq);
    assert.equal(dl!.bodyOmitted, true, "too large to copy with the DLQ headers: stored without the body");
    assert.equal(dl!.data.length, 0);
    const original = await f.jsm.streams.getMessage(dl!.stream, { seq: dl!.sequence });
    assert.deepEqual(bytes(original!.data), bytes(body), "the body is still in its own stream");
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0, "not retried over and over");
    assert.equal(rec.calls.length, 1, "only the good message reached the handler");

    // The body is still in its own stream; redrive republishes it byte for byte, and it fails again at once.
    const redriven = await redriveDeadLetter(f.jsm, f.publisher, dl!.dlqSequence);
    const copy = await f.jsm.streams.getMessage("ORDERS", { seq: redriven.seq });
    assert.deepEqual(bytes(copy!.data), bytes(body));
    await eventually(async () => {
      const dls = await f.deadLetters(spec.durable);
      assert.deepEqual(
        dls.map((d) => [d.sequence, d.attempts]),
        [[redriven.seq, 1]],
      );
    });
  });

  void it("backoff: redelivery delays of an always-failing message grow exponentially", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("backoff", { ackWaitMs: 10_000 });
    const rec = new Recorder();
    const initialMs = 200;
    const maxAttempts = 5;
    await f.startRunner(spec, {
      maxAttempts,
      backoff: { initialMs, multiplier: 2, jitter: 0.2, maxMs: 10_000 },
      handlers: rec.handlers(() => {
        throw new Error("always");
      }),
    });
    const [event] = orderPlacedEvents(1, "backoff");
    await f.publisher.publish(event!);

    await rec.until(() => rec.calls.length === maxAttempts, 15_000, `${maxAttempts} attempts`);
    const at = rec.calls.map((c) => c.at);
    const gaps = at.slice(1).map((a, i) => a - at[i]!);
    const report = gaps.map((g) => Math.round(g)).join(", ");
    t.diagnostic(`redelivery gaps ${report} ms`);
    gaps.forEach((gap, i) => {
      const nominal = initialMs * 2 ** i;
      // Jitter is ±10 %; the upper bound leaves room for a loaded machine.
      assert.ok(gap >= nominal * 0.85, `gap ${i + 1} not before its backoff (${report} ms)`);
      assert.ok(gap <= nominal * 1.15 + 1_000, `gap ${i + 1} not far beyond its backoff (${report} ms)`);
      if (i > 0) assert.ok(gap > gaps[i - 1]!, `gap ${i + 1} longer than gap ${i} (${report} ms)`);
    });
    // Nominally ×8 from the first gap to the fourth; linear growth would give ×4, a constant delay ×1.
    assert.ok(gaps.at(-1)! > gaps[0]! * 3.5, `grows exponentially (${report} ms)`);
    await eventually(async () => assert.equal((await f.deadLetters()).length, 1));
  });

  void it("de-duplication: the same event published twice, or raw bytes with the same msgID, is stored once", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const [event] = orderPlacedEvents(1, "dup");
    const first = await f.publisher.publish(event!);
    const again = await f.publisher.publish({ ...event!, timestamp: new Date(Date.now() + 1).toISOString() });
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true, "a redo with the same deterministic id is a duplicate");
    assert.equal(again.seq, first.seq);

    const raw1 = await f.publisher.publishRaw("orders.dup-raw", enc.encode("x"), { msgID: "dup-raw-1" });
    const raw2 = await f.publisher.publishRaw("orders.dup-raw", enc.encode("x"), { msgID: "dup-raw-1" });
    assert.equal(raw2.duplicate, true);
    assert.equal(raw2.seq, raw1.seq);
    assert.equal(await f.streamCount("ORDERS"), 2);
  });

  void it("a publish retried after a PubAck timeout (server stopped with SIGSTOP) is stored once", async (t) => {
    const f = await startMessaging();
    t.after(async () => {
      if (f.single.running) f.single.signal("SIGCONT");
      await f.close();
    });
    const metrics = new Metrics("conformance", { defaultMetrics: false });
    const publisher = new Publisher(f.js, { timeoutMs: 250, retryDelayMs: 50, maxAttempts: 40, metrics });
    const retries = async () =>
      (await metrics.publishRetries.get()).values.find((v) => v.labels.stream === "ORDERS")?.value ?? 0;
    const [event] = orderPlacedEvents(1, "sigstop");

    f.single.signal("SIGSTOP");
    const publishing = publisher.publish(event!);
    // If the publish settles while the server is frozen, the failure says how (an ack, or the error that ended it).
    let settled: string | undefined;
    publishing.then(
      (ack) => (settled = `acknowledged while the server was stopped: ${JSON.stringify(ack)}`),
      (err: unknown) => (settled = `failed: ${String(err)}`),
    );
    // The server is frozen: every attempt times out and is retried with the same Nats-Msg-Id.
    await eventually(async () => {
      assert.equal(settled, undefined, `the publish settled before three retries: ${settled}`);
      assert.ok((await retries()) >= 3, "at least three retries");
    }, 15_000);
    f.single.signal("SIGCONT");
    const ack = await publishing;

    assert.equal(await f.streamCount("ORDERS"), 1, "stored once despite several sends");
    const stored = await f.jsm.streams.getMessage("ORDERS", { seq: ack.seq });
    assert.equal(stored!.header.get("Nats-Msg-Id"), event!.id);
    assert.deepEqual(stored!.json(), event);
  });
});
