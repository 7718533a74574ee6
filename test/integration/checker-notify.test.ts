/**
 * The invariant checker shown bad notifications (I4), on a real nats-server with the real inventory and audit
 * services and the real mail-provider simulator, whose log records every e-mail posted to it
 * (test/helpers/checker-rig.ts); for the dead-letter excuse, the real notifications service as well.
 *
 * I4's one excuse for a terminal order without its e-mail is the notifications consumer's dead letter of the
 * terminal event that would have produced it. Any other DLQ entry of the order — here a poison message on its
 * subject, dead-lettered by every ORDERS consumer including notifications' own, carrying an `OrderConfirmed` type
 * header — excuses nothing.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { NOTIFICATIONS_CONSUMER, formatReport, type CheckReport } from "../../src/checker/checker.js";
import { listDeadLetters } from "../../src/lib/messaging/dlq.js";
import { ORDERS_CONSUMER } from "../../src/services/notifications/service.js";
import { startRig, verdict, verdictOf, type Rig } from "../helpers/checker-rig.js";

void describe("checker: I4 notify", () => {
  void describe("e-mails at the provider", () => {
    let rig: Rig;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      const line = [{ sku: "SKU-A" as const, quantity: 1 }];
      await rig.confirmedOrder("n-ok", line);
      // A second e-mail of the same kind, under another idempotency key.
      await rig.confirmedOrder("n-dup", line);
      await rig.sendMail("n-dup", "order_confirmed", "n-dup:order_confirmed:again");
      // Confirmed, and never e-mailed; nothing in the DLQ.
      await rig.place("n-missing", line);
      await rig.capture("n-missing");
      await rig.confirm("n-missing");
      // Confirmed and e-mailed, and told it was cancelled as well.
      await rig.confirmedOrder("n-wrong", line);
      await rig.sendMail("n-wrong", "order_cancelled");
      // Confirmed, never e-mailed, the e-mail withheld (the customer's personal data was erased): settled.
      await rig.place("n-withheld", line);
      await rig.capture("n-withheld");
      await rig.confirm("n-withheld");
      await rig.withhold("n-withheld", "order_confirmed");
      // Confirmed, never e-mailed, and withheld for the other outcome: excuses nothing.
      await rig.place("n-withheld-other", line);
      await rig.capture("n-withheld-other");
      await rig.confirm("n-withheld-other");
      await rig.withhold("n-withheld-other", "order_cancelled");
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports a second e-mail for one (order, kind) as duplicate-email", () => {
      assert.deepEqual(verdictOf(report, "n-dup"), ["I4 duplicate-email"], formatReport(report));
    });

    void it("reports a terminal order without its e-mail, and no dead letter, as missing-email", () => {
      assert.deepEqual(verdictOf(report, "n-missing"), ["I4 missing-email"], formatReport(report));
    });

    void it("reports an e-mail of the other outcome as wrong-kind-email", () => {
      assert.deepEqual(verdictOf(report, "n-wrong"), ["I4 wrong-kind-email"], formatReport(report));
    });

    void it("excuses a missing e-mail withheld for that outcome (NotificationWithheld), not for the other", () => {
      assert.deepEqual(verdictOf(report, "n-withheld"), [], formatReport(report));
      assert.deepEqual(verdictOf(report, "n-withheld-other"), ["I4 missing-email"], formatReport(report));
    });

    void it("reports nothing else", () => {
      assert.deepEqual(
        verdict(report),
        [
          "I4 duplicate-email n-dup",
          "I4 missing-email n-missing",
          "I4 missing-email n-withheld-other",
          "I4 wrong-kind-email n-wrong",
        ],
        formatReport(report),
      );
    });
  });

  void describe("dead letters", () => {
    let rig: Rig;
    let beforeWipe: CheckReport;
    let report: CheckReport;
    before(async () => {
      rig = await startRig({ notifications: true });
      const line = [{ sku: "SKU-A" as const, quantity: 1 }];
      // The provider refuses the address (400): notifications dead-letters this order's OrderConfirmed.
      await rig.place("n-dead", line, { email: "not-an-address" });
      await rig.capture("n-dead");
      await rig.confirm("n-dead");
      // A poison message on this order's subject, dead-lettered by every ORDERS consumer; then a good saga,
      // e-mailed by the notifications service.
      await rig.place("n-unrelated", line);
      await rig.poison("n-unrelated");
      await rig.capture("n-unrelated");
      await rig.confirm("n-unrelated");
      beforeWipe = await rig.check();
      // The e-mail is lost at the provider; the DLQ still holds the order's unrelated entries.
      await rig.wipeMailLog();
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("names the notifications service's real consumer", () => {
      assert.equal(NOTIFICATIONS_CONSUMER, ORDERS_CONSUMER);
    });

    void it("excuses a missing e-mail whose terminal event notifications dead-lettered", async () => {
      const dead = await listDeadLetters(rig.jsm, { consumer: NOTIFICATIONS_CONSUMER });
      assert.deepEqual(
        dead.filter((d) => d.subject === "orders.n-dead").map((d) => d.type),
        ["OrderConfirmed"],
        JSON.stringify(dead.map((d) => [d.subject, d.type, d.code, d.error])),
      );
      assert.deepEqual(verdictOf(report, "n-dead"), [], formatReport(report));
      assert.deepEqual(verdict(beforeWipe), [], formatReport(beforeWipe));
    });

    void it("does not excuse a missing e-mail with an unrelated dead letter of the same order", async () => {
      const dead = await listDeadLetters(rig.jsm, { limit: 1000 });
      const unrelated = dead.filter((d) => d.subject === "orders.n-unrelated");
      // Notifications' own consumer among them, with the terminal event's type on the poison: only the event
      // behind the entry tells it apart.
      assert.ok(
        unrelated.some((d) => d.consumer === NOTIFICATIONS_CONSUMER && d.type === "OrderConfirmed"),
        JSON.stringify(unrelated.map((d) => [d.consumer, d.type, d.code])),
      );
      assert.deepEqual(verdict(report), ["I4 missing-email n-unrelated"], formatReport(report));
    });
  });
});
