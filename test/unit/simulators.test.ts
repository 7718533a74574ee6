import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { FastifyInstance } from "fastify";
import {
  buildPaymentGateway,
  DECLINE_CARD,
  type ChargeResponse,
  type LedgerEntry,
  type OrderSummary,
  type RefundResponse,
} from "../../src/simulators/payment-gateway/app.js";
import {
  buildMailProvider,
  type MessageResponse,
  type StoredMessage,
} from "../../src/simulators/mail-provider/app.js";
import {
  IdempotencyStore,
  canonicalJson,
  fingerprint,
  type ProblemDocument,
} from "../../src/simulators/shared.js";
import { eventually } from "../helpers/eventually.js";

function charge(app: FastifyInstance, key: string | undefined, body: Record<string, unknown>) {
  return app.inject({
    method: "POST",
    url: "/v1/charges",
    headers: key === undefined ? {} : { "idempotency-key": key },
    payload: body,
  });
}

function refund(app: FastifyInstance, key: string, body: Record<string, unknown>) {
  return app.inject({
    method: "POST",
    url: "/v1/refunds",
    headers: { "idempotency-key": key },
    payload: body,
  });
}

async function ledger(app: FastifyInstance, orderId?: string): Promise<LedgerEntry[]> {
  const res = await app.inject({ method: "GET", url: "/v1/ledger", query: orderId ? { orderId } : {} });
  assert.equal(res.statusCode, 200);
  return res.json<{ entries: LedgerEntry[] }>().entries;
}

async function summary(app: FastifyInstance, query = ""): Promise<OrderSummary[]> {
  const res = await app.inject({ method: "GET", url: `/v1/ledger/summary${query}` });
  assert.equal(res.statusCode, 200);
  return res.json<{ orders: OrderSummary[] }>().orders;
}

function setFaults(app: FastifyInstance, faults: Record<string, unknown>) {
  return app.inject({ method: "PUT", url: "/admin/faults", payload: faults });
}

const basic = { amount: 1250, currency: "EUR", customerId: "cus_1", orderId: "ord_1" };

void describe("shared helpers", () => {
  void it("canonical JSON sorts keys recursively and fingerprints ignore key order", () => {
    assert.equal(
      canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: null } }),
      '{"a":{"c":null,"d":[1,{"x":1,"y":2}]},"b":1}',
    );
    assert.equal(fingerprint({ a: 1, b: 2 }), fingerprint({ b: 2, a: 1 }));
    assert.notEqual(fingerprint({ a: 1 }), fingerprint({ a: 2 }));
    assert.match(fingerprint({}), /^[0-9a-f]{64}$/);
  });

  void it("IdempotencyStore runs one effect for concurrent same-key calls", async () => {
    const store = new IdempotencyStore();
    let runs = 0;
    const effect = async () => {
      runs++;
      await sleep(20);
      return { status: 201, body: { n: runs } };
    };
    const results = await Promise.all([1, 2, 3, 4, 5].map(() => store.execute("s", "k", "fp", effect)));
    assert.equal(runs, 1);
    assert.equal(results.filter((r) => !r.replayed).length, 1);
    for (const r of results) assert.deepEqual(r.body, { n: 1 });
  });

  void it("IdempotencyStore does not store a failed effect", async () => {
    const store = new IdempotencyStore();
    await assert.rejects(
      store.execute("s", "k", "fp", () => {
        throw new Error("boom");
      }),
    );
    const r = await store.execute("s", "k", "fp", () => ({ status: 201, body: "ok" }));
    assert.equal(r.replayed, false);
  });
});

void describe("payment gateway", () => {
  let app: FastifyInstance;
  beforeEach(() => {
    app = buildPaymentGateway({ seed: 42 });
  });
  afterEach(async () => {
    await app.close();
  });

  void it("GET /health", async () => {
    const res = await app.inject({ method: "GET", url: "/health" });
    assert.equal(res.statusCode, 200);
  });

  void it("captures a charge and replays it for the same Idempotency-Key", async () => {
    const first = await charge(app, "key-1", basic);
    assert.equal(first.statusCode, 201);
    const body = first.json<ChargeResponse>();
    assert.match(body.id, /^ch_/);
    assert.deepEqual(body, {
      id: body.id,
      status: "captured",
      amount: 1250,
      currency: "EUR",
      orderId: "ord_1",
    });
    assert.equal(first.headers["idempotent-replayed"], undefined);

    const again = await charge(app, "key-1", { ...basic });
    assert.equal(again.statusCode, 200);
    assert.equal(again.headers["idempotent-replayed"], "true");
    assert.deepEqual(again.json(), body);

    const entries = await ledger(app);
    assert.equal(entries.length, 1);
    assert.equal(entries[0]!.idempotencyKey, "key-1");
    assert.equal(entries[0]!.kind, "charge");
  });

  void it("rejects the same key with a different body with 422 and records nothing", async () => {
    assert.equal((await charge(app, "key-1", basic)).statusCode, 201);
    const conflict = await charge(app, "key-1", { ...basic, amount: 999 });
    assert.equal(conflict.statusCode, 422);
    assert.match(conflict.headers["content-type"] as string, /^application\/problem\+json/);
    assert.equal(conflict.json<ProblemDocument>().status, 422);
    assert.equal((await ledger(app)).length, 1);
  });

  void it("keeps keys apart per endpoint", async () => {
    const c = await charge(app, "shared-key", basic);
    assert.equal(c.statusCode, 201);
    const r = await refund(app, "shared-key", { orderId: "ord_1", amount: 100 });
    assert.equal(r.statusCode, 201);
  });

  void it("concurrent requests with the same key create one entry (persisting, so the lock is held across I/O)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sim-"));
    const persisted = buildPaymentGateway({ ledgerFile: join(dir, "ledger.json") });
    try {
      const responses = await Promise.all(Array.from({ length: 8 }, () => charge(persisted, "same", basic)));
      const ids = new Set(responses.map((r) => r.json<ChargeResponse>().id));
      assert.equal(ids.size, 1);
      assert.equal(responses.filter((r) => r.statusCode === 201).length, 1);
      assert.equal(responses.filter((r) => r.statusCode === 200).length, 7);
      assert.equal((await ledger(persisted)).length, 1);
    } finally {
      await persisted.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  void it("declines by card, by customer and by amount, records and replays the decline", async () => {
    const byCard = await charge(app, "d1", { ...basic, orderId: "o-card", card: DECLINE_CARD });
    assert.equal(byCard.statusCode, 201);
    assert.equal(byCard.json<ChargeResponse>().status, "declined");
    assert.equal(byCard.json<ChargeResponse>().declineReason, "card_declined");

    const byCustomer = await charge(app, "d2", { ...basic, orderId: "o-cust", customerId: "decline-bob" });
    assert.equal(byCustomer.json<ChargeResponse>().status, "declined");
    assert.equal(byCustomer.json<ChargeResponse>().declineReason, "card_declined");

    const tooLarge = await charge(app, "d3", { ...basic, orderId: "o-big", amount: 1_000_000_01 });
    assert.equal(tooLarge.json<ChargeResponse>().status, "declined");
    assert.equal(tooLarge.json<ChargeResponse>().declineReason, "amount_too_large");

    const replay = await charge(app, "d1", { ...basic, orderId: "o-card", card: DECLINE_CARD });
    assert.equal(replay.statusCode, 200);
    assert.deepEqual(replay.json<ChargeResponse>(), byCard.json<ChargeResponse>());

    const entries = await ledger(app);
    assert.equal(entries.length, 3);
    assert.ok(entries.every((e) => e.status === "declined"));
    assert.deepEqual(await summary(app, "?orderId=o-card"), [
      {
        orderId: "o-card",
        currency: "EUR",
        captured: 0,
        refunded: 0,
        net: 0,
        charges: 0,
        declined: 1,
        refunds: 0,
      },
    ]);
  });

  void it("refunds, refuses over-refunds with 422 and unknown charges with 404", async () => {
    const ch = (await charge(app, "c1", { ...basic, amount: 1000 })).json<ChargeResponse>();
    const r1 = await refund(app, "r1", { chargeId: ch.id, orderId: "ord_1", amount: 600 });
    assert.equal(r1.statusCode, 201);
    assert.match(r1.json<RefundResponse>().id, /^re_/);
    assert.deepEqual(r1.json<RefundResponse>(), {
      id: r1.json<RefundResponse>().id,
      chargeId: ch.id,
      orderId: "ord_1",
      amount: 600,
      status: "succeeded",
    });

    const replay = await refund(app, "r1", { chargeId: ch.id, orderId: "ord_1", amount: 600 });
    assert.equal(replay.statusCode, 200);
    assert.equal(replay.headers["idempotent-replayed"], "true");
    assert.deepEqual(replay.json<RefundResponse>(), r1.json<RefundResponse>());

    const over = await refund(app, "r2", { chargeId: ch.id, orderId: "ord_1", amount: 401 });
    assert.equal(over.statusCode, 422);
    assert.match(over.headers["content-type"] as string, /problem\+json/);

    // Without chargeId: the order's latest captured charge.
    const rest = await refund(app, "r2", { orderId: "ord_1", amount: 400 });
    assert.equal(rest.statusCode, 201, "a rejected request does not burn its key");
    assert.equal(rest.json<RefundResponse>().chargeId, ch.id);

    const unknown = await refund(app, "r3", { chargeId: "ch_nope", orderId: "ord_1", amount: 1 });
    assert.equal(unknown.statusCode, 404);
    const noCharge = await refund(app, "r4", { orderId: "ord_none", amount: 1 });
    assert.equal(noCharge.statusCode, 404);

    assert.deepEqual(await summary(app), [
      {
        orderId: "ord_1",
        currency: "EUR",
        captured: 1000,
        refunded: 1000,
        net: 0,
        charges: 1,
        declined: 0,
        refunds: 2,
      },
    ]);
    const entries = await ledger(app, "ord_1");
    assert.deepEqual(
      entries.map((e) => [e.kind, e.amount]),
      [
        ["charge", 1000],
        ["refund", 600],
        ["refund", 400],
      ],
    );
  });

  void it("outage → 503 problem+json with no ledger entry", async () => {
    const put = await setFaults(app, { outage: true });
    assert.equal(put.statusCode, 200);
    assert.deepEqual(put.json(), { failureRate: 0, latencyMs: 0, latencyJitterMs: 0, outage: true });
    const res = await charge(app, "k", basic);
    assert.equal(res.statusCode, 503);
    assert.match(res.headers["content-type"] as string, /^application\/problem\+json/);
    assert.equal((await ledger(app)).length, 0);
    assert.equal((await app.inject({ method: "GET", url: "/health" })).statusCode, 200);

    await setFaults(app, { latencyMs: 300 });
    const started = Date.now();
    assert.equal((await charge(app, "k", basic)).statusCode, 503);
    assert.ok(Date.now() - started < 200, "an outage answers at once, without latency");

    await setFaults(app, { outage: false, latencyMs: 0 });
    assert.equal((await charge(app, "k", basic)).statusCode, 201);
  });

  void it("failureRate 1 → 5xx with nothing recorded; the retry succeeds after reset", async () => {
    await setFaults(app, { failureRate: 1 });
    for (let i = 0; i < 5; i++) {
      const res = await charge(app, "k", basic);
      assert.ok(res.statusCode === 500 || res.statusCode === 503, `got ${res.statusCode}`);
      assert.match(res.headers["content-type"] as string, /^application\/problem\+json/);
    }
    assert.equal((await ledger(app)).length, 0);
    const reset = await app.inject({ method: "POST", url: "/admin/reset" });
    assert.equal(reset.statusCode, 200);
    assert.deepEqual((await app.inject({ method: "GET", url: "/admin/faults" })).json(), {
      failureRate: 0,
      latencyMs: 0,
      latencyJitterMs: 0,
      outage: false,
    });
    const ok = await charge(app, "k", basic);
    assert.equal(ok.statusCode, 201);
    assert.equal((await ledger(app)).length, 1);
  });

  void it("latency delays the response but the effect is already recorded; the retry replays it", async () => {
    const latencyMs = 400;
    await setFaults(app, { latencyMs });
    const started = Date.now();
    let answered = false;
    const pending = charge(app, "slow", basic).finally(() => (answered = true));
    // The charge shows in the ledger while its answer is still held back (within the latency, or it fails).
    const during = await eventually(
      async () => {
        const entries = await ledger(app);
        assert.equal(entries.length, 1);
        return entries;
      },
      { what: "the slow charge in the ledger", timeoutMs: latencyMs, intervalMs: 5 },
    );
    assert.equal(answered, false, "effect recorded before the delayed response");
    const res = await pending;
    assert.ok(Date.now() - started >= latencyMs - 5, "response was delayed");
    assert.equal(res.statusCode, 201);

    // The client "timed out"; it retries with the same key and gets the stored result.
    await setFaults(app, { latencyMs: 0 });
    const retry = await charge(app, "slow", basic);
    assert.equal(retry.statusCode, 200);
    assert.equal(retry.json<ChargeResponse>().id, during[0]!.id);
    assert.equal((await ledger(app)).length, 1);
  });

  void it("validation errors → 400 problem+json listing every field", async () => {
    const res = await charge(app, "k", { amount: 0, currency: "EURO", orderId: "o" });
    assert.equal(res.statusCode, 400);
    assert.match(res.headers["content-type"] as string, /^application\/problem\+json/);
    const p = res.json<ProblemDocument>();
    assert.equal(p.status, 400);
    assert.equal(typeof p.type, "string");
    assert.equal(typeof p.title, "string");
    assert.equal(typeof p.detail, "string");
    const pointers = (p.errors ?? []).map((e) => e.pointer).sort();
    assert.deepEqual(pointers, ["/body/amount", "/body/currency", "/body/customerId"]);

    const noKey = await charge(app, undefined, basic);
    assert.equal(noKey.statusCode, 400);
    assert.deepEqual(
      (noKey.json<ProblemDocument>().errors ?? []).map((e) => e.pointer),
      ["/headers/idempotency-key"],
    );

    const stringAmount = await charge(app, "k", { ...basic, amount: "1250" });
    assert.equal(stringAmount.statusCode, 400, "no type coercion on bodies");

    const badFaults = await setFaults(app, { failureRate: 2, bogus: true });
    assert.equal(badFaults.statusCode, 400);

    const notFound = await app.inject({ method: "GET", url: "/v1/nope" });
    assert.equal(notFound.statusCode, 404);
    assert.match(notFound.headers["content-type"] as string, /^application\/problem\+json/);
    assert.equal((await ledger(app)).length, 0);
  });
});

void describe("payment gateway persistence", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sim-ledger-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void it("keeps ledger and idempotency records across a restart", async () => {
    const file = join(dir, "nested", "ledger.json");
    const first = buildPaymentGateway({ ledgerFile: file });
    const ch = (await charge(first, "persist-1", basic)).json<ChargeResponse>();
    assert.equal(
      (await refund(first, "persist-r", { chargeId: ch.id, orderId: "ord_1", amount: 50 })).statusCode,
      201,
    );
    await first.close();

    const onDisk = JSON.parse(await readFile(file, "utf8"));
    assert.equal(onDisk.entries.length, 2);

    const second = buildPaymentGateway({ ledgerFile: file });
    try {
      assert.equal((await ledger(second)).length, 2);
      const replay = await charge(second, "persist-1", basic);
      assert.equal(replay.statusCode, 200);
      assert.equal(replay.json<ChargeResponse>().id, ch.id);
      assert.equal((await ledger(second)).length, 2);
      await second.inject({ method: "POST", url: "/admin/reset" });
    } finally {
      await second.close();
    }
    assert.equal(JSON.parse(await readFile(file, "utf8")).entries.length, 0);
  });
});

void describe("mail provider", () => {
  let app: FastifyInstance;
  beforeEach(() => {
    app = buildMailProvider({ seed: 7 });
  });
  afterEach(async () => {
    await app.close();
  });

  const send = (key: string | undefined, body: Record<string, unknown>) =>
    app.inject({
      method: "POST",
      url: "/v1/messages",
      headers: key === undefined ? {} : { "idempotency-key": key },
      payload: body,
    });
  const msg = {
    to: "ada@example.com",
    subject: "Order confirmed",
    text: "Thanks!",
    tags: { orderId: "ord_1" },
  };
  const list = async (query = "") =>
    (await app.inject({ method: "GET", url: `/v1/messages${query}` })).json<{ messages: StoredMessage[] }>()
      .messages;

  void it("queues a message once per Idempotency-Key", async () => {
    const first = await send("m1", msg);
    assert.equal(first.statusCode, 202);
    assert.match(first.json<MessageResponse>().id, /^msg_/);
    assert.equal(first.json<MessageResponse>().status, "queued");

    const again = await send("m1", msg);
    assert.equal(again.statusCode, 200);
    assert.equal(again.headers["idempotent-replayed"], "true");
    assert.deepEqual(again.json<MessageResponse>(), first.json<MessageResponse>());

    const conflict = await send("m1", { ...msg, subject: "Other" });
    assert.equal(conflict.statusCode, 422);
    assert.match(conflict.headers["content-type"] as string, /^application\/problem\+json/);

    const all = await list();
    assert.equal(all.length, 1);
    assert.deepEqual(all[0], {
      ...msg,
      id: first.json<MessageResponse>().id,
      idempotencyKey: "m1",
      at: all[0]!.at,
    });
  });

  void it("filters by orderId and tag.*", async () => {
    await send("a", msg);
    await send("b", { ...msg, tags: { orderId: "ord_2", kind: "shipped" } });
    await send("c", { to: "bob@example.com", subject: "Hi", text: "x" });
    assert.equal((await list()).length, 3);
    assert.equal((await list("?orderId=ord_2")).length, 1);
    assert.equal((await list("?tag.orderId=ord_1")).length, 1);
    assert.equal((await list("?tag.kind=shipped&orderId=ord_2")).length, 1);
    assert.equal((await list("?to=bob@example.com")).length, 1);
    assert.equal((await list("?orderId=none")).length, 0);
    assert.equal((await app.inject({ method: "GET", url: "/v1/messages?bogus=1" })).statusCode, 400);
  });

  void it("validates input and fault-injects like the gateway", async () => {
    const bad = await send("k", { to: "not-an-email", subject: "s" });
    assert.equal(bad.statusCode, 400);
    assert.match(bad.headers["content-type"] as string, /^application\/problem\+json/);
    assert.equal((await send(undefined, msg)).statusCode, 400);

    await app.inject({ method: "PUT", url: "/admin/faults", payload: { outage: true } });
    assert.equal((await send("k", msg)).statusCode, 503);
    assert.equal((await list()).length, 0);
    await app.inject({ method: "POST", url: "/admin/reset" });
    assert.equal((await send("k", msg)).statusCode, 202);
  });

  void it("persists messages across a restart", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sim-mail-"));
    try {
      const file = join(dir, "mail.json");
      const first = buildMailProvider({ mailLogFile: file });
      const sent = (
        await first.inject({
          method: "POST",
          url: "/v1/messages",
          headers: { "idempotency-key": "p" },
          payload: msg,
        })
      ).json<MessageResponse>();
      await first.close();
      const second = buildMailProvider({ mailLogFile: file });
      try {
        const replay = await second.inject({
          method: "POST",
          url: "/v1/messages",
          headers: { "idempotency-key": "p" },
          payload: msg,
        });
        assert.equal(replay.statusCode, 200);
        assert.equal(replay.json<MessageResponse>().id, sent.id);
        const msgs = (await second.inject({ method: "GET", url: "/v1/messages" })).json<{
          messages: StoredMessage[];
        }>().messages;
        assert.equal(msgs.length, 1);
      } finally {
        await second.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
