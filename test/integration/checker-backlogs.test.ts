/**
 * The consumer scan behind invariant I6 and the chaos harness's quiet wait (`consumerBacklogs`), against a real
 * nats-server: a durable consumer with messages not delivered or not acknowledged is reported, a timer consumer
 * is not, and an empty one is not.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { consumerBacklogs } from "../../src/checker/checker.js";
import { orderPlacedEvents, startMessaging, type Messaging } from "../helpers/messaging.js";

let f: Messaging;
before(async () => {
  f = await startMessaging();
});
after(async () => {
  await f?.close();
});

void describe("checker: consumer backlogs (I6)", () => {
  void it("reports durable consumers with work left, timers aside", async () => {
    await f.consumer("lagging");
    await f.consumer("timer-like");
    for (const e of orderPlacedEvents(3, "backlog")) await f.publisher.publish(e);
    const backlogs = await consumerBacklogs(f.jsm, new Set(["timer-like"]));
    assert.deepEqual(backlogs, [{ consumer: "ORDERS/lagging", pending: 3, ackPending: 0 }]);
    assert.deepEqual(await consumerBacklogs(f.jsm, new Set(["timer-like", "lagging"])), []);
  });
});
