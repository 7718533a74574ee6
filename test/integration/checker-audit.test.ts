/**
 * The invariant checker shown a bad audit log (I5), on a real nats-server with the real audit service writing its
 * hash-chained log (PostgreSQL when DATABASE_URL is set, else PGlite), the real inventory service and the real
 * simulators (test/helpers/checker-rig.ts). The log is then altered with SQL, its append-only trigger switched off
 * as a privileged intruder could: a row changed (the chain breaks), and the last row deleted (the chain still
 * verifies, but an event is missing). And an audit that stopped reading: its positions stay behind the streams.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { formatReport, waitForDrain, type CheckReport, type DrainResult } from "../../src/checker/checker.js";
import { startRig, verdict, type Rig } from "../helpers/checker-rig.js";

async function twoOrders(rig: Rig): Promise<void> {
  await rig.confirmedOrder("a-1", [{ sku: "SKU-A", quantity: 1 }]);
  await rig.cancelledOrder("a-2", [{ sku: "SKU-B", quantity: 1 }]);
  await rig.drain();
}

async function verify(rig: Rig): Promise<{ ok: boolean; rows: number; firstBadPosition?: number }> {
  return (await fetch(`${rig.urls.audit}/audit/verify`)).json() as Promise<{
    ok: boolean;
    rows: number;
    firstBadPosition?: number;
  }>;
}

void describe("checker: I5 audit", () => {
  void describe("an altered row", () => {
    let rig: Rig;
    let position: number;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await twoOrders(rig);
      const [row] = await rig.auditStore.db.query<{ position: unknown }>(
        `SELECT position FROM ${rig.auditStore.qualified} WHERE event_id = $1`,
        ["a-1:PaymentCaptured"],
      );
      position = Number(row!.position);
      await rig.tamperAudit(
        `UPDATE $table SET payload = replace(payload, 'EUR', 'USD') WHERE event_id = $1`,
        ["a-1:PaymentCaptured"],
      );
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports the broken hash chain as audit-chain-broken, at the altered row", () => {
      assert.deepEqual(verdict(report), ["I5 audit-chain-broken -"], formatReport(report));
      const v = report.invariants.find((i) => i.id === "I5")!.violations[0]!;
      assert.match(v.detail, new RegExp(`position ${position}: hash does not match`));
    });
  });

  void describe("a deleted row", () => {
    let rig: Rig;
    let deleted: { event_id: string; order_id: string };
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await twoOrders(rig);
      const before = await verify(rig);
      const [last] = await rig.auditStore.db.query<{ event_id: string; order_id: string }>(
        `SELECT event_id, order_id FROM ${rig.auditStore.qualified} ORDER BY position DESC LIMIT 1`,
      );
      deleted = last!;
      await rig.tamperAudit(`DELETE FROM $table WHERE event_id = $1`, [deleted.event_id]);
      const after = await verify(rig);
      // The chain itself still verifies: only the count of rows tells, and the checker does not trust a count.
      assert.deepEqual([after.ok, after.rows], [true, before.rows - 1]);
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("reports an event missing from the audit log as audit-missing-event, naming it", () => {
      assert.deepEqual(verdict(report), [`I5 audit-missing-event ${deleted.order_id}`], formatReport(report));
      assert.match(
        report.invariants.find((i) => i.id === "I5")!.violations[0]!.detail,
        new RegExp(`event ${deleted.event_id} is not in the audit log`),
      );
    });
  });

  void describe("an audit that never caught up", () => {
    let rig: Rig;
    let stuck: DrainResult;
    let report: CheckReport;
    before(async () => {
      rig = await startRig();
      await twoOrders(rig);
      await rig.stopAuditProjector();
      await rig.confirmedOrder("a-3", [{ sku: "SKU-A", quantity: 1 }]);
      stuck = await waitForDrain(rig.jsm, { auditUrl: rig.urls.audit, timeoutMs: 300 });
      report = await rig.check();
    });
    after(async () => {
      await rig?.stop();
    });

    void it("waitForDrain does not call it drained, naming each stream the audit is behind on", () => {
      assert.equal(stuck.drained, false);
      assert.deepEqual(
        stuck.backlogs.map((b) => b.consumer).sort(),
        ["audit/INVENTORY", "audit/NOTIFICATIONS", "audit/ORDERS", "audit/PAYMENTS"],
        JSON.stringify(stuck.backlogs),
      );
    });

    void it("reports each stream it is behind on as audit-behind, and the events it lacks as audit-missing-event", () => {
      assert.deepEqual(
        [...new Set(verdict(report))],
        [
          "I5 audit-behind audit/INVENTORY",
          "I5 audit-behind audit/NOTIFICATIONS",
          "I5 audit-behind audit/ORDERS",
          "I5 audit-behind audit/PAYMENTS",
          "I5 audit-missing-event a-3",
        ],
        formatReport(report),
      );
    });
  });
});
