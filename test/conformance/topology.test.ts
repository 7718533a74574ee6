/**
 * Messaging conformance, topology: streams and consumers declared in code are provisioned idempotently, and an
 * incompatible existing stream or consumer is reported field by field (TopologyError) and left as it was.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AckPolicy, DiscardPolicy, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import {
  TopologyError,
  consumerConfig,
  ensureConsumer,
  ensureStream,
  streamConfig,
} from "../../src/lib/messaging/topology.js";
import { streamSpecs } from "../../src/lib/service.js";
import { startMessaging } from "../helpers/messaging.js";

const ordersSpec = streamSpecs.find((s) => s.name === "ORDERS")!;

void describe("messaging conformance: topology", () => {
  void it("provisioning is idempotent: created once, then unchanged", async (t) => {
    const f = await startMessaging({ provision: false });
    t.after(() => f.close());
    for (const s of streamSpecs) assert.equal(await ensureStream(f.jsm, s), "created", s.name);
    for (const s of streamSpecs) assert.equal(await ensureStream(f.jsm, s), "unchanged", s.name);
    // Every replica provisions at start-up, possibly at the same time.
    const again = await Promise.all(streamSpecs.map((s) => ensureStream(f.jsm, s)));
    assert.ok(again.every((r) => r === "unchanged"));

    const consumers = [
      { stream: "ORDERS", durable: "inventory-orders", ackWaitMs: 2_000, maxAckPending: 64 },
      { stream: "PAYMENTS", durable: "orders-payments", filterSubject: "payments.*.PaymentCaptured" },
    ];
    for (const c of consumers) assert.equal(await ensureConsumer(f.jsm, c), "created", c.durable);
    for (const c of consumers) assert.equal(await ensureConsumer(f.jsm, c), "unchanged", c.durable);
    const info = await f.jsm.consumers.info("PAYMENTS", "orders-payments");
    assert.equal(info.config.filter_subject, "payments.*.PaymentCaptured");
    assert.equal(info.config.ack_policy, AckPolicy.Explicit);
    assert.equal((await f.jsm.streams.info("ORDERS")).config.duplicate_window, nanos(120_000));
  });

  void it("an incompatible existing stream is reported with every difference and not changed", async (t) => {
    const f = await startMessaging({ provision: false });
    t.after(() => f.close());
    // Made by hand (or by an older version): other subjects, a short duplicate window, a smaller max size.
    await f.jsm.streams.add({
      ...streamConfig(ordersSpec),
      name: "ORDERS",
      subjects: ["orders.>"],
      duplicate_window: nanos(10_000),
      max_msg_size: 4096,
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
    });
    const before = (await f.jsm.streams.info("ORDERS")).config;

    await assert.rejects(ensureStream(f.jsm, ordersSpec), (err: unknown) => {
      assert.ok(err instanceof TopologyError);
      assert.equal(err.code, "TOPOLOGY_INCOMPATIBLE");
      assert.equal(err.retryable, false);
      assert.match(err.message, /stream ORDERS/);
      assert.match(err.message, /subjects: declared \["orders\.\*"\], found \["orders\.>"\]/);
      assert.match(err.message, /duplicate_window: declared 120000000000, found 10000000000/);
      assert.match(err.message, /max_msg_size: declared 1048576, found 4096/);
      assert.doesNotMatch(err.message, /max_age|storage|discard/, "only the differences");
      return true;
    });
    await assert.rejects(
      ensureStream(
        f.jsm,
        { ...ordersSpec, subjects: ["orders.>"], duplicateWindowMs: 10_000, maxMsgSize: 4096 },
        { replicas: 3 },
      ),
      /num_replicas: declared 3, found 1/,
    );
    assert.deepEqual((await f.jsm.streams.info("ORDERS")).config, before, "the stream is left as it was");
  });

  void it("an incompatible existing consumer is reported with every difference and not changed", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = { stream: "ORDERS", durable: "notifications-orders", ackWaitMs: 2_000 };
    await f.jsm.consumers.add("ORDERS", {
      ...consumerConfig(spec),
      ack_wait: nanos(10_000),
      max_ack_pending: 10,
      filter_subject: "orders.vip-1",
    });
    const before = (await f.jsm.consumers.info("ORDERS", spec.durable)).config;

    await assert.rejects(ensureConsumer(f.jsm, spec), (err: unknown) => {
      assert.ok(err instanceof TopologyError);
      assert.match(err.message, /consumer ORDERS\/notifications-orders/);
      assert.match(err.message, /ack_wait: declared 2000000000, found 10000000000/);
      assert.match(err.message, /max_ack_pending: declared 1000, found 10/);
      assert.match(err.message, /filter_subject: declared none, found "orders\.vip-1"/);
      return true;
    });
    assert.deepEqual((await f.jsm.consumers.info("ORDERS", spec.durable)).config, before, "left as it was");
  });

  void it("a consumer differing only in ack_wait / max_ack_pending is updated in place, keeping its position", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = {
      stream: "ORDERS",
      durable: "orders-timeouts",
      filterSubject: "orders.*",
      ackWaitMs: 120_000,
      maxAckPending: 5_000,
    };
    await f.jsm.consumers.add("ORDERS", {
      ...consumerConfig(spec),
      ack_wait: nanos(30_000),
      max_ack_pending: 1_000,
    });
    assert.equal(await ensureConsumer(f.jsm, spec), "updated");
    const info = await f.jsm.consumers.info("ORDERS", spec.durable);
    assert.equal(info.config.ack_wait, nanos(120_000));
    assert.equal(info.config.max_ack_pending, 5_000);
    assert.equal(await ensureConsumer(f.jsm, spec), "unchanged");
  });
});
