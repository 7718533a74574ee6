/**
 * The notifications service against a real nats-server and the real mail provider simulator: one e-mail
 * per (order, kind) whatever the duplicates, NotificationSent published, a missing OrderPlaced goes to the
 * DLQ, and a mail provider outage pauses the consumer until it recovers.
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
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { startService, type CommonConfig, type RunningService } from "../../src/lib/service.js";
import type { NotificationsConfig } from "../../src/services/notifications/config.js";
import { buildMailProvider, type StoredMessage } from "../../src/simulators/mail-provider/app.js";
import { ORDERS_CONSUMER, definition, internalsOf } from "../../src/services/notifications/service.js";
import { deadLettersOf, theDeadLetterOf } from "../helpers/dead-letters.js";
import { eventually } from "../helpers/eventually.js";
import { connectTo, startNatsServer, type NatsServer } from "../helpers/nats.js";
import { AUTH_ENV, operatorFetch } from "../helpers/auth.js";
import { openBucket } from "../../src/lib/kv.js";
import { CUSTOMER_KEYS_BUCKET, CustomerKeys } from "../../src/lib/pii/keys.js";
import { PersonalData } from "../../src/lib/pii/personal-data.js";

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

void describe("notifications service", () => {
  let nats: NatsServer;
  let mail: FastifyInstance;
  let svc: RunningService<NotificationsConfig & CommonConfig>;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let publisher: Publisher;
  let sent: EventLog;

  before(async () => {
    nats = await startNatsServer();
    mail = buildMailProvider();
    const mailUrl = await mail.listen({ host: "127.0.0.1", port: 0 });
    svc = await startService(definition, {
      ...AUTH_ENV,
      NATS_URL: nats.url,
      PORT: "0",
      LOG_LEVEL: process.env.LOG_LEVEL ?? "silent",
      MAIL_PROVIDER_URL: mailUrl,
      MAIL_TIMEOUT_MS: "400",
      MAIL_RETRIES: "2",
      MAIL_RETRY_INITIAL_MS: "20",
      MAIL_RETRY_MAX_MS: "100",
      BREAKER_THRESHOLD: "5",
      BREAKER_HALF_OPEN_MS: String(HALF_OPEN_MS),
      MAX_ATTEMPTS: "3",
      RETRY_INITIAL_MS: "50",
      RETRY_MAX_MS: "200",
      DRAIN_TIMEOUT_MS: "5000",
    });
    nc = await connectTo(nats);
    const js = jetstream(nc);
    jsm = await jetstreamManager(nc);
    publisher = new Publisher(js);
    sent = await EventLog.open(js, "NOTIFICATIONS");
  });

  after(async () => {
    sent?.close();
    await svc?.stop();
    await nc?.close();
    if (mail) {
      // Requests the client aborted can leave connections that an ordinary close waits ~60 s for.
      const closing = mail.close();
      mail.server.closeAllConnections();
      await closing;
    }
    await nats?.cleanup();
  });

  const emailOf = (orderId: string) => `${orderId.toLowerCase()}@example.com`;
  /** Publishes the order's OrderPlaced (customer `cus_42` and a plain address unless given). */
  const place = (
    orderId: string,
    customer: { customerId: string; email: string } = { customerId: "cus_42", email: emailOf(orderId) },
  ) =>
    publisher.publish(
      makeEvent(
        "OrderPlaced",
        {
          orderId,
          ...customer,
          items: [{ sku: "sku-1", quantity: 2, unitPrice: 625 }],
          total: 1250,
          currency: "EUR",
          placedAt: new Date().toISOString(),
          timeoutAt: new Date(Date.now() + 30_000).toISOString(),
        },
        { aggregateId: orderId, source: "orders" },
      ),
    );
  const confirm = (orderId: string, copy?: string) =>
    publisher.publish(
      makeEvent(
        "OrderConfirmed",
        { orderId, paymentId: "ch_1", total: 1250, currency: "EUR" },
        { aggregateId: orderId, source: "orders", idSuffix: copy },
      ),
    );
  const cancel = (orderId: string, copy?: string) =>
    publisher.publish(
      makeEvent(
        "OrderCancelled",
        { orderId, reason: "payment_declined" },
        { aggregateId: orderId, source: "orders", idSuffix: copy },
      ),
    );
  const messages = async (orderId: string): Promise<StoredMessage[]> => {
    const res = await mail.inject({ method: "GET", url: "/v1/messages", query: { orderId } });
    return res.json<{ messages: StoredMessage[] }>().messages;
  };
  const drained = () =>
    eventually(
      async () => {
        const info = await jsm.consumers.info("ORDERS", ORDERS_CONSUMER);
        assert.equal(info.num_pending + info.num_ack_pending, 0, "consumer not drained");
        return info;
      },
      { what: `${ORDERS_CONSUMER} drained` },
    );
  const notified = (orderId: string, kind: string) =>
    sent.waitUntil(`NotificationSent ${kind} for ${orderId}`, () =>
      sent.of("NotificationSent", orderId).some((e) => e.data.kind === kind),
    );

  void it("e-mails the customer on OrderConfirmed and publishes NotificationSent", async () => {
    const orderId = newOrderId("conf");
    await place(orderId);
    await confirm(orderId);
    await notified(orderId, "order_confirmed");
    const [msg, ...rest] = await messages(orderId);
    assert.equal(rest.length, 0);
    assert.equal(msg!.to, emailOf(orderId));
    assert.deepEqual(msg!.tags, { orderId, kind: "order_confirmed" });
    assert.equal(msg!.idempotencyKey, `${orderId}:order_confirmed`);
    assert.match(msg!.text, /12\.50 EUR/);
    const [ev] = sent.of("NotificationSent", orderId);
    assert.deepEqual(ev!.data, { orderId, kind: "order_confirmed", messageId: msg!.id });
    assert.equal(ev!.id, `${orderId}:NotificationSent:order_confirmed`);
    const res = await operatorFetch(`${svc.url}/notifications/${orderId}`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { notifications: { kind: string; messageId: string }[] };
    assert.deepEqual(
      body.notifications.map((n) => [n.kind, n.messageId]),
      [["order_confirmed", msg!.id]],
    );
    assert.doesNotMatch(JSON.stringify(body), /@/, "the route does not expose the address");
    assert.equal(
      (await operatorFetch(`${svc.url}/notifications/none-${randomUUID().slice(0, 8)}`)).status,
      404,
    );
  });

  void it("sends one e-mail per (order, kind) despite duplicated events", async () => {
    const orderId = newOrderId("dup");
    await place(orderId);
    await Promise.all([cancel(orderId), cancel(orderId, "b"), cancel(orderId, "c")]);
    await notified(orderId, "order_cancelled");
    await drained();
    const msgs = await messages(orderId);
    assert.equal(msgs.length, 1);
    assert.equal(msgs[0]!.tags["kind"], "order_cancelled");
    assert.match(msgs[0]!.text, /payment was declined/);
    const info = await jsm.streams.info("NOTIFICATIONS", { subjects_filter: `notifications.${orderId}.>` });
    assert.deepEqual(info.state.subjects, { [`notifications.${orderId}.NotificationSent`]: 1 });
    // A redelivery much later (after the recorded send) changes nothing either.
    await cancel(orderId, "late");
    await drained();
    assert.equal((await messages(orderId)).length, 1);
  });

  void it("sends one e-mail when the provider answers slower than the client timeout", async () => {
    await mail.inject({ method: "PUT", url: "/admin/faults", payload: { latencyMs: 700 } });
    const orderId = newOrderId("slow");
    await place(orderId);
    await confirm(orderId);
    // The provider records the message, but the client gives up before the answer arrives.
    await eventually(async () => assert.equal((await messages(orderId)).length, 1), {
      what: `the mail provider to record the message of ${orderId}`,
    });
    assert.equal(sent.of("NotificationSent", orderId).length, 0);
    await mail.inject({ method: "PUT", url: "/admin/faults", payload: { latencyMs: 0 } });
    await notified(orderId, "order_confirmed");
    const msgs = await messages(orderId);
    assert.equal(msgs.length, 1, "the retry replayed the stored send");
    assert.equal(sent.of("NotificationSent", orderId)[0]!.data.messageId, msgs[0]!.id);
  });

  void it("dead-letters an outcome whose order has no OrderPlaced", async () => {
    const orderId = newOrderId("ghost");
    await confirm(orderId);
    const dl = await theDeadLetterOf(jsm, orderId);
    assert.equal(dl.consumer, ORDERS_CONSUMER);
    assert.equal(dl.code, "ORDER_PLACED_NOT_FOUND");
    assert.deepEqual(await messages(orderId), []);
  });

  void it("records the e-mail as NotificationSent only: no KV bucket; a second outcome is dead-lettered", async () => {
    const orderId = newOrderId("two");
    await place(orderId);
    await confirm(orderId);
    await notified(orderId, "order_confirmed");
    // An order with two outcomes (an invariant breach upstream): the second cannot be recorded.
    await cancel(orderId);
    const dl = await theDeadLetterOf(jsm, orderId);
    assert.equal(dl.code, "NOTIFICATION_KIND_CONFLICT");
    const info = await jsm.streams.info("NOTIFICATIONS", { subjects_filter: `notifications.${orderId}.>` });
    assert.deepEqual(info.state.subjects, { [`notifications.${orderId}.NotificationSent`]: 1 });
    const res = await operatorFetch(`${svc.url}/notifications/${orderId}`);
    const body = (await res.json()) as { notifications: { kind: string; sentAt: string }[] };
    assert.deepEqual(
      body.notifications.map((n) => n.kind),
      ["order_confirmed"],
    );
    assert.ok(!Number.isNaN(Date.parse(body.notifications[0]!.sentAt)));
    const streams: string[] = [];
    for await (const name of jsm.streams.names()) streams.push(name);
    assert.ok(!streams.includes("KV_notifications"), "no sent-record bucket is created");
  });

  void it("an erased customer's order, confirmed then cancelled on request: two NotificationWithheld, no e-mail, no dead letter", async () => {
    const orderId = newOrderId("erased");
    const customerId = `cus_${randomUUID().slice(0, 8)}`;
    const personal = new PersonalData(new CustomerKeys(await openBucket(nc, CUSTOMER_KEYS_BUCKET)));
    await place(orderId, { customerId, email: await personal.seal(customerId, emailOf(orderId)) });
    assert.equal(await personal.keys.erase(customerId), true);
    await confirm(orderId);
    const withheld = (kinds: string[]) =>
      sent.waitUntil(`NotificationWithheld ${kinds.join(", ")} for ${orderId}`, () =>
        kinds.every((k) => sent.of("NotificationWithheld", orderId).some((e) => e.data.kind === k)),
      );
    await withheld(["order_confirmed"]);
    await publisher.publish(
      makeEvent(
        "OrderCancelled",
        { orderId, reason: "customer_request" },
        { aggregateId: orderId, source: "orders" },
      ),
    );
    await withheld(["order_confirmed", "order_cancelled"]);
    await drained();
    const info = await jsm.streams.info("NOTIFICATIONS", { subjects_filter: `notifications.${orderId}.>` });
    assert.deepEqual(info.state.subjects, { [`notifications.${orderId}.NotificationWithheld`]: 2 });
    assert.deepEqual(await messages(orderId), [], "no e-mail");
    assert.deepEqual(await deadLettersOf(jsm, [orderId]), [], "nothing dead-lettered");
  });

  void it("pauses during a mail provider outage and sends everything once it recovers", async () => {
    const dep = internalsOf(svc.ctx)!.mailer.http;
    const runner = svc.ctx.runners.get(ORDERS_CONSUMER)!;
    const open = breakerSequence(dep, ["open"]);
    const reopened = breakerSequence(dep, ["open", "half-open", "open"]);
    await mail.inject({ method: "PUT", url: "/admin/faults", payload: { outage: true } });
    const orders = Array.from({ length: 6 }, (_, i) => newOrderId(`out${i}`));
    for (const o of orders) await place(o);
    await Promise.all(orders.map((o, i) => (i % 2 === 0 ? confirm(o) : cancel(o))));
    await open;
    assert.equal(runner.paused, true);
    assert.match(await (await fetch(`${svc.url}/metrics`)).text(), /mail_provider_breaker_state\{[^}]*\} 1/);
    await reopened;
    assert.equal(runner.paused, true);
    assert.deepEqual(await deadLettersOf(jsm, orders), []);

    const closed = breakerSequence(dep, ["closed"]);
    await mail.inject({ method: "PUT", url: "/admin/faults", payload: { outage: false } });
    await closed;
    await sent.waitUntil("every outage order notified", () =>
      orders.every((o) => sent.of("NotificationSent", o).length === 1),
    );
    const info = await drained();
    assert.equal(runner.paused, false);
    assert.deepEqual(await deadLettersOf(jsm, orders), []);
    assert.ok(info.num_redelivered <= 1, `num_redelivered ${info.num_redelivered}`);
    for (const [i, o] of orders.entries()) {
      const msgs = await messages(o);
      assert.equal(msgs.length, 1);
      assert.equal(msgs[0]!.tags["kind"], i % 2 === 0 ? "order_confirmed" : "order_cancelled");
    }
  });
});
