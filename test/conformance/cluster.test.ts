/**
 * Messaging conformance on a 3-node JetStream cluster with R3 streams: the stream leader is killed with SIGKILL under
 * load; publishes are retried (same event id) until stored, nothing published is lost or stored twice, consumers go
 * on, and the killed node catches up after its restart.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Envelope } from "../../src/lib/events/mod.js";
import { PublishError } from "../../src/lib/messaging/publisher.js";
import {
  Recorder,
  eventually,
  orderPlacedEvents,
  sleep,
  startMessaging,
  within,
} from "../helpers/messaging.js";

void describe("messaging conformance: 3-node cluster", () => {
  void it("R3 streams: killing the stream leader under load loses nothing; it catches up after a restart", async (t) => {
    const f = await startMessaging({
      cluster: true,
      publisher: { timeoutMs: 1_000, maxAttempts: 4, retryDelayMs: 100 },
    });
    t.after(() => f.close());
    const cluster = f.cluster!;
    const info = await f.jsm.streams.info("ORDERS");
    assert.equal(info.config.num_replicas, 3);
    const spec = await f.consumer("cluster-orders", { ackWaitMs: 3_000 });
    const rec = new Recorder();
    await f.startRunner(spec, { concurrency: 8, handlers: rec.handlers(() => sleep(2)) });

    const events = orderPlacedEvents(300, "cluster");
    let published = 0;
    let failures = 0;
    const reached: { n: number; resolve: () => void }[] = [];
    const whenPublished = (n: number) => new Promise<void>((resolve) => reached.push({ n, resolve }));
    const at100 = whenPublished(100);
    const at200 = whenPublished(200);
    /** Publishes `e` again with the same id until JetStream confirms it: what a service does. */
    const publishUntilStored = async (e: Envelope) => {
      for (;;) {
        try {
          return await f.publisher.publish(e);
        } catch (err) {
          assert.ok(err instanceof PublishError, `only publish failures expected, got ${String(err)}`);
          failures++;
        }
      }
    };
    const publishing = (async () => {
      for (const e of events) {
        await publishUntilStored(e);
        published++;
        for (const r of reached) if (published === r.n) r.resolve();
      }
    })();

    await within(at100, 30_000, "100 publishes");
    const leader = (await f.jsm.streams.info("ORDERS")).cluster?.leader;
    const victim = cluster.servers.findIndex((s) => s.serverName === leader);
    assert.ok(victim >= 0, `stream leader ${leader} is a member`);
    await cluster.kill(victim);

    const newLeader = await eventually(async () => {
      const l = (await f.jsm.streams.info("ORDERS")).cluster?.leader;
      assert.ok(l && l !== leader, `a new stream leader (now ${l})`);
      return l;
    }, 30_000);
    await within(at200, 30_000, "100 more publishes with the leader down");
    await cluster.restart(victim);
    await cluster.waitForJetStream();
    await within(publishing, 60_000, "every publish stored");

    await rec.untilCompleted(
      events.map((e) => e.id),
      30_000,
      "every event handled",
    );
    const after = await eventually(async () => {
      const si = await f.jsm.streams.info("ORDERS");
      const replicas = si.cluster?.replicas ?? [];
      assert.equal(replicas.length, 2);
      assert.ok(
        replicas.every((r) => r.current),
        `replicas current: ${JSON.stringify(replicas)}`,
      );
      return si;
    }, 30_000);
    assert.equal(after.state.messages, events.length, "each event stored once despite the retries");
    await f.settled(spec, 30_000);
    t.diagnostic(
      `leader ${leader} killed, ${newLeader} took over; publish failures ${failures}; ` +
        `handled ${rec.calls.length} times for ${events.length} events`,
    );
  });
});
