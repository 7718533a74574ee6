/**
 * The audit service end to end: a real nats-server, and PostgreSQL when DATABASE_URL is set (each run in
 * its own schema), else PGlite in a temp dir.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/transport-node";
import { Streams } from "../../src/lib/events/catalog.js";
import { encodeEvent } from "../../src/lib/events/codec.js";
import { makeEvent, subjectOf, type AnyEnvelope } from "../../src/lib/events/envelope.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { ensureStream } from "../../src/lib/messaging/topology.js";
import { startService, streamSpecs, type RunningService } from "../../src/lib/service.js";
import { AUDIT_DURABLES, AUDITED_STREAMS, auditDurable } from "../../src/services/audit/handlers.js";
import type { EventsResponse, ListedEvent, TimelineResponse } from "../../src/services/audit/routes.js";
import {
  auditStoreOf,
  auditWriterOf,
  createAuditDefinition,
  definition,
} from "../../src/services/audit/service.js";
import { openDb, type SqlDb } from "../../src/services/audit/store.js";
import type { VerifyResult } from "../../src/services/audit/audit.js";
import { connectTo, startNatsServer, type NatsServer } from "../helpers/nats.js";
import { AUTH_ENV, operatorFetch } from "../helpers/auth.js";

const DATABASE_URL = process.env.DATABASE_URL || undefined;
const schema = `audit_it_${process.pid}_${randomBytes(3).toString("hex")}`;
let dataDir: string;

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "audit-it-"));
});

after(async () => {
  if (DATABASE_URL) {
    const db = await openDb({ databaseUrl: DATABASE_URL, dataDir });
    await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await db.close();
  }
  await rm(dataDir, { recursive: true, force: true });
});

/** A NATS server with a client, publisher and manager for one suite. */
class Bus {
  nats!: NatsServer;
  nc!: NatsConnection;
  js!: JetStreamClient;
  jsm!: JetStreamManager;
  publisher!: Publisher;

  async start(): Promise<void> {
    this.nats = await startNatsServer();
    this.nc = await connectTo(this.nats);
    this.js = jetstream(this.nc);
    this.jsm = await jetstreamManager(this.nc);
    this.publisher = new Publisher(this.js);
    for (const s of streamSpecs) await ensureStream(this.jsm, s);
  }

  async stop(): Promise<void> {
    await this.nc?.close();
    await this.nats?.cleanup();
  }

  /** Publishes events, `parallel` at a time. */
  async publish(events: AnyEnvelope[], parallel = 200): Promise<void> {
    for (let i = 0; i < events.length; i += parallel)
      await Promise.all(events.slice(i, i + parallel).map((e) => this.publisher.publish(e)));
  }

  /** Publishes an event again under another message id: JetStream stores it twice, audit must not. */
  async publishDuplicate(e: AnyEnvelope): Promise<void> {
    const h = natsHeaders();
    h.set(Hdr.Type, e.type);
    await this.publisher.publishRaw(subjectOf(e), encodeEvent(e), { msgID: `dup:${e.id}`, headers: h });
  }

  /**
   * Resolves once every audit consumer has acknowledged everything in its stream. The DLQ is checked
   * after the streams that feed it, so one idle pass means nothing is left in flight. Polls a real
   * condition (consumer state on the server); the interval is not a wait for it.
   */
  async auditIdle(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    for (;;) {
      let idle = true;
      for (const stream of [...AUDITED_STREAMS, Streams.DLQ]) {
        const s = await this.jsm.streams.info(stream);
        const c = await this.jsm.consumers.info(stream, auditDurable(stream));
        if (c.num_pending > 0 || c.num_ack_pending > 0 || c.ack_floor.stream_seq < s.state.last_seq) {
          idle = false;
          last = `${c.name}: pending ${c.num_pending}, ack pending ${c.num_ack_pending}, ack floor ${c.ack_floor.stream_seq}/${s.state.last_seq}`;
          break;
        }
      }
      if (idle) return;
      if (Date.now() >= deadline) throw new Error(`audit consumers not idle after ${timeoutMs} ms (${last})`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

type Variant = "confirmed" | "declined" | "out_of_stock" | "timeout_refund";

/**
 * One order's events as the saga would publish them, each caused by the one before. The capture's clock
 * is skewed behind the reservation's, so time order alone would misplace it.
 */
function saga(orderId: string, variant: Variant): AnyEnvelope[] {
  const t0 = Date.UTC(2024, 4, 1, 12, 0, 0);
  const at = (ms: number) => new Date(t0 + ms);
  const items = [{ sku: "sku-1", quantity: 2 }];
  const currency = "EUR";
  const placed = makeEvent(
    "OrderPlaced",
    {
      orderId,
      customerId: "c1",
      email: "c1@example.com",
      items: [{ sku: "sku-1", quantity: 2, unitPrice: 500 }],
      total: 1000,
      currency,
      placedAt: at(0).toISOString(),
      timeoutAt: at(60_000).toISOString(),
    },
    { aggregateId: orderId, source: "orders", now: at(0) },
  );
  const opts = (source: string, cause: AnyEnvelope, ms: number, idSuffix?: string) => ({
    aggregateId: orderId,
    source,
    cause,
    now: at(ms),
    idSuffix,
  });
  if (variant === "out_of_stock") {
    const rejected = makeEvent(
      "StockRejected",
      { orderId, reason: "insufficient", skus: ["sku-1"] },
      opts("inventory", placed, 10),
    );
    const cancelled = makeEvent(
      "OrderCancelled",
      { orderId, reason: "out_of_stock" },
      opts("orders", rejected, 20),
    );
    const released = makeEvent("StockReleased", { orderId, items: [] }, opts("inventory", cancelled, 30));
    const mailed = makeEvent(
      "NotificationSent",
      { orderId, kind: "order_cancelled", messageId: `m-${orderId}` },
      opts("notifications", cancelled, 40, "order_cancelled"),
    );
    return [placed, rejected, cancelled, released, mailed];
  }
  const reserved = makeEvent(
    "StockReserved",
    { orderId, customerId: "c1", items, total: 1000, currency },
    opts("inventory", placed, 10),
  );
  if (variant === "declined") {
    const declined = makeEvent(
      "PaymentDeclined",
      { orderId, reason: "card_declined" },
      opts("payments", reserved, 5),
    );
    const cancelled = makeEvent(
      "OrderCancelled",
      { orderId, reason: "payment_declined" },
      opts("orders", declined, 20),
    );
    const released = makeEvent("StockReleased", { orderId, items }, opts("inventory", cancelled, 30));
    const mailed = makeEvent(
      "NotificationSent",
      { orderId, kind: "order_cancelled", messageId: `m-${orderId}` },
      opts("notifications", cancelled, 40, "order_cancelled"),
    );
    return [placed, reserved, declined, cancelled, released, mailed];
  }
  const captured = makeEvent(
    "PaymentCaptured",
    { orderId, paymentId: `p-${orderId}`, amount: 1000, currency },
    opts("payments", reserved, 5),
  );
  if (variant === "timeout_refund") {
    const cancelled = makeEvent("OrderCancelled", { orderId, reason: "timeout" }, opts("orders", placed, 1));
    const released = makeEvent("StockReleased", { orderId, items }, opts("inventory", cancelled, 30));
    const refunded = makeEvent(
      "PaymentRefunded",
      { orderId, paymentId: `p-${orderId}`, refundId: `r-${orderId}`, amount: 1000, currency },
      opts("payments", cancelled, 35),
    );
    return [placed, cancelled, reserved, captured, released, refunded];
  }
  const confirmed = makeEvent(
    "OrderConfirmed",
    { orderId, paymentId: `p-${orderId}`, total: 1000, currency },
    opts("orders", captured, 20),
  );
  const committed = makeEvent("StockCommitted", { orderId, items }, opts("inventory", confirmed, 30));
  const mailed = makeEvent(
    "NotificationSent",
    { orderId, kind: "order_confirmed", messageId: `m-${orderId}` },
    opts("notifications", confirmed, 40, "order_confirmed"),
  );
  return [placed, reserved, captured, confirmed, committed, mailed];
}

function auditEnv(bus: Bus, table: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    ...AUTH_ENV,
    NATS_URL: bus.nats.url,
    PORT: "0",
    HOST: "127.0.0.1",
    LOG_LEVEL: "silent",
    AUDIT_SCHEMA: schema,
    AUDIT_TABLE: table,
    AUDIT_CONCURRENCY: "64",
    DRAIN_TIMEOUT_MS: "5000",
    RETRY_INITIAL_MS: "20",
    RETRY_MAX_MS: "200",
    ...(DATABASE_URL ? { DATABASE_URL } : { DATA_DIR: dataDir }),
    ...extra,
  };
}

async function get<T>(
  svc: RunningService<never> | { url: string },
  path: string,
): Promise<{ status: number; type: string; body: T }> {
  const res = await operatorFetch(svc.url + path);
  return { status: res.status, type: res.headers.get("content-type") ?? "", body: (await res.json()) as T };
}

/** Every row through the paged listing. */
async function listAll(svc: { url: string }, limit = 37): Promise<ListedEvent[]> {
  const out: ListedEvent[] = [];
  let after = 0;
  for (;;) {
    const { status, body } = await get<EventsResponse>(svc, `/audit/events?after=${after}&limit=${limit}`);
    assert.equal(status, 200);
    out.push(...body.events);
    if (!body.more) return out;
    after = body.next;
  }
}

void describe(`audit service (${DATABASE_URL ? "PostgreSQL" : "PGlite"})`, () => {
  const bus = new Bus();
  let svc: Awaited<ReturnType<typeof startService<typeof definition.config>>>;
  const variants: Variant[] = ["confirmed", "declined", "out_of_stock", "timeout_refund"];
  const orders = Array.from({ length: 24 }, (_, i) => ({ id: `ord-${i}`, variant: variants[i % 4]! }));
  const events = orders.flatMap((o) => saga(o.id, o.variant));

  before(async () => {
    await bus.start();
    svc = await startService(definition, auditEnv(bus, "main"));
  });

  after(async () => {
    await svc?.stop();
    await bus.stop();
  });

  void it("records every event of every stream exactly once, duplicates add nothing, timelines in causal order", async () => {
    // Later events first, as consumers of different streams may see them.
    await bus.publish([...events].reverse());
    for (const e of events.filter((_, i) => i % 13 === 0)) await bus.publishDuplicate(e);
    await bus.auditIdle();

    const rows = await listAll(svc);
    assert.equal(rows.length, events.length);
    assert.deepEqual(
      new Map(rows.map((r) => [r.event_id, [r.type, r.order_id, r.stream]])),
      new Map(events.map((e) => [e.id, [e.type, e.aggregate_id, subjectOf(e).split(".")[0]!.toUpperCase()]])),
    );
    assert.deepEqual(
      rows.map((r) => r.position),
      rows.map((_, i) => i + 1),
    );
    assert.equal(new Set(rows.map((r) => r.type)).size, 11, "every event type of the catalog recorded");
    const writer = auditWriterOf(svc.ctx)!;
    assert.ok(writer.stats.duplicates >= 1, JSON.stringify(writer.stats));
    assert.ok(writer.stats.batches < events.length, `batched: ${JSON.stringify(writer.stats)}`);

    const tl = await get<TimelineResponse>(svc, "/audit/orders/ord-0");
    assert.equal(tl.status, 200);
    assert.equal(tl.body.orderId, "ord-0");
    const expected = events.filter((e) => e.aggregate_id === "ord-0");
    assert.deepEqual(
      tl.body.events.map((e) => [e.type, e.service, e.event_id, e.causation_id, e.trace_id, e.timestamp]),
      expected.map((e) => [e.type, e.source, e.id, e.causation_id, e.trace_id, e.timestamp]),
    );
    // The timeout race: cancelled (1 ms) before the late reservation (10 ms), whose capture is refunded.
    const refund = await get<TimelineResponse>(svc, "/audit/orders/ord-3");
    assert.deepEqual(
      refund.body.events.map((e) => e.type),
      [
        "OrderPlaced",
        "OrderCancelled",
        "StockReserved",
        "PaymentCaptured",
        "StockReleased",
        "PaymentRefunded",
      ],
    );

    const missing = await get<{ status: number }>(svc, "/audit/orders/nobody");
    assert.equal(missing.status, 404);
    assert.match(missing.type, /application\/problem\+json/);
    assert.equal((await get(svc, "/audit/orders/not%20an%20id")).status, 400);
    assert.equal((await get(svc, "/audit/events?limit=0")).status, 400);
    assert.equal((await get(svc, "/audit/events?after=-1")).status, 400);

    const v = await get<VerifyResult>(svc, "/audit/verify");
    assert.equal(v.status, 200);
    assert.equal(v.body.ok, true);
    assert.equal(v.body.rows, events.length);
    assert.equal((await get(svc, "/ready")).status, 200);
  });

  void it("detects a tampered row and names its position", async () => {
    const store = auditStoreOf(svc.ctx)!;
    const t = store.qualified;
    await assert.rejects(store.db.query(`UPDATE ${t} SET payload = '{}' WHERE position = 5`), /append-only/);
    const [row] = await store.rows(4, 1);
    const tamper = (payload: string) =>
      store.db.transaction(async (tx) => {
        await tx.query(`ALTER TABLE ${t} DISABLE TRIGGER "${store.table}_no_change"`);
        await tx.query(`UPDATE ${t} SET payload = $1 WHERE position = 5`, [payload]);
        await tx.query(`ALTER TABLE ${t} ENABLE TRIGGER "${store.table}_no_change"`);
      });
    await tamper(
      row!.payload.replace(/"total":1000/, '"total":1').replace(/"amount":1000/, '"amount":1') + " ",
    );
    const bad = await get<VerifyResult>(svc, "/audit/verify");
    assert.equal(bad.body.ok, false);
    assert.equal(bad.body.firstBadPosition, 5);
    await tamper(row!.payload);
    assert.equal((await get<VerifyResult>(svc, "/audit/verify")).body.ok, true);
  });

  void it("records DLQ entries, malformed ones included", async () => {
    const store = auditStoreOf(svc.ctx)!;
    const before = await store.count();
    // Garbage on an order subject: audit-orders cannot decode it and dead-letters it.
    await bus.js.publish("orders.bad-1", new Uint8Array([0xff, 0x00, 0x7b]));
    // A dead letter of another consumer, body intact.
    const e = saga("ord-dlq", "confirmed")[1]!;
    const h = natsHeaders();
    h.set(Hdr.Type, e.type);
    h.set(Hdr.DlqConsumer, "payments-inventory");
    h.set(Hdr.DlqCode, "HANDLER_FAILED");
    h.set(Hdr.DlqError, "RetryableError: gateway down");
    h.set(Hdr.DlqAttempts, "5");
    h.set(Hdr.DlqStream, "INVENTORY");
    h.set(Hdr.DlqSubject, subjectOf(e));
    h.set(Hdr.DlqSequence, "17");
    h.set(Hdr.DlqAt, "2024-05-01T12:00:01.000Z");
    const ack = await bus.js.publish("dlq.payments-inventory", encodeEvent(e), { headers: h });
    // And an empty body without any header.
    await bus.js.publish("dlq.somewhere", new Uint8Array());
    await bus.auditIdle();

    const rows = (await listAll(svc, 1000)).filter((r) => r.type === "DeadLetter");
    assert.equal(rows.length, 3);
    assert.equal(await store.count(), before + 3);
    const payloads = new Map(
      (
        await store.db.query<{ event_id: string; payload: string }>(
          `SELECT event_id, payload FROM ${store.qualified} WHERE event_type = 'DeadLetter'`,
        )
      ).map((r) => [r.event_id, JSON.parse(r.payload) as Record<string, unknown>]),
    );
    const garbage = rows.find((r) => r.order_id === "bad-1")!;
    assert.match(garbage.event_id, /^dlq:\d+$/);
    assert.equal(garbage.source, "audit-orders");
    const gp = payloads.get(garbage.event_id)!;
    assert.equal(gp["body_base64"], "/wB7");
    assert.equal((gp["dlq"] as { code: string }).code, "EVENT_MALFORMED");
    assert.equal((gp["dlq"] as { subject: string }).subject, "orders.bad-1");

    const intact = rows.find((r) => r.event_id === `dlq:${ack.seq}`)!;
    assert.equal(intact.order_id, "ord-dlq");
    assert.equal(intact.stream, "DLQ");
    const ip = payloads.get(intact.event_id)!;
    assert.deepEqual(ip["dlq"], {
      consumer: "payments-inventory",
      code: "HANDLER_FAILED",
      error: "RetryableError: gateway down",
      attempts: 5,
      stream: "INVENTORY",
      subject: subjectOf(e),
      sequence: 17,
      at: "2024-05-01T12:00:01.000Z",
    });
    assert.deepEqual(ip["body"], e);
    const tl = await get<TimelineResponse>(svc, "/audit/orders/ord-dlq");
    assert.deepEqual(
      tl.body.events.map((x) => [x.type, x.causation_id]),
      [["DeadLetter", e.id]],
    );
    assert.ok(rows.some((r) => r.order_id === null && r.subject === "dlq.somewhere"));
    assert.equal((await get<VerifyResult>(svc, "/audit/verify")).body.ok, true);
  });

  void it("after a restart, a replay of every stream from the start adds nothing", async () => {
    const store = auditStoreOf(svc.ctx)!;
    const rows = await store.count();
    const { lastHash } = await store.verify();
    await svc.stop();
    for (const stream of [...AUDITED_STREAMS, Streams.DLQ])
      await bus.jsm.consumers.delete(stream, auditDurable(stream));
    svc = await startService(definition, auditEnv(bus, "main"));
    await bus.auditIdle();

    const writer = auditWriterOf(svc.ctx)!;
    assert.equal(writer.stats.inserted, 0, JSON.stringify(writer.stats));
    assert.ok(writer.stats.duplicates >= rows, `every message replayed: ${JSON.stringify(writer.stats)}`);
    for (const d of AUDIT_DURABLES) assert.ok(svc.ctx.runners.get(d)?.ready, d);
    const v = await get<VerifyResult>(svc, "/audit/verify");
    assert.deepEqual(v.body, { ok: true, rows, lastHash });
  });
});

void describe(`audit replicas (${DATABASE_URL ? "PostgreSQL, one pool each" : "PGlite, one shared instance"})`, () => {
  const bus = new Bus();
  const replicas: { url: string; ctx: object; stop(): Promise<boolean> }[] = [];
  let shared: SqlDb | undefined;

  before(async () => {
    await bus.start();
    // PGlite is one process's database: in-process replicas share the instance; PostgreSQL gets a pool each.
    if (!DATABASE_URL) shared = await openDb({ dataDir });
    const def = createAuditDefinition(shared ? { db: shared } : {});
    replicas.push(...(await Promise.all([1, 2].map(() => startService(def, auditEnv(bus, "replicated"))))));
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await shared?.close();
    await bus.stop();
  });

  void it("two replicas writing concurrently keep one valid chain, every event once", async (t) => {
    const events = Array.from({ length: 700 }, (_, i) => saga(`r-${i}`, "confirmed")).flat();
    const started = performance.now();
    await bus.publish(events);
    // A slice delivered twice on top (a redelivery may reach either replica).
    for (const e of events.slice(0, 50)) await bus.publishDuplicate(e);
    await bus.auditIdle();
    const ms = performance.now() - started;

    const stats = replicas.map((r) => auditWriterOf(r.ctx)!.stats);
    t.diagnostic(
      `${events.length} events published and audited by 2 replicas in ${Math.round(ms)} ms (${Math.round((events.length / ms) * 1000)} events/s end to end); ${JSON.stringify(stats)}`,
    );
    assert.ok(
      stats.every((s) => s.inserted > 0),
      `both replicas wrote: ${JSON.stringify(stats)}`,
    );
    assert.equal(
      stats.reduce((n, s) => n + s.inserted, 0),
      events.length,
    );
    const rows = await listAll(replicas[0]!, 5000);
    assert.equal(rows.length, events.length);
    assert.equal(new Set(rows.map((r) => r.event_id)).size, events.length);
    const v = await get<VerifyResult>(replicas[1]!, "/audit/verify");
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
    assert.equal(v.body.rows, events.length);
  });
});

void describe(
  "audit while PostgreSQL goes away",
  { skip: DATABASE_URL ? false : "needs DATABASE_URL" },
  () => {
    const bus = new Bus();
    let running: Awaited<ReturnType<typeof startService<typeof definition.config>>>;
    // A TCP proxy in front of PostgreSQL that can refuse and cut connections: an outage on demand.
    let up = true;
    const sockets = new Set<Socket>();
    const target = new URL(DATABASE_URL ?? "postgres://127.0.0.1:5432/test");
    const proxy = createServer((client) => {
      if (!up) return client.destroy();
      const server = connect(Number(target.port || 5432), target.hostname);
      const close = () => {
        client.destroy();
        server.destroy();
        sockets.delete(client);
        sockets.delete(server);
      };
      sockets.add(client).add(server);
      client.pipe(server).pipe(client);
      for (const s of [client, server]) s.on("error", close).on("close", close);
    });

    before(async () => {
      await bus.start();
      await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
      const proxied = new URL(target);
      proxied.host = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      running = await startService(
        definition,
        auditEnv(bus, "outage", { DATABASE_URL: proxied.toString(), MAX_ATTEMPTS: "2" }),
      );
    });

    after(async () => {
      up = true;
      await running?.stop();
      await new Promise((resolve) => proxy.close(resolve));
      await bus.stop();
    });

    void it("parks handlers while the database is down (not ready, nothing dead-lettered), then catches up", async () => {
      up = false;
      for (const s of sockets) s.destroy();
      const events = Array.from({ length: 150 }, (_, i) => saga(`down-${i}`, "confirmed")).flat();
      await bus.publish(events);
      const writer = auditWriterOf(running.ctx)!;
      // Wait until handlers have failed on the outage more than MAX_ATTEMPTS times over.
      for (const deadline = Date.now() + 15_000; writer.stats.failedBatches < 3;) {
        assert.ok(Date.now() < deadline, `handlers never hit the outage: ${JSON.stringify(writer.stats)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal((await get(running, "/ready")).status, 503);
      assert.equal((await bus.jsm.streams.info(Streams.DLQ)).state.messages, 0);

      up = true;
      await bus.auditIdle();
      assert.equal((await bus.jsm.streams.info(Streams.DLQ)).state.messages, 0, "nothing dead-lettered");
      const v = await get<VerifyResult>(running, "/audit/verify");
      assert.equal(v.body.ok, true);
      assert.equal(v.body.rows, events.length);
      assert.equal((await get(running, "/ready")).status, 200);
    });
  },
);
