/**
 * Messaging conformance, manual pauses (src/lib/messaging/consumer-control.ts) on a real nats-server 2.9, which has no
 * consumer pause API: a runner follows the consumer-control KV bucket — paused while its durable's key says so (the
 * messages wait in the stream, no attempt used), also when it starts paused; a breaker's pause and resume do not undo
 * an operator's pause; resumed by the key, it delivers everything.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { openBucket } from "../../src/lib/kv.js";
import {
  CONSUMER_CONTROL_BUCKET,
  followConsumerControl,
  pausedConsumers,
  setConsumerPaused,
} from "../../src/lib/messaging/consumer-control.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { Recorder, eventually, orderPlacedEvents, publishAll, startMessaging } from "../helpers/messaging.js";

void describe("messaging conformance: manual pauses", () => {
  void it("a runner follows its durable's key: paused from the start, a breaker does not resume it, the key does", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const kv = await openBucket(f.nc, CONSUMER_CONTROL_BUCKET);
    const spec = await f.consumer("by-hand", { ackWaitMs: 1_000 });
    // Paused before the runner exists (services follow the bucket before their runners pull: src/lib/service.ts).
    await setConsumerPaused(kv, spec.durable, true, "alice");
    assert.deepEqual([...(await pausedConsumers(kv)).keys()], [spec.durable]);
    const rec = new Recorder();
    const runner = await f.startRunner(spec, { concurrency: 4, handlers: rec.handlers() });
    const stop = await followConsumerControl(
      kv,
      new Map([[spec.durable, runner]]),
      createLogger({ service: "test", level: "silent" }),
    );
    t.after(stop);
    assert.equal(runner.paused, true);
    assert.deepEqual(runner.pausedBy, ["operator"]);
    // The helper started the runner before the bucket was followed: its first fetch (1 s) expires unanswered.
    await eventually(
      async () => assert.equal((await f.info(spec)).num_waiting, 0, "pull requests waiting"),
      10_000,
    );

    const events = orderPlacedEvents(5, "by-hand");
    await publishAll(f.publisher, events);
    // A breaker opening and closing meanwhile leaves the operator's pause in place.
    runner.pause();
    runner.resume();
    assert.equal(runner.paused, true, "a breaker closing does not undo an operator's pause");
    await eventually(async () => assert.equal((await f.info(spec)).num_pending, 5));
    const held = await f.info(spec);
    assert.equal(held.num_ack_pending, 0, "nothing delivered while paused");
    assert.equal(held.num_redelivered, 0);
    assert.equal(rec.calls.length, 0);

    await setConsumerPaused(kv, spec.durable, false, "alice");
    await rec.untilCompleted(
      events.map((e) => e.id),
      10_000,
    );
    assert.equal(runner.paused, false);
    for (const e of events)
      assert.deepEqual(
        rec.callsOf(e.id).map((c) => c.attempt),
        [1],
        `${e.id}: one attempt`,
      );
    assert.deepEqual([...(await pausedConsumers(kv)).keys()], []);
  });
});
