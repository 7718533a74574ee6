/**
 * The payments service against a real nats-server and the real payment gateway simulator: captures,
 * declines, duplicates and crash-redo, refunds on cancel, cancel-before-reserve, a gateway outage (breaker
 * opens, consumers pause, nothing burned), a gateway slower than the client timeout, and a 4xx → DLQ.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { FastifyInstance } from "fastify";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { makeEvent, type Envelope } from "../../src/lib/events/envelope.js";
import type { EventType } from "../../src/lib/events/catalog.js";
import type { BreakerState } from "../../src/lib/http-client.js";
import { openBucket } from "../../src/lib/kv.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { EventVersions } from "../../src/lib/events/versions.js";
import { startService, type CommonConfig, type RunningService } from "../../src/lib/service.js";
import type { PaymentsConfig } from "../../src/services/payments/config.js";
import {
  buildPaymentGateway,
  type LedgerEntry,
  type OrderSummary,
} from "../../src/simulators/payment-gateway/app.js";
import type { Payment } from "../../src/services/payments/payment.js";
import {
  INVENTORY_CONSUMER,
  ORDERS_CONSUMER,
  definition,
  internalsOf,
} from "../../src/services/payments/service.js";
import { deadLettersOf, theDeadLetterOf } from "../helpers/dead-letters.js";
import { eventually } from "../helpers/eventually.js";
import { orderPlacedData } from "../helpers/messaging.js";
import { connectTo, startNatsServer, type NatsServer } from "../helpers/nats.js";
import { AUTH_ENV, operatorFetch } from "../helpers/auth.js";

const TIMEOUT_MS = 400;
const HALF_OPEN_MS = 800;

/** Every event of a stream, read from the start by an ordered consumer; waits are event-driven. */
class EventLog {
  readonly events: Envelope[] = [];
  #waiters = new Set<() => void>();
  #stop: (() => void) | undefined;

  static async open(js: JetStreamClient, stream: string): Promise<EventLog> {
    const log = new EventLog();
    const consumer = await js.consumers.get(stream);
    const messages = await consumer.consume();
    log.#stop = () => void messages.close();
    void (async () => {
      for await (const m of messages) {
        log.events.push(decodeEvent(m.data));
        for (const w of log.#waiters) w();
      }
    })();
    return log;
  }

  of<T extends EventType>(type: T, orderId?: string): Envelope<T>[] {
    return this.events.filter(
      (e) => e.type === type && (orderId === undefined || e.aggregate_id === orderId),
    ) as Envelope<T>[];
  }

  /** Resolves once `cond` holds for the events seen so far; rejects after `timeoutMs`. */
  waitUntil(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!cond()) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }

  /** Resolves with the one event of `type` for `orderId`. */
  async one<T extends EventType>(type: T, orderId: string): Promise<Envelope<T>> {
    await this.waitUntil(`${type} for ${orderId}`, () => this.of(type, orderId).length > 0);
    return this.of(type, orderId)[0]!;
  }

  close(): void {
    this.#stop?.();
  }
}

/** Resolves once `dep` has gone through `states` in order (from now on). */
function breakerSequence(
  dep: { onStateChange(fn: (s: BreakerState) => void): () => void },
  states: BreakerState[],
  timeoutMs = 15_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let i = 0;
    const timer = setTimeout(() => {
      off();
      reject(new Error(`breaker did not go through ${states.join(" → ")} (reached step ${i})`));
    }, timeoutMs);
    const off = dep.onStateChange((s) => {
      if (s === states[i]) i++;
      if (i === states.length) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

const newOrderId = (tag: string) => `${tag}-${randomUUID().slice(0, 8)}`;

void describe("payments service", () => {
  let nats: NatsServer;
  let gw: FastifyInstance;
  let svc: RunningService<PaymentsConfig & CommonConfig>;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let publisher: Publisher;
  /** Writes StockReserved at version 1, like an inventory pinned with EVENT_VERSIONS=StockReserved=1. */
  let v1Publisher: Publisher;
  let payments: EventLog;

  before(async () => {
    nats = await startNatsServer();
    gw = buildPaymentGateway();
    const gwUrl = await gw.listen({ host: "127.0.0.1", port: 0 });
    svc = await startService(definition, {
      ...AUTH_ENV,
      NATS_URL: nats.url,
      PORT: "0",
      LOG_LEVEL: process.env.LOG_LEVEL ?? "silent",
      PAYMENT_GATEWAY_URL: gwUrl,
      GATEWAY_TIMEOUT_MS: String(TIMEOUT_MS),
      GATEWAY_RETRIES: "2",
      GATEWAY_RETRY_INITIAL_MS: "20",
      GATEWAY_RETRY_MAX_MS: "100",
      BREAKER_THRESHOLD: "5",
      BREAKER_HALF_OPEN_MS: String(HALF_OPEN_MS),
      // Few, fast attempts: a consumer that kept pulling through an outage would reach the DLQ in well
      // under a second, so surviving a longer outage shows that nothing was burned.
      MAX_ATTEMPTS: "3",
      RETRY_INITIAL_MS: "50",
      RETRY_MAX_MS: "200",
      DRAIN_TIMEOUT_MS: "5000",
    });
    nc = await connectTo(nats);
    const js = jetstream(nc);
    jsm = await jetstreamManager(nc);
    publisher = new Publisher(js);
    v1Publisher = new Publisher(js, { versions: EventVersions.parse("StockReserved=1", undefined) });
    payments = await EventLog.open(js, "PAYMENTS");
  });

  after(async () => {
    payments?.close();
    await svc?.stop();
    await nc?.close();
    if (gw) {
      // Requests the client aborted can leave connections that an ordinary close waits ~60 s for.
      const closing = gw.close();
      gw.server.closeAllConnections();
      await closing;
    }
    await nats?.cleanup();
  });

  /** The order's OrderPlaced (payments charges only orders that exist), then its StockReserved. */
  const reserve = async (
    orderId: string,
    o: {
      customerId?: string;
      total?: number;
      copy?: string;
      expiresAt?: string | null;
      writeVersion1?: boolean;
    } = {},
  ) => {
    await publisher.publish(
      makeEvent(
        "OrderPlaced",
        {
          ...orderPlacedData(orderId),
          customerId: o.customerId ?? "cus_42",
          items: [{ sku: "sku-1", quantity: 1, unitPrice: o.total ?? 1250 }],
          total: o.total ?? 1250,
        },
        { aggregateId: orderId, source: "orders" },
      ),
    );
    return (o.writeVersion1 ? v1Publisher : publisher).publish(
      makeEvent(
        "StockReserved",
        {
          orderId,
          customerId: o.customerId ?? "cus_42",
          items: [{ sku: "sku-1", quantity: 2 }],
          total: o.total ?? 1250,
          currency: "EUR",
          expiresAt: o.expiresAt ?? null,
        },
        { aggregateId: orderId, source: "inventory", idSuffix: o.copy },
      ),
    );
  };
  const cancel = (orderId: string, copy?: string) =>
    publisher.publish(
      makeEvent(
        "OrderCancelled",
        { orderId, reason: "timeout" },
        { aggregateId: orderId, source: "orders", idSuffix: copy },
      ),
    );
  const summary = async (orderId: string): Promise<OrderSummary | undefined> => {
    const res = await gw.inject({ method: "GET", url: "/v1/ledger/summary", query: { orderId } });
    return res.json<{ orders: OrderSummary[] }>().orders[0];
  };
  const ledger = async (orderId: string): Promise<LedgerEntry[]> => {
    const res = await gw.inject({ method: "GET", url: "/v1/ledger", query: { orderId } });
    return res.json<{ entries: LedgerEntry[] }>().entries;
  };
  const faults = (f: Record<string, unknown>) =>
    gw.inject({ method: "PUT", url: "/admin/faults", payload: f });
  const state = async (orderId: string): Promise<{ status: number; body: Payment & { orderId: string } }> => {
    const res = await operatorFetch(`${svc.url}/payments/${orderId}`);
    return { status: res.status, body: (await res.json()) as Payment & { orderId: string } };
  };
  /** Resolves once the consumer has delivered and acknowledged everything in its stream. */
  const drained = (stream: string, durable: string) =>
    eventually(
      async () => {
        const info = await jsm.consumers.info(stream, durable);
        assert.equal(info.num_pending + info.num_ack_pending, 0, `${durable} not drained`);
        return info;
      },
      { what: `${durable} drained` },
    );
  const gateway = () => internalsOf(svc.ctx)!.gateway.http;

  void it("charges on StockReserved and publishes PaymentCaptured", async () => {
    const orderId = newOrderId("cap");
    await reserve(orderId);
    const ev = await payments.one("PaymentCaptured", orderId);
    const [entry] = await ledger(orderId);
    assert.deepEqual(ev.data, { orderId, paymentId: entry!.id, amount: 1250, currency: "EUR" });
    assert.equal(ev.id, `${orderId}:PaymentCaptured`);
    assert.equal(ev.source, "payments");
    assert.equal(entry!.idempotencyKey, `charge:${orderId}`);
    assert.equal(entry!.customerId, "cus_42");
    const s = await state(orderId);
    assert.equal(s.status, 200);
    assert.equal(s.body.status, "captured");
    assert.equal(s.body.paymentId, entry!.id);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    assert.match(metrics, /payment_gateway_breaker_state\{[^}]*\} 0/);
    assert.match(
      metrics,
      /payment_process_duration_seconds_bucket\{[^}]*le="0.1"[^}]*status="captured"|status="captured"[^}]*le="0.1"/,
    );
    assert.match(metrics, /payment_process_duration_seconds_count\{[^}]*status="captured"[^}]*\} [1-9]/);
  });

  void it("publishes PaymentDeclined for a declined card", async () => {
    const orderId = newOrderId("dec");
    await reserve(orderId, { customerId: "decline-bob" });
    const ev = await payments.one("PaymentDeclined", orderId);
    assert.deepEqual(ev.data, { orderId, reason: "card_declined" });
    assert.equal((await state(orderId)).body.status, "declined");
    assert.equal(payments.of("PaymentCaptured", orderId).length, 0);
  });

  void it("answers 404 and 400 problem documents for unknown and invalid order ids", async () => {
    const missing = await operatorFetch(`${svc.url}/payments/nope-${randomUUID().slice(0, 8)}`);
    assert.equal(missing.status, 404);
    assert.match(missing.headers.get("content-type") ?? "", /application\/problem\+json/);
    assert.equal(((await missing.json()) as { status: number }).status, 404);
    const bad = await operatorFetch(`${svc.url}/payments/${encodeURIComponent("a.b")}`);
    assert.equal(bad.status, 400);
  });

  void it("charges once for duplicated StockReserved events delivered together", async () => {
    const orderId = newOrderId("dup");
    await Promise.all([reserve(orderId), reserve(orderId, { copy: "b" }), reserve(orderId, { copy: "c" })]);
    await payments.one("PaymentCaptured", orderId);
    await drained("INVENTORY", INVENTORY_CONSUMER);
    const s = await summary(orderId);
    assert.equal(s?.charges, 1);
    assert.equal(s?.captured, 1250);
    // The deterministic event id makes the three outcomes one message in the stream.
    const info = await jsm.streams.info("PAYMENTS", { subjects_filter: `payments.${orderId}.>` });
    assert.deepEqual(info.state.subjects, { [`payments.${orderId}.PaymentCaptured`]: 1 });
  });

  void it("finishes a charge left in flight by a crash with the same idempotency key", async () => {
    const orderId = newOrderId("crash");
    // A previous instance recorded `charging` and reached the gateway, then died before settling.
    const kv = await openBucket(nc, "payments");
    await kv.put(
      orderId,
      JSON.stringify({
        status: "charging",
        amount: 1250,
        currency: "EUR",
        customerId: "cus_42",
        updatedAt: new Date().toISOString(),
      } satisfies Payment),
    );
    const first = await gw.inject({
      method: "POST",
      url: "/v1/charges",
      headers: { "idempotency-key": `charge:${orderId}` },
      payload: { orderId, customerId: "cus_42", amount: 1250, currency: "EUR" },
    });
    assert.equal(first.statusCode, 201);
    await reserve(orderId);
    const ev = await payments.one("PaymentCaptured", orderId);
    assert.equal(ev.data.paymentId, first.json<{ id: string }>().id);
    assert.equal((await summary(orderId))?.charges, 1);
  });

  void it("refunds exactly once when the order is cancelled after the capture", async () => {
    const orderId = newOrderId("ref");
    await reserve(orderId);
    const captured = await payments.one("PaymentCaptured", orderId);
    await Promise.all([cancel(orderId), cancel(orderId, "again")]);
    const refunded = await payments.one("PaymentRefunded", orderId);
    await drained("ORDERS", ORDERS_CONSUMER);
    const entries = await ledger(orderId);
    const refund = entries.find((e) => e.kind === "refund");
    assert.deepEqual(refunded.data, {
      orderId,
      paymentId: captured.data.paymentId,
      refundId: refund!.id,
      amount: 1250,
      currency: "EUR",
    });
    assert.equal(refund!.idempotencyKey, `refund:${orderId}`);
    const s = await summary(orderId);
    assert.deepEqual([s?.charges, s?.refunds, s?.net], [1, 1, 0]);
    assert.equal((await state(orderId)).body.status, "refunded");
    // A late duplicate StockReserved changes nothing.
    await reserve(orderId, { copy: "late" });
    await drained("INVENTORY", INVENTORY_CONSUMER);
    assert.deepEqual([(await summary(orderId))?.charges, (await summary(orderId))?.net], [1, 0]);
  });

  void it("charges nothing when the order is cancelled before the stock is reserved", async () => {
    const orderId = newOrderId("early");
    await cancel(orderId);
    await eventually(async () => assert.equal((await state(orderId)).body.status, "cancelled"), {
      what: `payment of ${orderId} cancelled`,
    });
    await reserve(orderId);
    await drained("INVENTORY", INVENTORY_CONSUMER);
    assert.deepEqual(await ledger(orderId), []);
    assert.equal(payments.of("PaymentCaptured", orderId).length, 0);
    assert.equal(payments.of("PaymentDeclined", orderId).length, 0);
    assert.equal((await state(orderId)).body.status, "cancelled");
  });

  void it("charges nothing for a reservation that lapsed (StockReserved expiresAt in the past); charges one written at version 1 (no expiry)", async () => {
    const lapsed = newOrderId("lapsed");
    await reserve(lapsed, { expiresAt: new Date(Date.now() - 1_000).toISOString() });
    await eventually(async () => assert.equal((await state(lapsed)).body.status, "cancelled"), {
      what: `payment of ${lapsed} cancelled`,
    });
    await drained("INVENTORY", INVENTORY_CONSUMER);
    assert.deepEqual(await ledger(lapsed), []);
    assert.equal(payments.of("PaymentCaptured", lapsed).length, 0);
    assert.equal(payments.of("PaymentDeclined", lapsed).length, 0);
    // A future expiry is charged as usual.
    const open = newOrderId("open");
    await reserve(open, { expiresAt: new Date(Date.now() + 60_000).toISOString() });
    await payments.one("PaymentCaptured", open);
    assert.equal((await ledger(open)).length, 1);
    // Version 1 (as a producer pinned with EVENT_VERSIONS=StockReserved=1 writes it): no expiresAt on the wire;
    // upcast to expiresAt null, charged.
    const v1 = newOrderId("v1");
    await reserve(v1, { expiresAt: new Date(Date.now() - 1_000).toISOString(), writeVersion1: true });
    const stored = await jsm.streams.getMessage("INVENTORY", {
      last_by_subj: `inventory.${v1}.StockReserved`,
    });
    const wire = stored!.json<{ version: number; data: Record<string, unknown> }>();
    assert.equal(wire.version, 1);
    assert.equal("expiresAt" in wire.data, false);
    await payments.one("PaymentCaptured", v1);
    assert.equal((await ledger(v1)).length, 1);
  });

  void it("pauses both consumers during a gateway outage and completes every order after it", async () => {
    // One order captured before the outage and cancelled during it: its refund must wait too.
    const refundOrder = newOrderId("out-ref");
    await reserve(refundOrder);
    await payments.one("PaymentCaptured", refundOrder);

    const dep = gateway();
    const open = breakerSequence(dep, ["open"]);
    // Open, a failed probe at half-open, open again: the outage outlives the consumers' max attempts.
    const reopened = breakerSequence(dep, ["open", "half-open", "open"]);
    await faults({ outage: true });
    const orders = Array.from({ length: 6 }, (_, i) => newOrderId(`out${i}`));
    await Promise.all(orders.map((o) => reserve(o)));
    await open;
    assert.equal(svc.ctx.runners.get(INVENTORY_CONSUMER)!.paused, true);
    assert.equal(svc.ctx.runners.get(ORDERS_CONSUMER)!.paused, true);
    assert.match(
      await (await fetch(`${svc.url}/metrics`)).text(),
      /payment_gateway_breaker_state\{[^}]*\} 1/,
    );
    assert.equal((await fetch(`${svc.url}/ready`)).status, 200, "readiness ignores the breaker");
    await cancel(refundOrder);

    await reopened;
    assert.equal(svc.ctx.runners.get(INVENTORY_CONSUMER)!.paused, true);
    assert.deepEqual(await deadLettersOf(jsm, [...orders, refundOrder]), []);
    for (const o of orders) assert.deepEqual(await ledger(o), [], "nothing charged during the outage");

    const closed = breakerSequence(dep, ["closed"]);
    await faults({ outage: false });
    await closed;
    await payments.waitUntil("every outage order captured", () =>
      orders.every((o) => payments.of("PaymentCaptured", o).length === 1),
    );
    await payments.one("PaymentRefunded", refundOrder);
    const info = await drained("INVENTORY", INVENTORY_CONSUMER);
    assert.equal(svc.ctx.runners.get(INVENTORY_CONSUMER)!.paused, false);
    assert.equal(svc.ctx.runners.get(ORDERS_CONSUMER)!.paused, false);
    assert.deepEqual(await deadLettersOf(jsm, [...orders, refundOrder]), []);
    // Parked messages are never redelivered. At most one message can have been nak'd before the breaker
    // opened: the first call's attempts (3) are below the threshold (5), any second call reaches it.
    assert.ok(info.num_redelivered <= 1, `num_redelivered ${info.num_redelivered}`);
    for (const o of orders) assert.equal((await summary(o))?.charges, 1);
    assert.equal((await summary(refundOrder))?.net, 0);
    assert.match(
      await (await fetch(`${svc.url}/metrics`)).text(),
      /payment_gateway_breaker_state\{[^}]*\} 0/,
    );
  });

  void it("captures exactly once per order when the gateway answers slower than the client timeout", async () => {
    await faults({ latencyMs: TIMEOUT_MS + 300 });
    const orders = Array.from({ length: 3 }, (_, i) => newOrderId(`slow${i}`));
    await Promise.all(orders.map((o) => reserve(o)));
    // The gateway records each charge, but the client gives up before the answer arrives.
    await eventually(
      async () => {
        for (const o of orders) assert.equal((await summary(o))?.charges, 1);
      },
      { what: "one charge per slow order recorded at the gateway" },
    );
    assert.equal(orders.filter((o) => payments.of("PaymentCaptured", o).length > 0).length, 0);
    await faults({ latencyMs: 0 });
    await payments.waitUntil("every slow order captured", () =>
      orders.every((o) => payments.of("PaymentCaptured", o).length === 1),
    );
    for (const o of orders) {
      const entries = await ledger(o);
      assert.equal(entries.length, 1, "the retries replayed the stored charge");
      assert.equal(payments.of("PaymentCaptured", o)[0]!.data.paymentId, entries[0]!.id);
    }
  });

  void it("dead-letters a charge the gateway rejects with a 4xx", async () => {
    const orderId = newOrderId("rej");
    // The key was used for a different charge: the gateway answers 422, which retrying cannot fix.
    await gw.inject({
      method: "POST",
      url: "/v1/charges",
      headers: { "idempotency-key": `charge:${orderId}` },
      payload: { orderId, customerId: "cus_42", amount: 1, currency: "EUR" },
    });
    await reserve(orderId);
    const dl = await theDeadLetterOf(jsm, orderId);
    assert.equal(dl.consumer, INVENTORY_CONSUMER);
    assert.equal(dl.code, "UPSTREAM_REJECTED");
    assert.equal(dl.attempts, 1);
    assert.equal(gateway().state, "closed", "a 4xx does not count against the breaker");
  });

  void it("fails closed when the gateway's answer is not about the charge: dead letter, no PaymentCaptured, a metric", async () => {
    const cases = [
      { tamper: { amountDelta: -1 }, field: "amount" },
      { tamper: { currency: "USD" }, field: "currency" },
      { tamper: { orderId: "ord_someone_else" }, field: "orderId" },
    ];
    for (const c of cases) {
      const orderId = newOrderId(`lie-${c.field}`);
      await gw.inject({ method: "PUT", url: "/admin/tamper", payload: c.tamper });
      try {
        await reserve(orderId);
        const dl = await theDeadLetterOf(jsm, orderId);
        assert.equal(dl.consumer, INVENTORY_CONSUMER, c.field);
        assert.equal(dl.code, "GATEWAY_RESPONSE_MISMATCH", c.field);
        assert.equal(dl.attempts, 1, `${c.field}: not retried`);
        assert.match(dl.error, new RegExp(c.field), c.field);
      } finally {
        await gw.inject({ method: "PUT", url: "/admin/tamper", payload: {} });
      }
      // The handler failed before any publish, and the dead letter was written after it failed.
      assert.deepEqual(
        payments.of("PaymentCaptured", orderId),
        [],
        `${c.field}: nothing captured is announced`,
      );
      assert.deepEqual(payments.of("PaymentDeclined", orderId), [], c.field);
      // The gateway did charge (its ledger keeps the truth): an operator reconciles it from the dead letter.
      assert.equal((await ledger(orderId))[0]?.amount, 1250, c.field);
      assert.notEqual((await state(orderId)).body.status, "captured", c.field);
    }
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    for (const c of cases)
      assert.match(
        metrics,
        new RegExp(`shopstream_payments_gateway_mismatch_total\\{[^}]*field="${c.field}"[^}]*\\} 1`),
      );
    // An honest answer again: the next charge is captured.
    const next = newOrderId("honest");
    await reserve(next);
    assert.equal((await payments.one("PaymentCaptured", next)).data.amount, 1250);
  });
});
