/**
 * `npm run bench:micro`: micro-benchmarks of the hot paths, each on its own, printing ops/s and CPU µs per op.
 *
 *   npm run bench:micro                 # everything
 *   npm run bench:micro -- codec runner # only the named groups: codec, publish, runner, kv
 *
 * - codec: envelope encode (validate + JSON), validate only, decode (JSON + validate), raw JSON.
 * - publish: the Publisher (validation, span, headers, PubAck) one at a time and 64 in flight, against the raw
 *   client's publish — on a real nats-server (file storage) started on a free port.
 * - runner: the ConsumerRunner with a no-op handler (decode, span, heartbeat timer, metrics, ack) against a raw
 *   pull consume + ack of the same messages.
 * - kv: a compare-and-set round trip (read + update) and one starting from the known revision (update only).
 */
import { jetstream, jetstreamManager, AckPolicy } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { makeEvent, decodeEvent, encodeEvent, validateEvent, type Envelope } from "../src/lib/events/mod.js";
import { ConsumerRunner } from "../src/lib/messaging/consumer.js";
import { installNatsTuning } from "../src/lib/messaging/nats-tuning.js";
import { Publisher } from "../src/lib/messaging/publisher.js";
import { ensureConsumer, ensureStream } from "../src/lib/messaging/topology.js";
import { casUpdate, openBucket, Unchanged, type Versioned } from "../src/lib/kv.js";
import { createLogger } from "../src/lib/telemetry/logger.js";
import { Metrics } from "../src/lib/telemetry/metrics.js";
import { startNatsServer, type NatsServer } from "../src/stack/nats-server.js";
import { streamSpecs } from "../src/lib/service.js";

const groups = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const want = (g: string) => groups.length === 0 || groups.includes(g);
const rows: { name: string; ops: number; opsPerS: number; cpuUsPerOp: number }[] = [];

function report(name: string, ops: number, ms: number, cpuUs: number): void {
  const r = {
    name,
    ops,
    opsPerS: Math.round((ops / ms) * 1000),
    cpuUsPerOp: Math.round((cpuUs / ops) * 10) / 10,
  };
  rows.push(r);
  process.stdout.write(
    `${name.padEnd(58)} ${r.opsPerS.toLocaleString("en-US").padStart(11)} ops/s  ${String(r.cpuUsPerOp).padStart(7)} µs CPU/op  (${ops} ops)\n`,
  );
}

/** Runs `fn` repeatedly for about `ms`, synchronously. */
function sync(name: string, ms: number, fn: (i: number) => unknown): void {
  for (let i = 0; i < 2_000; i++) fn(i); // warm-up
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < ms) {
    for (let k = 0; k < 200; k++) fn(n++);
  }
  const c = process.cpuUsage(c0);
  report(name, n, performance.now() - t0, c.user + c.system);
}

/** Runs async `fn` with `concurrency` in flight for about `ms`. */
async function concurrent(
  name: string,
  ms: number,
  concurrency: number,
  fn: (i: number) => Promise<unknown>,
): Promise<void> {
  for (let i = 0; i < 200; i++) await fn(-1 - i); // warm-up
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - t0 < ms) await fn(n++);
    }),
  );
  const c = process.cpuUsage(c0);
  report(name, n, performance.now() - t0, c.user + c.system);
}

function sampleEvent(i: number): Envelope<"OrderPlaced"> {
  const orderId = `ord_${i.toString(36).padStart(9, "0")}0123456789abcdef`;
  return makeEvent(
    "OrderPlaced",
    {
      orderId,
      customerId: `load-${i % 1000}`,
      email: `load-${i % 1000}@example.com`,
      items: [
        { sku: "SKU-MUG", quantity: 2, unitPrice: 1250 },
        { sku: "SKU-CAP", quantity: 1, unitPrice: 2200 },
      ],
      total: 4700,
      currency: "EUR",
      placedAt: new Date().toISOString(),
      timeoutAt: new Date(Date.now() + 60_000).toISOString(),
    },
    { aggregateId: orderId, source: "orders" },
  );
}

function codec(): void {
  process.stdout.write("\n# codec (envelope of an OrderPlaced with two lines)\n");
  const events = Array.from({ length: 1024 }, (_, i) => sampleEvent(i));
  const bytes = events.map((e) => encodeEvent(e));
  const json = events.map((e) => JSON.stringify(e));
  process.stdout.write(`envelope size: ${bytes[0]!.length} bytes\n`);
  sync("encodeEvent (validate + stringify + utf-8)", 1500, (i) => encodeEvent(events[i & 1023]!));
  sync("validateEvent (TypeBox compiled checks)", 1500, (i) => validateEvent(events[i & 1023]!));
  sync("decodeEvent (utf-8 + parse + validate)", 1500, (i) => decodeEvent(bytes[i & 1023]!));
  sync("JSON.parse only (for comparison)", 1500, (i) => JSON.parse(json[i & 1023]!));
  sync("JSON.stringify only (for comparison)", 1500, (i) => JSON.stringify(events[i & 1023]!));
}

async function withServer<T>(fn: (nc: NatsConnection, server: NatsServer) => Promise<T>): Promise<T> {
  const server = await startNatsServer({});
  // The services' client: connectNats sets noAsyncTraces and installs the nats.js tuning.
  installNatsTuning();
  const nc = await connect({ servers: server.url, name: "micro", noAsyncTraces: true });
  try {
    return await fn(nc, server);
  } finally {
    await nc.close();
    await server.stop();
    await server.cleanup?.();
  }
}

async function publish(nc: NatsConnection): Promise<void> {
  process.stdout.write("\n# publish (file-storage stream, PubAck awaited)\n");
  const jsm = await jetstreamManager(nc);
  for (const s of streamSpecs) await ensureStream(jsm, s);
  const js = jetstream(nc);
  const publisher = new Publisher(js, { metrics: new Metrics("micro") });
  let k = 0;
  const raw = encodeEvent(sampleEvent(0));
  await concurrent("raw js.publish, 1 in flight", 2000, 1, () =>
    js.publish(`orders.raw${k++ % 50_000}`, raw, { msgID: `r1:${k}` }),
  );
  await concurrent("Publisher.publish, 1 in flight", 2000, 1, (i) =>
    publisher.publish(sampleEvent(1_000_000 + i + k++)),
  );
  await concurrent("raw js.publish, 64 in flight", 2000, 64, () =>
    js.publish(`orders.raw${k++ % 50_000}`, raw, { msgID: `r64:${k}` }),
  );
  await concurrent("Publisher.publish, 64 in flight", 2000, 64, (i) =>
    publisher.publish(sampleEvent(2_000_000 + i + k++)),
  );
  await concurrent("Publisher.publish with expectLastSubjectSequence=0, 64", 2000, 64, (i) =>
    publisher.publish(sampleEvent(3_000_000 + i + k++), { expectLastSubjectSequence: 0 }),
  );
}

async function runner(nc: NatsConnection): Promise<void> {
  process.stdout.write("\n# consumer pipeline (one durable, messages stored beforehand)\n");
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  const stream = "MICRO";
  await jsm.streams.add({ name: stream, subjects: ["micro.>"], duplicate_window: 60_000_000_000 });
  const n = 30_000;
  const publisher = new Publisher(js);
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < n; i++) {
    const e = sampleEvent(i);
    pending.push(js.publish(`micro.${i % 100}`, encodeEvent(e), { msgID: `m:${i}`, headers: hdr(e.type) }));
    if (pending.length >= 256) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);

  // Raw consume + ack.
  await jsm.consumers.add(stream, {
    durable_name: "raw",
    ack_policy: AckPolicy.Explicit,
    max_ack_pending: 10_000,
  });
  {
    const c = await js.consumers.get(stream, "raw");
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let got = 0;
    const iter = await c.consume({ max_messages: 1000 });
    for await (const m of iter) {
      m.ack();
      if (++got >= n) break;
    }
    await iter.close();
    const cu = process.cpuUsage(c0);
    report("raw consume() + ack", got, performance.now() - t0, cu.user + cu.system);
  }

  // The runner, no-op handler, at two concurrencies.
  for (const concurrency of [32, 256]) {
    const profiling = await profileStart();
    const durable = `runner${concurrency}`;
    await ensureConsumer(jsm, { stream, durable, maxAckPending: 10_000 });
    let done = 0;
    let finish!: () => void;
    const all = new Promise<void>((r) => (finish = r));
    const r = new ConsumerRunner({
      js,
      spec: { stream, durable },
      handlers: {
        OrderPlaced: async () => {
          if (++done === n) finish();
        },
      },
      publisher,
      logger: createLogger({ service: "micro", level: "warn" }),
      metrics: process.env.NO_METRICS ? undefined : new Metrics("micro"),
      concurrency,
    });
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await r.start();
    await all;
    const ms = performance.now() - t0;
    const cu = process.cpuUsage(c0);
    await r.stop(5_000);
    await profileStop(profiling, `runner-c${concurrency}`);
    report(`ConsumerRunner, no-op handler, concurrency ${concurrency}`, done, ms, cu.user + cu.system);
  }
}

function hdr(type: string) {
  // Imported lazily so the codec group needs no NATS module state.
  return headersWith(type);
}
import { headers as natsHeaders } from "@nats-io/transport-node";
function headersWith(type: string) {
  const h = natsHeaders();
  h.set("Shopstream-Type", type);
  return h;
}

async function kv(nc: NatsConnection): Promise<void> {
  process.stdout.write("\n# KV compare-and-set (JetStream KV, file storage)\n");
  const bucket = await openBucket(nc, "micro");
  type Counter = { n: number; pad: string };
  const inc = (c: Counter | null): Counter | typeof Unchanged => ({
    n: (c?.n ?? 0) + 1,
    pad: "x".repeat(200),
  });
  let i = 0;
  await concurrent("casUpdate (get + update), 1 in flight, own key each", 2000, 1, () =>
    casUpdate<Counter>(bucket, `k${i++ % 1000}`, inc),
  );
  const known = new Map<string, Versioned<Counter>>();
  await concurrent("casUpdate from the known revision (update only)", 2000, 1, async () => {
    const key = `k${i++ % 1000}`;
    const r = await casUpdate<Counter>(bucket, key, inc, { known: known.get(key) });
    known.set(key, { value: r.value, revision: r.revision });
  });
  await concurrent("kv.get, 1 in flight", 2000, 1, () => bucket.get(`k${i++ % 1000}`));
  await concurrent("casUpdate (get + update), 64 in flight, own key each", 2000, 64, () =>
    casUpdate<Counter>(bucket, `j${i++ % 100_000}`, inc),
  );
}

/** `--profile=<dir>`: a V8 CPU profile of each runner measurement (summarise with `bench/profile.ts <dir>`). */
const profileDir = process.argv.find((a) => a.startsWith("--profile="))?.slice("--profile=".length);

async function profileStart(): Promise<import("node:inspector/promises").Session | undefined> {
  if (!profileDir) return undefined;
  const { Session } = await import("node:inspector/promises");
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.start");
  return session;
}

async function profileStop(
  session: import("node:inspector/promises").Session | undefined,
  name: string,
): Promise<void> {
  if (!session || !profileDir) return;
  const { profile } = await session.post("Profiler.stop");
  const { mkdir, writeFile } = await import("node:fs/promises");
  await mkdir(profileDir, { recursive: true });
  await writeFile(`${profileDir}/${name}.cpuprofile`, JSON.stringify(profile));
  session.disconnect();
}

async function main(): Promise<void> {
  process.stdout.write(
    `bench:micro on ${process.version}, load average ${(await import("node:os"))
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}\n`,
  );
  if (want("codec")) codec();
  if (want("publish") || want("runner") || want("kv")) {
    await withServer(async (nc) => {
      if (want("publish")) await publish(nc);
      if (want("runner")) await runner(nc);
      if (want("kv")) await kv(nc);
    });
  }
  if (process.argv.includes("--json")) process.stdout.write(JSON.stringify(rows) + "\n");
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench:micro: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
