/**
 * Hostile input on the bus: messages published straight to the streams (raw `js.publish` with message ids),
 * as a buggy or compromised producer would, while real orders go through the saga.
 *
 * Poison — malformed JSON, bytes that are not UTF-8, valid JSON of the wrong shape, an unknown event type,
 * a version no release reads yet (kept for FUTURE_VERSION_WAIT_MS first, then `EVENT_VERSION_AHEAD`), a
 * malformed StockReserved of the previous version (checked against that version's schema), a payload near the
 * stream's size limit, an event naming another order than its
 * aggregate, garbage on a real order's subject — must end in the DLQ once per durable consumer of its subject,
 * with the right code, and in the audit log once as a raw `Undecodable` row (the audit reads every stream whole
 * and skips nothing). Events that are valid but about an order that does not exist (StockReserved,
 * StockRejected, PaymentCaptured) are dead-lettered by the consumers that would act on them
 * (`ORDER_NOT_FOUND`, after their retries) and recorded by the audit, which records everything published.
 * An OrderPlaced whose total is not the sum of its lines is cancelled (`invalid_order`) without holding stock
 * or charging. Forced duplicates of a real order's events (same event, new message id) change nothing.
 * Throughout, real orders placed before, during and after reach CONFIRMED, no service falls over, nothing
 * else is dead-lettered, and the checker's invariants hold.
 */
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type StoredMsg,
} from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import { makeEvent, subjectOf, type Envelope } from "../../src/lib/events/envelope.js";
import type { EventType } from "../../src/lib/events/catalog.js";
import { listDeadLetters, type DeadLetter } from "../../src/lib/messaging/dlq.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { startSystem, type System } from "../helpers/system.js";
import { operatorFetch } from "../helpers/auth.js";

const ORDER_TIMEOUT_MS = 15_000;
const MAX_ATTEMPTS = 5; // the services' default
/** FUTURE_VERSION_WAIT_MS of the services here (10 min by default: longer than a rollout). */
const FUTURE_VERSION_WAIT_MS = 3_000;
const catalog = [
  { sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 1_000 },
  { sku: "SKU-B", name: "Widget B", price: 399, currency: "EUR", stock: 1_000 },
];

/**
 * The durable consumers of each stream, as docs/architecture.md lists them. The audit has none: it reads every
 * stream whole with ordered consumers (a projector), and records poison as a raw `Undecodable` row instead of
 * dead-lettering it.
 */
const CONSUMERS: Record<string, string[]> = {
  ORDERS: ["inventory-orders", "notifications-orders", "orders-timeouts", "payments-orders"],
  INVENTORY: ["orders-inventory", "payments-inventory"],
  PAYMENTS: ["orders-payments"],
  NOTIFICATIONS: [],
};

interface Poison {
  name: string;
  stream: string;
  subject: string;
  seq: number;
  size: number;
  /** Consumers expected to dead-letter it, and with which code. */
  consumers: string[];
  code: string;
  attempts: number;
  /** Expected in the audit log as an event (valid events about orders that do not exist). */
  auditedAs?: { orderId: string; eventId: string };
}

let sys: System;
let js: JetStreamClient;
let jsm: JetStreamManager;
/** Filter subject of each durable consumer ("" = the whole stream). */
const filters = new Map<string, { stream: string; filter: string }>();
/**
 * Every poison published on the shared system so far (by any test): what the DLQ may hold. Each test checks the
 * entries of its own poison; after each test, nothing else may be in the DLQ.
 */
const poisons: Poison[] = [];

const ghost = (tag: string) => `ghost-${tag}-${randomBytes(4).toString("hex")}`;
const enc = (s: string) => new TextEncoder().encode(s);

/** Does NATS subject `s` match `filter` (`*` one token, `>` the rest)? */
function matches(filter: string, s: string): boolean {
  if (!filter) return true;
  const f = filter.split(".");
  const t = s.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return t.length > i;
    if (i >= t.length || (f[i] !== "*" && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

function consumersOf(stream: string, subject: string): string[] {
  return [...filters]
    .filter(([, c]) => c.stream === stream && matches(c.filter, subject))
    .map(([name]) => name)
    .sort();
}

function streamOfSubject(subject: string): string {
  return subject.split(".")[0]!.toUpperCase();
}

/**
 * Publishes a raw message (its own message id) and records what the DLQ must end up holding for it:
 * by default one entry per consumer of its subject, with `code`, on the first attempt. The caller checks it
 * with {@link poisonDeadLettered}.
 */
async function publishPoison(
  name: string,
  subject: string,
  data: Uint8Array,
  expect: {
    code: string;
    consumers?: string[];
    attempts?: number;
    headers?: MsgHdrs;
    auditedAs?: Poison["auditedAs"];
  },
): Promise<Poison> {
  const stream = streamOfSubject(subject);
  const ack = await js.publish(subject, data, {
    msgID: `poison:${name}:${randomBytes(6).toString("hex")}`,
    ...(expect.headers ? { headers: expect.headers } : {}),
  });
  assert.equal(ack.stream, stream);
  assert.equal(ack.duplicate, false);
  const p: Poison = {
    name,
    stream,
    subject,
    seq: ack.seq,
    size: data.length,
    consumers: (expect.consumers ?? consumersOf(stream, subject)).slice().sort(),
    code: expect.code,
    attempts: expect.attempts ?? 1,
    ...(expect.auditedAs ? { auditedAs: expect.auditedAs } : {}),
  };
  poisons.push(p);
  return p;
}

/** A valid envelope as JSON, optionally altered. */
function envelope<T extends EventType>(
  type: T,
  data: Envelope<T>["data"],
  alter: (e: Record<string, any>) => void = () => undefined,
): { event: Envelope<T>; bytes: Uint8Array } {
  const event = makeEvent(type, data, {
    aggregateId: (data as { orderId: string }).orderId,
    source: "hostile-test",
  });
  const raw = structuredClone(event) as unknown as Record<string, any>;
  alter(raw);
  return { event, bytes: enc(JSON.stringify(raw)) };
}

function placedData(orderId: string, total = 1250): Envelope<"OrderPlaced">["data"] {
  const now = new Date();
  return {
    orderId,
    customerId: "hostile",
    email: "hostile@example.com",
    items: [{ sku: "SKU-A", quantity: 1, unitPrice: 1250 }],
    total,
    currency: "EUR",
    placedAt: now.toISOString(),
    timeoutAt: new Date(now.getTime() + ORDER_TIMEOUT_MS).toISOString(),
  };
}

const order = (customerId: string) => ({
  customerId,
  email: `${customerId}@example.com`,
  items: [
    { sku: "SKU-A", quantity: 1 },
    { sku: "SKU-B", quantity: 2 },
  ],
});

/** Places `n` real orders and resolves with their ids once each is accepted (202). */
async function placeOrders(prefix: string, n: number): Promise<string[]> {
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => sys.placeOrder(order(`${prefix}-${i}`))));
  for (const r of rs) assert.equal(r.status, 202, JSON.stringify(r.body));
  return rs.map((r) => r.body.orderId as string);
}

/** Resolves once every order in `ids` is terminal, asserting each is CONFIRMED. */
async function allConfirmed(ids: readonly string[]): Promise<void> {
  const finals = await Promise.all(ids.map((id) => sys.waitForTerminal(id, 60_000)));
  for (const f of finals) assert.equal(f.status, "CONFIRMED", `${f.orderId}: ${f.status} ${f.reason ?? ""}`);
}

async function placeAndConfirm(prefix: string, n: number): Promise<string[]> {
  const ids = await placeOrders(prefix, n);
  await allConfirmed(ids);
  return ids;
}

async function getJson(url: string): Promise<any> {
  return (await operatorFetch(url)).json();
}

async function deadLetters(): Promise<DeadLetter[]> {
  return listDeadLetters(jsm, { limit: 100_000 });
}

/** The DLQ entries of a poison message, by consumer. */
function entriesOf(p: Poison, dead: DeadLetter[]): DeadLetter[] {
  return dead.filter((d) => d.stream === p.stream && d.sequence === p.seq);
}

async function getLast(stream: string, subject: string): Promise<StoredMsg | null> {
  return jsm.direct.getMessage(stream, { last_by_subj: subject }).catch(() => null);
}

async function messagesOn(stream: string, subject: string): Promise<StoredMsg[]> {
  const out: StoredMsg[] = [];
  for (let seq = 1; ;) {
    const m = await jsm.direct.getMessage(stream, { seq, next_by_subj: subject }).catch(() => null);
    if (!m) return out;
    out.push(m);
    seq = m.seq + 1;
  }
}

/** Waits until every consumer but the order timers has nothing pending or unacknowledged. */
async function drained(): Promise<void> {
  await sys.until("consumers drained", async () => {
    for (const [name, c] of filters) {
      if (name === "orders-timeouts") continue;
      const info = await jsm.consumers.info(c.stream, name);
      if (info.num_pending > 0 || info.num_ack_pending > 0) return false;
    }
    return true;
  });
}

/** Waits until each poison in `mine` has its DLQ entries, then checks them. */
async function poisonDeadLettered(mine: readonly Poison[]): Promise<void> {
  await sys.until(
    `${mine.map((p) => p.name).join(", ")} dead-lettered by each of its consumers`,
    async () => {
      const dead = await deadLetters();
      return mine.every((p) => entriesOf(p, dead).length >= p.consumers.length);
    },
    60_000,
  );
  await checkPoisonEntries(mine);
  await poisonAuditedRaw(mine);
}

/** Every `event_id` in the audit log (paged through `/audit/events`). */
async function auditedIds(): Promise<Set<string>> {
  const ids = new Set<string>();
  for (let after = 0; ;) {
    const page = await getJson(`${sys.urls.audit}/audit/events?after=${after}&limit=10000`);
    for (const e of page.events as { event_id: string }[]) ids.add(e.event_id);
    if (!page.more) return ids;
    after = page.next as number;
  }
}

/** The audit records each poison that is not a valid event as a raw row `raw:<stream>:<seq>` (nothing skipped). */
async function poisonAuditedRaw(mine: readonly Poison[]): Promise<void> {
  const raw = mine.filter((p) => !p.auditedAs).map((p) => `raw:${p.stream}:${p.seq}`);
  await sys.until(
    `${raw.join(", ")} recorded raw by the audit`,
    async () => {
      const ids = await auditedIds();
      return raw.every((id) => ids.has(id));
    },
    60_000,
  );
}

/** Nothing is in the DLQ but the poison published so far. */
async function noOtherDeadLetters(): Promise<void> {
  const unexpected = (await deadLetters()).filter(
    (d) => !poisons.some((p) => p.stream === d.stream && p.seq === d.sequence),
  );
  assert.deepEqual(
    unexpected.map((d) => `${d.consumer} ${d.code} ${d.subject}: ${d.error}`),
    [],
    "no other dead letters",
  );
}

/** Publishes `m` again, as stored (headers included), under a new message id: a forced duplicate. */
async function republish(m: StoredMsg): Promise<{ stream: string; seq: number }> {
  const h = natsHeaders();
  for (const k of m.header.keys())
    if (!k.startsWith("Nats-")) for (const v of m.header.values(k)) h.append(k, v);
  const ack = await js.publish(m.subject, m.data, { msgID: `forced-dup:${m.subject}:${m.seq}`, headers: h });
  assert.equal(ack.duplicate, false, "stored a second time");
  return { stream: ack.stream, seq: ack.seq };
}

/**
 * Every service is alive (`/health` 200 at once) and ready (`/ready` 200; waited for a little, since a
 * runner counts as unbound between a failed pull and the next good one, which a loaded machine can cause).
 */
async function healthy(): Promise<void> {
  for (const name of ["orders", "inventory", "payments", "notifications", "audit"] as const) {
    const h = await fetch(`${sys.urls[name]}/health`);
    assert.equal(h.status, 200, `${name}/health`);
  }
  await sys.untilAllReady();
}

describe("hostile input on the bus", () => {
  before(async () => {
    sys = await startSystem({
      catalog,
      orderTimeoutMs: ORDER_TIMEOUT_MS,
      // VERIFY_ORDER_PLACED is on by default: a StockReserved for no order is not charged.
      // An event of a future version is kept this long for a replica that reads it, then dead-lettered.
      env: { FUTURE_VERSION_WAIT_MS: String(FUTURE_VERSION_WAIT_MS) },
    });
    js = jetstream(sys.nc);
    jsm = await jetstreamManager(sys.nc);
    for (const stream of Object.keys(CONSUMERS)) {
      for await (const c of jsm.consumers.list(stream)) {
        if (c.config.durable_name) filters.set(c.name, { stream, filter: c.config.filter_subject ?? "" });
      }
      const names = [...filters].filter(([, c]) => c.stream === stream).map(([n]) => n);
      assert.deepEqual(names.sort(), CONSUMERS[stream], `consumers of ${stream}`);
    }
  });
  after(async () => {
    await sys?.stop();
  });
  // Throughout, whatever a test did: nothing but poison is dead-lettered, and the invariants hold.
  afterEach(async () => {
    await noOtherDeadLetters();
    await sys.assertInvariants();
  });

  test("real orders placed before, during and after poison are CONFIRMED; every service stays healthy and ready", async () => {
    const mine: Poison[] = [];
    const early = await placeOrders("before", 3);
    // Poison while those are in flight, on each stream the saga uses.
    mine.push(
      await publishPoison("among-orders", `orders.${ghost("ao")}`, enc("{{{"), { code: "EVENT_MALFORMED" }),
      await publishPoison("among-inventory", `inventory.${ghost("ai")}.StockReserved`, enc("[]"), {
        code: "EVENT_SCHEMA_INVALID",
      }),
      await publishPoison("among-payments", `payments.${ghost("ap")}.PaymentCaptured`, enc("7"), {
        code: "EVENT_SCHEMA_INVALID",
      }),
    );
    const late = await placeOrders("after", 3);
    await allConfirmed([...early, ...late]);
    await poisonDeadLettered(mine);
    await healthy();
  });

  test("poison on every stream is dead-lettered once by each consumer of it, with its code; valid events about no order are audited and charge nothing", async () => {
    const mine: Poison[] = [];
    const poison = async (...args: Parameters<typeof publishPoison>) => {
      mine.push(await publishPoison(...args));
    };
    // ORDERS: every consumer of orders.* decodes a message without a type header.
    await poison("malformed-json", `orders.${ghost("mj")}`, enc('{"id":"x","type":'), {
      code: "EVENT_MALFORMED",
    });
    await poison("not-utf8", `orders.${ghost("u8")}`, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), {
      code: "EVENT_MALFORMED",
    });
    await poison("wrong-shape", `orders.${ghost("ws")}`, enc('{"hello":"world","n":[1,2,3]}'), {
      code: "EVENT_SCHEMA_INVALID",
    });
    const wd = ghost("wd");
    await poison(
      "wrong-data",
      `orders.${wd}`,
      envelope("OrderPlaced", placedData(wd), (e) => (e["data"].items[0].quantity = "1")).bytes,
      { code: "EVENT_SCHEMA_INVALID" },
    );
    const ut = ghost("ut");
    await poison(
      "unknown-type",
      `orders.${ut}`,
      envelope("OrderPlaced", placedData(ut), (e) => (e["type"] = "OrderTeleported")).bytes,
      { code: "EVENT_UNKNOWN_TYPE" },
    );
    // A version no release reads yet: kept by each consumer for FUTURE_VERSION_WAIT_MS (no delivery used), then
    // dead-lettered with the reason.
    const uv = ghost("uv");
    await poison(
      "future-version",
      `orders.${uv}`,
      envelope("OrderPlaced", placedData(uv), (e) => (e["version"] = 2)).bytes,
      { code: "EVENT_VERSION_AHEAD" },
    );
    const mm = ghost("mm");
    await poison(
      "other-order-in-data",
      `orders.${mm}`,
      envelope("OrderPlaced", placedData(mm), (e) => (e["data"].orderId = ghost("victim"))).bytes,
      { code: "EVENT_SCHEMA_INVALID" },
    );
    // Near the stream's 1 MiB limit: too big to copy with the DLQ headers, so stored without its body.
    const hg = ghost("hg");
    const maxMsgSize = (await jsm.streams.info("ORDERS")).config.max_msg_size;
    const { bytes: small } = envelope("OrderPlaced", placedData(hg), (e) => (e["data"].padding = ""));
    const pad = maxMsgSize - small.length - 256;
    await poison(
      "huge",
      `orders.${hg}`,
      envelope("OrderPlaced", placedData(hg), (e) => (e["data"].padding = "p".repeat(pad))).bytes,
      { code: "EVENT_SCHEMA_INVALID" },
    );
    // A type header that says OrderConfirmed: consumers without an OrderConfirmed handler skip it unread.
    const h = natsHeaders();
    h.set(Hdr.Type, "OrderConfirmed");
    await poison("malformed-with-type-header", `orders.${ghost("th")}`, enc("{not json"), {
      code: "EVENT_MALFORMED",
      headers: h,
      consumers: ["inventory-orders", "notifications-orders"],
    });

    // INVENTORY: the consumers whose filter takes the subject.
    await poison("inventory-malformed", `inventory.${ghost("im")}.StockReserved`, enc("]["), {
      code: "EVENT_MALFORMED",
    });
    await poison("inventory-wrong-shape", `inventory.${ghost("iw")}.StockRejected`, enc("[]"), {
      code: "EVENT_SCHEMA_INVALID",
    });
    await poison("inventory-other-type", `inventory.${ghost("io")}.StockCommitted`, enc("null"), {
      code: "EVENT_SCHEMA_INVALID",
    });
    // StockReserved is at version 2; version 1 is still read (upcast), so a malformed version 1 is checked against
    // the version 1 schema and refused at once: here with version 2's field, which version 1 does not allow.
    const ov = ghost("ov");
    await poison(
      "stock-reserved-v1-malformed",
      `inventory.${ov}.StockReserved`,
      envelope(
        "StockReserved",
        {
          orderId: ov,
          customerId: "nobody",
          items: [{ sku: "SKU-A", quantity: 1 }],
          total: 1250,
          currency: "EUR",
          expiresAt: null,
        },
        (e) => (e["version"] = 1),
      ).bytes,
      { code: "EVENT_SCHEMA_INVALID" },
    );
    const fv = ghost("fv");
    await poison(
      "stock-reserved-future-version",
      `inventory.${fv}.StockReserved`,
      envelope(
        "StockReserved",
        {
          orderId: fv,
          customerId: "nobody",
          items: [{ sku: "SKU-A", quantity: 1 }],
          total: 1250,
          currency: "EUR",
          expiresAt: null,
        },
        (e) => ((e["version"] = 3), (e["data"].carrier = "pigeon")),
      ).bytes,
      { code: "EVENT_VERSION_AHEAD" },
    );
    // Valid events about orders that do not exist: whoever would act on them gives up (after its retries:
    // a lagging replica may not show an order yet); the audit records them like every published event.
    const nr = ghost("nr");
    const reserved = makeEvent(
      "StockReserved",
      {
        orderId: nr,
        customerId: "nobody",
        items: [{ sku: "SKU-A", quantity: 1 }],
        total: 1250,
        currency: "EUR",
        expiresAt: null,
      },
      { aggregateId: nr, source: "inventory" },
    );
    const th = natsHeaders();
    th.set(Hdr.Type, reserved.type);
    await poison("stock-reserved-no-order", subjectOf(reserved), enc(JSON.stringify(reserved)), {
      code: "ORDER_NOT_FOUND",
      attempts: MAX_ATTEMPTS,
      consumers: ["payments-inventory"],
      headers: th,
      auditedAs: { orderId: nr, eventId: reserved.id },
    });
    const nj = ghost("nj");
    const rejected = makeEvent(
      "StockRejected",
      { orderId: nj, reason: "out_of_stock", skus: ["SKU-A"] },
      { aggregateId: nj, source: "inventory" },
    );
    await poison("stock-rejected-no-order", subjectOf(rejected), enc(JSON.stringify(rejected)), {
      code: "ORDER_NOT_FOUND",
      attempts: MAX_ATTEMPTS,
      consumers: ["orders-inventory"],
      auditedAs: { orderId: nj, eventId: rejected.id },
    });

    // PAYMENTS
    const pv = ghost("pv");
    await poison(
      "payments-future-version",
      `payments.${pv}.PaymentCaptured`,
      envelope(
        "PaymentCaptured",
        { orderId: pv, paymentId: "p", amount: 1, currency: "EUR" },
        (e) => (e["version"] = 9),
      ).bytes,
      { code: "EVENT_VERSION_AHEAD" },
    );
    const nc = ghost("nc");
    const captured = makeEvent(
      "PaymentCaptured",
      { orderId: nc, paymentId: "pay_ghost", amount: 1250, currency: "EUR" },
      { aggregateId: nc, source: "payments" },
    );
    await poison("payment-captured-no-order", subjectOf(captured), enc(JSON.stringify(captured)), {
      code: "ORDER_NOT_FOUND",
      attempts: MAX_ATTEMPTS,
      consumers: ["orders-payments"],
      auditedAs: { orderId: nc, eventId: captured.id },
    });

    // NOTIFICATIONS
    await poison("notifications-malformed", `notifications.${ghost("nm")}.NotificationSent`, enc("\u0000"), {
      code: "EVENT_MALFORMED",
    });

    // No durable consumer takes a StockCommitted subject or NOTIFICATIONS (only the audit, which reads every stream
    // whole, does): that poison is dead-lettered by nobody, only recorded raw by the audit (poisonAuditedRaw).
    const unconsumed = ["inventory-other-type", "notifications-malformed"];
    assert.deepEqual(
      mine.filter((p) => p.consumers.length === 0).map((p) => p.name),
      unconsumed,
      "poison no durable consumer takes",
    );
    await poisonDeadLettered(mine);

    // The audit records every published event, those about orders that do not exist too.
    for (const p of mine.filter((x) => x.auditedAs)) {
      const { orderId, eventId } = p.auditedAs!;
      await sys.until(`audit of ${p.name}`, async () => {
        const r = await operatorFetch(`${sys.urls.audit}/audit/orders/${orderId}`);
        if (!r.ok) return undefined;
        const t: any = await r.json();
        return t.events.some((e: { event_id: string }) => e.event_id === eventId) ? t : undefined;
      });
    }
    const ledger = await getJson(`${sys.urls.gateway}/v1/ledger/summary`);
    const ghosts = ledger.orders.filter((o: { orderId: string }) => o.orderId.startsWith("ghost-"));
    assert.deepEqual(ghosts, [], "nothing charged for orders that do not exist");
  });

  test("garbage on the subject of an order in flight: dead-lettered, and the order still completes", async () => {
    await sys.setGatewayFaults({ outage: true });
    try {
      const r = await sys.placeOrder(order("in-flight"));
      assert.equal(r.status, 202);
      const id = r.body.orderId as string;
      // Its stock is reserved and the charge is stuck at the gateway: the order cannot be decided yet.
      await sys.until(
        "stock reserved",
        async () => (await getLast("INVENTORY", `inventory.${id}.StockReserved`)) !== null,
      );
      const garbage = await publishPoison(
        "garbage-on-real-order",
        `orders.${id}`,
        enc("<xml>not an event</xml>"),
        { code: "EVENT_MALFORMED" },
      );
      assert.equal((await getJson(`${sys.urls.orders}/orders/${id}`)).status, "PENDING");
      await sys.setGatewayFaults({ outage: false });
      const done = await sys.waitForTerminal(id, 60_000);
      assert.equal(done.status, "CONFIRMED", JSON.stringify(done));
      await poisonDeadLettered([garbage]);
    } finally {
      await sys.setGatewayFaults({ outage: false });
    }
  });

  test("an OrderPlaced whose total is not the sum of its lines is cancelled (invalid_order): nothing held or charged", async () => {
    const id = ghost("inconsistent");
    const { event } = envelope("OrderPlaced", placedData(id, 1));
    const h = natsHeaders();
    h.set(Hdr.Type, event.type);
    const ack = await js.publish(subjectOf(event), enc(JSON.stringify(event)), {
      msgID: event.id,
      headers: h,
    });
    const done = await sys.waitForTerminal(id, 30_000);
    assert.equal(done.status, "CANCELLED");
    assert.equal(done.reason, "invalid_order");
    const rejected = await getLast("INVENTORY", `inventory.${id}.StockRejected`);
    assert.ok(rejected, "inventory rejected it");
    assert.equal(JSON.parse(new TextDecoder().decode(rejected.data)).data.reason, "invalid_order");
    assert.equal(await getLast("INVENTORY", `inventory.${id}.StockReserved`), null, "nothing reserved");
    const ledger = await getJson(`${sys.urls.gateway}/v1/ledger?orderId=${id}`);
    assert.equal(ledger.entries.length, 0, "nothing charged");
    const dead = await deadLetters();
    assert.equal(dead.filter((d) => d.stream === "ORDERS" && d.sequence === ack.seq).length, 0, "not poison");
  });

  test("forced duplicates of a real order's events (new message ids) change nothing", async () => {
    // Two orders of its own: every event of the first is duplicated, only the OrderConfirmed of the second.
    const [id, secondOrder] = (await placeAndConfirm("dup", 2)) as [string, string];
    await sys.until("notification sent", async () =>
      getLast("NOTIFICATIONS", `notifications.${id}.NotificationSent`),
    );
    await sys.until("stock committed", async () => getLast("INVENTORY", `inventory.${id}.StockCommitted`));
    const originals = [
      ...(await messagesOn("ORDERS", `orders.${id}`)),
      (await getLast("INVENTORY", `inventory.${id}.StockReserved`))!,
      (await getLast("INVENTORY", `inventory.${id}.StockCommitted`))!,
      (await getLast("PAYMENTS", `payments.${id}.PaymentCaptured`))!,
      (await getLast("NOTIFICATIONS", `notifications.${id}.NotificationSent`))!,
    ];
    const types = originals.map((m) => m.header.get(Hdr.Type));
    assert.deepEqual(types.slice(0, 2), ["OrderPlaced", "OrderConfirmed"]);
    await drained();
    const ledgerBefore = await getJson(`${sys.urls.gateway}/v1/ledger?orderId=${id}`);
    const stockBefore = await getJson(`${sys.urls.inventory}/inventory`);
    const dups: { stream: string; seq: number }[] = [];
    // OrderPlaced alone first: a second copy of it must not reopen the confirmed order.
    dups.push(await republish(originals[0]!));
    await drained();
    const view = await getJson(`${sys.urls.orders}/orders/${id}`);
    assert.equal(view.status, "CONFIRMED", "a second OrderPlaced does not reopen the order");
    for (const m of originals.slice(1)) dups.push(await republish(m));
    // And of another order, only the OrderConfirmed: one terminal event stored twice is still one.
    const confirmed = (await messagesOn("ORDERS", `orders.${secondOrder}`)).find(
      (m) => m.header.get(Hdr.Type) === "OrderConfirmed",
    );
    dups.push(await republish(confirmed!));
    await drained();
    assert.equal((await getJson(`${sys.urls.orders}/orders/${secondOrder}`)).status, "CONFIRMED");
    assert.equal((await getJson(`${sys.urls.orders}/orders/${id}`)).status, "CONFIRMED");
    const ledgerAfter = await getJson(`${sys.urls.gateway}/v1/ledger?orderId=${id}`);
    assert.deepEqual(ledgerAfter, ledgerBefore, "not charged again");
    assert.deepEqual(await getJson(`${sys.urls.inventory}/inventory`), stockBefore, "stock unchanged");
    const mails = await getJson(`${sys.urls.mail}/v1/messages`);
    assert.equal(
      mails.messages.filter((m: { tags?: Record<string, string> }) => m.tags?.["orderId"] === id).length,
      1,
      "one e-mail",
    );
    const timeline = await getJson(`${sys.urls.audit}/audit/orders/${id}`);
    const ids = timeline.events.map((e: { event_id: string }) => e.event_id);
    assert.equal(new Set(ids).size, ids.length, `audited once each: ${ids.join(", ")}`);
    const dead = await deadLetters();
    for (const d of dups)
      assert.equal(
        entriesOf({ stream: d.stream, seq: d.seq } as Poison, dead).length,
        0,
        "not dead-lettered",
      );
  });

  test("the timer of a duplicated OrderPlaced fires without touching the confirmed order", async () => {
    const [id] = (await placeAndConfirm("timer", 1)) as [string];
    const placed = (await messagesOn("ORDERS", `orders.${id}`)).find(
      (m) => m.header.get(Hdr.Type) === "OrderPlaced",
    )!;
    const timeoutAt = Date.parse(JSON.parse(new TextDecoder().decode(placed.data)).data.timeoutAt);
    const dup = await republish(placed);
    await drained();
    assert.equal((await getJson(`${sys.urls.orders}/orders/${id}`)).status, "CONFIRMED");
    // Both timers (the original's and the duplicate's) are due at the order's timeoutAt: the timer consumer
    // acknowledges a message only once its timer has fired and been handled, and every OrderPlaced stored before
    // the duplicate is due no later than it.
    await sys.until(
      "the timer consumer to acknowledge the duplicated OrderPlaced",
      async () => (await jsm.consumers.info("ORDERS", "orders-timeouts")).ack_floor.stream_seq >= dup.seq,
      ORDER_TIMEOUT_MS + 30_000,
    );
    assert.ok(Date.now() >= timeoutAt, "the timers fired when due, not before");
    const terminal = (await messagesOn("ORDERS", `orders.${id}`))
      .map((m) => m.header.get(Hdr.Type))
      .filter((t) => t === "OrderConfirmed" || t === "OrderCancelled");
    assert.deepEqual(terminal, ["OrderConfirmed"], "the confirmation, and no cancellation");
    assert.equal((await getJson(`${sys.urls.orders}/orders/${id}`)).status, "CONFIRMED");
    assert.equal(entriesOf({ stream: dup.stream, seq: dup.seq } as Poison, await deadLetters()).length, 0);
  });
});

/** Each poison in `mine` is in the DLQ exactly once per expected consumer, with its code, attempts and body. */
async function checkPoisonEntries(mine: readonly Poison[]): Promise<void> {
  const dead = await deadLetters();
  for (const p of mine) {
    const entries = entriesOf(p, dead);
    assert.deepEqual(
      entries.map((e) => e.consumer).sort(),
      p.consumers,
      `${p.name}: one DLQ entry per consumer (${entries.map((e) => `${e.consumer}:${e.code}`).join(", ")})`,
    );
    for (const e of entries) {
      const what = `${p.name} by ${e.consumer}`;
      assert.equal(e.code, p.code, `${what}: code (${e.error})`);
      // Attempts as expected; one more is tolerated: on a loaded machine a pull can expire on the client while
      // a message is on its way, and that delivery, lost, comes back after the ack wait and counts.
      assert.ok(
        e.attempts === p.attempts || e.attempts === p.attempts + 1,
        `${what}: ${e.attempts} attempts`,
      );
      assert.equal(e.subject, p.subject, `${what}: subject`);
      assert.ok(e.error.length > 0, `${what}: error`);
      if (p.name === "huge") {
        assert.equal(e.bodyOmitted, true, `${what}: body omitted`);
        assert.equal(e.data.length, 0);
      } else {
        assert.equal(e.bodyOmitted, false, `${what}: body kept`);
        assert.equal(e.data.length, p.size, `${what}: body`);
      }
    }
  }
}
