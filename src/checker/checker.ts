import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { decodeEvent, isRequestedCancel, Streams, type AnyEnvelope } from "../lib/events/mod.js";
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
  /** `Authorization` header value for the audit and inventory reads (`Bearer <operator token>`). */
  authorization?: string;
  /**
   * The orders service's `CANCEL_WINDOW_MS`: a CONFIRMED order cancelled on request later than this after its
   * confirmation is a violation (`cancel-after-window`). Unset: not checked.
   */
  cancelWindowMs?: number;
}

/** The invariants of ARCHITECTURE.md. */
export type InvariantId = "I1" | "I2" | "I3" | "I4" | "I5" | "I6";

/**
 * Every kind of violation the checker reports, with the invariant it breaks. The kind is the stable name of a
 * violation (tests, tools and dashboards match on it); `detail` is free text for people.
 */
export const VIOLATION_KINDS = {
  /** Answered 202 but not in the ORDERS stream. */
  lost: "I1",
  /** Placed, and no terminal event (older than the pending grace). */
  "no-terminal": "I1",
  /**
   * More than one terminal event (CONFIRMED and CANCELLED, or one of them twice), except the one legitimate pair:
   * CONFIRMED, then CANCELLED on request (reason `customer_request` or `operator_request`).
   */
  "two-terminals": "I1",
  /** CONFIRMED, then cancelled on request later than the cancellation window allows (`cancelWindowMs`). */
  "cancel-after-window": "I1",
  /** More than one captured charge for one order at the gateway. */
  "double-capture": "I2",
  /** CONFIRMED, and nothing captured (net zero) at the gateway. */
  "confirmed-without-capture": "I2",
  /** CONFIRMED, one charge, but a net that is neither zero nor the order total (e.g. a partial refund). */
  "confirmed-net-mismatch": "I2",
  /** CANCELLED, and money still captured (net not zero) at the gateway. */
  "cancelled-with-net-capture": "I2",
  /** Money captured at the gateway for an order that is not in the ORDERS stream. */
  "capture-without-order": "I2",
  /** More than one refund for one order at the gateway. */
  "double-refund": "I2",
  /** A refund at the gateway without a PaymentRefunded on the PAYMENTS stream (money moved unrecorded), or the reverse. */
  "refund-unrecorded": "I2",
  /** A SKU with fewer than zero units available: oversold. */
  "negative-available": "I3",
  /** A SKU whose `initial + adjusted` is not `available + reserved + committed`. */
  "stock-unbalanced": "I3",
  /** A SKU whose `adjusted` is not the sum of its StockAdjusted events (a stock change off the record, or an event without its change). */
  "adjustment-mismatch": "I3",
  /** A SKU whose `committed` is not the units of its CONFIRMED orders. */
  "committed-mismatch": "I3",
  /** Units still reserved although every order is terminal. */
  "reserved-after-terminal": "I3",
  /** More than one e-mail of one kind for one order at the mail provider. */
  "duplicate-email": "I4",
  /** A terminal order without its e-mail, and its terminal event not dead-lettered by notifications. */
  "missing-email": "I4",
  /**
   * An e-mail of the other outcome (e.g. "cancelled" for a CONFIRMED order). An order cancelled on request after
   * its confirmation legitimately has both.
   */
  "wrong-kind-email": "I4",
  /** The audit log's hash chain does not verify. */
  "audit-chain-broken": "I5",
  /** An event of the streams that is not in the audit log. */
  "audit-missing-event": "I5",
  /** An event of the streams that is in the audit log more than once. */
  "audit-duplicate-event": "I5",
  /** A stream the audit has not read to its end: its position (`/audit/positions`) is below the stream's last sequence. */
  "audit-behind": "I5",
  /** A durable consumer with messages neither processed (acknowledged) nor dead-lettered. */
  "unprocessed-message": "I6",
} as const satisfies Record<string, InvariantId>;

/** The stable name of a violation, e.g. `no-terminal` or `double-capture` (see {@link VIOLATION_KINDS}). */
export type ViolationKind = keyof typeof VIOLATION_KINDS;

/** One violated invariant: its kind, and the order, SKU or consumer concerned when there is one. */
export interface Violation {
  kind: ViolationKind;
  orderId?: string;
  sku?: string;
  /** `stream/durable` of the consumer concerned (I6), or `audit/<STREAM>` for a stream the audit is behind on (I5). */
  consumer?: string;
  detail: string;
}

export interface InvariantResult {
  id: InvariantId;
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
  /** Timestamps of the terminal events, in the same order. */
  terminalAt: number[];
  /** Whether each terminal event is a cancellation on request, in the same order. */
  requested: boolean[];
}

/** CONFIRMED, then CANCELLED on request: the one order with two terminal events that is legitimate. */
function cancelledAfterConfirmation(o: OrderFacts): boolean {
  return (
    o.terminals.length === 2 &&
    o.terminals[0] === "CONFIRMED" &&
    o.terminals[1] === "CANCELLED" &&
    o.requested[1] === true
  );
}

/** The state an order ended in: PENDING, its one terminal state, CANCELLED after a confirmation, else its first. */
function finalStatus(o: OrderFacts): "PENDING" | "CONFIRMED" | "CANCELLED" {
  if (o.terminals.length === 0) return "PENDING";
  return cancelledAfterConfirmation(o) ? "CANCELLED" : o.terminals[0]!;
}

/** Consumers whose backlog is a timer, not lost work: the orders service's order-timeout timer. */
export const DEFAULT_TIMER_CONSUMERS: readonly string[] = ["orders-timeouts"];

/**
 * The durable of the notifications service that e-mails on OrderConfirmed and OrderCancelled
 * (`src/services/notifications/service.ts`, ORDERS_CONSUMER): its dead letter of a terminal event is the one
 * excuse I4 accepts for a missing e-mail. Named here rather than imported, so the checker does not load a
 * service's composition root.
 */
export const NOTIFICATIONS_CONSUMER = "notifications-orders";

async function getJson<T>(url: string, t: { authorization?: string | undefined }): Promise<T> {
  // Audit and inventory reads need an operator token; the simulators' reads are open (the header is harmless there).
  const res = await fetch(url, t.authorization ? { headers: { authorization: t.authorization } } : {});
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

const result = (id: InvariantId, name: string, violations: Violation[]): InvariantResult => ({
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

const CONSUMED_STREAMS = [
  Streams.ORDERS,
  Streams.INVENTORY,
  Streams.PAYMENTS,
  Streams.NOTIFICATIONS,
  Streams.DLQ,
];

/**
 * Durable consumers of the five streams with undelivered or unacknowledged messages, `timers` aside (consumers
 * that hold messages on purpose, e.g. the order-timeout timer).
 */
export async function consumerBacklogs(
  jsm: JetStreamManager,
  timers: ReadonlySet<string>,
): Promise<Backlog[]> {
  const out: Backlog[] = [];
  for (const stream of CONSUMED_STREAMS) {
    for await (const c of jsm.consumers.list(stream)) {
      if (!c.config.durable_name || timers.has(c.name)) continue;
      if (c.num_pending > 0 || c.num_ack_pending > 0)
        out.push({ consumer: `${stream}/${c.name}`, pending: c.num_pending, ackPending: c.num_ack_pending });
    }
  }
  return out;
}

/** Per stream, the audit projector's position, the stream's last sequence and the lag (`GET /audit/positions`). */
export interface AuditPositions {
  role: string;
  streams: Record<string, { position: number; lastSeq: number; lag: number }>;
}

/**
 * The streams the audit has not read to their end yet, as backlogs named `audit/<STREAM>` (`pending`: the lag;
 * the audit acknowledges nothing, so `ackPending` is 0). The audit is a projector with its position in its
 * database, not a durable consumer: its backlog is not on the server.
 */
export async function auditBacklogs(auditUrl: string, authorization?: string): Promise<Backlog[]> {
  const p = await getJson<AuditPositions>(`${auditUrl}/audit/positions`, { authorization });
  return Object.entries(p.streams)
    .filter(([, s]) => s.lag > 0)
    .map(([stream, s]) => ({ consumer: `audit/${stream}`, pending: s.lag, ackPending: 0 }));
}

/** Last sequence of each of the five streams, in one string: it changes whenever anything is published. */
async function streamHeads(jsm: JetStreamManager): Promise<string> {
  const heads: number[] = [];
  for (const stream of CONSUMED_STREAMS) heads.push((await jsm.streams.info(stream)).state.last_seq);
  return heads.join(",");
}

/** What {@link waitForDrain} found. */
export interface DrainResult {
  drained: boolean;
  waitedMs: number;
  /** Consumers with work left when it gave up (empty when drained). */
  backlogs: Backlog[];
}

/**
 * Waits until the system has no work left in flight: every durable consumer of the five streams (`timers`
 * aside, default {@link DEFAULT_TIMER_CONSUMERS}) has nothing pending and nothing unacknowledged, the audit
 * (with `auditUrl`, read with `authorization`) has recorded every stream to its last sequence ({@link auditBacklogs}), and nothing
 * was published while the consumers were being read (the streams' last sequences are the same before and after
 * the scan; otherwise a handler may have acknowledged its message after publishing the next one onto a stream
 * already scanned). Handlers acknowledge only after their effect is done (a stock move, an audit row, a charge,
 * an e-mail), so a drained system is one whose effects have all landed: the moment to run the checker once.
 * Polls every `intervalMs` (default 50) for at most `timeoutMs` (default 30 s); never throws on a backlog, it
 * reports it.
 */
export async function waitForDrain(
  jsm: JetStreamManager,
  opts: {
    timers?: Iterable<string>;
    timeoutMs?: number;
    intervalMs?: number;
    auditUrl?: string;
    /** `Authorization` header for `/audit/positions` (`Bearer <operator token>`). */
    authorization?: string;
  } = {},
): Promise<DrainResult> {
  const timers = new Set(opts.timers ?? DEFAULT_TIMER_CONSUMERS);
  const t0 = Date.now();
  const deadline = t0 + (opts.timeoutMs ?? 30_000);
  for (;;) {
    const before = await streamHeads(jsm);
    const backlogs = await consumerBacklogs(jsm, timers);
    if (opts.auditUrl !== undefined) {
      try {
        backlogs.push(...(await auditBacklogs(opts.auditUrl, opts.authorization)));
      } catch (err) {
        backlogs.push({ consumer: `audit (${(err as Error).message})`, pending: 1, ackPending: 0 });
      }
    }
    if (backlogs.length === 0 && (await streamHeads(jsm)) === before)
      return { drained: true, waitedMs: Date.now() - t0, backlogs };
    if (Date.now() >= deadline) return { drained: false, waitedMs: Date.now() - t0, backlogs };
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

/**
 * Checks invariants I1–I6 of ARCHITECTURE.md against the running system: the ORDERS, INVENTORY,
 * PAYMENTS and NOTIFICATIONS streams, the DLQ and consumer states (NATS), the inventory, the audit
 * log, the payment gateway's ledger and the mail provider's log. Run it when the system is quiet
 * (see {@link waitForDrain}). Every violation has a {@link ViolationKind} and names the order, SKU or
 * consumer concerned.
 */
export async function checkInvariants(t: CheckTargets): Promise<CheckReport> {
  const jsm = await jetstreamManager(t.nc);
  const orders = new Map<string, OrderFacts>();
  const eventIds = new Set<string>();
  /** Terminal events in the ORDERS stream by sequence (every stored copy), for the I4 dead-letter excuse. */
  const terminalAt = new Map<number, { type: string; orderId: string }>();
  /** `<orderId>:<kind>` of every NotificationWithheld: an e-mail settled without one (the customer was erased). */
  const withheld = new Set<string>();
  /** Units of the StockAdjusted events of each SKU (each event once). */
  const adjustedUnits = new Map<string, number>();
  /** Orders with a PaymentRefunded on PAYMENTS. */
  const refundEvents = new Set<string>();
  let events = 0;
  for (const stream of [Streams.ORDERS, Streams.INVENTORY, Streams.PAYMENTS, Streams.NOTIFICATIONS]) {
    const r = await readStream(t.nc, stream, (e, seq) => {
      if (stream === Streams.ORDERS && (e.type === "OrderConfirmed" || e.type === "OrderCancelled"))
        terminalAt.set(seq, { type: e.type, orderId: e.aggregate_id });
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
          terminalAt: [],
          requested: [],
        });
      } else if (e.type === "StockAdjusted") {
        adjustedUnits.set(e.data.sku, (adjustedUnits.get(e.data.sku) ?? 0) + e.data.quantity);
      } else if (e.type === "OrderConfirmed" || e.type === "OrderCancelled") {
        const o = orders.get(e.aggregate_id);
        o?.terminals.push(e.type === "OrderConfirmed" ? "CONFIRMED" : "CANCELLED");
        o?.terminalAt.push(Date.parse(e.timestamp));
        o?.requested.push(e.type === "OrderCancelled" && isRequestedCancel(e.data.reason));
      } else if (e.type === "PaymentRefunded" && e.data.amount > 0) {
        // A free order's "refund" (amount 0) never reaches the gateway.
        refundEvents.add(e.data.orderId);
      } else if (e.type === "NotificationWithheld") {
        withheld.add(`${e.data.orderId}:${e.data.kind}`);
      }
    });
    events += r.count;
  }
  const status = finalStatus;

  // I1 terminal
  const i1: Violation[] = [];
  let lost = 0;
  for (const id of t.acceptedOrderIds ?? []) {
    if (!orders.has(id)) {
      lost++;
      i1.push({ kind: "lost", orderId: id, detail: "accepted (202) but not in the ORDERS stream: lost" });
    }
  }
  const grace = t.pendingGraceMs ?? 0;
  for (const o of orders.values()) {
    if (cancelledAfterConfirmation(o)) {
      const after = o.terminalAt[1]! - o.terminalAt[0]!;
      if (t.cancelWindowMs !== undefined && after > t.cancelWindowMs)
        i1.push({
          kind: "cancel-after-window",
          orderId: o.orderId,
          detail: `cancelled ${after} ms after its confirmation; the window is ${t.cancelWindowMs} ms`,
        });
    } else if (o.terminals.length > 1)
      i1.push({
        kind: "two-terminals",
        orderId: o.orderId,
        detail: `${o.terminals.length} terminal events: ${o.terminals.join(", ")}`,
      });
    if (o.terminals.length === 0 && Date.now() - o.placedAt > grace)
      i1.push({ kind: "no-terminal", orderId: o.orderId, detail: "stuck: never reached a terminal state" });
  }

  // I2 money
  const i2: Violation[] = [];
  const summary = await getJson<{
    orders: {
      orderId: string;
      captured: number;
      refunded: number;
      net: number;
      charges: number;
      refunds: number;
    }[];
  }>(`${t.gatewayUrl}/v1/ledger/summary`, t);
  const ledger = new Map(summary.orders.map((s) => [s.orderId, s]));
  for (const o of orders.values()) {
    const s = ledger.get(o.orderId);
    const net = s?.net ?? 0;
    const st = status(o);
    if (s && s.charges > 1) {
      // One fact, one violation: the net of a double capture is off too, and that is this same fault.
      i2.push({
        kind: "double-capture",
        orderId: o.orderId,
        detail: `${st}, charged ${s.charges} times (captured ${s.captured}, refunded ${s.refunded}, net ${net}; total ${o.total})`,
      });
      continue;
    }
    if (s && s.refunds > 1) {
      // One fact, one violation: the net of a double refund is off too.
      i2.push({
        kind: "double-refund",
        orderId: o.orderId,
        detail: `${st}, refunded ${s.refunds} times (captured ${s.captured}, refunded ${s.refunded}, net ${net}; total ${o.total})`,
      });
      continue;
    }
    if (st === "CONFIRMED" && net === 0)
      i2.push({
        kind: "confirmed-without-capture",
        orderId: o.orderId,
        detail: `CONFIRMED with nothing captured at the gateway, expected a net of ${o.total}`,
      });
    else if (st === "CONFIRMED" && net !== o.total)
      i2.push({
        kind: "confirmed-net-mismatch",
        orderId: o.orderId,
        detail: `CONFIRMED with net ${net} at the gateway, expected ${o.total}`,
      });
    if (st === "CANCELLED" && net !== 0)
      i2.push({
        kind: "cancelled-with-net-capture",
        orderId: o.orderId,
        detail: `CANCELLED with net ${net} at the gateway, expected 0`,
      });
    const refunds = s?.refunds ?? 0;
    if (refunds > 0 !== refundEvents.has(o.orderId))
      i2.push({
        kind: "refund-unrecorded",
        orderId: o.orderId,
        detail:
          refunds > 0
            ? `${refunds} refund(s) at the gateway and no PaymentRefunded on PAYMENTS`
            : "a PaymentRefunded on PAYMENTS and no refund at the gateway",
      });
  }
  for (const s of summary.orders) {
    if (!orders.has(s.orderId) && s.net !== 0)
      i2.push({
        kind: "capture-without-order",
        orderId: s.orderId,
        detail: `net ${s.net} at the gateway for an order that does not exist`,
      });
  }

  // I3 stock
  const i3: Violation[] = [];
  const inv = await getJson<{
    items: {
      sku: string;
      initial?: number;
      adjusted?: number;
      available: number;
      reserved: number;
      committed: number;
    }[];
  }>(`${t.inventoryUrl}/inventory`, t);
  const confirmedUnits = new Map<string, number>();
  for (const o of orders.values()) {
    if (status(o) !== "CONFIRMED") continue;
    for (const l of o.items) confirmedUnits.set(l.sku, (confirmedUnits.get(l.sku) ?? 0) + l.quantity);
  }
  const allTerminal = [...orders.values()].every((o) => o.terminals.length > 0);
  for (const s of inv.items) {
    if (s.available < 0)
      i3.push({ kind: "negative-available", sku: s.sku, detail: `available ${s.available} < 0 (oversold)` });
    const adjusted = s.adjusted ?? 0;
    if (s.initial !== undefined && s.initial + adjusted !== s.available + s.reserved + s.committed)
      i3.push({
        kind: "stock-unbalanced",
        sku: s.sku,
        detail: `initial ${s.initial} + adjusted ${adjusted} != available ${s.available} + reserved ${s.reserved} + committed ${s.committed}`,
      });
    const recorded = adjustedUnits.get(s.sku) ?? 0;
    if (adjusted !== recorded)
      i3.push({
        kind: "adjustment-mismatch",
        sku: s.sku,
        detail: `adjusted ${adjusted}, but its StockAdjusted events add up to ${recorded}`,
      });
    const want = confirmedUnits.get(s.sku) ?? 0;
    if (s.committed !== want)
      i3.push({
        kind: "committed-mismatch",
        sku: s.sku,
        detail: `committed ${s.committed}, but CONFIRMED orders hold ${want} units`,
      });
    if (allTerminal && s.reserved !== 0)
      i3.push({
        kind: "reserved-after-terminal",
        sku: s.sku,
        detail: `${s.reserved} units still reserved with every order terminal`,
      });
  }

  // I4 notify
  const i4: Violation[] = [];
  const mail = await getJson<{ messages: { tags?: Record<string, string> }[] }>(
    `${t.mailUrl}/v1/messages`,
    t,
  );
  const sent = new Map<string, number>();
  for (const m of mail.messages) {
    const key = `${m.tags?.["orderId"]}:${m.tags?.["kind"]}`;
    sent.set(key, (sent.get(key) ?? 0) + 1);
  }
  // The one excuse for a missing e-mail: the notifications consumer dead-lettered the terminal event that would
  // have produced it. Any other dead letter of the order (a poison message on its subject, another consumer's
  // failure, its OrderPlaced) says nothing about its e-mail. The event is the one stored at the entry's original
  // sequence, or, when that is gone from ORDERS, the entry's own body.
  const deadTerminals = new Set<string>();
  for (const d of await listDeadLetters(jsm, { consumer: NOTIFICATIONS_CONSUMER, limit: 100_000 })) {
    if (d.stream !== Streams.ORDERS) continue;
    let e: { type: string; orderId: string } | undefined = terminalAt.get(d.sequence);
    if (!e && !d.bodyOmitted) {
      try {
        const decoded = decodeEvent(d.data);
        e = { type: decoded.type, orderId: decoded.aggregate_id };
      } catch {
        /* not an event: not a terminal event either */
      }
    }
    if (e) deadTerminals.add(`${e.orderId}:${e.type}`);
  }
  for (const o of orders.values()) {
    const st = status(o);
    if (st === "PENDING") continue;
    // An order cancelled after its confirmation was told both: its confirmation's e-mail (at most one) stands.
    const late = cancelledAfterConfirmation(o);
    const confirmedMails = sent.get(`${o.orderId}:order_confirmed`) ?? 0;
    if (late && confirmedMails > 1)
      i4.push({
        kind: "duplicate-email",
        orderId: o.orderId,
        detail: `${confirmedMails} order_confirmed e-mails`,
      });
    const kind = st === "CONFIRMED" ? "order_confirmed" : "order_cancelled";
    const cause = st === "CONFIRMED" ? "OrderConfirmed" : "OrderCancelled";
    const n = sent.get(`${o.orderId}:${kind}`) ?? 0;
    if (n > 1) i4.push({ kind: "duplicate-email", orderId: o.orderId, detail: `${n} ${kind} e-mails` });
    // Excused too: the e-mail withheld because the customer's personal data was erased (no address to write to).
    if (n === 0 && !deadTerminals.has(`${o.orderId}:${cause}`) && !withheld.has(`${o.orderId}:${kind}`))
      i4.push({
        kind: "missing-email",
        orderId: o.orderId,
        detail: `no ${kind} e-mail, no NotificationWithheld of it, and its ${cause} is not in the DLQ of ${NOTIFICATIONS_CONSUMER}`,
      });
    const other = st === "CONFIRMED" ? "order_cancelled" : "order_confirmed";
    if (!late && (sent.get(`${o.orderId}:${other}`) ?? 0) > 0)
      i4.push({ kind: "wrong-kind-email", orderId: o.orderId, detail: `${st} but got an ${other} e-mail` });
  }

  // I5 audit
  const i5: Violation[] = [];
  const verify = await getJson<{ ok: boolean; rows: number; firstBadPosition?: number; reason?: string }>(
    `${t.auditUrl}/audit/verify`,
    t,
  );
  if (!verify.ok)
    i5.push({
      kind: "audit-chain-broken",
      detail: `hash chain broken at position ${verify.firstBadPosition}${verify.reason ? `: ${verify.reason}` : ""}`,
    });
  const audited = new Map<string, number>();
  let after = 0;
  for (;;) {
    const page = await getJson<{ events: { position: number; event_id: string }[] }>(
      `${t.auditUrl}/audit/events?after=${after}&limit=1000`,
      t,
    );
    for (const r of page.events) audited.set(r.event_id, (audited.get(r.event_id) ?? 0) + 1);
    if (page.events.length === 0) break;
    after = page.events[page.events.length - 1]!.position;
  }
  for (const b of await auditBacklogs(t.auditUrl, t.authorization))
    i5.push({
      kind: "audit-behind",
      consumer: b.consumer,
      detail: `the audit is ${b.pending} message(s) behind the end of ${b.consumer.slice("audit/".length)}`,
    });
  for (const id of eventIds) {
    const n = audited.get(id) ?? 0;
    if (n === 0)
      i5.push({
        kind: "audit-missing-event",
        orderId: id.split(":")[0],
        detail: `event ${id} is not in the audit log`,
      });
    else if (n > 1)
      i5.push({
        kind: "audit-duplicate-event",
        orderId: id.split(":")[0],
        detail: `event ${id} is in the audit log ${n} times`,
      });
  }

  // I6 no silent loss
  const i6: Violation[] = (
    await consumerBacklogs(jsm, new Set(t.timerConsumers ?? DEFAULT_TIMER_CONSUMERS))
  ).map((b) => ({
    kind: "unprocessed-message",
    consumer: b.consumer,
    detail: `consumer ${b.consumer}: ${b.pending} not delivered, ${b.ackPending} not acknowledged`,
  }));

  const invariants = [
    result("I1", "terminal: every accepted order ends in exactly one terminal state", i1),
    result("I2", "money: confirmed nets its total at the gateway, cancelled nets zero", i2),
    result(
      "I3",
      "stock: initial + adjustments = available + reserved + committed, never oversold; adjustments match their events",
      i3,
    ),
    result("I4", "notify: one e-mail per (order, kind), or its dead letter", i4),
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

/** Every violation of a report, each with the invariant it breaks. */
export function violationsOf(r: CheckReport): (Violation & { invariant: InvariantId })[] {
  return r.invariants.flatMap((i) => i.violations.map((v) => ({ ...v, invariant: i.id })));
}

/** One violation on one line: `<kind> order <id>: <detail>` (or `sku …`, `consumer …`). */
export function formatViolation(v: Violation): string {
  const subject = v.orderId
    ? ` order ${v.orderId}`
    : v.sku
      ? ` sku ${v.sku}`
      : v.consumer
        ? ` consumer ${v.consumer}`
        : "";
  return `${v.kind}${subject}: ${v.detail}`;
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
    for (const v of i.violations.slice(0, maxViolations)) lines.push(`        ${formatViolation(v)}`);
  }
  lines.push(r.ok ? "all invariants hold" : "INVARIANTS VIOLATED");
  return lines.join("\n");
}
