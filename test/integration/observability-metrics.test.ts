/**
 * The metrics the alert rules need that the services did not export before the observability kit: the DLQ depth per
 * consumer (read by the audit, as its own NATS user, from the DLQ stream), the periodic verification of the audit hash
 * chain, and the order completion time. Against a real nats-server with authentication and a real database
 * (PostgreSQL when DATABASE_URL is set, each run in its own schema; else PGlite in a temp dir).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Registry } from "prom-client";
import { Durables } from "../../src/lib/events/consumers.js";
import { deadLettersByConsumer } from "../../src/lib/messaging/dlq.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { canonicalJson, type AuditEntry } from "../../src/services/audit/audit.js";
import { ChainMonitor } from "../../src/services/audit/chain-monitor.js";
import { AuditStore, openDb, type SqlDb } from "../../src/services/audit/store.js";
import { orderCompletionMetric } from "../../src/services/orders/service.js";
import type { Order } from "../../src/services/orders/order.js";
import { provisionAll } from "../../src/tools/provisioning.js";
import { until } from "../helpers/eventually.js";
import { startAuthNatsServer, type AuthNatsServer } from "../helpers/nats.js";

const logger = createLogger({ service: "test", level: "silent" });

/** The value of the sample `name{labels}` in the registry's text, or undefined when there is none. */
async function sample(registry: Registry, name: string, labels = ""): Promise<number | undefined> {
  const text = await registry.metrics();
  const line = text.split("\n").find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ""} `));
  return line === undefined ? undefined : Number(line.split(" ").pop());
}

void describe("DLQ depth per consumer (deadLettersByConsumer, the audit's shopstream_dlq_messages)", () => {
  let nats: AuthNatsServer;
  before(async () => {
    nats = await startAuthNatsServer();
    const admin = await nats.connectAs("admin");
    try {
      await provisionAll(admin, {});
    } finally {
      await admin.close();
    }
  });
  after(() => nats?.cleanup());

  void it("counts the entries of each dlq.<consumer> subject, every known consumer at 0 without any, as the audit user", async () => {
    const audit = await nats.connectAs("audit");
    const admin = await nats.connectAs("admin");
    try {
      const jsm = await jetstreamManager(audit);
      const known = Object.values(Durables);
      const empty = await deadLettersByConsumer(jsm, known);
      assert.deepEqual(
        [...empty.values()],
        known.map(() => 0),
      );

      const js = jetstream(admin);
      await js.publish(`dlq.${Durables.PAYMENTS_ORDERS}`, "x");
      await js.publish(`dlq.${Durables.PAYMENTS_ORDERS}`, "y");
      await js.publish(`dlq.${Durables.NOTIFICATIONS_ORDERS}`, "z");
      await js.publish("dlq.some-old-consumer", "w");
      const counts = await deadLettersByConsumer(jsm, known);
      assert.equal(counts.get(Durables.PAYMENTS_ORDERS), 2);
      assert.equal(counts.get(Durables.NOTIFICATIONS_ORDERS), 1);
      assert.equal(counts.get("some-old-consumer"), 1, "a consumer not declared any more is counted too");
      assert.equal(counts.get(Durables.INVENTORY_ORDERS), 0);
      assert.equal(counts.size, known.length + 1);
    } finally {
      await audit.close();
      await admin.close();
    }
  });
});

void describe("audit chain monitor (ChainMonitor)", () => {
  const DATABASE_URL = process.env["DATABASE_URL"] || undefined;
  const schema = `chain_monitor_${process.pid}_${randomBytes(3).toString("hex")}`;
  let dataDir: string;
  let db: SqlDb;
  let store: AuditStore;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "chain-monitor-"));
    db = await openDb({ databaseUrl: DATABASE_URL, dataDir });
    store = new AuditStore(db, { schema, table: "log" });
    await store.ensureSchema();
    const entry = (i: number): AuditEntry => ({
      eventId: `o${i}:OrderPlaced`,
      stream: "ORDERS",
      streamSeq: i,
      subject: `orders.o${i}`,
      eventType: "OrderPlaced",
      orderId: `o${i}`,
      source: "orders",
      traceId: randomBytes(16).toString("hex"),
      causationId: null,
      occurredAt: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
      payload: canonicalJson({ i }),
    });
    await store.append([1, 2, 3, 4, 5].map(entry));
  });
  after(async () => {
    if (DATABASE_URL) await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await db.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  void it("registers its metrics before the first verification: not broken, never verified, no verification counted", async () => {
    const registry = new Registry();
    new ChainMonitor({ store, registry, logger, intervalMs: 0 });
    assert.equal(await sample(registry, "shopstream_audit_chain_broken"), 0);
    assert.equal(await sample(registry, "shopstream_audit_chain_last_verified_timestamp_seconds"), 0);
    for (const result of ["ok", "broken", "error"])
      assert.equal(
        await sample(registry, "shopstream_audit_chain_verifications_total", `result="${result}"`),
        0,
      );
  });

  void it("verifies periodically; reports a tampered row as broken, a failing database as an error that keeps the last result", async () => {
    const registry = new Registry();
    const monitor = new ChainMonitor({ store, registry, logger, intervalMs: 100, firstDelayMs: 0 });
    const t0 = Date.now() / 1000;
    monitor.start();
    try {
      // Periodic: several verifications without being asked.
      await until(
        "two verifications",
        async () =>
          ((await sample(registry, "shopstream_audit_chain_verifications_total", 'result="ok"')) ?? 0) >= 2,
        10_000,
      );
    } finally {
      await monitor.stop();
    }
    assert.equal(await sample(registry, "shopstream_audit_chain_broken"), 0);
    const verifiedAt = (await sample(registry, "shopstream_audit_chain_last_verified_timestamp_seconds"))!;
    assert.ok(verifiedAt >= t0 - 1 && verifiedAt <= Date.now() / 1000 + 1, `${verifiedAt}`);

    // A privileged attacker changes a row (the append-only trigger off).
    await store.db.transaction(async (tx) => {
      await tx.query(`ALTER TABLE ${store.qualified} DISABLE TRIGGER "${store.table}_no_change"`);
      await tx.query(`UPDATE ${store.qualified} SET payload = $1 WHERE position = 3`, ['{"i":-3}']);
      await tx.query(`ALTER TABLE ${store.qualified} ENABLE TRIGGER "${store.table}_no_change"`);
    });
    assert.equal(await monitor.verifyNow(), "broken");
    assert.equal(await sample(registry, "shopstream_audit_chain_broken"), 1);
    assert.equal(await sample(registry, "shopstream_audit_chain_verifications_total", 'result="broken"'), 1);
    const brokenAt = (await sample(registry, "shopstream_audit_chain_last_verified_timestamp_seconds"))!;
    assert.ok(brokenAt >= verifiedAt);

    // The database fails after a verification: counted as an error; the chain's last known state and time stay.
    const errRegistry = new Registry();
    const failingToo = new ChainMonitor({
      store: {
        verify: (() => {
          let calls = 0;
          return () => (++calls === 1 ? store.verify() : Promise.reject(new Error("connection refused")));
        })(),
      },
      registry: errRegistry,
      logger,
      intervalMs: 0,
    });
    assert.equal(await failingToo.verifyNow(), "broken");
    const before = await sample(errRegistry, "shopstream_audit_chain_last_verified_timestamp_seconds");
    assert.equal(await failingToo.verifyNow(), "error");
    assert.equal(
      await sample(errRegistry, "shopstream_audit_chain_verifications_total", 'result="error"'),
      1,
    );
    assert.equal(await sample(errRegistry, "shopstream_audit_chain_broken"), 1, "the last result stays");
    assert.equal(
      await sample(errRegistry, "shopstream_audit_chain_last_verified_timestamp_seconds"),
      before,
      "an error is no verification",
    );
  });
});

void describe("order completion time (shopstream_order_completion_seconds)", () => {
  void it("observes placement → terminal event per status", async () => {
    const registry = new Registry();
    const observe = orderCompletionMetric(registry);
    const order = { createdAt: "2026-01-01T00:00:00.000Z" } as Order;
    observe(order, { type: "OrderConfirmed", timestamp: "2026-01-01T00:00:01.500Z" } as never);
    observe(order, { type: "OrderCancelled", timestamp: "2026-01-01T00:01:00.000Z" } as never);
    assert.equal(
      await sample(registry, "shopstream_order_completion_seconds_sum", 'status="CONFIRMED"'),
      1.5,
    );
    assert.equal(
      await sample(registry, "shopstream_order_completion_seconds_bucket", 'le="2",status="CONFIRMED"'),
      1,
    );
    assert.equal(
      await sample(registry, "shopstream_order_completion_seconds_bucket", 'le="1",status="CONFIRMED"'),
      0,
    );
    assert.equal(await sample(registry, "shopstream_order_completion_seconds_sum", 'status="CANCELLED"'), 60);
  });
});
