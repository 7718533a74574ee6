/**
 * Messaging conformance, the lifecycle: pause/resume and parking (no attempts used), graceful stop under load (no
 * loss, handed-back messages come back at once, finished ones are not redelivered), several runners closed at once,
 * concurrent stop() calls, and a broker killed with SIGKILL and restarted mid-stream. Each test runs against its
 * own real nats-server.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RetryableError } from "../../src/lib/errors.js";
import type { Envelope } from "../../src/lib/events/mod.js";
import { DeferError } from "../../src/lib/messaging/consumer.js";
import { Publisher, PublishError } from "../../src/lib/messaging/publisher.js";
import {
  type Messaging,
  Recorder,
  eventually,
  nextStatus,
  orderPlacedEvents,
  publishAll,
  sleep,
  startMessaging,
  within,
} from "../helpers/messaging.js";

/** Waits until the consumer has no pull request waiting on the server (a paused runner's last fetch expired). */
async function noPullWaiting(f: Messaging, spec: { stream: string; durable: string }): Promise<void> {
  await eventually(
    async () => assert.equal((await f.info(spec)).num_waiting, 0, "pull requests waiting"),
    10_000,
  );
}

/** Handler work of 5–25 ms, like a small database write. */
const work = () => sleep(5 + Math.floor(Math.random() * 20));

void describe("messaging conformance: lifecycle", () => {
  void it("pause() stops deliveries: messages wait in the stream, no attempt is used, resume() delivers them", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("pausing", { ackWaitMs: 1_000 });
    const rec = new Recorder();
    const runner = await f.startRunner(spec, { concurrency: 4, handlers: rec.handlers() });
    const [warm] = orderPlacedEvents(1, "warm");
    await f.publisher.publish(warm!);
    await rec.untilCompleted([warm!.id], 10_000);

    runner.pause();
    assert.equal(runner.paused, true);
    await noPullWaiting(f, spec); // the fetch that was open when pause() was called has expired
    const events = orderPlacedEvents(10, "paused");
    await publishAll(f.publisher, events);
    // A bounded window to show that nothing happens: longer than a fetch (1 s) and the ack wait (1 s).
    await sleep(2_500);
    assert.equal(rec.calls.length, 1, "no handler call while paused");
    const ci = await f.info(spec);
    assert.equal(ci.num_pending, 10, "the messages wait in the stream");
    assert.equal(ci.num_ack_pending, 0, "none was delivered");
    assert.equal(ci.num_redelivered, 0);
    assert.equal(ci.num_waiting, 0, "the runner does not pull while paused");

    runner.resume();
    await rec.untilCompleted(
      events.map((e) => e.id),
      10_000,
    );
    for (const e of events)
      assert.deepEqual(
        rec.callsOf(e.id).map((c) => c.attempt),
        [1],
        e.id,
      );
    const after = await f.settled(spec);
    assert.equal(after.num_redelivered, 0);
  });

  void it("a handler failing while paused parks its message: kept past the ack wait, no attempt used, run again on resume", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const ackWaitMs = 1_000;
    const spec = await f.consumer("breaker", { ackWaitMs });
    const rec = new Recorder();
    let breakerOpen = true;
    const runner = await f.startRunner(spec, {
      maxAttempts: 1, // a counted failure would be dead-lettered at once
      handlers: rec.handlers(() => {
        if (breakerOpen) {
          runner.pause(); // what the circuit breaker wiring does when it opens
          throw new RetryableError("UPSTREAM_UNAVAILABLE", "payment gateway: 503");
        }
      }),
    });
    const [event] = orderPlacedEvents(1, "parked");
    await f.publisher.publish(event!);
    await rec.until(() => rec.calls.length === 1 && rec.active === 0, 10_000, "the failing call");

    // Parked for more than twice the ack wait: the heartbeat keeps it, the server does not redeliver it.
    await sleep(ackWaitMs * 2.5);
    let ci = await f.info(spec);
    assert.equal(ci.num_ack_pending, 1, "held by the runner");
    assert.equal(ci.num_redelivered, 0, "not redelivered");
    assert.equal(rec.calls.length, 1, "not retried while paused");
    assert.deepEqual(await f.deadLetters(), []);

    breakerOpen = false;
    runner.resume();
    await rec.untilCompleted([event!.id], 10_000);
    assert.deepEqual(
      rec.callsOf(event!.id).map((c) => [c.attempt, c.outcome]),
      [
        [1, "error"],
        [1, "ok"],
      ],
      "same delivery, attempt still 1",
    );
    ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
    assert.deepEqual(await f.deadLetters(), []);
  });

  void it("DeferError parks the message and runs it again after retryAfterMs, without using attempts", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const ackWaitMs = 1_000;
    const spec = await f.consumer("deferring", { ackWaitMs });
    const rec = new Recorder();
    const retryAfterMs = 500;
    await f.startRunner(spec, {
      maxAttempts: 1,
      handlers: rec.handlers((_e, _ctx, call) => {
        if (rec.calls.indexOf(call) < 3) throw new DeferError("breaker open", retryAfterMs);
      }),
    });
    const [event] = orderPlacedEvents(1, "defer");
    await f.publisher.publish(event!);

    await rec.untilCompleted([event!.id], 10_000);
    const calls = rec.callsOf(event!.id);
    assert.deepEqual(
      calls.map((c) => [c.attempt, c.outcome]),
      [
        [1, "error"],
        [1, "error"],
        [1, "error"],
        [1, "ok"],
      ],
    );
    for (let i = 1; i < calls.length; i++) {
      const gap = calls[i]!.at - calls[i - 1]!.at;
      assert.ok(gap >= retryAfterMs * 0.9, `re-run after retryAfterMs (${Math.round(gap)} ms)`);
    }
    // Held 1.5 s in all, longer than the ack wait, and never redelivered by the server.
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
    assert.equal(ci.delivered.consumer_seq, 1, "one delivery");
    assert.deepEqual(await f.deadLetters(), []);
  });

  void it("a graceful stop under load loses nothing, and what the stopped runner finished is not redelivered", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("draining", { ackWaitMs: 5_000 });
    const events = orderPlacedEvents(500, "drain");
    const ids = events.map((e) => e.id);
    await publishAll(f.publisher, events);

    const first = new Recorder();
    const r1 = await f.startRunner(spec, { concurrency: 8, handlers: first.handlers(work, "r1") });
    await first.until(() => first.completed.size >= 100, 20_000, "100 events handled");
    const stopped = await r1.stop(10_000);
    assert.deepEqual(stopped, { abandoned: 0 }, "in-flight handlers finished within the drain timeout");
    assert.equal(first.active, 0, "no handler of the stopped runner still running");
    const callsAtStop = first.calls.length;
    const finished = first.completedIds;
    assert.ok(finished.size < events.length, "stopped mid-way");

    const second = new Recorder();
    await f.startRunner(spec, { concurrency: 8, handlers: second.handlers(work, "r2") });
    await second.until(
      () => ids.every((id) => finished.has(id) || second.completed.has(id)),
      30_000,
      "every event handled by one runner or the other",
    );
    await f.settled(spec);
    assert.equal(first.calls.length, callsAtStop, "the stopped runner took nothing after stop()");
    const again = [...second.completedIds].filter((id) => finished.has(id));
    assert.deepEqual(again, [], "events finished before the stop were acked, not redelivered");
    const handedBack = second.calls.filter((c) => c.attempt > 1);
    t.diagnostic(`stopped after ${finished.size}; handed back ${handedBack.length}`);
    for (const c of handedBack)
      assert.equal(c.attempt, 2, `${c.id}: handed back once, not bounced back and forth`);
    assert.deepEqual(f.logs.errors(), []);
  });

  void it("stop() hands back parked messages at once: another runner gets them without waiting for the ack wait", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("handback", { ackWaitMs: 30_000 });
    const first = new Recorder();
    const r1 = await f.startRunner(spec, {
      handlers: first.handlers(() => {
        throw new DeferError("breaker open", 60_000);
      }, "r1"),
    });
    const [event] = orderPlacedEvents(1, "handback");
    await f.publisher.publish(event!);
    await first.until(() => first.calls.length === 1 && first.active === 0, 10_000, "the message parked");

    const stoppedAt = performance.now();
    assert.deepEqual(await within(r1.stop(10_000), 5_000, "stop() of a runner with a parked message"), {
      abandoned: 0,
    });
    const second = new Recorder();
    await f.startRunner(spec, { handlers: second.handlers(() => undefined, "r2") });
    await second.untilCompleted([event!.id], 5_000, "the handed-back message, well before the 30 s ack wait");
    assert.equal(second.calls[0]!.attempt, 2);
    t.diagnostic(`redelivered ${Math.round(second.calls[0]!.at - stoppedAt)} ms after stop()`);
    await f.settled(spec);
  });

  void it("concurrent close: several runners stopped at once under load, without errors, losing nothing", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("many", { ackWaitMs: 5_000 });
    const events = orderPlacedEvents(500, "many");
    const ids = events.map((e) => e.id);
    const rec = new Recorder();
    const runners = await Promise.all(
      ["a", "b", "c"].map((tag) =>
        f.startRunner(spec, { concurrency: 6, handlers: rec.handlers(work, tag) }),
      ),
    );
    // Publish while they consume, and close them all at once mid-way.
    const publishing = publishAll(f.publisher, events, 8);
    await rec.until(() => rec.completed.size >= 150, 20_000, "150 events handled");
    const results = await within(
      Promise.all(runners.map((r) => r.stop(10_000))),
      15_000,
      "every runner to stop",
    );
    assert.deepEqual(results, [{ abandoned: 0 }, { abandoned: 0 }, { abandoned: 0 }]);
    assert.equal(rec.active, 0);
    assert.ok(runners.every((r) => !r.ready));
    await publishing;
    const finished = rec.completedIds;
    assert.ok(finished.size < events.length, "closed mid-way");

    const late = new Recorder();
    await f.startRunner(spec, { concurrency: 8, handlers: late.handlers(work, "d") });
    await late.until(
      () => ids.every((id) => finished.has(id) || late.completed.has(id)),
      30_000,
      "every event handled",
    );
    await f.settled(spec);
    for (const c of late.calls) assert.ok(c.attempt <= 2, `${c.id}: handed back once (attempt ${c.attempt})`);
    assert.deepEqual(
      [...late.completedIds].filter((id) => finished.has(id)),
      [],
      "nothing finished before the close is redelivered",
    );
    assert.deepEqual(f.logs.errors(), [], "no errors logged");
  });

  void it("stop() called concurrently (and again later) on one runner resolves promptly every time", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("double-stop");
    const rec = new Recorder();
    const runner = await f.startRunner(spec, { handlers: rec.handlers(() => sleep(300)) });
    const [event] = orderPlacedEvents(1, "double");
    await f.publisher.publish(event!);
    await rec.until(() => rec.active === 1, 10_000, "the handler running");

    const drainTimeoutMs = 20_000;
    const started = performance.now();
    const results = await within(
      Promise.all([runner.stop(drainTimeoutMs), runner.stop(drainTimeoutMs), runner.stop(drainTimeoutMs)]),
      drainTimeoutMs + 5_000,
      "the stop() calls",
    );
    const tookMs = performance.now() - started;
    assert.deepEqual(results, [{ abandoned: 0 }, { abandoned: 0 }, { abandoned: 0 }]);
    // 300 ms of handler plus at most one fetch expiry (1 s); nowhere near the drain timeout.
    assert.ok(tookMs < 5_000, `all stop() calls resolved in ${Math.round(tookMs)} ms`);
    assert.equal(rec.completed.get(event!.id), 1);
    assert.deepEqual(await runner.stop(), { abandoned: 0 }, "stop() after stopped");
    await f.settled(spec);
  });

  void it("reconnect: the server killed with SIGKILL mid-stream and restarted; nothing is lost", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const server = f.single;
    const spec = await f.consumer("survivor", { ackWaitMs: 2_000 });
    const rec = new Recorder();
    await f.startRunner(spec, { concurrency: 8, handlers: rec.handlers(() => sleep(2)) });
    const publisher = new Publisher(f.js, { timeoutMs: 500, maxAttempts: 3, retryDelayMs: 50 });

    const events = orderPlacedEvents(300, "reconnect");
    let published = 0;
    let failures = 0;
    let onFailure: (() => void) | undefined;
    const failed = new Promise<void>((r) => (onFailure = r));
    /** Publishes `e`, retrying with the same event (same id) until it is stored: what a service does. */
    const publishUntilStored = async (e: Envelope) => {
      for (;;) {
        try {
          await publisher.publish(e);
          return;
        } catch (err) {
          assert.ok(err instanceof PublishError, `only publish failures expected, got ${String(err)}`);
          failures++;
          onFailure?.();
        }
      }
    };
    let onHalf: (() => void) | undefined;
    const half = new Promise<void>((r) => (onHalf = r));
    const publishing = (async () => {
      for (const e of events) {
        await publishUntilStored(e);
        if (++published === 100) onHalf?.();
      }
    })();

    await within(half, 20_000, "100 publishes");
    const reconnected = nextStatus(f.nc, "reconnect");
    const exit = await server.kill();
    assert.equal(exit?.forced, true);
    await within(failed, 20_000, "a publish to fail during the outage");
    await server.restart();
    await within(reconnected, 20_000, "the client to reconnect");
    await within(publishing, 60_000, "every publish to be stored");

    await rec.untilCompleted(
      events.map((e) => e.id),
      30_000,
      "every event handled after the restart",
    );
    assert.ok(failures > 0, "some publishes failed during the outage");
    assert.equal(await f.streamCount("ORDERS"), events.length, "each event stored once despite the retries");
    await f.settled(spec);
    const duplicates = rec.calls.length - rec.completed.size;
    t.diagnostic(
      `publish failures ${failures}; handled ${rec.calls.length} times (${duplicates} redeliveries)`,
    );
  });
});
