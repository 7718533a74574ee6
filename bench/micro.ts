/**
 * `npm run bench:micro`: micro-benchmarks of the hot paths, each on its own, printing ops/s and CPU µs per op.
 *
 *   npm run bench:micro                 # everything
 *   npm run bench:micro -- codec runner # only the named groups: codec, publish, runner, kv
 *   npm run bench:micro -- runner --rounds=5   # publish and runner: 5 interleaved rounds (default 3), medians
 *
 * - codec: envelope encode (validate + JSON), validate only, decode (JSON + validate), raw JSON.
 * - publish: the Publisher (validation, trace header, headers, PubAck) one at a time and 64 in flight, against the
 *   raw client's publish of the same bytes — on a real nats-server (file storage) started on a free port.
 * - runner: the ConsumerRunner with a no-op handler (decode, middleware, metrics, ack) against a raw pull
 *   consume + ack of the same messages.
 *
 * The machine is shared and noisy (1.5x between moments): publish and runner measure in interleaved rounds — raw,
 * then ours, then raw again — and print each round and the median per row, so that ours and raw are compared
 * at the same moments.
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
const rounds = Math.max(1, Number(process.argv.find((a) => a.startsWith("--rounds="))?.slice(9) ?? 3));
interface Row {
  name: string;
  ops: number;
  opsPerS: number;
  cpuUsPerOp: number;
}
const rows: Row[] = [];

function line(r: Row, note = ""): void {
  process.stdout.write(
    `${r.name.padEnd(58)} ${r.opsPerS.toLocaleString("en-US").padStart(11)} ops/s  ${String(r.cpuUsPerOp).padStart(7)} µs CPU/op  ${note}\n`,
  );
}

function report(name: string, ops: number, ms: number, cpuUs: number, round?: number): Row {
  const r = {
    name,
    ops,
    opsPerS: Math.round((ops / ms) * 1000),
    cpuUsPerOp: Math.round((cpuUs / ops) * 10) / 10,
  };
  if (round === undefined) rows.push(r);
  line(
    r,
    round === undefined
      ? `(${ops} ops)`
      : round === 0
        ? `(warm-up, not counted)`
        : `(round ${round}, ${ops} ops)`,
  );
  return r;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

/** Prints and keeps the median of each row measured over the rounds, with the CPU ratio to `base` where given. */
function medians(samples: Map<string, Row[]>, ratios: [string, string][] = []): void {
  process.stdout.write(`-- median of ${rounds} rounds\n`);
  const med = new Map<string, Row>();
  for (const [name, rs] of samples) {
    const r = {
      name,
      ops: median(rs.map((x) => x.ops)),
      opsPerS: median(rs.map((x) => x.opsPerS)),
      cpuUsPerOp: median(rs.map((x) => x.cpuUsPerOp)),
    };
    med.set(name, r);
    rows.push(r);
    const spread = rs.map((x) => x.cpuUsPerOp).sort((a, b) => a - b);
    line(r, `(CPU/op ${spread[0]}–${spread.at(-1)} over the rounds)`);
  }
  for (const [ours, base] of ratios) {
    const o = med.get(ours);
    const b = med.get(base);
    if (o && b)
      process.stdout.write(
        `   ${ours} / ${base}: ${(o.cpuUsPerOp / b.cpuUsPerOp).toFixed(2)}x CPU per op (median of per-round ratios ${median(
          samples.get(ours)!.map((x, i) => x.cpuUsPerOp / samples.get(base)![i]!.cpuUsPerOp),
        ).toFixed(2)}x)\n`,
      );
  }
}

/** Collects a round's row under its name. */
function sample(samples: Map<string, Row[]>, r: Row): void {
  samples.set(r.name, [...(samples.get(r.name) ?? []), r]);
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
  round?: number,
): Promise<Row> {
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
  return report(name, n, performance.now() - t0, c.user + c.system, round);
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
  // The events are made before the clock starts (makeEvent draws a trace id and formats dates): what is measured
  // is the publish, as for the raw client, which publishes bytes encoded beforehand.
  const events = Array.from({ length: 4096 }, (_, i) => sampleEvent(i));
  /** A fresh event (new id, so never a duplicate) from the pool. */
  const next = (base: number, i: number) => {
    const e = events[i & 4095]!;
    const orderId = `ord_${(base + i).toString(36).padStart(9, "0")}0123456789abcdef`;
    return { ...e, id: `${orderId}:OrderPlaced`, aggregate_id: orderId, data: { ...e.data, orderId } };
  };
  const samples = new Map<string, Row[]>();
  const keep = (r: number, row: Row) => {
    if (r > 0) sample(samples, row);
  };
  for (let r = 0; r <= rounds; r++) {
    const base = (r + 1) * 10_000_000;
    keep(
      r,
      await concurrent(
        "raw js.publish, 1 in flight",
        2000,
        1,
        () => js.publish(`orders.raw${k++ % 50_000}`, raw, { msgID: `r1:${k}` }),
        r,
      ),
    );
    keep(
      r,
      await concurrent(
        "Publisher.publish, 1 in flight",
        2000,
        1,
        () => publisher.publish(next(base, k++)),
        r,
      ),
    );
    keep(
      r,
      await concurrent(
        "raw js.publish, 64 in flight",
        2000,
        64,
        () => js.publish(`orders.raw${k++ % 50_000}`, raw, { msgID: `r64:${k}` }),
        r,
      ),
    );
    keep(
      r,
      await concurrent(
        "Publisher.publish, 64 in flight",
        2000,
        64,
        () => publisher.publish(next(base + 1_000_000, k++)),
        r,
      ),
    );
    keep(
      r,
      await concurrent(
        "Publisher.publish with expectLastSubjectSequence=0, 64",
        2000,
        64,
        () => publisher.publish(next(base + 2_000_000, k++), { expectLastSubjectSequence: 0 }),
        r,
      ),
    );
  }
  medians(samples, [
    ["Publisher.publish, 1 in flight", "raw js.publish, 1 in flight"],
    ["Publisher.publish, 64 in flight", "raw js.publish, 64 in flight"],
  ]);
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

  const samples = new Map<string, Row[]>();
  // Round 0 warms the JIT up (the first consumer measured in a process pays for compiling the client's code
  // paths, 1.5-2x) and is not counted.
  for (let round = 0; round <= rounds; round++) {
    const raw = await rawConsume(js, jsm, stream, n, round);
    if (round > 0) sample(samples, raw);
    // The runner, no-op handler, at two concurrencies.
    for (const concurrency of [32, 256]) {
      const profiling = await profileStart();
      const durable = `runner${concurrency}-${round}`;
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
      await profileStop(profiling, `runner-c${concurrency}-${round}`);
      const row = report(
        `ConsumerRunner, no-op handler, concurrency ${concurrency}`,
        done,
        ms,
        cu.user + cu.system,
        round,
      );
      if (round > 0) sample(samples, row);
    }
  }
  medians(samples, [
    ["ConsumerRunner, no-op handler, concurrency 32", "raw consume() + ack"],
    ["ConsumerRunner, no-op handler, concurrency 256", "raw consume() + ack"],
  ]);
}

/** A raw pull `consume()` (nats.js's defaults but 1,000 messages per pull) acking every message: the floor. */
async function rawConsume(
  js: ReturnType<typeof jetstream>,
  jsm: Awaited<ReturnType<typeof jetstreamManager>>,
  stream: string,
  n: number,
  round: number,
): Promise<Row> {
  const durable = `raw-${round}`;
  await jsm.consumers.add(stream, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    max_ack_pending: 10_000,
  });
  const c = await js.consumers.get(stream, durable);
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
  return report("raw consume() + ack", got, performance.now() - t0, cu.user + cu.system, round);
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
