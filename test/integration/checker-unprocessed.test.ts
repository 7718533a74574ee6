/**
 * The invariant checker shown messages neither processed nor dead-lettered (I6), and the drain wait the checker
 * runs after (`waitForDrain`), on a real nats-server with the real inventory, audit and notifications services and
 * the real simulators (test/helpers/checker-rig.ts).
 *
 * Two ways a message is left: its consumer's service is down (the notifications service stopped; its durable keeps
 * what is published meanwhile, undelivered), and a consumer took a message and never settled it (delivered, not
 * acknowledged: a hung handler).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AckPolicy, jetstream } from "@nats-io/jetstream";
import { formatReport, waitForDrain, type CheckReport } from "../../src/checker/checker.js";
import { Streams } from "../../src/lib/events/catalog.js";
import { makeEvent } from "../../src/lib/events/envelope.js";
import { startRig, verdict, verdictOf, type Rig } from "../helpers/checker-rig.js";

void describe("checker: I6 no silent loss", () => {
  let rig: Rig;
  let report: CheckReport;
  before(async () => {
    rig = await startRig({ notifications: true });
    const line = [{ sku: "SKU-A" as const, quantity: 1 }];
    // Notifications e-mails this one itself.
    await rig.place("u-1", line);
    await rig.capture("u-1");
    await rig.confirm("u-1");
    await rig.stopNotifications();
    // Then it is down: this order's events wait in its durable (the e-mail is sent by hand, so I4 holds).
    await rig.confirmedOrder("u-2", line);
    // A consumer that took a PaymentCaptured and never acknowledged it.
    await rig.jsm.consumers.add(Streams.PAYMENTS, {
      durable_name: "hung",
      ack_policy: AckPolicy.Explicit,
      ack_wait: 600_000_000_000,
    });
    const m = await (await jetstream(rig.nc).consumers.get(Streams.PAYMENTS, "hung")).next();
    assert.ok(m, "the hung consumer got a message");
    report = await rig.check({ except: ["hung"] });
  });
  after(async () => {
    await rig?.stop();
  });

  void it("reports the durable of a stopped service, with messages not delivered, as unprocessed-message", () => {
    assert.deepEqual(verdictOf(report, "ORDERS/notifications-orders"), ["I6 unprocessed-message"]);
    const v = report.invariants.find((i) => i.id === "I6")!.violations;
    assert.match(
      v.find((x) => x.consumer === "ORDERS/notifications-orders")!.detail,
      /2 not delivered, 0 not acknowledged/,
    );
  });

  void it("reports a message delivered and never acknowledged as unprocessed-message", () => {
    assert.deepEqual(verdictOf(report, "PAYMENTS/hung"), ["I6 unprocessed-message"]);
    const v = report.invariants.find((i) => i.id === "I6")!.violations;
    assert.match(
      v.find((x) => x.consumer === "PAYMENTS/hung")!.detail,
      /1 not delivered, 1 not acknowledged/,
    );
  });

  void it("reports nothing else", () => {
    assert.deepEqual(
      verdict(report),
      ["I6 unprocessed-message ORDERS/notifications-orders", "I6 unprocessed-message PAYMENTS/hung"],
      formatReport(report),
    );
  });

  void it("waitForDrain gives up on a backlog, naming it, and passes once it is set aside", async () => {
    const stuck = await waitForDrain(rig.jsm, { timeoutMs: 200 });
    assert.equal(stuck.drained, false);
    assert.deepEqual(stuck.backlogs.map((b) => b.consumer).sort(), [
      "ORDERS/notifications-orders",
      "PAYMENTS/hung",
    ]);
    const rest = await waitForDrain(rig.jsm, {
      timers: ["orders-timeouts", "notifications-orders", "hung"],
      timeoutMs: 5_000,
    });
    assert.deepEqual([rest.drained, rest.backlogs], [true, []]);
  });
});

void describe("waitForDrain", () => {
  let rig: Rig;
  before(async () => {
    rig = await startRig();
  });
  after(async () => {
    await rig?.stop();
  });

  void it("returns once the work in flight has landed: inventory's reservation and every audit row", async () => {
    const placedAt = new Date();
    await rig.publisher.publish(
      makeEvent(
        "OrderPlaced",
        {
          orderId: "d-1",
          customerId: "cus-d-1",
          email: "d-1@example.com",
          items: [{ sku: "SKU-B", quantity: 4, unitPrice: 700 }],
          total: 2800,
          currency: "EUR",
          placedAt: placedAt.toISOString(),
          timeoutAt: new Date(placedAt.getTime() + 60_000).toISOString(),
        },
        { aggregateId: "d-1", source: "orders" },
      ),
    );
    // The audit is a projector without a durable: its progress is known from /audit/positions only.
    const r = await waitForDrain(rig.jsm, {
      timeoutMs: 10_000,
      auditUrl: rig.urls.audit,
      authorization: rig.authorization,
    });
    assert.equal(r.drained, true);
    // Inventory reserved (and published StockReserved), audit recorded both events: nothing was left in flight.
    const stock = await rig.stockOf("SKU-B");
    assert.deepEqual([stock.available, stock.reserved], [96, 4]);
    const rows = await rig.auditStore.db.query<{ event_id: string }>(
      `SELECT event_id FROM ${rig.auditStore.qualified} ORDER BY position`,
    );
    assert.deepEqual(rows.map((x) => x.event_id).sort(), ["d-1:OrderPlaced", "d-1:StockReserved"]);
  });
});
