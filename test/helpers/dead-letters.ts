/**
 * Dead letters of the orders a test brings: every DLQ entry whose subject names one of them, and a wait for
 * an order's single dead letter.
 */
import assert from "node:assert/strict";
import type { JetStreamManager } from "@nats-io/jetstream";
import { listDeadLetters, type DeadLetter } from "../../src/lib/messaging/dlq.js";
import { eventually } from "./eventually.js";

/** The DLQ entries whose subject names one of `orderIds`. */
export async function deadLettersOf(jsm: JetStreamManager, orderIds: string[]): Promise<DeadLetter[]> {
  return (await listDeadLetters(jsm, { limit: 1000 })).filter((d) =>
    orderIds.some((o) => d.subject.includes(o)),
  );
}

/** Waits until `orderId` has exactly one dead letter and returns it. */
export async function theDeadLetterOf(jsm: JetStreamManager, orderId: string): Promise<DeadLetter> {
  const [dl] = await eventually(
    async () => {
      const d = await deadLettersOf(jsm, [orderId]);
      assert.equal(d.length, 1);
      return d;
    },
    { what: `the dead letter of ${orderId}` },
  );
  return dl!;
}
