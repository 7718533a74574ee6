import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { Unchanged } from "../../src/lib/kv.js";
import { ConfigError } from "../../src/lib/errors.js";
import {
  DEFAULT_CATALOG,
  catalogFileProblems,
  isSkuId,
  loadCatalogFile,
} from "../../src/services/inventory/catalog.js";
import {
  MAX_REMEMBERED_ADJUSTMENTS,
  adjust,
  adjustmentPublished,
  unpublishedAdjustments,
  applyMove,
  commitHold,
  decideCommit,
  decideRelease,
  decideReserve,
  decideReserveOnce,
  giveBack,
  hold,
  mergeLines,
  newStock,
  stockViolations,
  unionLines,
  type ReservationRecord,
  type StockRecord,
} from "../../src/services/inventory/inventory.js";

function apply(s: StockRecord, next: StockRecord | typeof Unchanged): StockRecord {
  return next === Unchanged ? s : next;
}

void describe("inventory domain: stock moves", () => {
  void it("merges lines of the same SKU, keeping first-appearance order and dropping prices", () => {
    assert.deepEqual(
      mergeLines([
        { sku: "B", quantity: 1 },
        { sku: "A", quantity: 2 },
        { sku: "B", quantity: 3 },
      ]),
      [
        { sku: "B", quantity: 4 },
        { sku: "A", quantity: 2 },
      ],
    );
    const priced = [{ sku: "A", quantity: 1, unitPrice: 100 }];
    assert.deepEqual(mergeLines(priced), [{ sku: "A", quantity: 1 }]);
  });

  void it("holds stock once per order and refuses what is not available", () => {
    const s0 = newStock("A", 5);
    const h1 = applyMove(s0, hold("o1", 3));
    assert.equal(h1.result, "held");
    const s1 = apply(s0, h1.next);
    assert.deepEqual(s1, { sku: "A", initial: 5, available: 2, reserved: 3, committed: 0, holds: { o1: 3 } });
    assert.deepEqual(s0.holds, {}, "input not mutated");
    assert.deepEqual(applyMove(s1, hold("o1", 3)), { next: Unchanged, result: "already_held" });
    assert.deepEqual(applyMove(s1, hold("o2", 3)), { next: Unchanged, result: "insufficient" });
    assert.deepEqual(applyMove(null, hold("o2", 1)), { next: Unchanged, result: "unknown" });
  });

  void it("gives back and commits holds idempotently", () => {
    const s1 = apply(newStock("A", 5), applyMove(newStock("A", 5), hold("o1", 2)).next);
    const back = applyMove(s1, giveBack("o1"));
    assert.equal(back.result, 2);
    assert.deepEqual(apply(s1, back.next), newStock("A", 5));
    assert.deepEqual(applyMove(apply(s1, back.next), giveBack("o1")), { next: Unchanged, result: 0 });
    const sold = applyMove(s1, commitHold("o1"));
    assert.equal(sold.result, 2);
    const s2 = apply(s1, sold.next);
    assert.deepEqual(s2, { sku: "A", initial: 5, available: 3, reserved: 0, committed: 2, holds: {} });
    assert.deepEqual(applyMove(s2, commitHold("o1")), { next: Unchanged, result: 0 });
    assert.deepEqual(applyMove(null, giveBack("o1")), { next: Unchanged, result: 0 });
  });

  void it("stores holds of any valid order id, even one named like an Object.prototype member", () => {
    let s = newStock("A", 5);
    for (const id of ["__proto__", "constructor", "toString"]) {
      assert.deepEqual(applyMove(s, giveBack(id)), { next: Unchanged, result: 0 }, id);
      const h = applyMove(s, hold(id, 1));
      assert.equal(h.result, "held", id);
      s = apply(s, h.next);
      assert.ok(Object.hasOwn(s.holds, id), id);
    }
    const roundTripped = JSON.parse(JSON.stringify(s)) as StockRecord;
    assert.deepEqual(Object.keys(roundTripped.holds).sort(), ["__proto__", "constructor", "toString"]);
    assert.deepEqual(stockViolations(roundTripped), []);
    const back = applyMove(roundTripped, giveBack("__proto__"));
    assert.equal(back.result, 1);
    assert.deepEqual(stockViolations(apply(roundTripped, back.next)), []);
  });

  void it("keeps I3 under any sequence of moves (property)", () => {
    const op = fc.record({
      kind: fc.constantFrom("hold", "giveBack", "commit"),
      order: fc.constantFrom("o1", "o2", "o3", "o4"),
      qty: fc.integer({ min: 1, max: 6 }),
    });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10 }), fc.array(op, { maxLength: 60 }), (initial, ops) => {
        let s = newStock("P", initial);
        for (const o of ops) {
          const m =
            o.kind === "hold"
              ? applyMove(s, hold(o.order, o.qty))
              : o.kind === "giveBack"
                ? applyMove(s, giveBack(o.order))
                : applyMove(s, commitHold(o.order));
          s = apply(s, m.next);
          assert.deepEqual(stockViolations(s), []);
        }
      }),
    );
  });

  void it("reports I3 violations", () => {
    const bad: StockRecord = {
      sku: "X",
      initial: 5,
      available: -1,
      reserved: 2,
      committed: 3,
      holds: { o: 1 },
    };
    const v = stockViolations(bad);
    assert.equal(v.length, 3);
    assert.match(v.join("\n"), /initial 5 \+ adjusted 0 != available -1 \+ reserved 2 \+ committed 3/);
  });

  void it("adjusts available and adjusted together, once per id; a write-off takes available units only", () => {
    let s = newStock("X", 10);
    s = apply(s, applyMove(s, hold("o1", 4)).next);
    const restock = applyMove(s, adjust("a1", 5));
    assert.deepEqual(restock.result, { kind: "applied" });
    s = apply(s, restock.next);
    assert.deepEqual([s.initial, s.adjusted, s.available, s.reserved], [10, 5, 11, 4]);
    assert.deepEqual(stockViolations(s), []);
    // A retry of the same id changes nothing and says what it was.
    const again = applyMove(s, adjust("a1", 5));
    assert.equal(again.next, Unchanged);
    assert.deepEqual(again.result, { kind: "already_applied", quantity: 5 });
    // 11 available: writing off 12 would take reserved units.
    assert.deepEqual(applyMove(s, adjust("a2", -12)).result, { kind: "insufficient", available: 11 });
    const writeOff = applyMove(s, adjust("a2", -11));
    s = apply(s, writeOff.next);
    assert.deepEqual([s.adjusted, s.available, s.reserved], [-6, 0, 4]);
    assert.deepEqual(stockViolations(s), []);
    assert.deepEqual(applyMove(null, adjust("a3", 1)).result, { kind: "unknown" });
    // The figure without its adjustment does not balance.
    assert.equal(stockViolations({ ...s, adjusted: 0 }).length, 1);
  });

  void it("keeps an adjustment's unpublished event until it is marked published, and never drops one that is kept", () => {
    const kept = { reason: "restock" as const, operator: "op", at: "2026-12-07T00:00:00.000Z", afterSeq: 7 };
    let s = newStock("X", 0);
    s = apply(s, applyMove(s, adjust("k", 2, kept)).next);
    assert.deepEqual(unpublishedAdjustments(s), [{ id: "k", quantity: 2, unpublished: kept }]);
    // A retry is told what is still owed.
    assert.deepEqual(applyMove(s, adjust("k", 2, { ...kept, afterSeq: 9 })).result, {
      kind: "already_applied",
      quantity: 2,
      unpublished: kept,
    });
    // More than the remembered published ones after it: the kept one stays, the oldest published ones go.
    for (let i = 0; i < MAX_REMEMBERED_ADJUSTMENTS + 3; i++)
      s = apply(s, applyMove(s, adjust(`a${i}`, 1)).next);
    assert.equal(s.adjustments?.length, MAX_REMEMBERED_ADJUSTMENTS + 1);
    assert.deepEqual(s.adjustments?.[0], { id: "k", quantity: 2, unpublished: kept });
    assert.equal(s.adjustments?.[1]?.id, "a3");
    // Marked published: the entry stays (a retry is still applied once) without its event; a second mark is no change.
    const marked = applyMove(s, adjustmentPublished("k"));
    assert.equal(marked.result, true);
    s = apply(s, marked.next);
    assert.deepEqual(unpublishedAdjustments(s), []);
    assert.deepEqual(applyMove(s, adjust("k", 2)).result, { kind: "already_applied", quantity: 2 });
    assert.equal(applyMove(s, adjustmentPublished("k")).next, Unchanged);
    assert.equal(applyMove(null, adjustmentPublished("k")).result, false);
    assert.deepEqual(stockViolations(s), []);
  });

  void it("remembers the last adjustment ids only, oldest dropped first", () => {
    let s = newStock("X", 0);
    for (let i = 0; i < MAX_REMEMBERED_ADJUSTMENTS + 5; i++)
      s = apply(s, applyMove(s, adjust(`a${i}`, 1)).next);
    assert.equal(s.adjustments?.length, MAX_REMEMBERED_ADJUSTMENTS);
    assert.equal(s.adjustments?.[0]?.id, "a5");
    assert.equal(s.adjusted, MAX_REMEMBERED_ADJUSTMENTS + 5);
    assert.deepEqual(stockViolations(s), []);
  });
});

void describe("inventory domain: reservation state machine", () => {
  const items = [{ sku: "A", quantity: 1 }];
  const rec = (status: ReservationRecord["status"]): ReservationRecord => ({ status, items });

  void it("creates the decided record when there is none, decides a legacy `reserving` one, leaves others", () => {
    assert.deepEqual(decideReserveOnce(null, items, { ok: true }), rec("reserved"));
    assert.deepEqual(decideReserveOnce(null, items, { ok: false, reason: "unknown_sku", skus: ["A"] }), {
      status: "rejected",
      items,
      reason: "unknown_sku",
      skus: ["A"],
    });
    assert.deepEqual(decideReserveOnce(rec("reserving"), items, { ok: true }), rec("reserved"));
    for (const s of ["reserved", "rejected", "committed", "released"] as const)
      assert.equal(decideReserveOnce(rec(s), items, { ok: true }), Unchanged);
    // A tombstone wins over a reserve that held before it: the reserve gives back.
    assert.equal(decideReserveOnce({ status: "released", items: [] }, items, { ok: true }), Unchanged);
  });

  void it("unites lines by SKU for give-backs", () => {
    assert.deepEqual(unionLines([], items), items);
    assert.deepEqual(
      unionLines(items, [
        { sku: "A", quantity: 5 },
        { sku: "B", quantity: 2 },
      ]),
      [
        { sku: "A", quantity: 1 },
        { sku: "B", quantity: 2 },
      ],
    );
  });

  void it("decides a reservation only while reserving", () => {
    assert.deepEqual(decideReserve(rec("reserving"), { ok: true }), rec("reserved"));
    assert.deepEqual(decideReserve(rec("reserving"), { ok: false, reason: "out_of_stock", skus: ["A"] }), {
      status: "rejected",
      items,
      reason: "out_of_stock",
      skus: ["A"],
    });
    for (const s of ["reserved", "rejected", "committed", "released"] as const)
      assert.equal(decideReserve(rec(s), { ok: true }), Unchanged);
    assert.equal(decideReserve(null, { ok: true }), Unchanged);
  });

  void it("commits only a reserved record", () => {
    assert.deepEqual(decideCommit(rec("reserved")), rec("committed"));
    for (const s of ["reserving", "rejected", "committed", "released"] as const)
      assert.equal(decideCommit(rec(s)), Unchanged);
    assert.equal(decideCommit(null), Unchanged);
  });

  void it("releases a reserved record or one still reserving, or leaves a tombstone when there is none", () => {
    assert.deepEqual(decideRelease(rec("reserved")), rec("released"));
    // A cancellation does not wait for a reserve that may have been cut off (found by the chaos harness).
    assert.deepEqual(decideRelease(rec("reserving")), rec("released"));
    assert.deepEqual(decideRelease(null), { status: "released", items: [] });
    for (const s of ["rejected", "committed", "released"] as const)
      assert.equal(decideRelease(rec(s)), Unchanged);
  });
});

void describe("catalog", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "inventory-catalog-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function file(name: string, content: string): Promise<string> {
    const p = join(dir, name);
    await writeFile(p, content);
    return p;
  }

  void it("has a valid default catalog with load stock and small demo SKUs", () => {
    assert.deepEqual(catalogFileProblems({ items: DEFAULT_CATALOG }), []);
    assert.ok(DEFAULT_CATALOG.length >= 10);
    assert.equal(DEFAULT_CATALOG.find((i) => i.sku === "SKU-LIMITED")?.stock, 5);
    assert.ok(DEFAULT_CATALOG.filter((i) => i.stock >= 1_000_000).length >= 10);
    assert.ok(DEFAULT_CATALOG.every((i) => i.currency === "EUR" && Number.isInteger(i.price)));
  });

  void it("accepts only KV-key-safe SKU ids", () => {
    assert.ok(isSkuId("SKU-1_a"));
    for (const bad of ["", "a.b", "a b", "a*", "a>", "x".repeat(65), "ä"]) assert.ok(!isSkuId(bad), bad);
  });

  void it("loads a valid file", async () => {
    const p = await file(
      "ok.json",
      JSON.stringify({ items: [{ sku: "X-1", name: "X", price: 100, currency: "EUR", stock: 3 }] }),
    );
    assert.deepEqual(await loadCatalogFile(p), [
      { sku: "X-1", name: "X", price: 100, currency: "EUR", stock: 3 },
    ]);
  });

  const cases: [string, string, RegExp][] = [
    ["missing.json", "", /cannot be read: ENOENT/],
    ["notjson.json", "{ items: ", /is not valid JSON/],
    ["shape.json", JSON.stringify([{ sku: "A" }]), /is not a valid catalog[\s\S]*\/: Expected object/],
    [
      "badsku.json",
      JSON.stringify({ items: [{ sku: "a.b", name: "A", price: 1, currency: "EUR", stock: 1 }] }),
      /\/items\/0\/sku: Expected string to match/,
    ],
    [
      "badprice.json",
      JSON.stringify({ items: [{ sku: "A", name: "A", price: 1.5, currency: "eur", stock: -1 }] }),
      /\/items\/0\/price: Expected integer[\s\S]*\/items\/0\/currency[\s\S]*\/items\/0\/stock/,
    ],
    [
      "extra.json",
      JSON.stringify({
        items: [{ sku: "A", name: "A", price: 1, currency: "EUR", stock: 1, colour: "red" }],
      }),
      /\/items\/0\/colour: Unexpected property/,
    ],
    [
      "empty.json",
      JSON.stringify({ items: [] }),
      /\/items: Expected array length to be greater or equal to 1/,
    ],
    [
      "dup.json",
      JSON.stringify({
        items: [
          { sku: "A", name: "A", price: 1, currency: "EUR", stock: 1 },
          { sku: "A", name: "A2", price: 2, currency: "EUR", stock: 1 },
        ],
      }),
      /\/items\/1\/sku: duplicate SKU "A" \(also at \/items\/0\)/,
    ],
  ];
  for (const [name, content, expected] of cases) {
    void it(`rejects ${name} with a message naming the file and the problem`, async () => {
      const p = name === "missing.json" ? join(dir, name) : await file(name, content);
      await assert.rejects(loadCatalogFile(p), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.ok(err.message.startsWith(`CATALOG_FILE ${p}: `), err.message);
        assert.match(err.message, expected);
        return true;
      });
    });
  }
});
