import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { canonicalJson } from "../../src/lib/canonical.js";
import { makeEvent } from "../../src/lib/events/envelope.js";
import { RetryableError } from "../../src/lib/errors.js";
import { DeferError } from "../../src/lib/messaging/consumer.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import {
  ChainVerifier,
  DEAD_LETTER_TYPE,
  GENESIS_HASH,
  chainEntries,
  UNDECODABLE_TYPE,
  entryFromDeadLetter,
  entryFromEvent,
  entryFromUndecodable,
  hashedFields,
  hashedText,
  normalizeTimestamp,
  orderTimeline,
  rowHash,
  storableText,
  type AuditEntry,
  type AuditRow,
  type TimelineItem,
} from "../../src/services/audit/audit.js";
import { Batcher, BatcherClosedError } from "../../src/services/audit/batcher.js";
import type { AppendResult } from "../../src/services/audit/store.js";
import { AuditWriter, ReaderSession, SessionDeadError, isRowError } from "../../src/services/audit/writer.js";

function entry(i: number, over: Partial<AuditEntry> = {}): AuditEntry {
  return {
    eventId: `o${i}:OrderPlaced`,
    stream: "ORDERS",
    streamSeq: i,
    subject: `orders.o${i}`,
    eventType: "OrderPlaced",
    orderId: `o${i}`,
    source: "orders",
    traceId: "0af7651916cd43dd8448eb211c80319c",
    causationId: null,
    occurredAt: "2024-05-01T12:00:00.000Z",
    payload: canonicalJson({ i }),
    ...over,
  };
}

function chain(n: number): AuditRow[] {
  return chainEntries(
    Array.from({ length: n }, (_, i) => entry(i + 1)),
    { position: 0, hash: GENESIS_HASH },
    "2024-05-01T12:00:01.000Z",
  );
}

function verify(rows: AuditRow[]) {
  const v = new ChainVerifier();
  for (const r of rows) v.push(r);
  return v.result();
}

void describe("audit: canonical JSON and the hash chain", () => {
  void it("writes the hashed text of a row as canonicalJson of its columns, whatever the row", () => {
    const text = fc.oneof(fc.string(), fc.string({ unit: "binary" }));
    const maybe = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null });
    const row = fc.record({
      eventId: text,
      stream: text,
      streamSeq: maybe(fc.integer({ min: 1 })),
      subject: maybe(text),
      eventType: text,
      orderId: maybe(text),
      source: maybe(text),
      traceId: maybe(text),
      causationId: maybe(text),
      occurredAt: maybe(text),
      payload: text,
      position: fc.integer({ min: 1 }),
      recordedAt: text,
      prevHash: text,
    });
    fc.assert(
      fc.property(row, (r) => assert.equal(hashedText(r), canonicalJson(hashedFields(r)))),
      { numRuns: 1000 },
    );
    // An unusual row (a value missing) takes the generic path and still matches.
    const odd = { ...entry(1), position: 2, recordedAt: "x", prevHash: GENESIS_HASH, traceId: undefined };
    assert.equal(hashedText(odd as never), canonicalJson(hashedFields(odd as never)));
  });

  void it("pins the hash format: SHA-256(prev_hash + canonical JSON of the columns but hash)", () => {
    // Recomputed independently (Python: json.dumps(sort_keys=True, separators=(",", ":"))).
    const row = {
      ...entry(1, { payload: '{"a":1}' }),
      position: 1,
      recordedAt: "2024-05-01T12:00:00.005Z",
      prevHash: GENESIS_HASH,
    };
    assert.equal(rowHash(row), "126d54b0fca94e65e0e86dc239b55483e1d024cf5b8445a6e155babfd0f62b06");
  });

  void it("chains rows: consecutive positions, each prev_hash the previous hash", () => {
    const rows = chain(3);
    assert.deepEqual(
      rows.map((r) => r.position),
      [1, 2, 3],
    );
    assert.equal(rows[0]!.prevHash, GENESIS_HASH);
    assert.equal(rows[1]!.prevHash, rows[0]!.hash);
    assert.equal(rows[2]!.prevHash, rows[1]!.hash);
    const more = chainEntries([entry(4)], { position: 3, hash: rows[2]!.hash }, "2024-05-01T12:00:02.000Z");
    assert.deepEqual(verify([...rows, ...more]), { ok: true, rows: 4, lastHash: more[0]!.hash });
  });

  void it("every field is covered by the hash", () => {
    const [row] = chain(1);
    const changes: Partial<AuditRow>[] = [
      { eventId: "x" },
      { stream: "X" },
      { streamSeq: 9 },
      { subject: null },
      { eventType: "OrderConfirmed" },
      { orderId: "o9" },
      { source: "evil" },
      { traceId: null },
      { causationId: "c" },
      { occurredAt: null },
      { recordedAt: "2024-05-01T12:00:01.001Z" },
      { payload: "{}" },
      { position: 2 },
    ];
    for (const c of changes) assert.notEqual(rowHash({ ...row!, ...c }), row!.hash, JSON.stringify(c));
  });

  void it("verification finds the first broken row: changed, removed, re-chained, reordered", () => {
    assert.deepEqual(verify([]), { ok: true, rows: 0, lastHash: GENESIS_HASH });
    const rows = chain(5);
    const tampered = rows.map((r) => (r.position === 3 ? { ...r, payload: '{"i":99}' } : r));
    assert.deepEqual(
      { ...verify(tampered), reason: undefined },
      { ok: false, rows: 5, firstBadPosition: 3, reason: undefined, lastHash: rows[4]!.hash },
    );
    const removed = rows.filter((r) => r.position !== 2);
    assert.equal(verify(removed).firstBadPosition, 3);
    assert.match(verify(removed).reason!, /missing/);
    // A forger recomputes row 2's hash after editing it: row 3 no longer links to it.
    const edited = { ...rows[1]!, payload: '{"i":-1}' };
    const rechained = [rows[0]!, { ...edited, hash: rowHash(edited) }, ...rows.slice(2)];
    assert.equal(verify(rechained).firstBadPosition, 3);
    assert.match(verify(rechained).reason!, /prev_hash/);
    const lastRemoved = rows.slice(1);
    assert.equal(verify(lastRemoved).firstBadPosition, 2);
  });

  void it("stores only text PostgreSQL keeps as given, timestamps as ISO UTC with ms", () => {
    assert.equal(storableText("a\u0000b\ud800c\udc00d\ud83d\ude00"), "a\ufffdb\ufffdc\ufffdd\ud83d\ude00");
    assert.equal(normalizeTimestamp("2024-05-01T14:00:00.123456+02:00"), "2024-05-01T12:00:00.123Z");
    assert.equal(normalizeTimestamp(new Date(0)), "1970-01-01T00:00:00.000Z");
    assert.equal(normalizeTimestamp("yesterday"), null);
    assert.equal(normalizeTimestamp("+012345-01-01T00:00:00Z"), null);
    assert.equal(normalizeTimestamp(42), null);
  });
});

void describe("audit: entries", () => {
  void it("records an event with its stream position and the whole envelope as canonical JSON", () => {
    const placed = makeEvent(
      "OrderConfirmed",
      { orderId: "o1", paymentId: "p1", total: 100, currency: "EUR" },
      { aggregateId: "o1", source: "orders", cause: { id: "o1:PaymentCaptured", trace_id: "a".repeat(32) } },
    );
    const e = entryFromEvent(placed, { stream: "ORDERS", subject: "orders.o1", streamSeq: 7 });
    assert.deepEqual(
      { ...e, payload: JSON.parse(e.payload) as unknown },
      {
        eventId: "o1:OrderConfirmed",
        stream: "ORDERS",
        streamSeq: 7,
        subject: "orders.o1",
        eventType: "OrderConfirmed",
        orderId: "o1",
        source: "orders",
        traceId: "a".repeat(32),
        causationId: "o1:PaymentCaptured",
        occurredAt: placed.timestamp,
        payload: placed,
      },
    );
    assert.equal(e.payload, canonicalJson(placed));
  });

  void it("records a DLQ entry with a malformed body: base64 body, order id from the original subject", () => {
    const e = entryFromDeadLetter({
      stream: "DLQ",
      subject: "dlq.inventory-orders",
      sequence: 12,
      data: new Uint8Array([0xff, 0xfe, 0x00]),
      headers: {
        [Hdr.DlqConsumer]: "inventory-orders",
        [Hdr.DlqCode]: "EVENT_MALFORMED",
        [Hdr.DlqError]: "EVENT_MALFORMED: not a JSON event",
        [Hdr.DlqAttempts]: "1",
        [Hdr.DlqStream]: "ORDERS",
        [Hdr.DlqSubject]: "orders.bad-1",
        [Hdr.DlqSequence]: "41",
        [Hdr.DlqAt]: "2024-05-01T12:00:00.000Z",
      },
      storedAt: new Date("2024-05-01T12:00:01.000Z"),
    });
    assert.equal(e.eventId, "dlq:12");
    assert.equal(e.eventType, DEAD_LETTER_TYPE);
    assert.equal(e.orderId, "bad-1");
    assert.equal(e.source, "inventory-orders");
    assert.equal(e.streamSeq, 12);
    assert.equal(e.causationId, null);
    assert.equal(e.occurredAt, "2024-05-01T12:00:00.000Z");
    const p = JSON.parse(e.payload) as Record<string, unknown>;
    assert.deepEqual(p["dlq"], {
      consumer: "inventory-orders",
      code: "EVENT_MALFORMED",
      error: "EVENT_MALFORMED: not a JSON event",
      attempts: 1,
      stream: "ORDERS",
      subject: "orders.bad-1",
      sequence: 41,
      at: "2024-05-01T12:00:00.000Z",
    });
    assert.equal(p["body_base64"], "//4A");
    assert.equal(p["size"], 3);
  });

  void it("records a stream message that is not a catalog event as a raw row: body as JSON, text or base64", () => {
    const at = {
      stream: "ORDERS",
      subject: "orders.bad-7",
      headers: { [Hdr.TraceParent]: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
      storedAt: new Date("2024-05-01T12:00:01.000Z"),
      error: { code: "EVENT_MALFORMED", message: "not a JSON event" },
    };
    const bytes = entryFromUndecodable({ ...at, sequence: 9, data: new Uint8Array([0xff, 0x00, 0x7b]) });
    assert.deepEqual(
      [bytes.eventId, bytes.eventType, bytes.stream, bytes.streamSeq, bytes.subject, bytes.orderId],
      ["raw:ORDERS:9", UNDECODABLE_TYPE, "ORDERS", 9, "orders.bad-7", "bad-7"],
    );
    assert.equal(bytes.traceId, "0af7651916cd43dd8448eb211c80319c");
    assert.equal(bytes.occurredAt, "2024-05-01T12:00:01.000Z");
    assert.deepEqual(JSON.parse(bytes.payload), {
      error: at.error,
      headers: at.headers,
      size: 3,
      body_base64: "/wB7",
    });
    const json = entryFromUndecodable({
      ...at,
      sequence: 10,
      data: new TextEncoder().encode('{"type":"Nope"}'),
    });
    assert.deepEqual((JSON.parse(json.payload) as { body: unknown }).body, { type: "Nope" });
    const text = entryFromUndecodable({ ...at, sequence: 11, data: new TextEncoder().encode("{not json") });
    assert.equal((JSON.parse(text.payload) as { body_text: unknown }).body_text, "{not json");
    assert.equal(new Set([bytes.eventId, json.eventId, text.eventId]).size, 3, "one row per stream sequence");
  });

  void it("records a DLQ entry whose body parses: order id, cause and trace from the body", () => {
    const body = {
      id: "o7:StockReserved",
      aggregate_id: "o7",
      trace_id: "b".repeat(32),
      type: "StockReserved",
    };
    const e = entryFromDeadLetter({
      stream: "DLQ",
      subject: "dlq.payments-inventory",
      sequence: 3,
      data: new TextEncoder().encode(JSON.stringify(body)),
      headers: { [Hdr.DlqConsumer]: "payments-inventory", [Hdr.DlqAttempts]: "5" },
      storedAt: new Date("2024-05-01T12:00:01.000Z"),
    });
    assert.equal(e.orderId, "o7");
    assert.equal(e.causationId, "o7:StockReserved");
    assert.equal(e.traceId, "b".repeat(32));
    assert.equal(e.occurredAt, "2024-05-01T12:00:01.000Z");
    assert.deepEqual((JSON.parse(e.payload) as { body: unknown }).body, body);
    const text = entryFromDeadLetter({
      stream: "DLQ",
      subject: "dlq.x",
      sequence: 4,
      data: new TextEncoder().encode("not json \u0000"),
      headers: { traceparent: `00-${"c".repeat(32)}-${"d".repeat(16)}-01` },
      storedAt: new Date(0),
    });
    assert.equal(text.orderId, null);
    assert.equal(text.source, null);
    assert.equal(text.traceId, "c".repeat(32));
    assert.equal((JSON.parse(text.payload) as { body_text: string }).body_text, "not json \u0000");
  });

  void it("records a DLQ body holding a number JSON cannot represent (1e400) as text instead of failing", () => {
    const raw = '{"aggregate_id":"o8","data":{"x":1e400}}';
    const e = entryFromDeadLetter({
      stream: "DLQ",
      subject: "dlq.payments-inventory",
      sequence: 5,
      data: new TextEncoder().encode(raw),
      headers: { [Hdr.DlqConsumer]: "payments-inventory", [Hdr.DlqSubject]: "orders.o8" },
      storedAt: new Date(0),
    });
    const payload = JSON.parse(e.payload) as { body?: unknown; body_text?: string };
    assert.equal(payload.body, undefined);
    assert.equal(payload.body_text, raw);
    assert.equal(e.orderId, "o8");
  });
});

void describe("audit: timelines", () => {
  const item = (position: number, eventId: string, causationId: string | null, at: string): TimelineItem => ({
    position,
    eventId,
    causationId,
    occurredAt: `2024-05-01T12:00:00.${at}Z`,
    recordedAt: "2024-05-01T12:00:05.000Z",
  });

  void it("puts every event after its cause, else in time order", () => {
    // Recorded out of order (the payments consumer ran ahead), with a clock skew on the capture.
    const rows = [
      item(1, "captured", "reserved", "001"),
      item(2, "notified", "confirmed", "009"),
      item(3, "placed", null, "002"),
      item(4, "reserved", "placed", "003"),
      item(5, "confirmed", "captured", "004"),
      item(6, "committed", "confirmed", "005"),
      item(7, "unrelated", "elsewhere", "000"),
    ];
    assert.deepEqual(
      orderTimeline(rows).map((r) => r.eventId),
      ["unrelated", "placed", "reserved", "captured", "confirmed", "committed", "notified"],
    );
  });

  void it("breaks ties by position and survives causation cycles", () => {
    const same = [item(2, "b", null, "000"), item(1, "a", null, "000")];
    assert.deepEqual(
      orderTimeline(same).map((r) => r.eventId),
      ["a", "b"],
    );
    const cycle = [item(1, "x", "y", "001"), item(2, "y", "x", "002"), item(3, "z", null, "003")];
    assert.deepEqual(
      orderTimeline(cycle)
        .map((r) => r.eventId)
        .sort(),
      ["x", "y", "z"],
    );
  });
});

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const ok = <T>(value: T): PromiseSettledResult<T> => ({ status: "fulfilled", value });

void describe("audit: batcher", () => {
  void it("writes a full batch at once, without waiting for the delay", async () => {
    const batches: number[][] = [];
    const b = new Batcher<number, number>({
      maxBatch: 3,
      maxDelayMs: 60_000,
      write: async (items) => {
        batches.push(items);
        return items.map((i) => ok(i * 10));
      },
    });
    assert.deepEqual(await Promise.all([b.add(1), b.add(2), b.add(3)]), [10, 20, 30]);
    assert.deepEqual(batches, [[1, 2, 3]]);
    await b.close();
  });

  void it("writes a partial batch after the delay, and fills the next batch while one is written", async () => {
    const batches: number[][] = [];
    const gate = deferred<void>();
    const b = new Batcher<number, number>({
      maxBatch: 100,
      maxDelayMs: 1,
      write: async (items) => {
        batches.push(items);
        if (batches.length === 1) await gate.promise;
        return items.map((i) => ok(i));
      },
    });
    const first = b.add(1);
    // Wait until the first batch is being written, then queue more behind it.
    while (batches.length === 0) await new Promise((r) => setImmediate(r));
    const rest = [2, 3, 4].map((i) => b.add(i));
    assert.equal(b.queued, 3);
    gate.resolve();
    assert.deepEqual(await Promise.all([first, ...rest]), [1, 2, 3, 4]);
    assert.deepEqual(batches, [[1], [2, 3, 4]]);
    await b.close();
  });

  void it("a failed write rejects every waiter of its batch; per-item failures reject one", async () => {
    const boom = new Error("db down");
    const b = new Batcher<number, number>({
      maxBatch: 2,
      maxDelayMs: 0,
      write: async (items) => {
        if (items.includes(1)) throw boom;
        return items.map((i) => (i === 4 ? { status: "rejected", reason: new Error("bad 4") } : ok(i)));
      },
    });
    const settled = await Promise.allSettled([b.add(1), b.add(2), b.add(3), b.add(4)]);
    assert.deepEqual(
      settled.map((s) => (s.status === "fulfilled" ? s.value : (s.reason as Error).message)),
      ["db down", "db down", 3, "bad 4"],
    );
    await b.close();
  });

  void it("close writes what is queued, then refuses new items", async () => {
    const written: number[] = [];
    const b = new Batcher<number, number>({
      maxBatch: 10,
      maxDelayMs: 60_000,
      write: async (items) => {
        written.push(...items);
        return items.map((i) => ok(i));
      },
    });
    const p = [b.add(1), b.add(2)];
    await b.close();
    assert.deepEqual(await Promise.all(p), [1, 2]);
    assert.deepEqual(written, [1, 2]);
    await assert.rejects(b.add(3), BatcherClosedError);
  });
});

void describe("audit: writer", () => {
  const sqlError = (code: string) => Object.assign(new Error(`sqlstate ${code}`), { code });

  void it("classifies data errors apart from an unavailable database", () => {
    assert.equal(isRowError(sqlError("22P02")), true);
    assert.equal(isRowError(sqlError("23505")), true);
    assert.equal(isRowError(sqlError("57P01")), false);
    assert.equal(isRowError(sqlError("08006")), false);
    assert.equal(isRowError(Object.assign(new Error("refused"), { code: "ECONNREFUSED" })), false);
    assert.equal(isRowError(new Error("PGlite is closed")), false);
  });

  void it("isolates a bad row: its neighbours are written, it alone fails with a RetryableError", async () => {
    const calls: string[][] = [];
    let position = 0;
    const writer = new AuditWriter(
      {
        append: async (entries) => {
          calls.push(entries.map((e) => e.eventId));
          if (entries.some((e) => e.eventId === "poison")) throw sqlError("22021");
          return entries.map((): AppendResult => ({
            status: "inserted",
            position: ++position,
            conflict: false,
          }));
        },
      },
      { maxBatch: 3, maxDelayMs: 60_000 },
    );
    const settled = await Promise.allSettled([
      writer.append(entry(1)),
      writer.append(entry(2, { eventId: "poison" })),
      writer.append(entry(3)),
    ]);
    assert.equal(settled[0].status, "fulfilled");
    assert.equal(settled[2].status, "fulfilled");
    assert.equal(settled[1].status, "rejected");
    const reason = settled[1].reason as Error;
    assert.ok(reason instanceof RetryableError && !(reason instanceof DeferError));
    assert.deepEqual(calls, [
      ["o1:OrderPlaced", "poison", "o3:OrderPlaced"],
      ["o1:OrderPlaced"],
      ["poison"],
      ["o3:OrderPlaced"],
    ]);
    assert.deepEqual(writer.stats, { batches: 2, inserted: 2, duplicates: 0, failedBatches: 1 });
    await writer.close();
  });

  void it("an unavailable database defers every waiter of the batch (no delivery attempt used)", async () => {
    const writer = new AuditWriter(
      {
        append: async () => {
          throw Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
        },
      },
      { maxBatch: 2, maxDelayMs: 60_000, unavailableRetryMs: 250 },
    );
    const settled = await Promise.allSettled([writer.append(entry(1)), writer.append(entry(2))]);
    for (const s of settled) {
      assert.equal(s.status, "rejected");
      const err = s.reason as DeferError;
      assert.ok(err instanceof DeferError && err instanceof RetryableError);
      assert.equal(err.retryAfterMs, 250);
    }
    await writer.close();
  });

  /** A store that records each append's entries and positions, failing entries whose id is in `bad`. */
  function recordingStore(bad: { rows?: string[]; down?: () => boolean } = {}) {
    const calls: { ids: string[]; advance: Record<string, number> }[] = [];
    let position = 0;
    return {
      calls,
      append: async (
        entries: readonly AuditEntry[],
        _now?: () => Date,
        advance?: ReadonlyMap<string, number>,
      ) => {
        if (bad.down?.()) throw Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" });
        calls.push({ ids: entries.map((e) => e.eventId), advance: Object.fromEntries(advance ?? []) });
        if (entries.some((e) => bad.rows?.includes(e.eventId))) throw sqlError("22021");
        return entries.map((): AppendResult => ({
          status: "inserted",
          position: ++position,
          conflict: false,
        }));
      },
    };
  }

  void it("moves each stream's position in the batch's append, to the highest sequence of the batch", async () => {
    const store = recordingStore();
    const writer = new AuditWriter(store, { maxBatch: 4, maxDelayMs: 1 });
    const orders = new ReaderSession("ORDERS");
    const dlq = new ReaderSession("DLQ");
    await Promise.all([
      writer.append(entry(1), { seq: 7, session: orders }),
      writer.append(entry(2), { seq: 3, session: dlq }),
      writer.append(entry(3), { seq: 8, session: orders }),
      writer.append(entry(4)), // not read from a stream: moves no position
    ]);
    assert.deepEqual(store.calls, [
      {
        ids: ["o1:OrderPlaced", "o2:OrderPlaced", "o3:OrderPlaced", "o4:OrderPlaced"],
        advance: { ORDERS: 8, DLQ: 3 },
      },
    ]);
    await writer.close();
  });

  void it("a rejected row kills its reader session: its later entries are not written, so its position stops before it", async () => {
    const store = recordingStore({ rows: ["o2:OrderPlaced"] });
    const writer = new AuditWriter(store, { maxBatch: 4, maxDelayMs: 1 });
    const orders = new ReaderSession("ORDERS");
    const payments = new ReaderSession("PAYMENTS");
    const settled = await Promise.allSettled([
      writer.append(entry(1), { seq: 1, session: orders }),
      writer.append(entry(2), { seq: 2, session: orders }),
      writer.append(entry(3), { seq: 3, session: orders }),
      writer.append(entry(4), { seq: 1, session: payments }),
    ]);
    assert.deepEqual(
      settled.map((s) => s.status),
      ["fulfilled", "rejected", "rejected", "fulfilled"],
    );
    assert.ok(settled[1].status === "rejected" && settled[1].reason instanceof RetryableError);
    assert.ok(settled[2].status === "rejected" && settled[2].reason instanceof SessionDeadError);
    assert.equal(orders.dead, true);
    assert.equal(payments.dead, false);
    assert.deepEqual(store.calls.slice(1), [
      { ids: ["o1:OrderPlaced"], advance: { ORDERS: 1 } },
      { ids: ["o2:OrderPlaced"], advance: { ORDERS: 2 } },
      { ids: ["o4:OrderPlaced"], advance: { PAYMENTS: 1 } },
    ]);
    // Queued later, it is refused without a write.
    await assert.rejects(writer.append(entry(5), { seq: 4, session: orders }), SessionDeadError);
    assert.equal(store.calls.length, 4);
    await writer.close();
  });

  void it("an unavailable database kills the sessions of the batch; their next entries are refused unwritten", async () => {
    let down = true;
    const store = recordingStore({ down: () => down });
    const writer = new AuditWriter(store, { maxBatch: 2, maxDelayMs: 1 });
    const orders = new ReaderSession("ORDERS");
    const settled = await Promise.allSettled([
      writer.append(entry(1), { seq: 1, session: orders }),
      writer.append(entry(2), { seq: 2, session: orders }),
    ]);
    assert.deepEqual(
      settled.map((s) => s.status === "rejected" && s.reason instanceof DeferError),
      [true, true],
    );
    assert.equal(orders.dead, true);
    down = false;
    await assert.rejects(writer.append(entry(3), { seq: 3, session: orders }), SessionDeadError);
    // A new session (the reader restarted from the committed position) is written.
    const next = new ReaderSession("ORDERS");
    await writer.append(entry(1), { seq: 1, session: next });
    assert.deepEqual(store.calls, [{ ids: ["o1:OrderPlaced"], advance: { ORDERS: 1 } }]);
    await writer.close();
  });
});
