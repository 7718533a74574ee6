/**
 * The invariant checker on cancellations on request and refunds, on a real nats-server with the real inventory and
 * audit services and the real simulators (test/helpers/checker-rig.ts). An order cancelled after its confirmation
 * (CONFIRMED, then CANCELLED with reason customer_request) is legitimate when it nets zero at the gateway with one
 * recorded refund, its sold units are back in stock and the customer got the cancellation's e-mail; each order
 * below differs from that by one fault and is reported as that fault's kind and nothing else.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { formatReport, type CheckReport } from "../../src/checker/checker.js";
import { startRig, verdict, verdictOf, type Rig } from "../helpers/checker-rig.js";

void describe("checker: cancellations and refunds", () => {
  let rig: Rig;
  let report: CheckReport;
  const line = [{ sku: "SKU-A" as const, quantity: 2 }];
  before(async () => {
    rig = await startRig();

    // Good: confirmed, cancelled on request, refunded, units returned, both e-mails.
    await rig.cancelledAfterConfirmation("c-ok", line);

    // Cancelled after its confirmation by a timeout, not on request: a forked order (inventory keeps the sale).
    await rig.confirmedOrder("c-fork", [{ sku: "SKU-B", quantity: 1 }]);
    await rig.cancel("c-fork", "timeout");

    // Refunded twice under two idempotency keys (a retry that lost its key; the gateway refuses to refund more than
    // was captured, so the two halves net zero): payments refunds in full, once.
    await rig.cancelledAfterConfirmation("c-double", line, { refund: false });
    const half = rig.totalOf("c-double") / 2;
    await rig.refund("c-double", half);
    await rig.refund("c-double", half, "refund:c-double:again");

    // Refunded at the gateway with no PaymentRefunded on PAYMENTS: money moved unrecorded.
    await rig.cancelledAfterConfirmation("c-silent", line, { refund: false });
    await rig.refund("c-silent", rig.totalOf("c-silent"), undefined, { event: false });

    // Never told about the cancellation (only the confirmation's e-mail).
    await rig.cancelledAfterConfirmation("c-unmailed", line, { notify: false });

    // The sold units of a cancelled order still counted as sold: 2 units of SKU-SCARCE moved back to committed.
    await rig.cancelledAfterConfirmation("c-kept", [{ sku: "SKU-SCARCE", quantity: 2 }]);
    const scarce = await rig.stockOf("SKU-SCARCE");
    await rig.tamperStock("SKU-SCARCE", {
      available: scarce.available - 2,
      committed: scarce.committed + 2,
    });

    report = await rig.check();
  });
  after(async () => {
    await rig?.stop();
  });

  void it("accepts an order cancelled on request after its confirmation, refunded and returned", async () => {
    assert.deepEqual(verdictOf(report, "c-ok"), [], formatReport(report));
    const a = await rig.stockOf("SKU-A");
    assert.equal(a.committed, 0, "the sold units of every cancelled order are back");
    assert.deepEqual(Object.keys(a.returns ?? {}).sort(), ["c-double", "c-ok", "c-silent", "c-unmailed"]);
  });

  void it("reports a confirmed order cancelled by anything but a request as two-terminals", () => {
    assert.deepEqual(verdictOf(report, "c-fork"), ["I1 two-terminals"], formatReport(report));
  });

  void it("reports two refunds of one order as double-refund", () => {
    assert.deepEqual(verdictOf(report, "c-double"), ["I2 double-refund"], formatReport(report));
  });

  void it("reports a refund at the gateway without its PaymentRefunded as refund-unrecorded", () => {
    assert.deepEqual(verdictOf(report, "c-silent"), ["I2 refund-unrecorded"], formatReport(report));
  });

  void it("reports a cancellation after the confirmation without its e-mail as missing-email", () => {
    assert.deepEqual(verdictOf(report, "c-unmailed"), ["I4 missing-email"], formatReport(report));
  });

  void it("reports the sold units of a cancelled order still committed as committed-mismatch", () => {
    assert.deepEqual(verdictOf(report, "SKU-SCARCE"), ["I3 committed-mismatch"], formatReport(report));
  });

  void it("reports nothing else", () => {
    assert.deepEqual(
      verdict(report),
      [
        "I1 two-terminals c-fork",
        "I2 double-refund c-double",
        "I2 refund-unrecorded c-silent",
        "I3 committed-mismatch SKU-SCARCE",
        "I4 missing-email c-unmailed",
      ],
      formatReport(report),
    );
  });

  void it("reports a cancellation later than the window as cancel-after-window, and none within it", async () => {
    const strict = await rig.check({ cancelWindowMs: 0 });
    assert.ok(verdictOf(strict, "c-ok").includes("I1 cancel-after-window"), formatReport(strict));
    const lenient = await rig.check({ cancelWindowMs: 60_000 });
    assert.deepEqual(verdictOf(lenient, "c-ok"), [], formatReport(lenient));
  });
});
