/**
 * The inventory service against a real nats-server: reserve, reject (all or nothing, unknown SKU), commit,
 * release, tombstones, duplicates, invariant breaches, a 200-order race on one SKU across two replicas, the
 * catalog loaded once across restarts, and a bad CATALOG_FILE.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import {
  jetstream,
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { casUpdate, readJson, type KV } from "../../src/lib/kv.js";
import { decodeEvent, encodeEvent } from "../../src/lib/events/codec.js";
import type { EventData, EventType } from "../../src/lib/events/catalog.js";
import { makeEvent, subjectOf, type AnyEnvelope, type Envelope } from "../../src/lib/events/envelope.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { startService, type CommonConfig, type RunningService } from "../../src/lib/service.js";
import type { CatalogEntry } from "../../src/services/inventory/catalog.js";
import type { InventoryConfig } from "../../src/services/inventory/config.js";
import {
  decideReturn,
  returnSale,
  stockViolations,
  unpublishedAdjustments,
  type ReservationRecord,
  type StockRecord,
} from "../../src/services/inventory/inventory.js";
import {
  ORDERS_CONSUMER,
  adjustmentOutboxOf,
  definition,
  storeOf,
} from "../../src/services/inventory/service.js";
import { adjustmentEvent } from "../../src/services/inventory/adjustments.js";
import { eventually } from "../helpers/eventually.js";
import { connectTo, startNatsServer, type NatsServer } from "../helpers/nats.js";
import { AUTH_ENV, operatorFetch } from "../helpers/auth.js";

const WAIT_MS = 15_000;

/** Every event on the INVENTORY stream, as it arrives (a JetStream ordered consumer). */
class Outcomes {
  readonly events: AnyEnvelope[] = [];
  readonly #waiters = new Set<() => void>();
  #messages: ConsumerMessages | undefined;

  static async start(js: JetStreamClient): Promise<Outcomes> {
    const o = new Outcomes();
    const consumer = await js.consumers.get("INVENTORY");
    const messages = await consumer.consume();
    o.#messages = messages;
    void (async () => {
      for await (const m of messages) {
        o.events.push(decodeEvent(m.data));
        for (const w of [...o.#waiters]) w();
      }
    })();
    return o;
  }

  of<T extends EventType>(orderId: string, type: T): Envelope<T>[] {
    return this.events.filter((e) => e.aggregate_id === orderId && e.type === type) as Envelope<T>[];
  }

  /** Resolves with `check()`'s first defined value, re-checked as events arrive. */
  waitFor<R>(what: string, check: () => R | undefined, timeoutMs = WAIT_MS): Promise<R> {
    const now = check();
    if (now !== undefined) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const waiter = () => {
        const v = check();
        if (v === undefined) return;
        clearTimeout(timer);
        this.#waiters.delete(waiter);
        resolve(v);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.#waiters.add(waiter);
    });
  }

  /** The first event of `type` for `orderId`. */
  next<T extends EventType>(orderId: string, type: T): Promise<Envelope<T>> {
    return this.waitFor(`${type} of ${orderId}`, () => this.of(orderId, type)[0]);
  }

  async stop(): Promise<void> {
    await this.#messages?.close();
  }
}

function item(sku: string, stock: number, price = 1000) {
  return { sku, name: `Test ${sku}`, price, currency: "EUR", stock };
}

const testCatalog = {
  items: [
    item("T-RES-A", 10),
    item("T-RES-B", 3),
    item("T-AON-A", 5),
    item("T-AON-B", 1),
    item("T-UNK", 4),
    item("T-COMMIT", 6),
    item("T-REL", 6),
    item("T-RETURN", 6),
    item("T-RETURN-B", 4),
    item("T-TOMB", 2),
    item("T-DUP", 5),
    item("T-BREACH", 3),
    item("T-RACE", 50),
    item("T-CRASH-A", 5),
    item("T-CRASH-B", 5),
    item("T-WAIT", 4),
    item("T-I3-A", 4),
    item("T-I3-B", 2),
    item("T-ADJ", 10),
    item("T-ADJ-API", 10),
  ],
};

void describe("inventory service", () => {
  let server: NatsServer;
  let dir: string;
  let catalogFile: string;
  let nc: NatsConnection;
  let js: JetStreamClient;
  let jsm: JetStreamManager;
  let publisher: Publisher;
  let stockKv: KV;
  let catalogKv: KV;
  let reservationsKv: KV;
  let outcomes: Outcomes;
  let svc: RunningService<InventoryConfig & CommonConfig> | undefined;

  const env = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
    ...AUTH_ENV,
    NATS_URL: server.url,
    PORT: "0",
    // The service's logs are quiet unless asked for (the invariant-breach test logs expected errors).
    LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
    RETRY_INITIAL_MS: "50",
    RETRY_MAX_MS: "500",
    MAX_ATTEMPTS: "20",
    DRAIN_TIMEOUT_MS: "5000",
    ...extra,
  });

  before(async () => {
    server = await startNatsServer();
    dir = await mkdtemp(join(tmpdir(), "inventory-it-"));
    catalogFile = join(dir, "catalog.json");
    await writeFile(catalogFile, JSON.stringify(testCatalog));
    svc = await startService(definition, env({ CATALOG_FILE: catalogFile }));
    nc = await connectTo(server);
    js = jetstream(nc);
    jsm = await jetstreamManager(nc);
    publisher = new Publisher(js);
    const kvm = new Kvm(nc);
    [stockKv, catalogKv, reservationsKv] = await Promise.all([
      kvm.open("stock"),
      kvm.open("catalog"),
      kvm.open("reservations"),
    ]);
    outcomes = await Outcomes.start(js);
  });

  after(async () => {
    await outcomes?.stop();
    await svc?.stop();
    await nc?.close();
    await server?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // ---- helpers ------------------------------------------------------------------------------------

  function placedEvent(orderId: string, lines: [string, number][]): Envelope<"OrderPlaced"> {
    const items = lines.map(([sku, quantity]) => ({ sku, quantity, unitPrice: 1000 }));
    const now = new Date();
    return makeEvent(
      "OrderPlaced",
      {
        orderId,
        customerId: `cust-${orderId}`,
        email: "buyer@example.com",
        items,
        total: items.reduce((t, l) => t + l.quantity * l.unitPrice, 0),
        currency: "EUR",
        placedAt: now.toISOString(),
        timeoutAt: new Date(now.getTime() + 30_000).toISOString(),
      },
      { aggregateId: orderId, source: "test" },
    );
  }

  async function publish<T extends EventType>(type: T, data: EventData<T> & { orderId: string }) {
    const ev = makeEvent(type, data, { aggregateId: data.orderId, source: "test" });
    return { ev, seq: (await publisher.publish(ev)).seq };
  }

  async function place(orderId: string, lines: [string, number][]) {
    const ev = placedEvent(orderId, lines);
    return { ev, seq: (await publisher.publish(ev)).seq };
  }

  const confirm = (orderId: string) =>
    publish("OrderConfirmed", { orderId, paymentId: `pay-${orderId}`, total: 1000, currency: "EUR" });
  const cancel = (orderId: string) => publish("OrderCancelled", { orderId, reason: "payment_declined" });

  /** Publishes the same event again under another message id (a duplicate the server does not drop). */
  async function duplicate(ev: Envelope, n = 1): Promise<number> {
    const ack = await js.publish(subjectOf(ev), encodeEvent(ev), { msgID: `${ev.id}:dup-${n}` });
    assert.equal(ack.duplicate, false);
    return ack.seq;
  }

  /** Resolves once the inventory consumer has acknowledged every ORDERS message up to `seq`. */
  async function processed(seq: number): Promise<void> {
    await eventually(
      async () => {
        const info = await jsm.consumers.info("ORDERS", ORDERS_CONSUMER);
        assert.ok(info.ack_floor.stream_seq >= seq, `ack floor ${info.ack_floor.stream_seq} < ${seq}`);
      },
      { what: `ORDERS up to ${seq} acknowledged by ${ORDERS_CONSUMER}`, timeoutMs: WAIT_MS },
    );
  }

  async function stock(sku: string): Promise<StockRecord> {
    const s = (await readJson<StockRecord>(stockKv, sku)).value;
    assert.ok(s, `no stock for ${sku}`);
    return s;
  }

  async function figures(sku: string) {
    const { available, reserved, committed } = await stock(sku);
    return { available, reserved, committed };
  }

  async function reservation(orderId: string): Promise<ReservationRecord | null> {
    return (await readJson<ReservationRecord>(reservationsKv, orderId)).value;
  }

  /** Events stored on the INVENTORY stream for `orderId`, by type (authoritative, not what we received). */
  async function stored(orderId: string): Promise<Record<string, number>> {
    const info = await jsm.streams.info("INVENTORY", { subjects_filter: `inventory.${orderId}.>` });
    const out: Record<string, number> = {};
    for (const [subject, n] of Object.entries(info.state.subjects ?? {})) out[subject.split(".")[2]!] = n;
    return out;
  }

  async function get(path: string): Promise<{ status: number; type: string | null; body: unknown }> {
    const res = await operatorFetch(svc!.url + path);
    return { status: res.status, type: res.headers.get("content-type"), body: await res.json() };
  }

  async function allStockViolations(): Promise<string[]> {
    const out: string[] = [];
    for await (const k of await stockKv.keys()) out.push(...stockViolations(await stock(k)));
    return out;
  }

  // ---- tests --------------------------------------------------------------------------------------

  void it("loads the catalog file into the catalog and stock buckets", async () => {
    const entry = (await readJson<CatalogEntry>(catalogKv, "T-RES-A")).value;
    assert.deepEqual(entry, { sku: "T-RES-A", name: "Test T-RES-A", price: 1000, currency: "EUR" });
    assert.deepEqual(await stock("T-RES-A"), {
      sku: "T-RES-A",
      initial: 10,
      available: 10,
      reserved: 0,
      committed: 0,
      holds: {},
    });
    assert.equal(
      (await readJson(catalogKv, "SKU-LIMITED")).value,
      null,
      "a file replaces the default catalog",
    );
    const ready = await fetch(svc!.url + "/ready");
    assert.equal(ready.status, 200);
  });

  void it("reserves every line (duplicate SKU lines merged) and publishes StockReserved", async () => {
    const { ev } = await place("o-res-1", [
      ["T-RES-A", 2],
      ["T-RES-B", 3],
      ["T-RES-A", 1],
    ]);
    const reserved = await outcomes.next("o-res-1", "StockReserved");
    assert.deepEqual(reserved.data, {
      orderId: "o-res-1",
      customerId: "cust-o-res-1",
      items: [
        { sku: "T-RES-A", quantity: 3 },
        { sku: "T-RES-B", quantity: 3 },
      ],
      total: 6000,
      currency: "EUR",
      // Version 2: the reservation lapses at the order's deadline.
      expiresAt: ev.data.timeoutAt,
    });
    assert.equal(reserved.version, 2);
    assert.equal(reserved.id, "o-res-1:StockReserved");
    assert.equal(reserved.causation_id, ev.id);
    assert.equal(reserved.trace_id, ev.trace_id);
    assert.equal(reserved.source, "inventory");
    assert.deepEqual(await stock("T-RES-A"), {
      sku: "T-RES-A",
      initial: 10,
      available: 7,
      reserved: 3,
      committed: 0,
      holds: { "o-res-1": 3 },
    });
    assert.deepEqual(await figures("T-RES-B"), { available: 0, reserved: 3, committed: 0 });
    assert.deepEqual(await reservation("o-res-1"), { status: "reserved", items: reserved.data.items });

    // The HTTP API shows the same.
    const one = await get("/inventory/T-RES-A");
    assert.equal(one.status, 200);
    assert.deepEqual(one.body, {
      sku: "T-RES-A",
      name: "Test T-RES-A",
      price: 1000,
      currency: "EUR",
      initial: 10,
      adjusted: 0,
      available: 7,
      reserved: 3,
      committed: 0,
    });
    const list = await get("/inventory");
    const items = (list.body as { items: { sku: string }[] }).items;
    assert.deepEqual(
      items.map((i) => i.sku),
      testCatalog.items.map((i) => i.sku).sort(),
    );
    assert.deepEqual(
      items.find((i) => i.sku === "T-RES-B"),
      {
        sku: "T-RES-B",
        name: "Test T-RES-B",
        price: 1000,
        currency: "EUR",
        initial: 3,
        adjusted: 0,
        available: 0,
        reserved: 3,
        committed: 0,
      },
    );
    const rec = await get("/inventory/reservations/o-res-1");
    assert.equal(rec.status, 200);
    assert.deepEqual(rec.body, { status: "reserved", items: reserved.data.items });
  });

  void it("answers 404 problem documents for unknown SKUs and reservations", async () => {
    for (const [path, type] of [
      ["/inventory/NOPE", "sku-not-found"],
      ["/inventory/bad.sku", "sku-not-found"],
      ["/inventory/reservations/o-none", "reservation-not-found"],
    ] as const) {
      const r = await get(path);
      assert.equal(r.status, 404, path);
      assert.match(r.type ?? "", /^application\/problem\+json/);
      const body = r.body as Record<string, unknown>;
      assert.equal(body["type"], `https://shopstream.dev/problems/inventory/${type}`);
      assert.equal(body["status"], 404);
      assert.equal(typeof body["title"], "string");
      assert.equal(typeof body["detail"], "string");
    }
  });

  void it("rejects a whole order when one line is short, leaving stock untouched", async () => {
    await place("o-aon-1", [
      ["T-AON-A", 2],
      ["T-AON-B", 3],
    ]);
    const rejected = await outcomes.next("o-aon-1", "StockRejected");
    assert.deepEqual(rejected.data, { orderId: "o-aon-1", reason: "out_of_stock", skus: ["T-AON-B"] });
    assert.deepEqual(await stock("T-AON-A"), {
      sku: "T-AON-A",
      initial: 5,
      available: 5,
      reserved: 0,
      committed: 0,
      holds: {},
    });
    assert.deepEqual(await figures("T-AON-B"), { available: 1, reserved: 0, committed: 0 });
    assert.deepEqual(await reservation("o-aon-1"), {
      status: "rejected",
      items: [
        { sku: "T-AON-A", quantity: 2 },
        { sku: "T-AON-B", quantity: 3 },
      ],
      reason: "out_of_stock",
      skus: ["T-AON-B"],
    });
    // The saga then cancels it: nothing was held, so nothing is released.
    await cancel("o-aon-1");
    const released = await outcomes.next("o-aon-1", "StockReleased");
    assert.deepEqual(released.data, { orderId: "o-aon-1", items: [] });
    assert.equal((await reservation("o-aon-1"))?.status, "rejected");
    assert.deepEqual(await figures("T-AON-A"), { available: 5, reserved: 0, committed: 0 });
  });

  void it("rejects an order with an unknown SKU", async () => {
    await place("o-unk-1", [
      ["T-UNK", 1],
      ["NO-SUCH-SKU", 1],
    ]);
    const rejected = await outcomes.next("o-unk-1", "StockRejected");
    assert.deepEqual(rejected.data, { orderId: "o-unk-1", reason: "unknown_sku", skus: ["NO-SUCH-SKU"] });
    assert.deepEqual(await figures("T-UNK"), { available: 4, reserved: 0, committed: 0 });
    assert.deepEqual((await stock("T-UNK")).holds, {});
  });

  void it("commits a reservation on OrderConfirmed, once", async () => {
    await place("o-com-1", [["T-COMMIT", 4]]);
    await outcomes.next("o-com-1", "StockReserved");
    const { ev } = await confirm("o-com-1");
    const committed = await outcomes.next("o-com-1", "StockCommitted");
    assert.deepEqual(committed.data, { orderId: "o-com-1", items: [{ sku: "T-COMMIT", quantity: 4 }] });
    assert.equal(committed.causation_id, ev.id);
    const after = await stock("T-COMMIT");
    assert.deepEqual(after, {
      sku: "T-COMMIT",
      initial: 6,
      available: 2,
      reserved: 0,
      committed: 4,
      holds: {},
    });
    assert.equal((await reservation("o-com-1"))?.status, "committed");

    // A redelivered OrderConfirmed changes nothing and publishes nothing new.
    await processed(await duplicate(ev));
    assert.deepEqual(await stock("T-COMMIT"), after);
    assert.deepEqual(await stored("o-com-1"), { StockReserved: 1, StockCommitted: 1 });
  });

  void it("releases a reservation on OrderCancelled, once", async () => {
    await place("o-rel-1", [["T-REL", 5]]);
    await outcomes.next("o-rel-1", "StockReserved");
    assert.deepEqual(await figures("T-REL"), { available: 1, reserved: 5, committed: 0 });
    const { ev } = await cancel("o-rel-1");
    const released = await outcomes.next("o-rel-1", "StockReleased");
    assert.deepEqual(released.data, { orderId: "o-rel-1", items: [{ sku: "T-REL", quantity: 5 }] });
    assert.deepEqual(await stock("T-REL"), {
      sku: "T-REL",
      initial: 6,
      available: 6,
      reserved: 0,
      committed: 0,
      holds: {},
    });
    assert.deepEqual(await reservation("o-rel-1"), {
      status: "released",
      items: [{ sku: "T-REL", quantity: 5 }],
    });

    await processed(await duplicate(ev));
    assert.deepEqual(await figures("T-REL"), { available: 6, reserved: 0, committed: 0 });
    assert.deepEqual(await stored("o-rel-1"), { StockReserved: 1, StockReleased: 1 });
  });

  void it("returns the sold units of an order cancelled on request after its confirmation, once", async () => {
    await place("o-ret-1", [
      ["T-RETURN", 4],
      ["T-RETURN-B", 1],
    ]);
    await outcomes.next("o-ret-1", "StockReserved");
    const { ev: confirmed } = await confirm("o-ret-1");
    await outcomes.next("o-ret-1", "StockCommitted");
    assert.deepEqual(await figures("T-RETURN"), { available: 2, reserved: 0, committed: 4 });
    const { ev } = await publish("OrderCancelled", { orderId: "o-ret-1", reason: "customer_request" });
    const released = await outcomes.next("o-ret-1", "StockReleased");
    assert.deepEqual(released.data, {
      orderId: "o-ret-1",
      items: [
        { sku: "T-RETURN", quantity: 4 },
        { sku: "T-RETURN-B", quantity: 1 },
      ],
    });
    assert.equal(released.causation_id, ev.id);
    const after = await stock("T-RETURN");
    assert.deepEqual(after, {
      sku: "T-RETURN",
      initial: 6,
      available: 6,
      reserved: 0,
      committed: 0,
      holds: {},
      returns: { "o-ret-1": 4 },
    });
    assert.deepEqual(await figures("T-RETURN-B"), { available: 4, reserved: 0, committed: 0 });
    assert.deepEqual(await reservation("o-ret-1"), {
      status: "returned",
      items: [
        { sku: "T-RETURN", quantity: 4 },
        { sku: "T-RETURN-B", quantity: 1 },
      ],
    });

    // Redelivered cancellation and confirmation: nothing moves twice, nothing is published again.
    await duplicate(ev);
    await processed(await duplicate(confirmed));
    assert.deepEqual(await stock("T-RETURN"), after);
    assert.deepEqual(await figures("T-RETURN-B"), { available: 4, reserved: 0, committed: 0 });
    assert.deepEqual(await stored("o-ret-1"), { StockReserved: 1, StockCommitted: 1, StockReleased: 1 });
    assert.deepEqual(await allStockViolations(), []);
  });

  void it("finishes a return cut off after some SKUs: no SKU is returned twice", async () => {
    await place("o-ret-2", [
      ["T-RETURN", 1],
      ["T-RETURN-B", 2],
    ]);
    await outcomes.next("o-ret-2", "StockReserved");
    await confirm("o-ret-2");
    await outcomes.next("o-ret-2", "StockCommitted");
    // A handler that crashed mid-way: the record says returning and one SKU's units are back already.
    await casUpdate<ReservationRecord>(reservationsKv, "o-ret-2", (r) => decideReturn(r));
    await casUpdate<StockRecord>(stockKv, "T-RETURN-B", (s) => {
      const draft = { ...s!, holds: { ...s!.holds } };
      returnSale("o-ret-2", 2)(draft);
      return draft;
    });
    const before = await figures("T-RETURN-B");
    const { seq } = await publish("OrderCancelled", { orderId: "o-ret-2", reason: "operator_request" });
    await outcomes.next("o-ret-2", "StockReleased");
    await processed(seq);
    assert.deepEqual(await figures("T-RETURN-B"), before, "not returned a second time");
    assert.equal((await stock("T-RETURN")).returns?.["o-ret-2"], 1);
    assert.equal((await reservation("o-ret-2"))?.status, "returned");
    assert.deepEqual(await allStockViolations(), []);
  });

  void it("leaves a tombstone when cancelled before reserved, so a late OrderPlaced reserves nothing", async () => {
    await cancel("o-tomb-1");
    const released = await outcomes.next("o-tomb-1", "StockReleased");
    assert.deepEqual(released.data, { orderId: "o-tomb-1", items: [] });
    assert.deepEqual(await reservation("o-tomb-1"), { status: "released", items: [] });

    const { seq } = await place("o-tomb-1", [["T-TOMB", 1]]);
    await processed(seq);
    assert.deepEqual(await stock("T-TOMB"), {
      sku: "T-TOMB",
      initial: 2,
      available: 2,
      reserved: 0,
      committed: 0,
      holds: {},
    });
    assert.deepEqual(await reservation("o-tomb-1"), { status: "released", items: [] });
    assert.deepEqual(await stored("o-tomb-1"), { StockReleased: 1 });
  });

  void it("handles duplicated and redelivered OrderPlaced events once", async () => {
    const { ev } = await place("o-dup-1", [["T-DUP", 2]]);
    // Two more copies right away (possibly handled concurrently with the first) and one later.
    const seqs = await Promise.all([duplicate(ev, 1), duplicate(ev, 2)]);
    await outcomes.next("o-dup-1", "StockReserved");
    await processed(Math.max(...seqs));
    await processed(await duplicate(ev, 3));
    assert.deepEqual(await stock("T-DUP"), {
      sku: "T-DUP",
      initial: 5,
      available: 3,
      reserved: 2,
      committed: 0,
      holds: { "o-dup-1": 2 },
    });
    assert.deepEqual(await stored("o-dup-1"), { StockReserved: 1 });

    // The same for a rejected order: one rejection, nothing held.
    const rej = await place("o-dup-2", [["T-DUP", 4]]);
    await outcomes.next("o-dup-2", "StockRejected");
    await processed(await duplicate(rej.ev));
    assert.deepEqual(await figures("T-DUP"), { available: 3, reserved: 2, committed: 0 });
    assert.deepEqual(await stored("o-dup-2"), { StockRejected: 1 });
  });

  void it("finishes the work of a handler that crashed at any step", async () => {
    const put = async (kv: KV, key: string, value: unknown) => {
      await kv.put(key, JSON.stringify(value));
    };
    const lines = [
      { sku: "T-CRASH-A", quantity: 2 },
      { sku: "T-CRASH-B", quantity: 1 },
    ];
    const asPairs = (ls: typeof lines) => ls.map((l): [string, number] => [l.sku, l.quantity]);

    // Crashed mid-reserve: record `reserving`, first line already held.
    await put(reservationsKv, "o-crash-1", { status: "reserving", items: lines });
    await put(stockKv, "T-CRASH-A", {
      sku: "T-CRASH-A",
      initial: 5,
      available: 3,
      reserved: 2,
      committed: 0,
      holds: { "o-crash-1": 2 },
    });
    await place("o-crash-1", asPairs(lines));
    assert.deepEqual((await outcomes.next("o-crash-1", "StockReserved")).data.items, lines);
    assert.deepEqual((await stock("T-CRASH-A")).holds, { "o-crash-1": 2 });
    assert.deepEqual(await figures("T-CRASH-A"), { available: 3, reserved: 2, committed: 0 });
    assert.deepEqual(await figures("T-CRASH-B"), { available: 4, reserved: 1, committed: 0 });

    // Crashed after deciding a rejection, before giving the holds back.
    await put(reservationsKv, "o-crash-2", {
      status: "rejected",
      items: [{ sku: "T-CRASH-A", quantity: 3 }],
      reason: "out_of_stock",
      skus: ["T-CRASH-A"],
    });
    const a = await stock("T-CRASH-A");
    await put(stockKv, "T-CRASH-A", {
      ...a,
      available: a.available - 1,
      reserved: a.reserved + 1,
      holds: { ...a.holds, "o-crash-2": 1 },
    });
    await place("o-crash-2", [["T-CRASH-A", 3]]);
    const rejected = await outcomes.next("o-crash-2", "StockRejected");
    assert.deepEqual(rejected.data, { orderId: "o-crash-2", reason: "out_of_stock", skus: ["T-CRASH-A"] });
    assert.deepEqual((await stock("T-CRASH-A")).holds, { "o-crash-1": 2 });
    assert.deepEqual(await figures("T-CRASH-A"), { available: 3, reserved: 2, committed: 0 });

    // Crashed after recording `reserved`, before publishing: a redelivery publishes it.
    await put(reservationsKv, "o-crash-3", {
      status: "reserved",
      items: [{ sku: "T-CRASH-B", quantity: 1 }],
    });
    const b = await stock("T-CRASH-B");
    await put(stockKv, "T-CRASH-B", {
      ...b,
      available: b.available - 1,
      reserved: b.reserved + 1,
      holds: { ...b.holds, "o-crash-3": 1 },
    });
    await place("o-crash-3", [["T-CRASH-B", 1]]);
    assert.deepEqual((await outcomes.next("o-crash-3", "StockReserved")).data.items, [
      { sku: "T-CRASH-B", quantity: 1 },
    ]);
    assert.deepEqual(await figures("T-CRASH-B"), { available: 3, reserved: 2, committed: 0 });

    // Crashed mid-release: record `released`, hold not given back yet.
    await put(reservationsKv, "o-crash-3", {
      status: "released",
      items: [{ sku: "T-CRASH-B", quantity: 1 }],
    });
    await cancel("o-crash-3");
    assert.deepEqual((await outcomes.next("o-crash-3", "StockReleased")).data.items, [
      { sku: "T-CRASH-B", quantity: 1 },
    ]);
    assert.deepEqual((await stock("T-CRASH-B")).holds, { "o-crash-1": 1 });
    assert.deepEqual(await figures("T-CRASH-B"), { available: 4, reserved: 1, committed: 0 });
  });

  void it("releases a reservation cut off mid-way at once; its OrderPlaced, when it comes back, holds nothing", async () => {
    // A reserve cut off mid-way (a replica killed): the record says `reserving` and the line is held. Its
    // OrderPlaced comes back only after the ack wait; the cancellation (e.g. the order's timeout) must not wait
    // for it: it used to retry until dead-lettered, and the stock stayed held for good.
    const put = async (kv: KV, key: string, value: unknown) => {
      await kv.put(key, JSON.stringify(value));
    };
    await put(reservationsKv, "o-wait-1", { status: "reserving", items: [{ sku: "T-WAIT", quantity: 3 }] });
    const s = await stock("T-WAIT");
    await put(stockKv, "T-WAIT", {
      ...s,
      available: s.available - 3,
      reserved: s.reserved + 3,
      holds: { ...s.holds, "o-wait-1": 3 },
    });
    await cancel("o-wait-1");
    const released = await outcomes.next("o-wait-1", "StockReleased");
    assert.deepEqual(released.data.items, [{ sku: "T-WAIT", quantity: 3 }]);
    assert.deepEqual(await figures("T-WAIT"), { available: 4, reserved: 0, committed: 0 });
    assert.equal((await reservation("o-wait-1"))?.status, "released");
    // The OrderPlaced comes back: nothing is held, nothing reserved.
    const { seq } = await place("o-wait-1", [["T-WAIT", 3]]);
    await processed(seq);
    assert.deepEqual(await figures("T-WAIT"), { available: 4, reserved: 0, committed: 0 });
    assert.equal((await stored("o-wait-1"))["StockReserved"], undefined);
  });

  void it("dead-letters confirmations and cancellations that would break the saga's invariants", async () => {
    const dlqEntry = async (eventId: string) =>
      eventually(
        async () => {
          const info = await jsm.streams.info("DLQ");
          for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
            const m = await jsm.streams.getMessage("DLQ", { seq });
            if (m && m.subject === `dlq.${ORDERS_CONSUMER}` && decodeEvent(m.data).id === eventId) return m;
          }
          throw new Error(`no DLQ entry for ${eventId}`);
        },
        { what: `the DLQ entry of ${eventId}`, timeoutMs: WAIT_MS },
      );

    // Confirmed without any reservation.
    const ghost = await confirm("o-ghost-1");
    const e1 = await dlqEntry(ghost.ev.id);
    assert.equal(e1.header.get(Hdr.DlqCode), "INVARIANT_BREACH");
    assert.match(e1.header.get(Hdr.DlqError), /o-ghost-1 was confirmed but its reservation does not exist/);

    // Cancelled after it was committed: the stock stays sold.
    await place("o-breach-1", [["T-BREACH", 1]]);
    await outcomes.next("o-breach-1", "StockReserved");
    await confirm("o-breach-1");
    await outcomes.next("o-breach-1", "StockCommitted");
    const late = await cancel("o-breach-1");
    const e2 = await dlqEntry(late.ev.id);
    assert.equal(e2.header.get(Hdr.DlqCode), "INVARIANT_BREACH");
    assert.deepEqual(await figures("T-BREACH"), { available: 2, reserved: 0, committed: 1 });
    assert.equal((await reservation("o-breach-1"))?.status, "committed");
  });

  void it(
    "never oversells: 200 concurrent orders for 50 units across two replicas",
    { timeout: 60_000 },
    async () => {
      const svc2 = await startService(definition, env({ CATALOG_FILE: catalogFile }));
      const seen: StockRecord[] = [];
      const watch = await stockKv.watch({ key: "T-RACE" });
      const watching = (async () => {
        for await (const e of watch) if (e.operation === "PUT") seen.push(e.json<StockRecord>());
      })();
      try {
        const ids = Array.from({ length: 200 }, (_, i) => `o-race-${i}`);
        await Promise.all(ids.map((id) => place(id, [["T-RACE", 1]])));
        const decided = () =>
          ids.filter(
            (id) => outcomes.of(id, "StockReserved").length + outcomes.of(id, "StockRejected").length > 0,
          );
        await outcomes.waitFor(
          "an outcome for all 200 orders",
          () => (decided().length === ids.length ? true : undefined),
          45_000,
        );
        const reserved = ids.filter((id) => outcomes.of(id, "StockReserved").length > 0);
        const rejected = ids.filter((id) => outcomes.of(id, "StockRejected").length > 0);
        assert.equal(reserved.length, 50);
        assert.equal(rejected.length, 150);
        assert.equal(reserved.filter((id) => rejected.includes(id)).length, 0, "no order has both outcomes");
        const final = await stock("T-RACE");
        assert.deepEqual(
          { available: final.available, reserved: final.reserved, committed: final.committed },
          { available: 0, reserved: 50, committed: 0 },
        );
        assert.deepEqual(Object.keys(final.holds).sort(), [...reserved].sort());
        assert.deepEqual(stockViolations(final), []);
        const records = await Promise.all(ids.map((id) => reservation(id)));
        assert.equal(records.filter((r) => r?.status === "reserved").length, 50);
        assert.equal(records.filter((r) => r?.status === "rejected").length, 150);
        // I3 held at every revision the watcher saw, up to the final one.
        await eventually(() => assert.ok(seen.some((s) => s.available === 0 && s.reserved === 50)), {
          what: "the watcher to see the final T-RACE revision",
          timeoutMs: WAIT_MS,
        });
        assert.ok(seen.length > 1);
        for (const s of seen) assert.deepEqual(stockViolations(s), []);
      } finally {
        watch.stop();
        await watching;
        await svc2.stop();
      }
    },
  );

  void it("keeps I3 for every SKU while orders compete, are duplicated, committed and released", async () => {
    // Its own SKUs: 4 of T-I3-A and 2 of T-I3-B for ten orders at once, each placed twice.
    const ids = Array.from({ length: 10 }, (_, i) => `o-i3-${i}`);
    const linesOf = (i: number): [string, number][] =>
      i % 2 === 0
        ? [
            ["T-I3-A", 1],
            ["T-I3-B", 1],
          ]
        : [["T-I3-A", 1]];
    const placed = await Promise.all(ids.map((id, i) => place(id, linesOf(i))));
    await Promise.all(placed.map((p) => duplicate(p.ev)));
    const decided = await Promise.all(
      ids.map((id) =>
        outcomes.waitFor(
          `the outcome of ${id}`,
          () => outcomes.of(id, "StockReserved")[0] ?? outcomes.of(id, "StockRejected")[0],
        ),
      ),
    );
    const reserved = ids.filter((_, i) => decided[i]!.type === "StockReserved");
    // Every order wants one T-I3-A: exactly four are reserved, whichever they are.
    assert.equal(reserved.length, 4, `reserved: ${reserved.join(", ")}`);

    // Half of the reserved orders are confirmed; the others, and every rejected one, cancelled.
    const committed = reserved.filter((_, k) => k % 2 === 0);
    const cancelled = ids.filter((id) => !committed.includes(id));
    await Promise.all([...committed.map((id) => confirm(id)), ...cancelled.map((id) => cancel(id))]);
    await Promise.all([
      ...committed.map((id) => outcomes.next(id, "StockCommitted")),
      ...cancelled.map((id) => outcomes.next(id, "StockReleased")),
    ]);
    for (const id of ids) {
      const stockOutcome = reserved.includes(id) ? "StockReserved" : "StockRejected";
      const end = committed.includes(id) ? "StockCommitted" : "StockReleased";
      assert.deepEqual(
        await stored(id),
        { [stockOutcome]: 1, [end]: 1 },
        `${id}: one of each, duplicates aside`,
      );
    }

    const sold = (sku: string) =>
      committed
        .flatMap((id) => linesOf(ids.indexOf(id)))
        .filter(([s]) => s === sku)
        .reduce((n, [, q]) => n + q, 0);
    for (const [sku, initial] of [
      ["T-I3-A", 4],
      ["T-I3-B", 2],
    ] as const) {
      assert.deepEqual(await figures(sku), {
        available: initial - sold(sku),
        reserved: 0,
        committed: sold(sku),
      });
      assert.deepEqual((await stock(sku)).holds, {}, `${sku}: no hold left`);
    }
    assert.deepEqual(await allStockViolations(), []);
  });

  void it(
    "loads the catalog once: a restart never overwrites stock or entries",
    { timeout: 60_000 },
    async () => {
      const before = await stock("T-RES-A");
      const entryBefore = (await readJson<CatalogEntry>(catalogKv, "T-RES-A")).value;
      await svc!.stop();
      svc = undefined;
      // Same SKU with other stock and price, plus a new one.
      await writeFile(catalogFile, JSON.stringify({ items: [item("T-RES-A", 999, 1), item("T-NEW", 7)] }));
      svc = await startService(definition, env({ CATALOG_FILE: catalogFile }));
      assert.deepEqual(await stock("T-RES-A"), before);
      assert.deepEqual((await readJson<CatalogEntry>(catalogKv, "T-RES-A")).value, entryBefore);
      assert.deepEqual(await figures("T-NEW"), { available: 7, reserved: 0, committed: 0 });
      // The restarted service goes on consuming.
      await place("o-new-1", [["T-NEW", 2]]);
      await outcomes.next("o-new-1", "StockReserved");
      assert.deepEqual(await figures("T-NEW"), { available: 5, reserved: 2, committed: 0 });

      // Without CATALOG_FILE the default catalog's SKUs are added; existing ones are kept.
      await svc.stop();
      svc = await startService(definition, env());
      assert.deepEqual(await figures("SKU-LIMITED"), { available: 5, reserved: 0, committed: 0 });
      assert.deepEqual(await stock("T-RES-A"), before);
      assert.deepEqual(await figures("T-NEW"), { available: 5, reserved: 2, committed: 0 });
    },
  );

  void it("a stock adjustment's event kept by a crash is published by the next start's sweep, once; one already on the stream is not published again", async () => {
    const store = storeOf(svc!.ctx);
    const afterSeq = (await jsm.streams.info("INVENTORY")).state.last_seq;
    const kept = (quantity: number) => ({
      reason: quantity > 0 ? ("restock" as const) : ("damaged" as const),
      operator: "op-1",
      at: new Date().toISOString(),
      afterSeq,
    });
    // 1. Applied, then the process died before publishing: the stock moved, its event is only kept in the record.
    assert.deepEqual(await store.adjustStock("T-ADJ", "adj_never", 3, kept(3)), { kind: "applied" });
    // 2. Applied and published, then the process died before dropping the kept copy — and the publish is older than
    //    the server's duplicate window (published here without a message id, so the window cannot catch a repeat).
    const published = kept(-2);
    assert.deepEqual(await store.adjustStock("T-ADJ", "adj_published", -2, published), { kind: "applied" });
    const onStream = adjustmentEvent(
      "T-ADJ",
      { id: "adj_published", quantity: -2, unpublished: published },
      "inventory",
    );
    await js.publish(subjectOf(onStream), encodeEvent(onStream));
    assert.deepEqual(
      unpublishedAdjustments(await stock("T-ADJ")).map((a) => a.id),
      ["adj_never", "adj_published"],
    );

    // A replica starts (as after the crash): its sweep publishes what is owed, and only that.
    const replica = await startService(definition, env({ CATALOG_FILE: catalogFile }));
    try {
      await eventually(async () => assert.deepEqual(unpublishedAdjustments(await stock("T-ADJ")), []), {
        what: "the kept adjustment events of T-ADJ published",
      });
      assert.deepEqual(await stored("T-ADJ"), { StockAdjusted: 2 });
      const events = await outcomes.waitFor("both StockAdjusted of T-ADJ", () => {
        const e = outcomes.of("T-ADJ", "StockAdjusted");
        return e.length === 2 ? e : undefined;
      });
      assert.deepEqual(events.map((e) => [e.id, e.data.quantity, e.data.reason, e.data.operator]).sort(), [
        ["T-ADJ:StockAdjusted:adj_never", 3, "restock", "op-1"],
        ["T-ADJ:StockAdjusted:adj_published", -2, "damaged", "op-1"],
      ]);
      // A sweep with nothing kept publishes nothing; the stock balances with its adjustments.
      assert.equal(await adjustmentOutboxOf(replica.ctx)!.sweep(), 0);
      const s = await stock("T-ADJ");
      assert.deepEqual([s.adjusted, s.available], [1, 11]);
      assert.deepEqual(stockViolations(s), []);
    } finally {
      await replica.stop();
    }
  });

  void it("an adjustment through the API publishes its event once and keeps nothing; a retry publishes nothing more", async () => {
    const post = () =>
      operatorFetch(`${svc!.url}/inventory/T-ADJ-API/adjustments`, {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": "restock-1" },
        body: JSON.stringify({ quantity: 4, reason: "restock" }),
      });
    const first = await post();
    assert.equal(first.status, 200, await first.clone().text());
    const id = ((await first.json()) as { adjustmentId: string }).adjustmentId;
    assert.deepEqual(unpublishedAdjustments(await stock("T-ADJ-API")), [], "nothing kept after the publish");
    const retry = await post();
    assert.equal(retry.status, 200);
    assert.equal(((await retry.json()) as { replayed: boolean }).replayed, true);
    assert.deepEqual(await stored("T-ADJ-API"), { StockAdjusted: 1 });
    const m = await jsm.direct.getMessage("INVENTORY", { last_by_subj: "inventory.T-ADJ-API.StockAdjusted" });
    assert.equal(decodeEvent(m!.data).id, `T-ADJ-API:StockAdjusted:${id}`);
  });

  void it(
    "stops at start-up with a clear message when CATALOG_FILE is invalid",
    { timeout: 60_000 },
    async () => {
      const bad = join(dir, "bad-catalog.json");
      await writeFile(
        bad,
        JSON.stringify({ items: [item("T-BAD-NEW", 3), { ...item("T-BAD-2", 1), price: -5 }] }),
      );
      const main = fileURLToPath(new URL("../../src/services/inventory/main.ts", import.meta.url));
      const child = spawn(process.execPath, ["--import", "tsx", main], {
        env: { ...process.env, ...env({ CATALOG_FILE: bad, LOG_LEVEL: "silent" }) },
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
      const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
      assert.equal(code, 1, stderr);
      assert.match(
        stderr,
        new RegExp(
          `inventory: failed to start: CATALOG_FILE ${bad.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: `,
        ),
      );
      assert.match(stderr, /\/items\/1\/price: Expected integer to be greater or equal to 0/);
      assert.equal((await readJson(catalogKv, "T-BAD-NEW")).value, null, "nothing was loaded");
    },
  );
});
