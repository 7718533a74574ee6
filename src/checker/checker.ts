import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { decodeEvent, Streams, type AnyEnvelope } from "../lib/events/mod.js";
import { listDeadLetters } from "../lib/messaging/dlq.js";

/** Where the checker reads the system's state. */
export interface CheckTargets {
  nc: NatsConnection;
  inventoryUrl: string;
  auditUrl: string;
  gatewayUrl: string;
  mailUrl: string;
  /** Orders the client was told were accepted (202). Any not found in the ORDERS stream is lost. */
  acceptedOrderIds?: Iterable<string>;
  /** Orders placed less than this long ago may still be pending (default 0: none may). */
  pendingGraceMs?: number;
  /** Consumers whose backlog is a timer, not lost work (default: orders-timeouts). */
  timerConsumers?: string[];
}

/** One violated invariant, naming the order when there is one. */
export interface Violation {
  orderId?: string;
  sku?: string;
  detail: string;
}

export interface InvariantResult {
  id: "I1" | "I2" | "I3" | "I4" | "I5" | "I6";
  name: string;
  ok: boolean;
  violations: Violation[];
}

export interface CheckReport {
  ok: boolean;
  checkedAt: string;
  orders: { total: number; confirmed: number; cancelled: number; pending: number; lost: number };
  events: number;
  invariants: InvariantResult[];
}

interface OrderFacts {
  orderId: string;
  placedAt: number;
  total: number;
  items: { sku: string; quantity: number }[];
  terminals: ("CONFIRMED" | "CANCELLED")[];
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/** Reads every message of a stream (an ordered consumer), decoding events; undecodable ones are counted. */
export async function readStream(
  nc: NatsConnection,
  stream: string,
  onEvent: (e: AnyEnvelope, seq: number) => void,
): Promise<{ count: number; undecodable: number }> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream);
  const last = info.state.last_seq;
  let count = 0;
  let undecodable = 0;
  if (info.state.messages === 0) return { count, undecodable };
  const consumer = await jetstream(nc).consumers.get(stream);
  const iter = await consumer.consume({ max_messages: 1000 });
  for await (const m of iter) {
    try {
      onEvent(decodeEvent(m.data), m.seq);
      count++;
    } catch {
      undecodable++;
    }
    if (m.seq >= last) break;
  }
  await iter.close();
  return { count, undecodable };
}

const result = (id: InvariantResult["id"], name: string, violations: Violation[]): InvariantResult => ({
  id,
  name,
  ok: violations.length === 0,
  violations,
});

/** A durable consumer with work left: `stream/name`, messages not delivered, and delivered but not acknowledged. */
export interface Backlog {
  consumer: string;
  pending: number;
  ackPending: number;
}

/**
 * Durable consumers of the five streams with undelivered or unacknowledged messages, `timers` aside (consumers
 * that hold messages on purpose, e.g. the order-timeout timer).
 */
export async function consumerBacklogs(
  jsm: JetStreamManager,
  timers: ReadonlySet<string>,
): Promise<Backlog[]> {
  const out: Backlog[] = [];
  for (const stream of [
    Streams.ORDERS,
    Streams.INVENTORY,
    Streams.PAYMENTS,
    Streams.NOTIFICATIONS,
    Streams.DLQ,
  ]) {
    for await (const c of jsm.consumers.list(stream)) {
      if (!c.config.durable_name || timers.has(c.name)) continue;
      if (c.num_pending > 0 || c.num_ack_pending > 0)
        out.push({ consumer: `${stream}/${c.name}`, pending: c.num_pending, ackPending: c.num_ack_pending });
    }
  }
  return out;
}

/**
 * Checks invariants I1–I6 of ARCHITECTURE.md against the running system: the ORDERS, INVENTORY,
 * PAYMENTS and NOTIFICATIONS streams, the DLQ and consumer states (NATS), the inventory, the audit
 * log, the payment gateway's ledger and the mail provider's log. Run it when the system is quiet.
 * Every violation names the order (or SKU) concerned.
 */
export async function checkInvariants(t: CheckTargets): Promise<CheckReport> {
  const jsm = await jetstreamManager(t.nc);
  const orders = new Map<string, OrderFacts>();
  const eventIds = new Set<string>();
  let events = 0;
  for (const stream of [Streams.ORDERS, Streams.INVENTORY, Streams.PAYMENTS, Streams.NOTIFICATIONS]) {
    const r = await readStream(t.nc, stream, (e) => {
      // The same event stored twice (republished under another message id) is one event: handlers are
      // idempotent on it and the audit records it once. Counting it twice would invent a second order or
      // a second terminal state.
      if (eventIds.has(e.id)) return;
      eventIds.add(e.id);
      if (e.type === "OrderPlaced") {
        orders.set(e.data.orderId, {
          orderId: e.data.orderId,
          placedAt: Date.parse(e.data.placedAt),
          total: e.data.total,
          items: e.data.items.map((l) => ({ sku: l.sku, quantity: l.quantity })),
          terminals: [],
        });
      } else if (e.type === "OrderConfirmed" || e.type === "OrderCancelled") {
        orders.get(e.aggregate_id)?.terminals.push(e.type === "OrderConfirmed" ? "CONFIRMED" : "CANCELLED");
      }
    });
    events += r.count;
  }
  const status = (o: OrderFacts) => (o.terminals.length === 0 ? "PENDING" : o.terminals[0]!);

  // I1 terminal
  const i1: Violation[] = [];
  let lost = 0;
  for (const id of t.acceptedOrderIds ?? []) {
    if (!orders.has(id)) {
      lost++;
      i1.push({ orderId: id, detail: "accepted (202) but not in the ORDERS stream: lost" });
    }
  }
  const grace = t.pendingGraceMs ?? 0;
  for (const o of orders.values()) {
    if (o.terminals.length > 1)
      i1.push({
        orderId: o.orderId,
        detail: `${o.terminals.length} terminal events: ${o.terminals.join(", ")}`,
      });
    if (o.terminals.length === 0 && Date.now() - o.placedAt > grace)
      i1.push({ orderId: o.orderId, detail: "stuck: never reached a terminal state" });
  }

  // I2 money
  const i2: Violation[] = [];
  const summary = await getJson<{
    orders: { orderId: string; captured: number; refunded: number; net: number; charges: number }[];
  }>(`${t.gatewayUrl}/v1/ledger/summary`);
  const ledger = new Map(summary.orders.map((s) => [s.orderId, s]));
  for (const o of orders.values()) {
    const s = ledger.get(o.orderId);
    const net = s?.net ?? 0;
    const st = status(o);
    if (st === "CONFIRMED" && net !== o.total)
      i2.push({
        orderId: o.orderId,
        detail: `CONFIRMED with net ${net} at the gateway, expected ${o.total}`,
      });
    if (st === "CANCELLED" && net !== 0)
      i2.push({ orderId: o.orderId, detail: `CANCELLED with net ${net} at the gateway, expected 0` });
    if (s && s.charges > 1) i2.push({ orderId: o.orderId, detail: `charged ${s.charges} times` });
  }
  for (const s of summary.orders) {
    if (!orders.has(s.orderId) && s.net !== 0)
      i2.push({ orderId: s.orderId, detail: `net ${s.net} at the gateway for an order that does not exist` });
  }

  // I3 stock
  const i3: Violation[] = [];
  const inv = await getJson<{
    items: { sku: string; initial?: number; available: number; reserved: number; committed: number }[];
  }>(`${t.inventoryUrl}/inventory`);
  const confirmedUnits = new Map<string, number>();
  for (const o of orders.values()) {
    if (status(o) !== "CONFIRMED") continue;
    for (const l of o.items) confirmedUnits.set(l.sku, (confirmedUnits.get(l.sku) ?? 0) + l.quantity);
  }
  const allTerminal = [...orders.values()].every((o) => o.terminals.length > 0);
  for (const s of inv.items) {
    if (s.available < 0) i3.push({ sku: s.sku, detail: `available ${s.available} < 0 (oversold)` });
    if (s.initial !== undefined && s.initial !== s.available + s.reserved + s.committed)
      i3.push({
        sku: s.sku,
        detail: `initial ${s.initial} != available ${s.available} + reserved ${s.reserved} + committed ${s.committed}`,
      });
    const want = confirmedUnits.get(s.sku) ?? 0;
    if (s.committed !== want)
      i3.push({ sku: s.sku, detail: `committed ${s.committed}, but CONFIRMED orders hold ${want} units` });
    if (allTerminal && s.reserved !== 0)
      i3.push({ sku: s.sku, detail: `${s.reserved} units still reserved with every order terminal` });
  }

  // I4 notify
  const i4: Violation[] = [];
  const mail = await getJson<{ messages: { tags?: Record<string, string> }[] }>(`${t.mailUrl}/v1/messages`);
  const sent = new Map<string, number>();
  for (const m of mail.messages) {
    const key = `${m.tags?.["orderId"]}:${m.tags?.["kind"]}`;
    sent.set(key, (sent.get(key) ?? 0) + 1);
  }
  const dead = await listDeadLetters(jsm, { limit: 100_000 });
  const deadOrders = new Set(dead.map((d) => d.subject.split(".")[1]));
  for (const o of orders.values()) {
    const st = status(o);
    if (st === "PENDING") continue;
    const kind = st === "CONFIRMED" ? "order_confirmed" : "order_cancelled";
    const n = sent.get(`${o.orderId}:${kind}`) ?? 0;
    if (n > 1) i4.push({ orderId: o.orderId, detail: `${n} ${kind} e-mails` });
    if (n === 0 && !deadOrders.has(o.orderId))
      i4.push({ orderId: o.orderId, detail: `no ${kind} e-mail and nothing in the DLQ` });
    const other = st === "CONFIRMED" ? "order_cancelled" : "order_confirmed";
    if ((sent.get(`${o.orderId}:${other}`) ?? 0) > 0)
      i4.push({ orderId: o.orderId, detail: `${st} but got an ${other} e-mail` });
  }

  // I5 audit
  const i5: Violation[] = [];
  const verify = await getJson<{ ok: boolean; rows: number; firstBadPosition?: number }>(
    `${t.auditUrl}/audit/verify`,
  );
  if (!verify.ok) i5.push({ detail: `hash chain broken at position ${verify.firstBadPosition}` });
  const audited = new Map<string, number>();
  let after = 0;
  for (;;) {
    const page = await getJson<{ events: { position: number; event_id: string }[] }>(
      `${t.auditUrl}/audit/events?after=${after}&limit=1000`,
    );
    for (const r of page.events) audited.set(r.event_id, (audited.get(r.event_id) ?? 0) + 1);
    if (page.events.length === 0) break;
    after = page.events[page.events.length - 1]!.position;
  }
  for (const id of eventIds) {
    const n = audited.get(id) ?? 0;
    if (n !== 1) i5.push({ orderId: id.split(":")[0], detail: `event ${id} is in the audit log ${n} times` });
  }

  // I6 no silent loss
  const i6: Violation[] = (await consumerBacklogs(jsm, new Set(t.timerConsumers ?? ["orders-timeouts"]))).map(
    (b) => ({
      detail: `consumer ${b.consumer}: ${b.pending} not delivered, ${b.ackPending} not acknowledged`,
    }),
  );

  const invariants = [
    result("I1", "terminal: every accepted order ends in exactly one terminal state", i1),
    result("I2", "money: confirmed nets its total at the gateway, cancelled nets zero", i2),
    result("I3", "stock: initial = available + reserved + committed, never oversold", i3),
    result("I4", "notify: one e-mail per (order, kind), or the DLQ", i4),
    result("I5", "audit: every event once, chain verifies", i5),
    result("I6", "no silent loss: every consumer processed or dead-lettered everything", i6),
  ];
  const all = [...orders.values()];
  return {
    ok: invariants.every((i) => i.ok),
    checkedAt: new Date().toISOString(),
    orders: {
      total: all.length,
      confirmed: all.filter((o) => status(o) === "CONFIRMED").length,
      cancelled: all.filter((o) => status(o) === "CANCELLED").length,
      pending: all.filter((o) => status(o) === "PENDING").length,
      lost,
    },
    events,
    invariants,
  };
}

/** A plain-text table of a report, one line per invariant and one per violation (capped). */
export function formatReport(r: CheckReport, maxViolations = 20): string {
  const lines = [
    `orders: ${r.orders.total} (confirmed ${r.orders.confirmed}, cancelled ${r.orders.cancelled}, pending ${r.orders.pending}, lost ${r.orders.lost}); events: ${r.events}`,
  ];
  for (const i of r.invariants) {
    lines.push(
      `${i.ok ? "PASS" : "FAIL"}  ${i.id}  ${i.name}${i.ok ? "" : `  (${i.violations.length} violations)`}`,
    );
    for (const v of i.violations.slice(0, maxViolations)) {
      lines.push(`        ${v.orderId ? `order ${v.orderId}: ` : v.sku ? `sku ${v.sku}: ` : ""}${v.detail}`);
    }
  }
  lines.push(r.ok ? "all invariants hold" : "INVARIANTS VIOLATED");
  return lines.join("\n");
}
