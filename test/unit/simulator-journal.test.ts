import assert from "node:assert/strict";
import { appendFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Journal, PersistedState } from "../../src/simulators/shared.js";
import { buildPaymentGateway } from "../../src/simulators/payment-gateway/app.js";

interface State {
  items: { id: string }[];
}
type Op = { add: string } | { reset: true };
const replay = (base: State | undefined, ops: Op[]): State => {
  let items = [...(base?.items ?? [])];
  for (const op of ops) {
    if ("reset" in op) items = [];
    else if (!items.some((i) => i.id === op.add)) items.push({ id: op.add });
  }
  return { items };
};

void describe("simulator persistence: snapshot + journal", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sim-journal-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void it("coalesces concurrent appends and reads them back, ignoring a torn last line", async () => {
    const j = new Journal<Op>(join(dir, "a.journal"));
    await Promise.all(Array.from({ length: 50 }, (_, i) => j.append({ add: `x${i}` })));
    await j.close();
    await appendFile(join(dir, "a.journal"), '{"add":"torn'); // a crash in the middle of a write
    const back = new Journal<Op>(join(dir, "a.journal")).loadSync();
    assert.equal(back.length, 50);
    assert.deepEqual(back[49], { add: "x49" });
  });

  void it("replays the journal onto the snapshot at start-up (idempotently) and compacts on close", async () => {
    const path = join(dir, "state.json");
    await writeFile(path, JSON.stringify({ items: [{ id: "a" }] }));
    const first = new PersistedState<State, Op>(path, replay);
    assert.deepEqual(first.loadSync(), { items: [{ id: "a" }] });
    await first.record({ add: "b" });
    await first.record({ add: "a" }); // already in the snapshot: replay must not duplicate it
    // Crash: no compaction. The next start replays the journal and writes a snapshot.
    const second = new PersistedState<State, Op>(path, replay);
    assert.deepEqual(second.loadSync(), { items: [{ id: "a" }, { id: "b" }] });
    assert.deepEqual(JSON.parse(await readFile(path, "utf8")), { items: [{ id: "a" }, { id: "b" }] });
    await second.record({ reset: true });
    await second.compact({ items: [] });
    assert.deepEqual(JSON.parse(await readFile(path, "utf8")), { items: [] });
    await assert.rejects(readFile(`${path}.journal`), { code: "ENOENT" });
  });

  void it("the payment gateway keeps charges recorded only in its journal across a crash", async () => {
    const file = join(dir, "ledger.json");
    const first = buildPaymentGateway({ ledgerFile: file });
    const res = await first.inject({
      method: "POST",
      url: "/v1/charges",
      headers: { "idempotency-key": "crash-1" },
      payload: { orderId: "ord_c", customerId: "cus_1", amount: 100, currency: "EUR" },
    });
    assert.equal(res.statusCode, 201);
    // No close(): as if the process was killed. The charge is in the journal only.
    const second = buildPaymentGateway({ ledgerFile: file });
    try {
      const replay = await second.inject({
        method: "POST",
        url: "/v1/charges",
        headers: { "idempotency-key": "crash-1" },
        payload: { orderId: "ord_c", customerId: "cus_1", amount: 100, currency: "EUR" },
      });
      assert.equal(replay.statusCode, 200);
      const ledger = (await second.inject({ method: "GET", url: "/v1/ledger" })).json<{
        entries: unknown[];
      }>();
      assert.equal(ledger.entries.length, 1);
    } finally {
      await second.close();
      await first.close();
    }
  });
});
