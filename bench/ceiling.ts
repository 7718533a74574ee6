/**
 * The raw JetStream ceiling of this machine, measured on the stack's own nats-server with the client the services
 * use (@nats-io/jetstream): envelope-sized messages (~400 bytes, each with a `Nats-Msg-Id`) published to a
 * file-storage stream, pipelined (a window of publishes in flight), counting PubAcks per second; one at a time
 * (what a handler's await costs); and consumed with a durable pull consumer and acknowledged one by one.
 */
import { installNatsTuning } from "../src/lib/messaging/nats-tuning.js";
import { randomBytes } from "node:crypto";
import { AckPolicy, jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect, headers as natsHeaders, type ConnectionOptions } from "@nats-io/transport-node";

export interface Ceiling {
  /** PubAcks per second with `window` publishes in flight. */
  publish_msgs_per_s: number;
  window: number;
  /** PubAcks per second awaiting each publish before the next. */
  sync_publish_msgs_per_s: number;
  /** Messages consumed and acked per second (pull consumer, one ack per message). */
  consume_ack_msgs_per_s: number;
  message_bytes: number;
  messages: number;
}

/** An envelope-like JSON body of about `bytes` bytes. */
function body(i: number, bytes: number): Uint8Array {
  const base = {
    id: `ord_${i.toString(36).padStart(9, "0")}${randomBytes(8).toString("hex")}:StockReserved`,
    type: "StockReserved",
    version: 1,
    aggregate_id: `ord_${i}`,
    data: {
      orderId: `ord_${i}`,
      customerId: `load-${i % 1000}`,
      items: [{ sku: "SKU-MUG", quantity: 2 }],
      total: 2500,
      currency: "EUR",
    },
    timestamp: new Date().toISOString(),
    trace_id: randomBytes(16).toString("hex"),
    causation_id: `ord_${i}:OrderPlaced`,
    source: "inventory",
    pad: "",
  };
  const s = JSON.stringify(base);
  base.pad = "x".repeat(Math.max(0, bytes - s.length));
  return new TextEncoder().encode(JSON.stringify(base));
}

/**
 * Measures the ceiling on `natsUrl` in a stream of its own (`BENCH_CEILING`, subjects `bench.ceiling.>`), deleted
 * afterwards. `seconds` bounds each part.
 */
export async function measureCeiling(
  natsUrl: string,
  auth: Omit<ConnectionOptions, "servers" | "name"> = {},
  seconds = 4,
  window = 512,
): Promise<Ceiling> {
  // The services' client: their connection options and the nats.js tuning (src/lib/messaging/connection.ts).
  installNatsTuning();
  const nc = await connect({ ...auth, servers: natsUrl, name: "bench-ceiling", noAsyncTraces: true });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  const stream = "BENCH_CEILING";
  await jsm.streams.delete(stream).catch(() => undefined);
  await jsm.streams.add({
    name: stream,
    subjects: ["bench.ceiling.>"],
    storage: StorageType.File,
    duplicate_window: 120_000_000_000,
  });
  const size = 400;
  const payloads = Array.from({ length: 1024 }, (_, i) => body(i, size));
  let n = 0;
  const hdr = () => {
    const h = natsHeaders();
    h.set("Shopstream-Type", "StockReserved");
    return h;
  };
  try {
    // 1. Pipelined publishes: keep `window` in flight.
    let acked = 0;
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    await new Promise<void>((resolve, reject) => {
      let inflight = 0;
      let stopped = false;
      const pump = () => {
        while (!stopped && inflight < window) {
          if (performance.now() >= end) {
            stopped = true;
            break;
          }
          const i = n++;
          inflight++;
          js.publish(`bench.ceiling.${i % 64}`, payloads[i % payloads.length], {
            msgID: `c:${i}`,
            headers: hdr(),
          }).then(() => {
            acked++;
            inflight--;
            if (stopped && inflight === 0) resolve();
            else pump();
          }, reject);
        }
        if (stopped && inflight === 0) resolve();
      };
      pump();
    });
    const pubSecs = (performance.now() - t0) / 1000;
    const publish = acked / pubSecs;

    // 2. One publish at a time.
    let syncAcked = 0;
    const t1 = performance.now();
    const end1 = t1 + Math.min(2, seconds) * 1000;
    while (performance.now() < end1) {
      const i = n++;
      await js.publish(`bench.ceiling.${i % 64}`, payloads[i % payloads.length], {
        msgID: `c:${i}`,
        headers: hdr(),
      });
      syncAcked++;
    }
    const syncPublish = syncAcked / ((performance.now() - t1) / 1000);

    // 3. Consume + ack everything stored so far.
    const total = (await jsm.streams.info(stream)).state.messages;
    await jsm.consumers.add(stream, {
      durable_name: "ceiling",
      ack_policy: AckPolicy.Explicit,
      max_ack_pending: 10_000,
    });
    const consumer = await js.consumers.get(stream, "ceiling");
    const t2 = performance.now();
    const end2 = t2 + seconds * 1000;
    let consumed = 0;
    const iter = await consumer.consume({ max_messages: 1000 });
    for await (const m of iter) {
      m.ack();
      consumed++;
      if (consumed >= total || performance.now() >= end2) break;
    }
    const consumeSecs = (performance.now() - t2) / 1000;
    await iter.close();
    await nc.flush();
    return {
      publish_msgs_per_s: Math.round(publish),
      window,
      sync_publish_msgs_per_s: Math.round(syncPublish),
      consume_ack_msgs_per_s: Math.round(consumed / consumeSecs),
      message_bytes: payloads[0]!.length,
      messages: total,
    };
  } finally {
    await jsm.streams.delete(stream).catch(() => undefined);
    await nc.close();
  }
}
