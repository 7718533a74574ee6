/**
 * Erasure of personal data by crypto-shredding (issue 13 part 5), end to end on the whole system with NATS
 * authentication (each service on its own user): the e-mail travels sealed, `DELETE /customers/{id}/personal-data`
 * destroys the customer's key, the e-mail then reads as erased everywhere while the audit chain still verifies, an
 * order still in flight is settled with NotificationWithheld, and the customer's next order gets a new key.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { Msg } from "@nats-io/transport-node";
import { decodeEvent } from "../../src/lib/events/codec.js";
import type { Envelope } from "../../src/lib/events/envelope.js";
import { parseSealed } from "../../src/lib/pii/seal.js";
import { auditStoreOf } from "../../src/services/audit/service.js";
import { ORDERS_CONSUMER as NOTIFICATIONS_CONSUMER } from "../../src/services/notifications/service.js";
import { customerAuth, operatorAuth } from "../helpers/auth.js";
import { getJson, startSystem, type System } from "../helpers/system.js";

const catalog = [{ sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 1_000 }];
const CUSTOMER = "cus_erasure";
const EMAIL = "grace.hopper@example.com";
const line = [{ sku: "SKU-A", quantity: 1 }];

describe("erasure of personal data (crypto-shredding)", () => {
  let sys: System;
  let jsm: JetStreamManager;
  before(async () => {
    sys = await startSystem({ catalog, auth: true });
    jsm = await jetstreamManager(sys.nc);
  });
  after(async () => {
    await sys?.stop();
  });

  /** The OrderPlaced of an order as the ORDERS stream stores it, and its raw bytes. */
  async function storedOrderPlaced(
    orderId: string,
  ): Promise<{ event: Envelope<"OrderPlaced">; raw: string }> {
    const m = await jsm.direct.getMessage("ORDERS", { seq: 1, next_by_subj: `orders.${orderId}` });
    assert.ok(m, `OrderPlaced of ${orderId}`);
    return { event: decodeEvent(m.data) as Envelope<"OrderPlaced">, raw: Buffer.from(m.data).toString() };
  }

  const readOrder = async (orderId: string, who: { authorization: string }) =>
    (await fetch(`${sys.urls.orders}/orders/${orderId}`, { headers: who })).json() as Promise<any>;

  const erase = async (customerId: string, who: Record<string, string>) =>
    fetch(`${sys.urls.orders}/customers/${encodeURIComponent(customerId)}/personal-data`, {
      method: "DELETE",
      headers: who,
    });

  /** The audit log's stored payloads (what its hash chain hashes) of an order's rows. */
  const auditPayloads = async (orderId: string): Promise<string[]> => {
    const store = auditStoreOf(sys.services.audit.ctx);
    assert.ok(store, "the audit store is open");
    const rows = await store.db.query<{ payload: string }>(
      `SELECT payload FROM ${store.qualified} WHERE order_id = $1`,
      [orderId],
    );
    return rows.map((r) => r.payload);
  };

  const mailsTo = async (orderId: string) =>
    (await getJson(`${sys.urls.mail}/v1/messages?orderId=${orderId}`)).messages as { to: string }[];

  test("erase, verify the chain, read the order as erased, withhold a pending e-mail, a new key for a new order", async () => {
    const customer = await customerAuth(CUSTOMER);
    const operator = await operatorAuth();

    // 1. An order before erasure: the address is sealed on the bus and in the audit log, readable through the API.
    const first = await sys.placeOrder({ customerId: CUSTOMER, email: EMAIL, items: line });
    assert.equal(first.status, 202);
    const firstId = first.body.orderId as string;
    assert.equal((await sys.waitForTerminal(firstId)).status, "CONFIRMED");
    const placed = await storedOrderPlaced(firstId);
    assert.match(placed.event.data.email, /^pii:v1:/);
    assert.ok(!placed.raw.includes(EMAIL) && !placed.raw.includes("grace.hopper"), "no plaintext on the bus");
    const oldKeyId = parseSealed(placed.event.data.email).keyId;
    assert.deepEqual(
      [(await readOrder(firstId, customer)).email, (await readOrder(firstId, customer)).personalData],
      [EMAIL, "present"],
    );
    await sys.until("the first e-mail sent", async () => (await mailsTo(firstId)).length === 1);
    assert.equal((await mailsTo(firstId))[0]!.to, EMAIL);
    const audited = await sys.until("the OrderPlaced audited", async () => {
      const rows = await auditPayloads(firstId);
      return rows.some((p) => p.includes('"OrderPlaced"')) && rows;
    });
    assert.ok(!audited.some((p) => p.includes(EMAIL)), "no plaintext in the audit log");
    assert.ok(
      audited.some((p) => p.includes(placed.event.data.email)),
      "the audit log holds the sealed form",
    );

    // 2. An order in flight at the time of erasure: confirmed while notifications does not pull (as when its
    // breaker is open), so its e-mail waits in the stream.
    const mailer = sys.services.notifications.ctx.runners.get(NOTIFICATIONS_CONSUMER);
    assert.ok(mailer, "the notifications consumer runs");
    mailer.pause();
    const pending = await sys.placeOrder({ customerId: CUSTOMER, email: EMAIL, items: line });
    const pendingId = pending.body.orderId as string;
    assert.equal((await sys.waitForTerminal(pendingId)).status, "CONFIRMED");
    const withheld = sys.nc.subscribe(`notifications.${pendingId}.NotificationWithheld`, { max: 1 });
    const withheldEvent = (async (): Promise<Msg | undefined> => {
      for await (const msg of withheld) return msg;
      return undefined;
    })();

    // 3. Erasure: operator only, idempotent, 204 for an unknown customer too.
    assert.equal((await erase(CUSTOMER, {})).status, 401);
    const byCustomer = await erase(CUSTOMER, customer);
    assert.equal(byCustomer.status, 403);
    assert.match(byCustomer.headers.get("content-type") ?? "", /application\/problem\+json/);
    assert.equal(
      (await readOrder(firstId, customer)).personalData,
      "present",
      "a refused erasure erased nothing",
    );
    assert.equal((await erase(CUSTOMER, operator)).status, 204);
    assert.equal((await erase(CUSTOMER, operator)).status, 204, "again: the same answer");
    assert.equal((await erase("cus_never_seen", operator)).status, 204);

    // 4. The e-mail is unreadable; the order is otherwise intact; the chain still verifies.
    for (const who of [customer, operator]) {
      const view = await readOrder(firstId, who);
      assert.equal(view.status, "CONFIRMED");
      assert.equal(view.total, 1250);
      assert.equal(view.email, null);
      assert.equal(view.personalData, "erased");
    }
    const listed: any = await (
      await fetch(`${sys.urls.orders}/orders?customerId=${CUSTOMER}`, { headers: operator })
    ).json();
    assert.deepEqual(
      new Set(listed.orders.map((o: { personalData: string }) => o.personalData)),
      new Set(["erased"]),
    );
    const verify = await getJson(`${sys.urls.audit}/audit/verify`);
    assert.equal(verify.ok, true, JSON.stringify(verify));
    assert.equal(
      (await storedOrderPlaced(firstId)).raw,
      placed.raw,
      "the stream is unchanged: only the key went",
    );

    // 5. The in-flight order's e-mail: withheld (recorded once), never sent, not dead-lettered.
    mailer.resume();
    let timer: NodeJS.Timeout | undefined;
    const m = await Promise.race([
      withheldEvent,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error("no NotificationWithheld within 60 s of resuming")),
          60_000,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    assert.ok(m, "the NotificationWithheld");
    const e = decodeEvent(m.data);
    assert.equal(e.type, "NotificationWithheld");
    assert.deepEqual(e.data, { orderId: pendingId, kind: "order_confirmed", reason: "personal_data_erased" });
    assert.deepEqual(await mailsTo(pendingId), []);

    // 6. A new order for the customer: a new key, the new address readable and mailed.
    const next = await sys.placeOrder({ customerId: CUSTOMER, email: "g.hopper@example.org", items: line });
    const nextId = next.body.orderId as string;
    assert.equal((await sys.waitForTerminal(nextId)).status, "CONFIRMED");
    assert.notEqual(parseSealed((await storedOrderPlaced(nextId)).event.data.email).keyId, oldKeyId);
    const nextView = await readOrder(nextId, customer);
    assert.deepEqual([nextView.email, nextView.personalData], ["g.hopper@example.org", "present"]);
    assert.equal((await readOrder(firstId, customer)).personalData, "erased", "the old order stays erased");
    await sys.until("the new e-mail sent", async () => (await mailsTo(nextId)).length === 1);
    assert.equal((await mailsTo(nextId))[0]!.to, "g.hopper@example.org");

    // Every invariant holds: the withheld e-mail settles I4, nothing is in the DLQ, the chain verifies.
    const report = await sys.assertInvariants();
    assert.equal(report.ok, true);
    assert.equal((await jsm.streams.info("DLQ")).state.messages, 0, "no dead letter");
  });
});
