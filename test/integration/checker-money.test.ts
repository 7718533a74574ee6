/**
 * The invariant checker shown bad money (I2), on a real nats-server with the real inventory and audit services and
 * the real payment-gateway simulator, whose ledger records every charge and refund made to it
 * (test/helpers/checker-rig.ts). Each order below differs from a good one by one fault at the gateway, and is
 * reported as that fault's kind and nothing else.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { formatReport, type CheckReport } from "../../src/checker/checker.js";
import { startRig, verdict, verdictOf, type Rig } from "../helpers/checker-rig.js";

void describe("checker: I2 money", () => {
  let rig: Rig;
  let report: CheckReport;
  before(async () => {
    rig = await startRig();
    const line = [{ sku: "SKU-A" as const, quantity: 2 }];
    await rig.confirmedOrder("m-ok", line);

    // Captured twice: a second charge under another idempotency key (a retry that did not reuse its key).
    await rig.confirmedOrder("m-double", line);
    await rig.charge("m-double", rig.totalOf("m-double"), "charge:m-double:retry");

    // Confirmed although nothing was captured.
    await rig.place("m-free", line);
    await rig.confirm("m-free");
    await rig.notify("m-free", "order_confirmed");

    // Confirmed, captured, then partly refunded: the customer paid less than the total.
    await rig.confirmedOrder("m-partial", line);
    await rig.refund("m-partial", 100);

    // Cancelled after its capture (the timeout race), and never refunded.
    await rig.place("m-kept", line);
    await rig.capture("m-kept");
    await rig.cancel("m-kept", "timeout");
    await rig.notify("m-kept", "order_cancelled");

    // The same race, refunded in full: nothing wrong.
    await rig.place("m-refunded", line);
    await rig.capture("m-refunded");
    await rig.cancel("m-refunded", "timeout");
    await rig.refund("m-refunded", rig.totalOf("m-refunded"));
    await rig.notify("m-refunded", "order_cancelled");

    // Money taken for an order that was never placed.
    await rig.charge("m-ghost", 1234);

    report = await rig.check();
  });
  after(async () => {
    await rig?.stop();
  });

  void it("reports a double capture at the gateway as double-capture", () => {
    assert.deepEqual(verdictOf(report, "m-double"), ["I2 double-capture"], formatReport(report));
  });

  void it("reports a confirmed order without a capture as confirmed-without-capture", () => {
    assert.deepEqual(verdictOf(report, "m-free"), ["I2 confirmed-without-capture"], formatReport(report));
  });

  void it("reports a confirmed order netting less than its total as confirmed-net-mismatch", () => {
    assert.deepEqual(verdictOf(report, "m-partial"), ["I2 confirmed-net-mismatch"], formatReport(report));
  });

  void it("reports a cancelled order with a net capture as cancelled-with-net-capture", () => {
    assert.deepEqual(verdictOf(report, "m-kept"), ["I2 cancelled-with-net-capture"], formatReport(report));
  });

  void it("reports money captured for an order that does not exist as capture-without-order", () => {
    assert.deepEqual(verdictOf(report, "m-ghost"), ["I2 capture-without-order"], formatReport(report));
  });

  void it("reports nothing about a good order, nor about a cancelled capture refunded in full", () => {
    assert.deepEqual(
      verdict(report),
      [
        "I2 cancelled-with-net-capture m-kept",
        "I2 capture-without-order m-ghost",
        "I2 confirmed-net-mismatch m-partial",
        "I2 confirmed-without-capture m-free",
        "I2 double-capture m-double",
      ],
      formatReport(report),
    );
  });
});
