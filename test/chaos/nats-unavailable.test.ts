/**
 * Regression test for what `cluster-leader-loss` found: a handler whose KV or JetStream calls fail because NATS
 * is briefly unavailable (no stream leader during an election: "jetstream is not enabled", 503, timeouts) used up
 * its delivery attempts within seconds and was dead-lettered — a confirmed order's stock never committed, a
 * charge never recorded (so never refunded). Such failures must use up no attempt: the message is kept and the
 * handler run again in place until NATS answers.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { JetStreamApiError } from "@nats-io/jetstream";
import { errors as natsErrors } from "@nats-io/transport-node";
import { PublishError } from "../../src/lib/messaging/publisher.js";
import { Recorder, orderPlacedEvents, publishAll, startMessaging } from "../helpers/messaging.js";

/** The errors a handler sees from KV and JetStream while a stream has no leader. */
function unavailable(n: number): Error {
  switch (n % 4) {
    case 0:
      return new natsErrors.TimeoutError();
    case 1:
      return Object.assign(new Error("jetstream is not enabled"), { name: "JetStreamNotEnabled" });
    case 2:
      return new JetStreamApiError({
        code: 503,
        err_code: 10008,
        description: "JetStream system temporarily unavailable",
      });
    default:
      return new PublishError("inventory.x.StockReserved", new natsErrors.NoRespondersError("$JS.API"));
  }
}

void describe("consumer runner: NATS briefly unavailable", () => {
  void it("uses up no delivery attempt: the message is retried in place, then acked, never dead-lettered", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("nats-unavailable");
    const rec = new Recorder();
    const [event] = orderPlacedEvents(1, "unavailable");
    let calls = 0;
    await f.startRunner(spec, {
      maxAttempts: 2,
      handlers: rec.handlers(() => {
        calls++;
        // Far more failures than attempts allowed.
        if (calls <= 6) throw unavailable(calls);
      }),
    });
    await publishAll(f.publisher, [event!]);
    await rec.untilCompleted([event!.id], 20_000);
    await f.settled(spec);
    assert.equal(calls, 7);
    assert.deepEqual(
      rec.callsOf(event!.id).map((c) => c.attempt),
      [1, 1, 1, 1, 1, 1, 1],
      "every call on the first delivery",
    );
    assert.deepEqual(await f.deadLetters("nats-unavailable"), []);
  });
});
