/**
 * Notifications: the e-mail content (pure) and the handler's idempotency and PII hygiene, with fakes
 * for the store, the mail provider, the publisher and the ORDERS stream.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import type { JetStreamManager } from "@nats-io/jetstream";
import { trace } from "@opentelemetry/api";
import { encodeEvent } from "../../src/lib/events/codec.js";
import { makeEvent, type Envelope } from "../../src/lib/events/envelope.js";
import type { EventData } from "../../src/lib/events/catalog.js";
import type { HandlerContext } from "../../src/lib/messaging/consumer.js";
import { ConcurrencyError, type Publisher } from "../../src/lib/messaging/publisher.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import {
  NotificationKindConflictError,
  notificationHandlers,
} from "../../src/services/notifications/handlers.js";
import type { Mailer } from "../../src/services/notifications/mailer.js";
import {
  cancelledMail,
  confirmedMail,
  formatAmount,
  kindOf,
  mailKey,
  type SentNotification,
} from "../../src/services/notifications/notification.js";
import { newDataKey, seal, type DataKey } from "../../src/lib/pii/seal.js";
import { revealWith } from "../../src/lib/pii/personal-data.js";

const placed: EventData<"OrderPlaced"> = {
  orderId: "o1",
  customerId: "cus_1",
  email: "ada@example.com",
  items: [{ sku: "sku-1", quantity: 2, unitPrice: 625 }],
  total: 1250,
  currency: "EUR",
  placedAt: "2030-01-01T00:00:00.000Z",
  timeoutAt: "2030-01-01T00:00:30.000Z",
};

void describe("notification content", () => {
  void it("maps events to kinds and keys", () => {
    assert.equal(kindOf("OrderConfirmed"), "order_confirmed");
    assert.equal(kindOf("OrderCancelled"), "order_cancelled");
    assert.equal(mailKey("o1", "order_cancelled"), "o1:order_cancelled");
  });

  void it("formats amounts in minor units", () => {
    assert.equal(formatAmount(1250, "EUR"), "12.50 EUR");
    assert.equal(formatAmount(5, "USD"), "0.05 USD");
    assert.equal(formatAmount(100_000, "GBP"), "1000.00 GBP");
  });

  void it("builds deterministic e-mails without the address", () => {
    const c = confirmedMail(placed, { orderId: "o1", paymentId: "ch_1", total: 1250, currency: "EUR" });
    assert.deepEqual(
      c,
      confirmedMail(placed, { orderId: "o1", paymentId: "ch_1", total: 1250, currency: "EUR" }),
    );
    assert.match(c.subject, /o1 is confirmed/);
    assert.match(c.text, /2 × sku-1/);
    assert.match(c.text, /12\.50 EUR/);
    const x = cancelledMail(placed, { orderId: "o1", reason: "out_of_stock" });
    assert.match(x.subject, /o1 was cancelled/);
    assert.match(x.text, /out of stock/);
    for (const m of [c, x]) assert.doesNotMatch(m.subject + m.text, /ada@example\.com/);
  });
});

void describe("notifications handler", () => {
  const confirmedO1 = () =>
    makeEvent(
      "OrderConfirmed",
      { orderId: "o1", paymentId: "ch_1", total: 1250, currency: "EUR" },
      { aggregateId: "o1", source: "orders" },
    );
  const cancelledO1 = (reason: "out_of_stock" | "timeout" | "customer_request") =>
    makeEvent("OrderCancelled", { orderId: "o1", reason }, { aggregateId: "o1", source: "orders" });

  function harness() {
    // The NOTIFICATIONS stream: an order subject's NotificationSent records, each with its sequence; an append
    // succeeds only when it expects the subject's last sequence. NotificationWithheld records likewise, on their own
    // subject (the sequence is the stream's, shared by both).
    const records = new Map<string, { seq: number; e: Envelope<"NotificationSent"> }[]>();
    let seq = 0;
    const lastSeqOf = (o: string) => records.get(o)?.at(-1)?.seq ?? 0;
    const withheld = new Map<string, { seq: number; e: Envelope<"NotificationWithheld"> }[]>();
    const lastWithheldSeqOf = (o: string) => withheld.get(o)?.at(-1)?.seq ?? 0;
    // The customer's data key (the key bucket): the OrderPlaced carries the address sealed under it.
    const keys: { current: DataKey | null } = { current: newDataKey() };
    const sends: { to: string; key: string }[] = [];
    const published: Envelope[] = [];
    const conflicts: string[] = [];
    const lines: string[] = [];
    const store = {
      sent: async (o: string): Promise<{ sent: SentNotification[]; lastSeq: number }> => ({
        sent: (records.get(o) ?? []).map((r) => ({ ...r.e.data, sentAt: r.e.timestamp })),
        lastSeq: lastSeqOf(o),
      }),
      withheld: async (o: string) => ({
        kinds: (withheld.get(o) ?? []).map((r) => r.e.data.kind),
        lastSeq: lastWithheldSeqOf(o),
      }),
    };
    const personalData = {
      reveal: async (customerId: string, stored: string) => revealWith(keys.current, customerId, stored),
    };
    const mailer = {
      send: async (to: string, orderId: string, kind: "order_confirmed" | "order_cancelled") => {
        sends.push({ to, key: mailKey(orderId, kind) });
        return "msg_1";
      },
    } as unknown as Mailer;
    const publisher = {
      publish: async (e: Envelope, o: { expectLastSubjectSequence?: number } = {}) => {
        assert.equal(typeof o.expectLastSubjectSequence, "number", `${e.type} is a conditional append`);
        const subject = `notifications.${e.aggregate_id}.${e.type}`;
        if (e.type === "NotificationWithheld") {
          if (lastWithheldSeqOf(e.aggregate_id) !== o.expectLastSubjectSequence) {
            conflicts.push(e.id);
            throw new ConcurrencyError(subject, o.expectLastSubjectSequence!);
          }
          withheld.set(e.aggregate_id, [
            ...(withheld.get(e.aggregate_id) ?? []),
            { seq: ++seq, e: e as Envelope<"NotificationWithheld"> },
          ]);
          published.push(e);
          return;
        }
        if (lastSeqOf(e.aggregate_id) !== o.expectLastSubjectSequence) {
          conflicts.push(e.id);
          throw new ConcurrencyError(subject, o.expectLastSubjectSequence!);
        }
        records.set(e.aggregate_id, [
          ...(records.get(e.aggregate_id) ?? []),
          { seq: ++seq, e: e as Envelope<"NotificationSent"> },
        ]);
        published.push(e);
      },
    } as unknown as Publisher;
    const orderPlaced = makeEvent(
      "OrderPlaced",
      { ...placed, email: seal(keys.current!, placed.customerId, placed.email) },
      { aggregateId: "o1", source: "orders" },
    );
    let directGets = 0;
    const jsm = {
      direct: {
        getMessage: async (stream: string, q: { seq: number; next_by_subj: string }) => {
          directGets++;
          assert.deepEqual([stream, q], ["ORDERS", { seq: 1, next_by_subj: "orders.o1" }]);
          return { data: encodeEvent(orderPlaced) };
        },
      },
    } as unknown as JetStreamManager;
    const logger = createLogger({
      service: "notifications",
      level: "debug",
      destination: new Writable({
        write(chunk: Buffer, _enc, cb) {
          lines.push(chunk.toString());
          cb();
        },
      }),
    });
    const handlers = notificationHandlers({
      store,
      personalData,
      mailer,
      publisher,
      jsm,
      source: "notifications",
    });
    const ctx: HandlerContext = {
      attempt: 1,
      subject: "orders.o1",
      streamSequence: 2,
      logger: logger.child({ order_id: "o1" }),
      span: trace.getTracer("test").startSpan("t"),
      working: () => undefined,
    };
    return {
      handlers,
      ctx,
      sends,
      published,
      conflicts,
      records,
      withheld,
      keys,
      lines,
      orderPlaced,
      directGets: () => directGets,
    };
  }

  void it("sends once, appends NotificationSent once, and never logs the address", async () => {
    const h = harness();
    const event = confirmedO1();
    await h.handlers.OrderConfirmed!(event, h.ctx);
    // A redelivery finds the send recorded: no provider call, no append.
    await h.handlers.OrderConfirmed!(event, { ...h.ctx, attempt: 2 });
    assert.deepEqual(h.sends, [{ to: "ada@example.com", key: "o1:order_confirmed" }]);
    assert.equal(h.directGets(), 1, "the address read from the stream once");
    assert.equal(h.published.length, 1);
    assert.deepEqual(h.conflicts, []);
    for (const e of h.published) {
      assert.equal(e.id, "o1:NotificationSent:order_confirmed");
      assert.deepEqual(e.data, { orderId: "o1", kind: "order_confirmed", messageId: "msg_1" });
      assert.equal(e.causation_id, event.id);
    }
    assert.ok(h.lines.length > 0);
    assert.doesNotMatch(h.lines.join(""), /ada@example\.com/);
  });

  void it("takes the address from the OrderPlaced it received, without reading the stream", async () => {
    const h = harness();
    await h.handlers.OrderPlaced!(h.orderPlaced, h.ctx);
    const event = cancelledO1("out_of_stock");
    await h.handlers.OrderCancelled!(event, h.ctx);
    assert.deepEqual(h.sends, [{ to: "ada@example.com", key: "o1:order_cancelled" }]);
    assert.equal(h.directGets(), 0);
    assert.equal(h.published.length, 1);
  });

  void it("a first delivery of an outcome already recorded loses the append and reads the record back", async () => {
    const h = harness();
    const event = confirmedO1();
    await h.handlers.OrderConfirmed!(event, h.ctx);
    // Another copy, delivered as a first delivery (a reset consumer, another replica): the provider replays
    // the key, the append is refused, the record read back is the same kind: done without error.
    await h.handlers.OrderConfirmed!(event, h.ctx);
    assert.equal(h.sends.length, 2);
    assert.equal(new Set(h.sends.map((s) => s.key)).size, 1, "the same idempotency key");
    assert.deepEqual(h.conflicts, ["o1:NotificationSent:order_confirmed"]);
    assert.equal(h.published.length, 1);
  });

  void it("an order cancelled after its confirmation gets both e-mails, each recorded once", async () => {
    const h = harness();
    const confirmed = confirmedO1();
    const cancelled = cancelledO1("customer_request");
    await h.handlers.OrderConfirmed!(confirmed, h.ctx);
    // The first delivery expects an empty subject, loses to the confirmation's record, and appends after it.
    await h.handlers.OrderCancelled!(cancelled, h.ctx);
    assert.deepEqual(h.conflicts, ["o1:NotificationSent:order_cancelled"]);
    assert.deepEqual(
      h.records.get("o1")!.map((r) => r.e.data.kind),
      ["order_confirmed", "order_cancelled"],
    );
    // Redeliveries of either find their record: no provider call, no append.
    const before = h.sends.length;
    await h.handlers.OrderCancelled!(cancelled, { ...h.ctx, attempt: 2 });
    await h.handlers.OrderConfirmed!(confirmed, { ...h.ctx, attempt: 2 });
    // A first-delivery copy of the cancellation loses its append and finds its kind recorded: nothing appended.
    await h.handlers.OrderCancelled!(cancelled, h.ctx);
    assert.equal(h.sends.length, before + 1, "only the first-delivery copy calls the provider (same key)");
    assert.equal(h.records.get("o1")!.length, 2);
    assert.deepEqual(
      h.sends.map((x) => x.key),
      ["o1:order_confirmed", "o1:order_cancelled", "o1:order_cancelled"],
    );
    assert.match(cancelledMail(placed, cancelled.data).text, /you asked us to cancel it/);
  });

  void it("a confirmed order cancelled by anything but a request is a breach, not a second e-mail", async () => {
    const h = harness();
    await h.handlers.OrderConfirmed!(confirmedO1(), h.ctx);
    for (const attempt of [1, 2])
      await assert.rejects(
        h.handlers.OrderCancelled!(cancelledO1("timeout"), { ...h.ctx, attempt }),
        NotificationKindConflictError,
      );
    assert.deepEqual(
      h.records.get("o1")!.map((r) => r.e.data.kind),
      ["order_confirmed"],
    );
  });

  void it("a subject already holding two records that are not this kind is a breach, not retried", async () => {
    const h = harness();
    // Two cancellation records (a forged or buggy writer): an order has no room for a third e-mail.
    const rec = (seq: number, suffix: string) => ({
      seq,
      e: makeEvent(
        "NotificationSent",
        { orderId: "o1", kind: "order_cancelled", messageId: `m${seq}` },
        { aggregateId: "o1", source: "notifications", idSuffix: suffix },
      ),
    });
    h.records.set("o1", [rec(1, "a"), rec(2, "b")]);
    await assert.rejects(h.handlers.OrderConfirmed!(confirmedO1(), h.ctx), (err: unknown) => {
      assert.ok(err instanceof NotificationKindConflictError);
      assert.equal(err.retryable, false);
      return true;
    });
    assert.equal(h.records.get("o1")!.length, 2);
  });

  void it("opens the sealed address with the customer's key; the sealed form is what the stream holds", async () => {
    const h = harness();
    assert.match(h.orderPlaced.data.email, /^pii:v1:/);
    assert.doesNotMatch(h.orderPlaced.data.email, /ada@example\.com/);
    await h.handlers.OrderConfirmed!(confirmedO1(), h.ctx);
    assert.deepEqual(h.sends, [{ to: "ada@example.com", key: "o1:order_confirmed" }]);
  });

  void it("an erased customer: no e-mail, NotificationWithheld once (redeliveries append nothing more), no error", async () => {
    const h = harness();
    await h.handlers.OrderPlaced!(h.orderPlaced, h.ctx);
    h.keys.current = null; // DELETE /customers/cus_1/personal-data
    const event = cancelledO1("timeout");
    await h.handlers.OrderCancelled!(event, h.ctx);
    await h.handlers.OrderCancelled!(event, { ...h.ctx, attempt: 2 });
    assert.deepEqual(h.sends, []);
    assert.equal(h.published.length, 1);
    const e = h.published[0]!;
    assert.equal(e.type, "NotificationWithheld");
    assert.equal(e.id, "o1:NotificationWithheld:order_cancelled");
    assert.deepEqual(e.data, { orderId: "o1", kind: "order_cancelled", reason: "personal_data_erased" });
    assert.equal(e.causation_id, event.id);
    assert.deepEqual(h.conflicts, ["o1:NotificationWithheld:order_cancelled"]);
    assert.match(h.lines.join(""), /e-mail withheld/);
  });

  void it("an erased customer's order cancelled on request after its confirmation: both e-mails withheld, no conflict", async () => {
    const h = harness();
    await h.handlers.OrderPlaced!(h.orderPlaced, h.ctx);
    h.keys.current = null;
    await h.handlers.OrderConfirmed!(confirmedO1(), h.ctx);
    const cancel = cancelledO1("customer_request");
    await h.handlers.OrderCancelled!(cancel, h.ctx);
    await h.handlers.OrderCancelled!(cancel, { ...h.ctx, attempt: 2 }); // a redelivery appends nothing more
    assert.deepEqual(h.sends, []);
    assert.deepEqual(
      h.published.map((e) => e.id),
      ["o1:NotificationWithheld:order_confirmed", "o1:NotificationWithheld:order_cancelled"],
    );
    assert.deepEqual(
      (h.withheld.get("o1") ?? []).map((r) => r.e.data.kind),
      ["order_confirmed", "order_cancelled"],
    );
  });

  void it("an erased customer's order cancelled without a request after its confirmation is a forked order: refused", async () => {
    const h = harness();
    await h.handlers.OrderPlaced!(h.orderPlaced, h.ctx);
    h.keys.current = null;
    await h.handlers.OrderConfirmed!(confirmedO1(), h.ctx);
    await assert.rejects(
      h.handlers.OrderCancelled!(cancelledO1("timeout"), h.ctx),
      (err: Error) => err.name === "NotificationKindConflictError",
    );
    assert.deepEqual(
      h.published.map((e) => e.id),
      ["o1:NotificationWithheld:order_confirmed"],
    );
  });

  void it("a customer with a new key since the erasure: the old order's address stays unreadable", async () => {
    const h = harness();
    h.keys.current = newDataKey(); // erased, then a new order made a new key
    await h.handlers.OrderConfirmed!(confirmedO1(), h.ctx);
    assert.deepEqual(h.sends, []);
    assert.deepEqual(
      h.published.map((e) => e.type),
      ["NotificationWithheld"],
    );
  });
});
