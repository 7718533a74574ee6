/**
 * The chaos harness's reconciliation (src/chaos/reconcile.ts) shown good and bad states, on a real nats-server with
 * the real inventory and audit services and the real simulators (test/helpers/checker-rig.ts): `gatherFacts` reads
 * the system as the harness does, and `reconcile` must put each accepted order in the count of what is wrong with
 * it — one fault per order below, so each count is 1 and names its order — and a good order in `ok`.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { ChaosOrder } from "../../src/chaos/load.js";
import { PROBLEM_COUNTS, reconcile, type Reconciliation } from "../../src/chaos/reconcile.js";
import { startRig, type Rig } from "../helpers/checker-rig.js";

/** The load generator's record of an order it sent: answered `status`, with `orderId` when accepted. */
function sent(i: number, orderId: string | undefined, status = 202): ChaosOrder {
  return {
    i,
    key: `key-${i}`,
    scheduledAt: Date.now(),
    answeredAt: Date.now(),
    status,
    attempts: 1,
    ...(orderId ? { orderId } : {}),
  };
}

const counts = (r: Reconciliation) =>
  Object.fromEntries(
    (["sent", "orders", "ok", ...PROBLEM_COUNTS, "confirmed", "cancelled", "not_accepted"] as const).map(
      (k) => [k, r[k]],
    ),
  );

void describe("reconcile: a good state", () => {
  let rig: Rig;
  before(async () => {
    rig = await startRig();
  });
  after(async () => {
    await rig?.stop();
  });

  void it("counts every accepted order ok, and no problem", async () => {
    await rig.confirmedOrder("g-1", [{ sku: "SKU-A", quantity: 2 }]);
    await rig.cancelledOrder("g-2", [{ sku: "SKU-SCARCE", quantity: 1 }]);
    const runOrders = [sent(0, "g-1"), sent(1, "g-2")];
    const facts = await rig.facts(["g-1", "g-2"]);
    const r = reconcile(
      runOrders,
      facts,
      new Map([
        ["g-1", "s"],
        ["g-2", "s"],
      ]),
      "s",
    );
    assert.deepEqual(counts(r), {
      sent: 2,
      orders: 2,
      ok: 2,
      lost: 0,
      stuck: 0,
      double_charged: 0,
      oversold: 0,
      audit_missing: 0,
      duplicate_emails: 0,
      confirmed: 1,
      cancelled: 1,
      not_accepted: 0,
    });
    assert.deepEqual(r.violations, []);
    assert.deepEqual(r.examples, {});
  });
});

void describe("reconcile: one fault per order", () => {
  let rig: Rig;
  let r: Reconciliation;
  let other: Reconciliation;
  before(async () => {
    rig = await startRig();
    const line = [{ sku: "SKU-A" as const, quantity: 1 }];
    await rig.confirmedOrder("r-ok", line);
    await rig.cancelledOrder("r-ok-cancelled", line);
    // stuck: placed, never decided.
    await rig.place("r-stuck", line);
    // double_charged: captured twice.
    await rig.confirmedOrder("r-double", line);
    await rig.charge("r-double", rig.totalOf("r-double"), "charge:r-double:again");
    // double_charged too: cancelled with its capture kept.
    await rig.place("r-kept", line);
    await rig.capture("r-kept");
    await rig.cancel("r-kept", "timeout");
    await rig.notify("r-kept", "order_cancelled");
    // duplicate_emails: e-mailed twice.
    await rig.confirmedOrder("r-mail", line);
    await rig.sendMail("r-mail", "order_confirmed", "r-mail:again");
    // oversold: a SKU no order touched, oversold behind inventory's back (balanced, so only available < 0).
    await rig.tamperStock("SKU-B", { available: -1, reserved: 101 });
    // audit_missing: the last order, whose last audit row is then deleted.
    await rig.drain();
    await rig.confirmedOrder("r-audit", line);
    await rig.drain();
    const [last] = await rig.auditStore.db.query<{ order_id: string }>(
      `SELECT order_id FROM ${rig.auditStore.qualified} ORDER BY position DESC LIMIT 1`,
    );
    assert.equal(last!.order_id, "r-audit");
    await rig.tamperAudit(`DELETE FROM $table WHERE position = (SELECT max(position) FROM $table)`);

    const ids = ["r-ok", "r-ok-cancelled", "r-stuck", "r-double", "r-kept", "r-mail", "r-audit", "r-lost"];
    const runOrders = [...ids.map((id, i) => sent(i, id)), sent(ids.length, undefined, 503)];
    const facts = await rig.facts(ids);
    const owner = new Map(ids.map((id) => [id, "main"]));
    r = reconcile(runOrders, facts, owner, "main");
    other = reconcile([], facts, owner, "other");
  });
  after(async () => {
    await rig?.stop();
  });

  void it("counts each fault once, the good orders ok, and the refused one not accepted", () => {
    assert.deepEqual(counts(r), {
      sent: 9,
      orders: 8,
      ok: 2,
      lost: 1,
      stuck: 1,
      double_charged: 2,
      oversold: 1,
      audit_missing: 1,
      duplicate_emails: 1,
      confirmed: 4,
      cancelled: 2,
      not_accepted: 1,
    });
  });

  void it("names the order behind each count", () => {
    assert.deepEqual(r.examples, {
      lost: ["r-lost"],
      stuck: ["r-stuck"],
      double_charged: ["r-double", "r-kept"],
      audit_missing: ["r-audit"],
      duplicate_emails: ["r-mail"],
    });
  });

  void it("carries the checker's violations by kind, each detail prefixed with its invariant and kind", () => {
    const kinds = r.violations.map((v) => `${v.kind} ${v.orderId ?? v.sku ?? v.consumer}`).sort();
    assert.deepEqual(kinds, [
      "audit-missing-event r-audit",
      "cancelled-with-net-capture r-kept",
      "double-capture r-double",
      "duplicate-email r-mail",
      "lost r-lost",
      "negative-available SKU-B",
      "no-terminal r-stuck",
    ]);
    for (const v of r.violations) assert.match(v.detail, new RegExp(`^I[1-6] ${v.kind}: `));
  });

  void it("gives another scenario only the violations that name no order of this one", () => {
    assert.deepEqual(
      other.violations.map((v) => `${v.kind} ${v.orderId ?? v.sku}`),
      ["negative-available SKU-B"],
    );
  });
});
