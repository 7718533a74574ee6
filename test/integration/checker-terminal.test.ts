/**
 * The invariant checker shown good and bad states, on a real nats-server with the real inventory and audit
 * services and the real simulators (test/helpers/checker-rig.ts): a good state passes, and each bad state of I1
 * (terminal) is reported as its violation kind, for its order, and nothing else is.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { checkInvariants, formatReport, type CheckReport } from "../../src/checker/checker.js";
import { startRig, verdict, verdictOf, type Rig } from "../helpers/checker-rig.js";

void describe("checker: a good state", () => {
  let rig: Rig;
  before(async () => {
    rig = await startRig();
  });
  after(async () => {
    await rig?.stop();
  });

  void it("passes: confirmed and cancelled orders with every effect in place", async () => {
    await rig.confirmedOrder("good-1", [{ sku: "SKU-A", quantity: 2 }]);
    await rig.confirmedOrder("good-2", [
      { sku: "SKU-A", quantity: 1 },
      { sku: "SKU-SCARCE", quantity: 5 },
    ]);
    await rig.cancelledOrder("good-3", [{ sku: "SKU-B", quantity: 3 }]);
    const report = await rig.check({ accepted: ["good-1", "good-2", "good-3"] });
    assert.deepEqual(verdict(report), [], formatReport(report));
    assert.equal(report.ok, true);
    assert.deepEqual(report.orders, { total: 3, confirmed: 2, cancelled: 1, pending: 0, lost: 0 });
    assert.ok(report.invariants.every((i) => i.ok));
    // What the good state is made of, so "passes" is not "saw nothing": stock sold out, audited, e-mailed.
    assert.deepEqual(
      { ...(await rig.stockOf("SKU-SCARCE")), holds: undefined },
      { sku: "SKU-SCARCE", initial: 5, available: 0, reserved: 0, committed: 5, holds: undefined },
    );
    assert.ok(report.events >= 14, `${report.events} events`);
  });
});

void describe("checker: I1 terminal", () => {
  let rig: Rig;
  let report: CheckReport;
  before(async () => {
    rig = await startRig();
    await rig.confirmedOrder("t-ok", [{ sku: "SKU-A", quantity: 1 }]);
    // Placed (and reserved by inventory), then nothing: the saga never decided.
    await rig.place("t-stuck", [{ sku: "SKU-A", quantity: 1 }]);
    // Confirmed, then cancelled as well (inventory refuses to release a sale: its dead letter).
    await rig.confirmedOrder("t-two", [{ sku: "SKU-B", quantity: 1 }]);
    await rig.cancel("t-two", "timeout");
    report = await rig.check({ accepted: ["t-ok", "t-stuck", "t-two", "t-lost"] });
  });
  after(async () => {
    await rig?.stop();
  });

  void it("reports an accepted order with no terminal event as no-terminal", () => {
    assert.deepEqual(verdictOf(report, "t-stuck"), ["I1 no-terminal"], formatReport(report));
    assert.equal(report.orders.pending, 1);
  });

  void it("reports an order with two terminal events as two-terminals", () => {
    assert.deepEqual(verdictOf(report, "t-two"), ["I1 two-terminals"], formatReport(report));
  });

  void it("reports an accepted order missing from the ORDERS stream as lost", () => {
    assert.deepEqual(verdictOf(report, "t-lost"), ["I1 lost"], formatReport(report));
    assert.equal(report.orders.lost, 1);
  });

  void it("reports nothing else: the good order and the other invariants are clean", () => {
    assert.deepEqual(
      verdict(report),
      ["I1 lost t-lost", "I1 no-terminal t-stuck", "I1 two-terminals t-two"],
      formatReport(report),
    );
    assert.equal(report.ok, false);
  });

  void it("does not call an order stuck while it is younger than the pending grace", async () => {
    const lenient = await checkInvariants(rig.targets({ pendingGraceMs: 600_000 }));
    assert.deepEqual(verdictOf(lenient, "t-stuck"), []);
  });
});
