/**
 * Customers' data keys (src/lib/pii/keys.ts) in the `customer-keys` KV bucket of a real nats-server running with the
 * per-service users of src/lib/messaging/permissions.ts: orders makes and destroys keys, notifications only reads
 * them, an erasure really removes the key from the bucket's stream, and the customer's next key is a new one.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { CUSTOMER_KEYS_BUCKET, CustomerKeys, customerKeyName } from "../../src/lib/pii/keys.js";
import { PersonalData } from "../../src/lib/pii/personal-data.js";
import { provisionAll } from "../../src/tools/provisioning.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { eventually } from "../helpers/eventually.js";
import { startAuthNatsServer, type AuthNatsServer } from "../helpers/nats.js";

const STREAM = `KV_${CUSTOMER_KEYS_BUCKET}`;

describe("pii: customers' data keys on NATS", () => {
  let auth: AuthNatsServer;
  let admin: NatsConnection;
  let orders: NatsConnection;
  let notifications: NatsConnection;
  let jsmAdmin: JetStreamManager;
  let ordersKeys: CustomerKeys;
  let notificationsKeys: CustomerKeys;

  before(async () => {
    auth = await startAuthNatsServer();
    admin = await auth.connectAs("admin");
    await provisionAll(admin, {});
    jsmAdmin = await jetstreamManager(admin);
    orders = await auth.connectAs("orders");
    notifications = await auth.connectAs("notifications");
    ordersKeys = new CustomerKeys(await new Kvm(orders).open(CUSTOMER_KEYS_BUCKET));
    notificationsKeys = new CustomerKeys(await new Kvm(notifications).open(CUSTOMER_KEYS_BUCKET));
  });
  after(async () => {
    await notifications?.close();
    await orders?.close();
    await admin?.close();
    await auth?.cleanup();
  });

  /** Every message of the bucket's stream, as the admin reads it. */
  async function storedMessages(): Promise<{ subject: string; data: string; op: string | undefined }[]> {
    const info = await jsmAdmin.streams.info(STREAM);
    const out = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await jsmAdmin.streams.getMessage(STREAM, { seq }).catch(() => null);
      if (m)
        out.push({
          subject: m.subject,
          data: Buffer.from(m.data).toString(),
          op: m.header?.get("KV-Operation"),
        });
    }
    return out;
  }

  test("one key per customer, agreed by concurrent callers; notifications reads the same key", async () => {
    const made = await Promise.all(Array.from({ length: 6 }, () => ordersKeys.currentOrCreate("cus_race")));
    assert.equal(new Set(made.map((k) => k.keyId)).size, 1, "every caller got the same key");
    const read = await notificationsKeys.current("cus_race");
    assert.equal(read?.keyId, made[0]!.keyId);
    assert.ok(read?.key.equals(made[0]!.key));
    assert.equal(await notificationsKeys.current("cus_never"), null);
  });

  test("notifications may not make, change or destroy keys", async () => {
    await assert.rejects(notificationsKeys.currentOrCreate("cus_by_notifications"), /permission/i);
    await ordersKeys.currentOrCreate("cus_protected");
    await assert.rejects(notificationsKeys.erase("cus_protected"), /permission/i);
    assert.notEqual(await ordersKeys.current("cus_protected"), null);
  });

  test("erasure removes the key from the stream; the e-mail reads as erased; the next key is a new one", async () => {
    const pd = new PersonalData(ordersKeys);
    const sealed = await pd.seal("cus_erase", "erase-me@example.com");
    const key = (await ordersKeys.current("cus_erase"))!;
    const keyB64 = key.key.toString("base64");
    assert.ok(
      (await storedMessages()).some((m) => m.data.includes(keyB64)),
      "the key is stored before",
    );
    assert.deepEqual(await new PersonalData(notificationsKeys).reveal("cus_erase", sealed), {
      erased: false,
      value: "erase-me@example.com",
    });

    assert.equal(await ordersKeys.erase("cus_erase"), true);
    const subject = `$KV.${CUSTOMER_KEYS_BUCKET}.${customerKeyName("cus_erase")}`;
    const left = (await storedMessages()).filter((m) => m.subject === subject);
    assert.deepEqual(left, [{ subject, data: "", op: "PURGE" }], "only a data-free purge marker is left");
    assert.ok(
      !(await storedMessages()).some((m) => m.data.includes(keyB64)),
      "the key is nowhere in the stream",
    );
    assert.deepEqual(await new PersonalData(notificationsKeys).reveal("cus_erase", sealed), { erased: true });
    assert.equal(await ordersKeys.erase("cus_erase"), false, "a second erasure finds nothing, and is fine");
    assert.equal(await ordersKeys.erase("cus_unknown"), false);

    const again = await pd.seal("cus_erase", "erase-me@example.com");
    const next = (await ordersKeys.current("cus_erase"))!;
    assert.notEqual(next.keyId, key.keyId, "a new key");
    assert.deepEqual(await pd.reveal("cus_erase", again), { erased: false, value: "erase-me@example.com" });
    assert.deepEqual(await pd.reveal("cus_erase", sealed), { erased: true }, "the old e-mail stays erased");
  });

  /** A second orders replica's keys: its own bucket handle (counting its key reads), its own watch. */
  async function watchingReplica(): Promise<{
    keys: CustomerKeys;
    reads: () => number;
    close(): Promise<void>;
  }> {
    const nc = await auth.connectAs("orders");
    const kv = await new Kvm(nc).open(CUSTOMER_KEYS_BUCKET);
    let reads = 0;
    const get = kv.get.bind(kv);
    kv.get = (...args: Parameters<typeof kv.get>) => (reads++, get(...args));
    const keys = new CustomerKeys(kv);
    await keys.watchForSealing(createLogger({ service: "test", level: "silent" }));
    return {
      keys,
      reads: () => reads,
      close: async () => {
        keys.stopWatching();
        await nc.close();
      },
    };
  }

  test("sealing remembers a customer's key while the bucket is watched: a returning customer's seal reads no key", async () => {
    const replica = await watchingReplica();
    try {
      const first = await replica.keys.sealingKey("cus_return");
      const readsAfterFirst = replica.reads();
      assert.ok(readsAfterFirst >= 1, "the first seal reads (and makes) the key");
      for (let i = 0; i < 5; i++)
        assert.equal((await replica.keys.sealingKey("cus_return")).keyId, first.keyId);
      assert.equal(replica.reads(), readsAfterFirst, "no read for the next seals");
      // Without the watch nothing is remembered: every seal reads.
      replica.keys.stopWatching();
      await eventually(async () => {
        const before = replica.reads();
        await replica.keys.sealingKey("cus_return");
        assert.equal(replica.reads(), before + 1);
      });
    } finally {
      await replica.close();
    }
  });

  test("an erasure by another replica is followed: the remembered key is forgotten, the next seal makes a new key", async () => {
    const replica = await watchingReplica();
    try {
      const pd = new PersonalData(replica.keys);
      const old = await replica.keys.sealingKey("cus_forget");
      const sealedBefore = await pd.seal("cus_forget", "forget-me@example.com");
      assert.equal(await ordersKeys.erase("cus_forget"), true, "erased through the other replica");
      // The watch delivers the purge: the next seal makes (and uses) a new key.
      const next = await eventually(async () => {
        const k = await replica.keys.sealingKey("cus_forget");
        assert.notEqual(k.keyId, old.keyId);
        return k;
      });
      assert.equal(
        (await ordersKeys.current("cus_forget"))?.keyId,
        next.keyId,
        "the new key is the bucket's",
      );
      assert.deepEqual(await pd.reveal("cus_forget", sealedBefore), { erased: true });
      const sealedAfter = await pd.seal("cus_forget", "forget-me@example.com");
      assert.deepEqual(await new PersonalData(notificationsKeys).reveal("cus_forget", sealedAfter), {
        erased: false,
        value: "forget-me@example.com",
      });
      // An erasure made by this replica itself is forgotten at once, before any watch delivery.
      assert.equal(await replica.keys.erase("cus_forget"), true);
      assert.notEqual((await replica.keys.sealingKey("cus_forget")).keyId, next.keyId);
    } finally {
      await replica.close();
    }
  });
});
