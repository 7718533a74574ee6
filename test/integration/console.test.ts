/**
 * The console service on its own NATS user (the operator's rights), against a real nats-server with authentication:
 * the overview reads every stream and durable; dead letters are listed masked, inspected with their attempt history,
 * redriven at most CONSOLE_MAX_REDRIVES times (the count travels with the message), and discarded with a reason that
 * a discard record carries (and that the DLQ list no longer shows); hostile input gets a 4xx problem document and
 * changes nothing.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { makeEvent, subjectOf } from "../../src/lib/events/envelope.js";
import { encodeEvent } from "../../src/lib/events/codec.js";
import { Streams } from "../../src/lib/events/catalog.js";
import { Durables } from "../../src/lib/events/consumers.js";
import { DISCARD_SUBJECT_PREFIX, deadLetter, listDeadLetters } from "../../src/lib/messaging/dlq.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { provisionAll } from "../../src/tools/provisioning.js";
import { startService, type RunningService } from "../../src/lib/service.js";
import { definition as consoleService } from "../../src/services/console/service.js";
import { startAuthNatsServer, type AuthNatsServer } from "../helpers/nats.js";
import { authEnv, customerAuth, operatorAuth } from "../helpers/auth.js";
import { orderPlacedData } from "../helpers/messaging.js";
import { until } from "../helpers/eventually.js";

describe("console API", () => {
  let auth: AuthNatsServer;
  let admin: NatsConnection;
  let payments: NatsConnection;
  let jsm: JetStreamManager;
  let svc: RunningService<never>;
  let n = 0;

  /** The latest message of `orders.<orderId>` as a consumer receives it (what the runner would dead-letter). */
  async function deliveryOf(orderId: string) {
    const stored = await jsm.streams.getMessage(Streams.ORDERS, { last_by_subj: `orders.${orderId}` });
    assert.ok(stored);
    const m = await (
      await jetstream(admin).consumers.get(Streams.ORDERS, { opt_start_seq: stored.seq })
    ).next({
      expires: 5_000,
    });
    assert.equal(m?.seq, stored.seq);
    return m;
  }

  /** Places an OrderPlaced (as orders) and dead-letters it as payments-orders would; returns its DLQ sequence. */
  async function poisoned(code = "TEST_POISON"): Promise<{ orderId: string; seq: number }> {
    const orderId = `o-console-${++n}-${Date.now().toString(36)}`;
    const placed = makeEvent("OrderPlaced", orderPlacedData(orderId), {
      aggregateId: orderId,
      source: "orders",
    });
    const orders = await auth.connectAs("orders");
    await jetstream(orders).publish(subjectOf(placed), encodeEvent(placed), { msgID: placed.id });
    await orders.close();
    const m = await deliveryOf(orderId);
    await deadLetter(new Publisher(jetstream(payments)), m, {
      consumer: Durables.PAYMENTS_ORDERS,
      code,
      error: "poisoned by the test",
      attempts: 3,
    });
    const entry = (await listDeadLetters(jsm, { limit: 1000 })).find(
      (d) => d.subject === `orders.${orderId}`,
    );
    assert.ok(entry);
    return { orderId, seq: entry.dlqSequence };
  }

  async function call(method: string, path: string, body?: unknown, headers?: Record<string, string>) {
    const res = await fetch(`${svc.url}${path}`, {
      method,
      headers: {
        ...(headers ?? (await operatorAuth())),
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, type: res.headers.get("content-type") ?? "", json };
  }

  before(async () => {
    auth = await startAuthNatsServer();
    admin = await auth.connectAs("admin");
    await provisionAll(admin, {});
    jsm = await jetstreamManager(admin);
    payments = await auth.connectAs("payments");
    svc = (await startService(consoleService, {
      NATS_URL: auth.server.url,
      ...auth.secrets.env("console"),
      PORT: "0",
      LOG_LEVEL: "silent",
      CONSOLE_MAX_REDRIVES: "2",
      CONSOLE_SAMPLE_MS: "200",
      ...(await authEnv()),
    })) as RunningService<never>;
  });
  after(async () => {
    await svc?.stop();
    await payments?.close();
    await admin?.close();
    await auth?.cleanup();
  });

  test("needs an operator token: none is 401, a customer's 403 (problem+json); the page itself is open", async () => {
    const none = await call("GET", "/api/session", undefined, {});
    assert.equal(none.status, 401);
    assert.match(none.type, /application\/problem\+json/);
    const customer = await call("GET", "/api/dead-letters", undefined, await customerAuth("cus_1"));
    assert.equal(customer.status, 403);
    const page = await fetch(`${svc.url}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<script type="module" src="\/assets\/app\.js">/);
    const js = await fetch(`${svc.url}/assets/app.js`);
    assert.match(js.headers.get("content-type") ?? "", /javascript/);
    assert.doesNotMatch(await js.text(), /https?:\/\/(cdn|unpkg|jsdelivr)/, "nothing fetched from a CDN");
  });

  test("the overview reads every stream and durable as the console's NATS user", async () => {
    await until(
      "a sample",
      async () => ((await call("GET", "/api/overview")).json?.samples?.length ?? 0) > 0,
    );
    const { samples } = (await call("GET", "/api/overview")).json;
    const last = samples[samples.length - 1];
    assert.deepEqual(last.streams.map((s: { name: string }) => s.name).sort(), [
      "DLQ",
      "INVENTORY",
      "NOTIFICATIONS",
      "ORDERS",
      "PAYMENTS",
    ]);
    assert.ok(
      last.streams.every((s: { messages: number }) => s.messages >= 0),
      "every stream's info was readable",
    );
    const durables = last.consumers.map((c: { durable: string }) => c.durable);
    for (const d of [Durables.PAYMENTS_ORDERS, Durables.INVENTORY_ORDERS, Durables.NOTIFICATIONS_ORDERS])
      assert.ok(durables.includes(d), d);
  });

  test("a dead letter is listed and inspected masked, then unmasked on request", async () => {
    const { orderId, seq } = await poisoned();
    const list = await call(
      "GET",
      `/api/dead-letters?consumer=${Durables.PAYMENTS_ORDERS}&error=test_poison`,
    );
    const row = list.json.deadLetters.find((d: { dlqSequence: number }) => d.dlqSequence === seq);
    assert.ok(row, "listed with the filters");
    assert.equal(row.orderId, orderId);
    const masked = await call("GET", `/api/dead-letters/${seq}`);
    assert.equal(masked.json.masked, true);
    assert.doesNotMatch(JSON.stringify(masked.json.event), /customer-\d+@example\.com/);
    assert.match(JSON.stringify(masked.json.event), /•••@example\.com/);
    const clear = await call("GET", `/api/dead-letters/${seq}?unmask=true`);
    assert.equal(clear.json.masked, false);
    assert.match(JSON.stringify(clear.json.event), /@example\.com/);
    assert.doesNotMatch(JSON.stringify(clear.json.event), /•••/);
    const none = await call("GET", `/api/dead-letters?type=NoSuchType`);
    assert.ok(
      !none.json.deadLetters.some((d: { dlqSequence: number }) => d.dlqSequence === seq),
      "filtered out",
    );
  });

  test("redrive needs a confirmation, carries the count and history, and stops at the cap", async () => {
    const { orderId, seq } = await poisoned("FIRST_FAILURE");
    const unconfirmed = await call("POST", "/api/dead-letters/redrive", { seqs: [seq] });
    assert.equal(unconfirmed.status, 400);
    assert.equal((await call("GET", `/api/dead-letters/${seq}`)).status, 200, "still there");

    let current = seq;
    for (let round = 1; round <= 2; round++) {
      const r = await call("POST", "/api/dead-letters/redrive", { seqs: [current], confirm: true });
      assert.deepEqual(
        r.json.results.map((x: { ok: boolean; redrives: number }) => [x.ok, x.redrives]),
        [[true, round]],
      );
      // The redriven message fails again: dead-lettered again, with the count and the history it carries.
      const again = await jsm.streams.getMessage(Streams.ORDERS, { last_by_subj: `orders.${orderId}` });
      assert.equal(again?.header.get(Hdr.RedriveCount), String(round));
      const m = await deliveryOf(orderId);
      await deadLetter(new Publisher(jetstream(payments)), m, {
        consumer: Durables.PAYMENTS_ORDERS,
        code: `FAILURE_${round + 1}`,
        error: "still failing",
        attempts: 1,
      });
      const entry = (await listDeadLetters(jsm, { limit: 1000 })).find(
        (d) => d.subject === `orders.${orderId}`,
      );
      assert.ok(entry);
      current = entry.dlqSequence;
      const view = (await call("GET", `/api/dead-letters/${current}`)).json;
      assert.equal(view.redrives, round);
      assert.deepEqual(
        view.history.map((h: { code: string }) => h.code),
        ["FIRST_FAILURE", "FAILURE_2"].slice(0, round),
      );
    }
    const capped = await call("POST", "/api/dead-letters/redrive", { seqs: [current], confirm: true });
    assert.equal(capped.json.results[0].ok, false);
    assert.equal(capped.json.results[0].code, "REDRIVE_LIMIT");
    assert.equal((await call("GET", `/api/dead-letters/${current}`)).status, 200, "kept in the DLQ");
  });

  test("discard needs a reason, writes a discard record with it, and the entry leaves the list", async () => {
    const { seq } = await poisoned();
    const noReason = await call("POST", `/api/dead-letters/${seq}/discard`, { reason: "  " });
    assert.equal(noReason.status, 400);
    const ok = await call("POST", `/api/dead-letters/${seq}/discard`, {
      reason: "duplicate of a refunded order",
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    const record = await jsm.streams.getMessage(Streams.DLQ, { seq: ok.json.recordSeq });
    assert.ok(record?.subject.startsWith(`${DISCARD_SUBJECT_PREFIX}.`));
    assert.equal(record?.header.get(Hdr.DlqDiscardReason), "duplicate of a refunded order");
    assert.equal(record?.header.get(Hdr.DlqDiscarded), String(seq));
    assert.equal((await call("GET", `/api/dead-letters/${seq}`)).status, 404);
    assert.equal(
      (await call("GET", `/api/dead-letters/${ok.json.recordSeq}`)).status,
      404,
      "a record is no entry",
    );
    const again = await call("POST", `/api/dead-letters/${seq}/discard`, { reason: "twice" });
    assert.equal(again.status, 404);
    assert.match(again.type, /application\/problem\+json/);
  });

  test("hostile input: a 4xx problem document, the DLQ unchanged, the service still ready", async () => {
    await poisoned();
    const before = (await jsm.streams.info(Streams.DLQ)).state.messages;
    // Never a valid sequence: a discard of a real entry is not hostile input.
    const junk = fc
      .oneof(
        fc.string({ maxLength: 40 }),
        fc.constantFrom("0", "-1", "1e3", "9007199254740993", "NaN", "%00", "../../etc", "1;2", "🙂"),
      )
      .filter((s) => !/^\s*\+?[0-9]+\s*$/.test(s) || /^0|^9007/.test(s.trim()));
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          junk.map((s) => ({ method: "GET", path: `/api/dead-letters/${encodeURIComponent(s)}` })),
          junk.map((s) => ({
            method: "POST",
            path: `/api/dead-letters/${encodeURIComponent(s)}/discard`,
            body: { reason: "x x x" },
          })),
          fc.anything().map((b) => ({ method: "POST", path: "/api/dead-letters/redrive", body: b })),
          fc.anything().map((b) => ({ method: "POST", path: "/api/dead-letters/1/discard", body: b })),
          junk.map((s) => ({ method: "GET", path: `/api/dead-letters?since=${encodeURIComponent(s)}` })),
          junk.map((s) => ({ method: "GET", path: `/api/orders/${encodeURIComponent(s)}x/` })),
          fc.constant({ method: "POST", path: "/api/dead-letters/redrive", body: "{not json" }),
          fc.constant({
            method: "POST",
            path: "/api/dead-letters/redrive",
            body: { seqs: [], confirm: true },
          }),
          fc.constant({ method: "PUT", path: "/api/dev/faults/payment-gateway", body: { outage: true } }),
        ),
        async (req) => {
          const r = await call(req.method, req.path, (req as { body?: unknown }).body);
          assert.ok(r.status >= 400 && r.status < 500, `${req.method} ${req.path}: ${r.status}`);
          assert.match(r.type, /application\/problem\+json/, `${req.method} ${req.path}`);
          assert.equal(r.json.status, r.status);
        },
      ),
      { numRuns: 150 },
    );
    assert.equal(
      (await jsm.streams.info(Streams.DLQ)).state.messages,
      before,
      "nothing redriven or discarded",
    );
    assert.equal((await fetch(`${svc.url}/ready`)).status, 200);
  });
});
