/**
 * The nats.js tuning every service installs (`src/lib/messaging/nats-tuning.ts`), against a real nats-server:
 * commands made during one event-loop turn leave in one socket write, in order; requests still resolve, time
 * out and fail as before; a request cancelled by a closing connection still rejects.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { errors, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { installNatsTuning } from "../../src/lib/messaging/nats-tuning.js";
import { connectTo, startNatsServer, type NatsServer } from "../helpers/nats.js";

let server: NatsServer;
let nc: NatsConnection;

before(async () => {
  server = await startNatsServer();
  nc = await connectTo(server);
});
after(async () => {
  await nc?.close();
  await server?.stop();
});

/** Counts the socket writes of `conn` (the transport's socket) while `fn` runs. */
async function countWrites(conn: NatsConnection, fn: () => Promise<void>): Promise<number> {
  const socket = (
    conn as unknown as { protocol: { transport: { socket: { write: (...a: unknown[]) => boolean } } } }
  ).protocol.transport.socket;
  const original = socket.write;
  let writes = 0;
  socket.write = function (this: unknown, ...args: unknown[]) {
    writes++;
    return original.apply(this, args);
  };
  try {
    await fn();
  } finally {
    socket.write = original;
  }
  return writes;
}

void describe("nats.js tuning", () => {
  void it("is installed on this nats.js version", () => {
    assert.deepEqual(installNatsTuning(), { coalescedFlush: true, quietCancel: true });
  });

  void it("sends what one event-loop turn produces in one socket write, in order", async () => {
    const n = 200;
    const received: string[] = [];
    let all!: () => void;
    const allReceived = new Promise<void>((r) => (all = r));
    const sub = nc.subscribe("tuning.order", {
      callback: (_e, m) => {
        if (received.push(m.string()) === n) all();
      },
    });
    await nc.flush();
    const writes = await countWrites(nc, async () => {
      // Published at different microtask depths, as the acks and publishes of concurrent handlers are
      // (message i after i % 10 awaits); `next` numbers them in the order they are sent.
      const hops = async (k: number) => {
        for (let j = 0; j < k; j++) await Promise.resolve();
      };
      let next = 0;
      await Promise.all(
        Array.from({ length: n }, (_, i) =>
          hops(i % 10).then(() => nc.publish("tuning.order", `m${next++}`)),
        ),
      );
      await new Promise<void>((r) => setImmediate(r));
    });
    assert.equal(writes, 1, "one write for the whole turn");
    await allReceived;
    assert.deepEqual(
      received,
      Array.from({ length: n }, (_, i) => `m${i}`),
    );
    sub.unsubscribe();
  });

  void it("keeps requests working: replies, timeouts and no responders", async () => {
    const sub = nc.subscribe("tuning.echo", {
      callback: (_e, m) => {
        m.respond(m.data);
      },
    });
    await nc.flush();
    const replies = await Promise.all(
      Array.from({ length: 50 }, (_, i) => nc.request("tuning.echo", `r${i}`, { timeout: 2_000 })),
    );
    assert.deepEqual(
      replies.map((m) => m.string()),
      Array.from({ length: 50 }, (_, i) => `r${i}`),
    );
    sub.unsubscribe();
    // A subscriber that never answers: the request times out.
    const silent = nc.subscribe("tuning.silent", { callback: () => undefined });
    await nc.flush();
    await assert.rejects(nc.request("tuning.silent", "x", { timeout: 100 }), (err: unknown) => {
      return (
        err instanceof errors.TimeoutError ||
        (err instanceof errors.RequestError && err.cause instanceof errors.TimeoutError)
      );
    });
    silent.unsubscribe();
    await assert.rejects(nc.request("tuning.nobody", "x", { timeout: 1_000 }), (err: unknown) => {
      return (
        err instanceof errors.NoRespondersError ||
        (err instanceof errors.RequestError && err.isNoResponders())
      );
    });
  });

  void it("keeps JetStream publishes and direct gets working", async () => {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "TUNING", subjects: ["tuning.js.>"], allow_direct: true });
    const js = jetstream(nc);
    const acks = await Promise.all(
      Array.from({ length: 100 }, (_, i) => js.publish(`tuning.js.${i}`, `v${i}`, { msgID: `id-${i}` })),
    );
    assert.deepEqual(
      acks.map((a) => a.seq).sort((a, b) => a - b),
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    const again = await js.publish("tuning.js.0", "v0", { msgID: "id-0" });
    assert.equal(again.duplicate, true);
    const m = await jsm.direct.getMessage("TUNING", { last_by_subj: "tuning.js.42" });
    assert.equal(m?.string(), "v42");
  });

  void it("rejects a request still waiting when its connection closes", async () => {
    const other = await connectTo(server);
    const silent = other.subscribe("tuning.pending", { callback: () => undefined });
    await other.flush();
    const pending = other.request("tuning.pending", "x", { timeout: 10_000 });
    await other.flush();
    await other.close();
    await assert.rejects(pending);
    silent.unsubscribe();
  });
});
