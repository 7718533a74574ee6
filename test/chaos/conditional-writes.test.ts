/**
 * Regression test for what `cluster-leader-loss` found (with order timeouts racing captures): on a 3-node cluster of
 * the nats-server on these machines (2.9.10), two concurrent appends to one subject expecting the same last
 * subject sequence were both accepted (nats-io/nats-server#4320, fixed in 2.9.21), so an order was appended both
 * OrderConfirmed and OrderCancelled. A process now sends its conditional writes of one subject (and its
 * compare-and-sets of one KV key) one at a time: the second sees the first and fails as a conflict.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { Unchanged, casUpdate } from "../../src/lib/kv.js";
import { ConcurrencyError, Publisher } from "../../src/lib/messaging/publisher.js";
import { type NatsCluster, connectTo, startNatsCluster } from "../helpers/nats.js";

const ROUNDS = 40;
const enc = new TextEncoder();

void describe("conditional writes on a 3-node cluster (R3)", { timeout: 120_000 }, () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;
  let js: JetStreamClient;

  before(async () => {
    cluster = await startNatsCluster();
    nc = await connectTo(cluster);
    js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "FORK", subjects: ["fork.*"], num_replicas: 3 });
  });

  after(async () => {
    await nc?.close();
    await cluster?.cleanup();
  });

  void it("two concurrent appends expecting the same sequence: one wins, the other is a conflict", async () => {
    const publisher = new Publisher(js);
    for (let i = 0; i < ROUNDS; i++) {
      const subject = `fork.o${i}`;
      const placed = await js.publish(subject, "OrderPlaced");
      const outcomes = await Promise.allSettled(
        ["OrderConfirmed", "OrderCancelled"].map((type) =>
          publisher.publishRaw(subject, enc.encode(type), {
            msgID: `o${i}:${type}`,
            expectLastSubjectSequence: placed.seq,
          }),
        ),
      );
      const won = outcomes.filter((o) => o.status === "fulfilled").length;
      assert.equal(won, 1, `round ${i}: ${won} appends accepted`);
      const lost = outcomes.find((o) => o.status === "rejected");
      assert.ok(lost?.status === "rejected" && lost.reason instanceof ConcurrencyError);
    }
  });

  void it("two concurrent compare-and-sets of one KV key: one wins", async () => {
    const kv = await new Kvm(nc).create("fork_kv", { replicas: 3 });
    for (let i = 0; i < ROUNDS; i++) {
      const results = await Promise.all(
        ["charging", "cancelled"].map((state) =>
          casUpdate<string>(kv, `p${i}`, (cur) => (cur === null ? state : Unchanged)),
        ),
      );
      assert.equal(results.filter((r) => r.changed).length, 1, `round ${i}`);
    }
  });
});
