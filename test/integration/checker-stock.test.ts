/**
 * The invariant checker shown bad stock (I3), on a real nats-server with the real inventory service serving its
 * figures from its own KV store, the real audit service and the real simulators (test/helpers/checker-rig.ts).
 *
 * An order confirmed although inventory rejected its reservation is built through the real service (inventory
 * rejects, then refuses to commit what it never held). States the real inventory never writes — an oversell,
 * figures that do not add up — are written into its `stock` bucket behind its back, as a lost compare-and-set or
 * an intruder would; the service then serves them as they are.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { formatReport, type CheckReport } from "../../src/checker/checker.js";
import { startRig, verdict, verdictOf, type Rig } from "../helpers/checker-rig.js";

/**
 * SKU-SCARCE has 5 units. `s-first` buys 3 (reserved, committed); `s-second` wants 3 more, is rejected by
 * inventory, and is confirmed anyway (captured, e-mailed): 6 units of confirmed orders against 3 committed.
 */
async function overbook(rig: Rig): Promise<void> {
  await rig.confirmedOrder("s-ok", [{ sku: "SKU-A", quantity: 2 }]);
  await rig.confirmedOrder("s-first", [{ sku: "SKU-SCARCE", quantity: 3 }]);
  await rig.place("s-second", [{ sku: "SKU-SCARCE", quantity: 3 }]);
  assert.equal((await rig.stockOf("SKU-SCARCE")).available, 2, "inventory rejected s-second");
  await rig.capture("s-second");
  await rig.confirm("s-second");
  await rig.notify("s-second", "order_confirmed");
}

void describe("checker: I3 stock", () => {
  void describe("an order confirmed without its stock", () => {
    let rig: Rig;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await overbook(rig);
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports committed stock that differs from the units of confirmed orders as committed-mismatch", async () => {
      assert.deepEqual(verdict(report), ["I3 committed-mismatch SKU-SCARCE"], formatReport(report));
      assert.match(
        report.invariants.find((i) => i.id === "I3")!.violations[0]!.detail,
        /committed 3, but CONFIRMED orders hold 6 units/,
      );
      const s = await rig.stockOf("SKU-SCARCE");
      assert.deepEqual([s.available, s.reserved, s.committed], [2, 0, 3]);
    });
  });

  void describe("an oversell", () => {
    let rig: Rig;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await overbook(rig);
      // What a lost compare-and-set would have left: both sales committed, one unit more than there was.
      await rig.tamperStock("SKU-SCARCE", { available: -1, reserved: 0, committed: 6 });
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports available < 0 as negative-available (the figures add up and match the orders)", () => {
      assert.deepEqual(verdict(report), ["I3 negative-available SKU-SCARCE"], formatReport(report));
    });
  });

  void describe("figures that do not add up", () => {
    let rig: Rig;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await rig.confirmedOrder("s-ok", [{ sku: "SKU-A", quantity: 2 }]);
      await rig.cancelledOrder("s-gone", [{ sku: "SKU-B", quantity: 1 }]);
      // SKU-A: a unit reserved that no open order holds (balanced: 97 + 1 + 2 = 100).
      await rig.tamperStock("SKU-A", { available: 97, reserved: 1 });
      // SKU-B: a unit vanished (99 + 0 + 0 ≠ 100).
      await rig.tamperStock("SKU-B", { available: 99 });
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports initial ≠ available + reserved + committed as stock-unbalanced", () => {
      assert.ok(verdict(report).includes("I3 stock-unbalanced SKU-B"), formatReport(report));
    });

    void it("reports units still reserved with every order terminal as reserved-after-terminal", () => {
      assert.ok(verdict(report).includes("I3 reserved-after-terminal SKU-A"), formatReport(report));
    });

    void it("reports nothing else", () => {
      assert.deepEqual(
        verdict(report),
        ["I3 reserved-after-terminal SKU-A", "I3 stock-unbalanced SKU-B"],
        formatReport(report),
      );
    });
  });

  void describe("operators' adjustments (issue 13: I3 extended)", () => {
    let rig: Rig;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await rig.confirmedOrder("s-ok", [{ sku: "SKU-A", quantity: 2 }]);
      // A real restock through the inventory API: recorded, balanced, and its StockAdjusted on INVENTORY.
      const res = await fetch(`${rig.urls.inventory}/inventory/SKU-A/adjustments`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: rig.authorization },
        body: JSON.stringify({ quantity: 10, reason: "restock" }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      // SKU-B: 5 units added behind the inventory's back, balanced (adjusted follows), with no StockAdjusted event.
      const b = await rig.stockOf("SKU-B");
      await rig.tamperStock("SKU-B", { available: b.available + 5, adjusted: 5 });
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports a stock change without its StockAdjusted event as adjustment-mismatch, and nothing for a recorded one", () => {
      assert.deepEqual(verdict(report), ["I3 adjustment-mismatch SKU-B"], formatReport(report));
      assert.match(
        report.invariants.find((i) => i.id === "I3")!.violations[0]!.detail,
        /adjusted 5, but its StockAdjusted events add up to 0/,
      );
    });

    void it("a restock that moved available without adjusted does not balance: stock-unbalanced", async () => {
      const a = await rig.stockOf("SKU-A");
      await rig.tamperStock("SKU-A", { available: a.available + 3 });
      const r = await rig.check();
      assert.deepEqual(verdictOf(r, "SKU-A"), ["I3 stock-unbalanced"], formatReport(r));
    });
  });
});
