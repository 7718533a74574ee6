/**
 * Jepsen-style reconciliation: once the system is quiet, every order the load generator got a 202 for is looked
 * up everywhere its effects should be — the event streams, the gateway's ledger, the inventory, the audit log and
 * the mail provider — and classified; the invariant checker (I1–I6) runs over the whole system beside it.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { checkInvariants, readStream, type CheckReport, type Violation } from "../checker/checker.js";
import { Streams } from "../lib/events/catalog.js";
import { percentile } from "../load/generator.js";
import type { ChaosOrder } from "./load.js";

/** What one order's history in the streams says. */
export interface OrderFacts {
  total: number;
  items: { sku: string; quantity: number }[];
  /** First terminal decision, by stream order. */
  status?: "CONFIRMED" | "CANCELLED";
  /** Envelope timestamp of the terminal event (ms since epoch). */
  terminalAt?: number;
  /** Envelope timestamp of the NotificationSent of its terminal kind (the saga's last step). */
  notifiedAt?: number;
  /** Every distinct event id of the order, in every stream. */
  eventIds: Set<string>;
}

/** Everything the reconciliation reads, once per quiet system. */
export interface SystemFacts {
  orders: Map<string, OrderFacts>;
  /** Gateway ledger per order. */
  ledger: Map<string, { captured: number; refunded: number; net: number; charges: number }>;
  /** E-mails at the provider per `<orderId>:<kind>`. */
  mails: Map<string, number>;
  /** Audit rows per event id. */
  audited: Map<string, number>;
  /** SKUs oversold or out of balance: I3 violations, plus SKUs whose confirmed units exceed their stock. */
  oversoldSkus: Set<string>;
  /** The invariant checker's report. */
  check: CheckReport;
  /** Undecodable messages per stream (poison). */
  undecodable: Record<string, number>;
}

/** Where the reconciliation reads. */
export interface FactSources {
  nc: NatsConnection;
  inventoryUrl: string;
  auditUrl: string;
  gatewayUrl: string;
  mailUrl: string;
  /** `Authorization` header value for the audit and inventory reads (`Bearer <operator token>`). */
  authorization?: string;
}

async function getJson<T>(url: string, src: { authorization?: string | undefined }): Promise<T> {
  const res = await fetch(url, {
    signal: AbortSignal.timeout(120_000),
    ...(src.authorization ? { headers: { authorization: src.authorization } } : {}),
  });
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/** Reads the streams, ledger, inventory, audit and mail log, and runs the checker with `accepted`. */
export async function gatherFacts(src: FactSources, accepted: Iterable<string>): Promise<SystemFacts> {
  const orders = new Map<string, OrderFacts>();
  const factsOf = (id: string): OrderFacts => {
    let f = orders.get(id);
    if (!f) {
      f = { total: -1, items: [], eventIds: new Set() };
      orders.set(id, f);
    }
    return f;
  };
  const placed = new Set<string>();
  const notified = new Map<string, number>();
  const undecodable: Record<string, number> = {};
  for (const stream of [Streams.ORDERS, Streams.INVENTORY, Streams.PAYMENTS, Streams.NOTIFICATIONS]) {
    const r = await readStream(src.nc, stream, (e) => {
      const f = factsOf(e.aggregate_id);
      f.eventIds.add(e.id);
      const at = Date.parse(e.timestamp);
      if (e.type === "OrderPlaced") {
        placed.add(e.aggregate_id);
        f.total = e.data.total;
        f.items = e.data.items.map((l) => ({ sku: l.sku, quantity: l.quantity }));
      } else if ((e.type === "OrderConfirmed" || e.type === "OrderCancelled") && f.status === undefined) {
        f.status = e.type === "OrderConfirmed" ? "CONFIRMED" : "CANCELLED";
        f.terminalAt = at;
      } else if (e.type === "NotificationSent") {
        notified.set(`${e.aggregate_id}:${e.data.kind}`, at);
      }
    });
    undecodable[stream] = r.undecodable;
  }
  for (const [id, f] of orders) {
    if (!placed.has(id)) {
      // Events of an order that was never placed (poison, orphans): not an order.
      orders.delete(id);
      continue;
    }
    if (f.status)
      f.notifiedAt = notified.get(
        `${id}:${f.status === "CONFIRMED" ? "order_confirmed" : "order_cancelled"}`,
      );
  }

  const summary = await getJson<{
    orders: { orderId: string; captured: number; refunded: number; net: number; charges: number }[];
  }>(`${src.gatewayUrl}/v1/ledger/summary`, src);
  const ledger = new Map(summary.orders.map((s) => [s.orderId, s]));

  const mail = await getJson<{ messages: { tags?: Record<string, string> }[] }>(
    `${src.mailUrl}/v1/messages`,
    src,
  );
  const mails = new Map<string, number>();
  for (const m of mail.messages) {
    const key = `${m.tags?.["orderId"]}:${m.tags?.["kind"]}`;
    mails.set(key, (mails.get(key) ?? 0) + 1);
  }

  const audited = new Map<string, number>();
  for (let after = 0; ;) {
    const page = await getJson<{
      events: { position: number; event_id: string }[];
      more: boolean;
      next: number;
    }>(`${src.auditUrl}/audit/events?after=${after}&limit=10000`, src);
    for (const r of page.events) audited.set(r.event_id, (audited.get(r.event_id) ?? 0) + 1);
    if (page.events.length === 0) break;
    after = page.next;
  }

  const inv = await getJson<{
    items: { sku: string; initial?: number; adjusted?: number; available: number }[];
  }>(`${src.inventoryUrl}/inventory`, src);
  const check = await checkInvariants({ ...src, acceptedOrderIds: accepted });
  const oversoldSkus = new Set<string>();
  for (const v of check.invariants.find((i) => i.id === "I3")?.violations ?? [])
    if (v.sku) oversoldSkus.add(v.sku);
  const confirmedUnits = new Map<string, number>();
  for (const f of orders.values())
    if (f.status === "CONFIRMED")
      for (const l of f.items) confirmedUnits.set(l.sku, (confirmedUnits.get(l.sku) ?? 0) + l.quantity);
  for (const s of inv.items)
    if (
      s.available < 0 ||
      (s.initial !== undefined && (confirmedUnits.get(s.sku) ?? 0) > s.initial + (s.adjusted ?? 0))
    )
      oversoldSkus.add(s.sku);

  return { orders, ledger, mails, audited, oversoldSkus, check, undecodable };
}

/** The counts of a {@link Reconciliation} that must be zero: each is orders (or SKUs) gone wrong. */
export const PROBLEM_COUNTS = [
  "lost",
  "stuck",
  "double_charged",
  "oversold",
  "audit_missing",
  "duplicate_emails",
] as const;

/** The reconciliation of one scenario's orders. */
export interface Reconciliation {
  /** Orders sent (each with its own key). */
  sent: number;
  /** Orders answered 202. */
  orders: number;
  ok: number;
  /** 202, but no OrderPlaced in the ORDERS stream. */
  lost: number;
  /** Placed, but never terminal. */
  stuck: number;
  /** More than one capture at the gateway, or a net that is not the total (confirmed) or zero (cancelled). */
  double_charged: number;
  /** SKUs oversold or out of balance (I3); stock is shared, so this is system-wide. */
  oversold: number;
  /** Orders with an event missing from the audit log (or in it more than once). */
  audit_missing: number;
  /** Orders with more than one e-mail of one kind. */
  duplicate_emails: number;
  confirmed: number;
  cancelled: number;
  /** Sent but never answered 202 (refused, failed, timed out even after retries): not accepted, not counted. */
  not_accepted: number;
  /**
   * Invariant violations naming this scenario's orders, or naming no order at all; each keeps its `kind`, and its
   * `detail` starts with the invariant and the kind (`I2 double-capture: …`) for reports that print only the text.
   */
  violations: Violation[];
  /** Examples per problem (order ids). */
  examples: Record<string, string[]>;
}

/** Classifies every accepted order of `runOrders`; `mine` says whether an order id belongs to this scenario. */
export function reconcile(
  runOrders: ChaosOrder[],
  facts: SystemFacts,
  allScenarioIds: Map<string, string>,
  scenario: string,
): Reconciliation {
  const r: Reconciliation = {
    sent: runOrders.length,
    orders: 0,
    ok: 0,
    lost: 0,
    stuck: 0,
    double_charged: 0,
    oversold: facts.oversoldSkus.size,
    audit_missing: 0,
    duplicate_emails: 0,
    confirmed: 0,
    cancelled: 0,
    not_accepted: 0,
    violations: [],
    examples: {},
  };
  const example = (kind: string, id: string) => {
    const list = (r.examples[kind] ??= []);
    if (list.length < 5) list.push(id);
  };
  for (const rec of runOrders) {
    if (rec.status !== 202 || !rec.orderId) {
      r.not_accepted++;
      continue;
    }
    r.orders++;
    const id = rec.orderId;
    const f = facts.orders.get(id);
    if (!f) {
      r.lost++;
      example("lost", id);
      continue;
    }
    let good = true;
    if (!f.status) {
      r.stuck++;
      example("stuck", id);
      good = false;
    } else if (f.status === "CONFIRMED") r.confirmed++;
    else r.cancelled++;
    const money = facts.ledger.get(id);
    const expected = f.status === "CONFIRMED" ? f.total : 0;
    if ((money?.charges ?? 0) > 1 || (f.status !== undefined && (money?.net ?? 0) !== expected)) {
      r.double_charged++;
      example("double_charged", id);
      good = false;
    }
    if ([...f.eventIds].some((e) => facts.audited.get(e) !== 1)) {
      r.audit_missing++;
      example("audit_missing", id);
      good = false;
    }
    if (
      (facts.mails.get(`${id}:order_confirmed`) ?? 0) > 1 ||
      (facts.mails.get(`${id}:order_cancelled`) ?? 0) > 1
    ) {
      r.duplicate_emails++;
      example("duplicate_emails", id);
      good = false;
    }
    if (good) r.ok++;
  }
  for (const inv of facts.check.invariants) {
    for (const v of inv.violations) {
      const owner = v.orderId === undefined ? undefined : allScenarioIds.get(v.orderId);
      if (owner === undefined || owner === scenario)
        r.violations.push({ ...v, detail: `${inv.id} ${v.kind}: ${v.detail}` });
    }
  }
  return r;
}

/** Latency and recovery of one scenario, from its orders and the times it marked. */
export interface Timing {
  /** p50 / p99 of POST → terminal (ms) of the accepted orders scheduled during the fault window. */
  p50_ms: number | null;
  p99_ms: number | null;
  /** Orders scheduled in the fault window. */
  fault_orders: number;
  /** p50 / p99 of orders scheduled more than 1 s before the fault (the baseline). */
  baseline_p50_ms: number | null;
  baseline_p99_ms: number | null;
  /**
   * Seconds from the heal until the saga was back to normal: every order accepted and scheduled before the heal
   * had completed (terminal, and its customer e-mail recorded as sent), and so had the first order scheduled
   * after the heal. Null when there was no fault window.
   */
  recovery_s: number | null;
  /**
   * Per second of the load (by scheduled time, from the first order): orders sent, accepted, and the p50 of POST →
   * 202 and of POST → terminal (ms) of those sent in that second.
   */
  series: {
    t: number;
    sent: number;
    accepted: number;
    http_p50: number | null;
    terminal_p50: number | null;
  }[];
}

/** Computes {@link Timing}; `faultStart`/`healedAt` are the scenario's marks (ms since epoch). */
export function timing(
  runOrders: ChaosOrder[],
  facts: SystemFacts,
  faultStart?: number,
  healedAt?: number,
): Timing {
  const lat = (recs: ChaosOrder[]) =>
    recs.flatMap((o) => {
      const t = o.orderId ? facts.orders.get(o.orderId)?.terminalAt : undefined;
      return t === undefined ? [] : [Math.max(0, t - o.scheduledAt)];
    });
  const accepted = runOrders.filter((o) => o.status === 202 && o.orderId);
  const round = (v: number) => (Number.isNaN(v) ? null : Math.round(v));
  // The baseline leaves out the last second before the fault: those orders may still be in flight when it hits.
  const before =
    faultStart === undefined ? accepted : accepted.filter((o) => o.scheduledAt < faultStart - 1_000);
  const during =
    faultStart === undefined || healedAt === undefined
      ? []
      : accepted.filter((o) => o.scheduledAt >= faultStart && o.scheduledAt <= healedAt);
  let recovery: number | null = null;
  if (healedAt !== undefined) {
    let t = healedAt;
    const doneAt = (o: ChaosOrder): number | undefined => {
      const f = facts.orders.get(o.orderId!);
      if (!f?.terminalAt) return undefined;
      return Math.max(f.terminalAt, f.notifiedAt ?? f.terminalAt);
    };
    for (const o of accepted) {
      if (o.scheduledAt <= healedAt) {
        const d = doneAt(o);
        if (d !== undefined) t = Math.max(t, d);
      }
    }
    const firstAfter = accepted
      .filter((o) => o.scheduledAt > healedAt)
      .sort((a, b) => a.scheduledAt - b.scheduledAt)[0];
    const d = firstAfter ? doneAt(firstAfter) : undefined;
    if (d !== undefined) t = Math.max(t, d);
    recovery = Math.round((t - healedAt) / 100) / 10;
  }
  const dl = lat(during);
  const bl = lat(before);
  const series: Timing["series"] = [];
  const t0 = runOrders[0]?.scheduledAt ?? 0;
  for (const o of runOrders) {
    const t = Math.floor((o.scheduledAt - t0) / 1000);
    while (series.length <= t)
      series.push({ t: series.length, sent: 0, accepted: 0, http_p50: null, terminal_p50: null });
  }
  const buckets = series.map(() => [] as ChaosOrder[]);
  for (const o of runOrders) buckets[Math.floor((o.scheduledAt - t0) / 1000)]!.push(o);
  buckets.forEach((b, t) => {
    const ok = b.filter((o) => o.status === 202 && o.orderId);
    series[t] = {
      t,
      sent: b.length,
      accepted: ok.length,
      http_p50: round(
        percentile(
          ok.map((o) => (o.answeredAt ?? o.scheduledAt) - o.scheduledAt),
          50,
        ),
      ),
      terminal_p50: round(percentile(lat(ok), 50)),
    };
  });
  return {
    p50_ms: round(percentile(dl, 50)),
    p99_ms: round(percentile(dl, 99)),
    fault_orders: during.length,
    baseline_p50_ms: round(percentile(bl, 50)),
    baseline_p99_ms: round(percentile(bl, 99)),
    recovery_s: recovery,
    series,
  };
}
