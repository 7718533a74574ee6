/**
 * The audit store on a real database: PostgreSQL when DATABASE_URL is set (each run in its own schema),
 * else PGlite in a temp dir.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeferError } from "../../src/lib/messaging/consumer.js";
import { GENESIS_HASH, canonicalJson, type AuditEntry } from "../../src/services/audit/audit.js";
import { AuditStore, openDb, type SqlDb } from "../../src/services/audit/store.js";
import { AuditWriter } from "../../src/services/audit/writer.js";

const DATABASE_URL = process.env.DATABASE_URL || undefined;
const schema = `audit_store_${process.pid}_${randomBytes(3).toString("hex")}`;
let dataDir: string;
let db: SqlDb;
let tables = 0;

/** A second handle on the same database: its own pool on PostgreSQL; PGlite has one per directory. */
async function secondHandle(): Promise<SqlDb> {
  return DATABASE_URL ? openDb({ databaseUrl: DATABASE_URL, dataDir }) : db;
}

async function newStore(handle: SqlDb = db): Promise<AuditStore> {
  const store = new AuditStore(handle, { schema, table: `t${++tables}` });
  await store.ensureSchema();
  return store;
}

function entry(i: number, over: Partial<AuditEntry> = {}): AuditEntry {
  return {
    eventId: `o${i}:OrderPlaced`,
    stream: "ORDERS",
    streamSeq: i,
    subject: `orders.o${i}`,
    eventType: "OrderPlaced",
    orderId: `o${i}`,
    source: "orders",
    traceId: randomBytes(16).toString("hex"),
    causationId: null,
    occurredAt: new Date(Date.UTC(2024, 4, 1, 12, 0, 0, i % 1000)).toISOString(),
    payload: canonicalJson({ i, text: "é\u0000\ud800", n: 1.5e300 }),
    ...over,
  };
}

/** Runs `sql` with the append-only trigger off, as a privileged attacker could. */
async function tamper(store: AuditStore, sql: string, params: unknown[] = []): Promise<void> {
  await store.db.transaction(async (tx) => {
    await tx.query(`ALTER TABLE ${store.qualified} DISABLE TRIGGER "${store.table}_no_change"`);
    await tx.query(sql, params);
    await tx.query(`ALTER TABLE ${store.qualified} ENABLE TRIGGER "${store.table}_no_change"`);
  });
}

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "audit-store-"));
  db = await openDb({ databaseUrl: DATABASE_URL, dataDir });
});

after(async () => {
  if (DATABASE_URL) await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
  await db.close();
  await rm(dataDir, { recursive: true, force: true });
});

void describe(`audit store (${DATABASE_URL ? "PostgreSQL" : "PGlite"})`, () => {
  void it("creates its table idempotently, also from replicas starting together, and refuses changes", async () => {
    const other = await secondHandle();
    try {
      const a = new AuditStore(db, { schema, table: "shared_start" });
      const b = new AuditStore(other, { schema, table: "shared_start" });
      await Promise.all([a.ensureSchema(), b.ensureSchema(), a.ensureSchema()]);
      await b.ensureSchema();
      await a.append([entry(1)]);
      await assert.rejects(a.db.query(`UPDATE ${a.qualified} SET payload = '{}'`), /append-only/);
      await assert.rejects(a.db.query(`DELETE FROM ${a.qualified}`), /append-only/);
      await assert.rejects(a.db.query(`TRUNCATE ${a.qualified}`), /append-only/);
      assert.equal(await a.count(), 1);
    } finally {
      if (other !== db) await other.close();
    }
    assert.throws(() => new AuditStore(db, { table: 'x"; DROP TABLE y; --' }), TypeError);
  });

  void it("appends each event id once, duplicates in the batch or in the log change nothing", async () => {
    const store = await newStore();
    const first = await store.append([entry(1), entry(2), entry(1), entry(3)]);
    assert.deepEqual(first, [
      { status: "inserted", position: 1, conflict: false },
      { status: "inserted", position: 2, conflict: false },
      { status: "duplicate", position: 1, conflict: false },
      { status: "inserted", position: 3, conflict: false },
    ]);
    const again = await store.append([entry(3), entry(4), entry(2, { payload: '{"other":true}' })]);
    assert.deepEqual(again, [
      { status: "duplicate", position: 3, conflict: false },
      { status: "inserted", position: 4, conflict: false },
      // Same id, other content: the first version stays, the difference is reported.
      { status: "duplicate", position: 2, conflict: true },
    ]);
    assert.deepEqual(await store.append([entry(4)]), [{ status: "duplicate", position: 4, conflict: false }]);
    assert.equal(await store.count(), 4);
    const rows = await store.rows(0, 10);
    assert.deepEqual(
      rows.map((r) => [r.position, r.eventId]),
      [
        [1, "o1:OrderPlaced"],
        [2, "o2:OrderPlaced"],
        [3, "o3:OrderPlaced"],
        [4, "o4:OrderPlaced"],
      ],
    );
    // Values come back exactly as hashed: text with escapes, ms timestamps, int8 as numbers.
    assert.equal(rows[0]!.payload, entry(1).payload);
    assert.equal(rows[0]!.occurredAt, entry(1).occurredAt);
    assert.equal(rows[0]!.prevHash, GENESIS_HASH);
    assert.equal(rows[1]!.prevHash, rows[0]!.hash);
    assert.deepEqual(await store.verify(), { ok: true, rows: 4, lastHash: rows[3]!.hash });
  });

  void it("keeps a position per stream, moved in the append's transaction, never back, and not by a failed append", async () => {
    const store = await newStore();
    assert.deepEqual(await store.positions(), new Map());
    assert.equal(await store.position("ORDERS"), 0);
    await store.append([entry(1), entry(2)], undefined, new Map([["ORDERS", 12]]));
    await store.append([entry(3)], undefined, new Map([["DLQ", 4]]));
    // Lower than stored (a session that read again after a restart): the position stays.
    await store.append([entry(1)], undefined, new Map([["ORDERS", 9]]));
    assert.deepEqual(
      await store.positions(),
      new Map([
        ["ORDERS", 12],
        ["DLQ", 4],
      ]),
    );
    // A batch that fails (a row the database refuses) rolls its position back with its rows.
    const bad = entry(5, { occurredAt: "not a timestamp" });
    await assert.rejects(store.append([entry(4), bad], undefined, new Map([["ORDERS", 20]])));
    assert.equal(await store.position("ORDERS"), 12);
    assert.equal(await store.count(), 3);
  });

  void it("verifies page by page and reports the first tampered position", async () => {
    const store = await newStore();
    for (let i = 0; i < 5; i++) await store.append(Array.from({ length: 5 }, (_, j) => entry(i * 5 + j + 1)));
    const clean = await store.verify(7);
    assert.equal(clean.ok, true);
    assert.equal(clean.rows, 25);
    assert.deepEqual(await store.verify(1), clean);

    const [row11] = await store.rows(10, 1);
    await tamper(store, `UPDATE ${store.qualified} SET payload = $1 WHERE position = 11`, ['{"i":-1}']);
    const changed = await store.verify(7);
    assert.equal(changed.ok, false);
    assert.equal(changed.firstBadPosition, 11);
    assert.equal(changed.rows, 25);
    await tamper(store, `UPDATE ${store.qualified} SET payload = $1 WHERE position = 11`, [row11!.payload]);
    assert.deepEqual(await store.verify(7), clean);

    await tamper(
      store,
      `UPDATE ${store.qualified} SET occurred_at = occurred_at + interval '1 ms' WHERE position = 25`,
    );
    assert.equal((await store.verify(7)).firstBadPosition, 25);
    await tamper(
      store,
      `UPDATE ${store.qualified} SET occurred_at = occurred_at - interval '1 ms' WHERE position = 25`,
    );

    await tamper(store, `DELETE FROM ${store.qualified} WHERE position = 20`);
    const removed = await store.verify(7);
    assert.equal(removed.firstBadPosition, 21);
    assert.equal(removed.rows, 24);
  });

  void it("keeps one chain while two writers on separate connections append concurrently", async () => {
    const other = await secondHandle();
    try {
      const a = await newStore();
      const b = new AuditStore(other, { schema: a.schema, table: a.table });
      await b.ensureSchema();
      const wa = new AuditWriter(a, { maxBatch: 50, maxDelayMs: 1 });
      const wb = new AuditWriter(b, { maxBatch: 50, maxDelayMs: 1 });
      // Every event is offered to both writers (a redelivery to another replica), in different orders.
      const n = 1500;
      const ids = Array.from({ length: n }, (_, i) => i + 1);
      const shuffled = [...ids].sort(() => Math.random() - 0.5);
      const results = await Promise.all([
        ...ids.map((i) => wa.append(entry(i))),
        ...shuffled.map((i) => wb.append(entry(i))),
      ]);
      await Promise.all([wa.close(), wb.close()]);
      assert.equal(results.filter((r) => r.status === "inserted").length, n);
      assert.ok(wa.stats.inserted > 0 && wb.stats.inserted > 0, JSON.stringify([wa.stats, wb.stats]));
      assert.equal(await a.count(), n);
      const v = await a.verify(333);
      assert.equal(v.ok, true, JSON.stringify(v));
      assert.equal(v.rows, n);
      const rows = await a.page(0, n + 1);
      assert.equal(new Set(rows.map((r) => r.eventId)).size, n);
      assert.equal(rows[n - 1]!.position, n);
    } finally {
      if (other !== db) await other.close();
    }
  });

  void it("batches under load (measured) and defers when the database is gone", async (t) => {
    const store = await newStore();
    const measure = async (maxBatch: number, n: number, offset: number) => {
      const w = new AuditWriter(store, { maxBatch, maxDelayMs: 2 });
      const started = performance.now();
      await Promise.all(Array.from({ length: n }, (_, i) => w.append(entry(offset + i))));
      const ms = performance.now() - started;
      await w.close();
      return { perSecond: Math.round((n / ms) * 1000), batches: w.stats.batches };
    };
    const single = await measure(1, 300, 100_000);
    const batched = await measure(200, 6000, 200_000);
    t.diagnostic(
      `${db.kind}: 1 row/tx ${single.perSecond} rows/s; ≤200 rows/tx ${batched.perSecond} rows/s in ${batched.batches} transactions`,
    );
    assert.ok(batched.batches <= 6000 / 50, `expected large batches, got ${batched.batches} transactions`);
    assert.equal((await store.verify()).ok, true);

    // A closed pool (PostgreSQL) or a closed instance (PGlite: simulated, a new one costs an initdb).
    let gone: SqlDb;
    if (DATABASE_URL) {
      gone = await openDb({ databaseUrl: DATABASE_URL, dataDir });
      await gone.close();
    } else {
      const closed = () => Promise.reject(new Error("PGlite is closed"));
      gone = { kind: "pglite", query: closed, transaction: closed, close: async () => undefined };
    }
    const w = new AuditWriter(new AuditStore(gone, { schema, table: store.table }), {
      unavailableRetryMs: 10,
    });
    await assert.rejects(w.append(entry(1)), DeferError);
    await w.close();
  });
});
