/**
 * The audit service end to end: a real nats-server, and PostgreSQL when DATABASE_URL is set (each run in
 * its own schema), else PGlite in a temp dir. The audit is a projector: ordered consumers, no acks, its
 * position per stream in its database; with PostgreSQL, replicas elect one active projector.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import {
  AckPolicy,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/transport-node";
import { Streams } from "../../src/lib/events/catalog.js";
import { encodeEvent } from "../../src/lib/events/codec.js";
import { makeEvent, subjectOf, type AnyEnvelope } from "../../src/lib/events/envelope.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { ensureStream } from "../../src/lib/messaging/topology.js";
import { startService, streamSpecs, type RunningService } from "../../src/lib/service.js";
import { LEGACY_AUDIT_DURABLES, PROJECTED_STREAMS } from "../../src/services/audit/handlers.js";
import type {
  EventsResponse,
  ListedEvent,
  PositionsResponse,
  TimelineResponse,
} from "../../src/services/audit/routes.js";
import {
  auditProjectorOf,
  auditStoreOf,
  auditWriterOf,
  createAuditDefinition,
  definition,
} from "../../src/services/audit/service.js";
import { openDb, type AuditStore, type SqlDb } from "../../src/services/audit/store.js";
import type { VerifyResult } from "../../src/services/audit/audit.js";
import { eventually } from "../helpers/eventually.js";
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
   * Resolves once the audit's stored position of every stream (and the DLQ) is the stream's last sequence: every
   * message is recorded (the position moves in the transaction of the rows). Reads the database and the streams
   * directly, not the audit's HTTP API, so the audit's own connection carries nothing for it.
   */
  async auditCaughtUp(store: AuditStore, timeoutMs = 30_000): Promise<void> {
    await eventually(
      async () => {
        const positions = await store.positions();
        for (const stream of PROJECTED_STREAMS) {
          const last = (await this.jsm.streams.info(stream)).state.last_seq;
          assert.equal(positions.get(stream) ?? 0, last, `${stream} position`);
        }
      },
      { timeoutMs, what: "the audit's positions at every stream's last sequence" },
    );
  }

  /** Durable consumers on the five streams whose name starts with `audit`: none since the audit is a projector. */
  async auditDurables(): Promise<string[]> {
    const out: string[] = [];
    for (const stream of PROJECTED_STREAMS)
      for await (const c of this.jsm.consumers.list(stream))
        if (c.config.durable_name?.startsWith("audit")) out.push(`${stream}/${c.name}`);
    return out;
  }

  /** Messages the connection named `name` sent the server (`in_msgs` of `/connz`): pulls, acks, API calls. */
  async sentBy(name: string): Promise<number> {
    const res = await fetch(`${this.nats.monitorUrl}/connz?limit=1024`);
    const body = (await res.json()) as { connections: { name?: string; in_msgs: number }[] };
    const conns = body.connections.filter((c) => c.name === name);
    assert.equal(conns.length, 1, `one connection named ${name}`);
    return conns[0]!.in_msgs;
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
    { orderId, customerId: "c1", items, total: 1000, currency, expiresAt: null },
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

  void it("records every event of every stream exactly once, duplicates add nothing, timelines in causal order", async (t) => {
    const store = auditStoreOf(svc.ctx)!;
    // Readers up: their consumers are created, so what follows counts only the messages the events cost.
    await eventually(() => assert.equal(auditProjectorOf(svc.ctx)!.readiness().detail, "active"));
    const sentBefore = await bus.sentBy("audit");
    // Later events first, as consumers of different streams may see them.
    await bus.publish([...events].reverse());
    const duplicates = events.filter((_, i) => i % 13 === 0);
    for (const e of duplicates) await bus.publishDuplicate(e);
    await bus.auditCaughtUp(store);

    // No acknowledgements: the audit's connection sent (pull requests) far fewer messages than it recorded.
    const messages = events.length + duplicates.length;
    const sent = (await bus.sentBy("audit")) - sentBefore;
    t.diagnostic(`audit connection sent ${sent} messages for ${messages} stream messages recorded`);
    assert.ok(sent / messages < 0.1, `${sent} messages sent for ${messages} recorded`);
    assert.deepEqual(await bus.auditDurables(), [], "no audit durable consumer on the server");

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
    const ready = await get<{ detail: Record<string, string> }>(svc, "/ready");
    assert.equal(ready.status, 200);
    assert.equal(ready.body.detail["projector"], "active");
    const positions = await get<PositionsResponse>(svc, "/audit/positions");
    assert.equal(positions.body.role, "active");
    for (const stream of PROJECTED_STREAMS) {
      const lastSeq = (await bus.jsm.streams.info(stream)).state.last_seq;
      assert.deepEqual(positions.body.streams[stream], { position: lastSeq, lastSeq, lag: 0 }, stream);
    }
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    assert.match(metrics, /\nshopstream_audit_lag_messages\{[^}]*stream="ORDERS"[^}]*\} 0\n/);
    assert.match(metrics, /\nshopstream_audit_projector_active(\{[^}]*\})? 1\n/);
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

  void it("records a poison body on ORDERS as a raw row, and DLQ entries, malformed ones included", async () => {
    const store = auditStoreOf(svc.ctx)!;
    const before = await store.count();
    // Garbage on an order subject: not a catalog event, recorded raw (nothing read is skipped).
    const poison = await bus.js.publish("orders.bad-1", new Uint8Array([0xff, 0x00, 0x7b]));
    // JSON that is not a catalog event.
    const unknown = await bus.js.publish("orders.bad-2", new TextEncoder().encode('{"type":"Nope"}'));
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
    await bus.auditCaughtUp(store);

    const all = await listAll(svc, 1000);
    const rows = all.filter((r) => r.type === "DeadLetter");
    assert.equal(rows.length, 2);
    assert.equal(await store.count(), before + 4);
    const payloads = new Map(
      (
        await store.db.query<{ event_id: string; payload: string }>(
          `SELECT event_id, payload FROM ${store.qualified} WHERE event_type IN ('DeadLetter', 'Undecodable')`,
        )
      ).map((r) => [r.event_id, JSON.parse(r.payload) as Record<string, unknown>]),
    );
    const raw = all.filter((r) => r.type === "Undecodable");
    assert.deepEqual(
      raw.map((r) => [r.event_id, r.stream, r.stream_seq, r.subject, r.order_id]),
      [
        [`raw:ORDERS:${poison.seq}`, "ORDERS", poison.seq, "orders.bad-1", "bad-1"],
        [`raw:ORDERS:${unknown.seq}`, "ORDERS", unknown.seq, "orders.bad-2", "bad-2"],
      ],
    );
    const gp = payloads.get(`raw:ORDERS:${poison.seq}`)!;
    assert.equal(gp["body_base64"], "/wB7");
    assert.equal((gp["error"] as { code: string }).code, "EVENT_MALFORMED");
    const up = payloads.get(`raw:ORDERS:${unknown.seq}`)!;
    assert.deepEqual(up["body"], { type: "Nope" });
    assert.equal((up["error"] as { code: string }).code, "EVENT_SCHEMA_INVALID");

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

  void it("after a restart, resumes from its stored position without re-reading; former durables are deleted", async () => {
    let store = auditStoreOf(svc.ctx)!;
    const rows = await store.count();
    await svc.stop();
    // Written while the audit is down; and the durables of the audit before it became a projector.
    const more = Array.from({ length: 5 }, (_, i) => saga(`later-${i}`, "confirmed")).flat();
    await bus.publish(more);
    for (const { stream, durable } of LEGACY_AUDIT_DURABLES)
      await bus.jsm.consumers.add(stream, { durable_name: durable, ack_policy: AckPolicy.Explicit });
    assert.equal((await bus.auditDurables()).length, LEGACY_AUDIT_DURABLES.length);
    svc = await startService(definition, auditEnv(bus, "main"));
    store = auditStoreOf(svc.ctx)!;
    await bus.auditCaughtUp(store);

    const writer = auditWriterOf(svc.ctx)!;
    assert.deepEqual(
      { inserted: writer.stats.inserted, duplicates: writer.stats.duplicates },
      { inserted: more.length, duplicates: 0 },
      "only what was published while it was down is read",
    );
    assert.equal(await store.count(), rows + more.length);
    assert.deepEqual(await bus.auditDurables(), [], "the former audit durables are deleted");
    assert.equal((await get<VerifyResult>(svc, "/audit/verify")).body.ok, true);
  });

  void it("a stored position past the stream's end (a recreated stream) is reset: new messages are recorded", async () => {
    let store = auditStoreOf(svc.ctx)!;
    await svc.stop();
    const last = (await bus.jsm.streams.info(Streams.NOTIFICATIONS)).state.last_seq;
    const db = await openDb({ databaseUrl: DATABASE_URL, dataDir });
    await db.query(`UPDATE ${store.positionsTable} SET seq = $1 WHERE stream = $2`, [
      last + 1000,
      Streams.NOTIFICATIONS,
    ]);
    await db.close();
    svc = await startService(definition, auditEnv(bus, "main"));
    store = auditStoreOf(svc.ctx)!;
    const mailed = saga("after-reset", "confirmed").at(-1)!;
    assert.equal(mailed.type, "NotificationSent");
    await bus.publish([mailed]);
    await bus.auditCaughtUp(store);
    const rows = await listAll(svc, 1000);
    assert.equal(rows.filter((r) => r.event_id === mailed.id).length, 1);
  });

  void it("a stream without a stored position is read from its first sequence, and adds nothing", async () => {
    let store = auditStoreOf(svc.ctx)!;
    const rows = await store.count();
    const { lastHash } = await store.verify();
    await svc.stop();
    // As on an existing deployment's first start as a projector: no positions yet.
    const db = await openDb({ databaseUrl: DATABASE_URL, dataDir });
    await db.query(`DELETE FROM ${store.positionsTable}`);
    await db.close();
    svc = await startService(definition, auditEnv(bus, "main"));
    store = auditStoreOf(svc.ctx)!;
    await bus.auditCaughtUp(store);

    const writer = auditWriterOf(svc.ctx)!;
    assert.equal(writer.stats.inserted, 0, JSON.stringify(writer.stats));
    assert.ok(writer.stats.duplicates >= rows, `every message read again: ${JSON.stringify(writer.stats)}`);
    const v = await get<VerifyResult>(svc, "/audit/verify");
    assert.deepEqual(v.body, { ok: true, rows, lastHash });
  });
});

/** Roles of the replicas' projectors, e.g. `["active", "standby"]`. */
function roles(replicas: readonly { ctx: object }[]): string[] {
  return replicas.map((r) => auditProjectorOf(r.ctx)!.role);
}

void describe(`audit replicas (${DATABASE_URL ? "PostgreSQL, one pool each" : "PGlite, one shared instance"})`, () => {
  const bus = new Bus();
  const replicas: { url: string; ctx: object; stop(): Promise<boolean> }[] = [];
  let shared: SqlDb | undefined;

  before(async () => {
    await bus.start();
    // PGlite is one process's database: in-process replicas share the instance; PostgreSQL gets a pool each.
    if (!DATABASE_URL) shared = await openDb({ dataDir });
    const def = createAuditDefinition(shared ? { db: shared } : {});
    replicas.push(
      ...(await Promise.all(
        [1, 2].map(() => startService(def, auditEnv(bus, "replicated", { AUDIT_STANDBY_RETRY_MS: "200" }))),
      )),
    );
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await shared?.close();
    await bus.stop();
  });

  /** The rows: every event once, one valid chain. */
  async function assertRecordedOnce(events: AnyEnvelope[], svc: { url: string }): Promise<void> {
    const rows = await listAll(svc, 5000);
    assert.equal(rows.length, events.length);
    assert.deepEqual(new Set(rows.map((r) => r.event_id)), new Set(events.map((e) => e.id)));
    const v = await get<VerifyResult>(svc, "/audit/verify");
    assert.equal(v.body.ok, true, JSON.stringify(v.body));
    assert.equal(v.body.rows, events.length);
  }

  if (DATABASE_URL) {
    void it("exactly one replica projects, the other stands by; losing the active one hands over, nothing lost or doubled", async (t) => {
      const store = auditStoreOf(replicas[0]!.ctx)!;
      await eventually(() => assert.deepEqual(roles(replicas).sort(), ["active", "standby"]));
      // The elected replica is ready once its readers read (a moment after the election); the standby is ready at once.
      await eventually(async () => {
        const answers = await Promise.all(
          replicas.map((r) => get<{ detail: Record<string, string> }>(r, "/ready")),
        );
        assert.deepEqual(
          answers.map((a) => a.status),
          [200, 200],
          `both ready, the standby too: ${JSON.stringify(answers.map((a) => a.body))}`,
        );
        assert.deepEqual(answers.map((a) => a.body.detail["projector"]).sort(), ["active", "standby"]);
      });

      // 1. The active replica's lock connection dies (its backend terminated) while events are published.
      const first = Array.from({ length: 200 }, (_, i) => saga(`r-${i}`, "confirmed")).flat();
      const publishing = bus.publish(first, 50);
      const key = BigInt(store.projectorLockKey);
      const holder = async () =>
        (
          await store.db.query<{ pid: number }>(
            `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::bigint::oid
               AND objid = $2::bigint::oid AND objsubid = 1`,
            [((key >> 32n) & 0xffffffffn).toString(), (key & 0xffffffffn).toString()],
          )
        )[0]?.pid;
      const pid = await eventually(async () => (await holder()) ?? assert.fail("nobody holds the lock"));
      await store.db.query("SELECT pg_terminate_backend($1)", [pid]);
      await publishing;
      await eventually(async () => {
        assert.deepEqual(roles(replicas).sort(), ["active", "standby"]);
        assert.notEqual(await holder(), pid);
      });
      await bus.auditCaughtUp(store);
      await assertRecordedOnce(first, replicas[0]!);

      // 2. The active replica stops altogether: the standby takes over.
      const active = replicas.find((r) => auditProjectorOf(r.ctx)!.role === "active")!;
      const standby = replicas.find((r) => r !== active)!;
      const second = Array.from({ length: 100 }, (_, i) => saga(`s-${i}`, "declined")).flat();
      const publishing2 = bus.publish(second, 50);
      await active.stop();
      await publishing2;
      await eventually(() => assert.equal(auditProjectorOf(standby.ctx)!.role, "active"));
      await bus.auditCaughtUp(auditStoreOf(standby.ctx)!);
      await assertRecordedOnce([...first, ...second], standby);
      const stats = replicas.map((r) => auditWriterOf(r.ctx)!.stats);
      t.diagnostic(`writers: ${JSON.stringify(stats)}`);
      assert.equal(
        stats.reduce((n, s) => n + s.inserted, 0),
        first.length + second.length,
        "each event inserted once across the replicas",
      );
    });
  } else {
    void it("two in-process replicas on one PGlite instance are both active and keep one valid chain, every event once", async () => {
      assert.deepEqual(roles(replicas), ["active", "active"], "PGlite: no election (one process)");
      const events = Array.from({ length: 300 }, (_, i) => saga(`r-${i}`, "confirmed")).flat();
      await bus.publish(events);
      for (const e of events.slice(0, 50)) await bus.publishDuplicate(e);
      await bus.auditCaughtUp(auditStoreOf(replicas[0]!.ctx)!);
      await assertRecordedOnce(events, replicas[1]!);
    });
  }
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
      running = await startService(definition, auditEnv(bus, "outage", { DATABASE_URL: proxied.toString() }));
    });

    after(async () => {
      up = true;
      await running?.stop();
      for (const s of sockets) s.destroy(); // connections the service did not close must not hold the proxy open
      await new Promise((resolve) => proxy.close(resolve));
      await bus.stop();
    });

    void it("stops reading while the database is down (not ready, nothing dead-lettered), then resumes from its position, losing nothing", async () => {
      const store = auditStoreOf(running.ctx)!;
      const projector = auditProjectorOf(running.ctx)!;
      const before = Array.from({ length: 50 }, (_, i) => saga(`up-${i}`, "confirmed")).flat();
      await bus.publish(before);
      await bus.auditCaughtUp(store);
      const sessions = projector.sessionsStarted;

      // Mid-stream: the database goes away while events keep coming.
      up = false;
      for (const s of sockets) s.destroy();
      const events = Array.from({ length: 150 }, (_, i) => saga(`down-${i}`, "confirmed")).flat();
      const publishing = bus.publish(events, 20);
      await eventually(async () => {
        const ready = await get<{ failing: Record<string, string> }>(running, "/ready");
        assert.equal(ready.status, 503);
        assert.match(ready.body.failing["projector"] ?? "", /not reading|electing/);
      });
      await publishing;
      assert.equal((await bus.jsm.streams.info(Streams.DLQ)).state.messages, 0);

      up = true;
      await bus.auditCaughtUp(store);
      assert.ok(projector.sessionsStarted > sessions, "readers restarted from the committed position");
      assert.equal((await bus.jsm.streams.info(Streams.DLQ)).state.messages, 0, "nothing dead-lettered");
      const v = await get<VerifyResult>(running, "/audit/verify");
      assert.equal(v.body.ok, true);
      assert.equal(v.body.rows, before.length + events.length);
      await eventually(async () => assert.equal((await get(running, "/ready")).status, 200));
    });
  },
);
