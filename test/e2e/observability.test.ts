/**
 * The observability kit against a running system: every process its own OS process, started as `npm start` starts
 * them (the chaos harness's ChaosSystem: nats-server with authentication, the simulators, the five services), with
 * `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP receiver in this test. A few orders are placed, then:
 *
 * - traces: each order is one trace, rooted at the orders service's `POST /orders` span, with spans from all five
 *   services, each message's consumer spans children of the publish span that sent it, each publish a child of the
 *   span that caused it (the request, or the handler of the event before);
 * - metrics: every metric named in the alert rules' and the dashboard's PromQL (deploy/observability) exists in the
 *   services' `/metrics`, and the ones the kit added report what happened.
 *
 * The OTLP/HTTP exporter (@opentelemetry/exporter-trace-otlp-http 0.223) posts JSON (`application/json`, the OTLP
 * JSON encoding: ids as hex strings), so the receiver is a plain HTTP server.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import pg from "pg";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ChaosSystem, SERVICES } from "../../src/chaos/system.js";
import { Durables } from "../../src/lib/events/consumers.js";
import { catalog, type EventType } from "../../src/lib/events/catalog.js";
import { SpanKind } from "../../src/lib/telemetry/tracing.js";
import {
  DASHBOARD_FILE,
  dashboardQueries,
  exposedMetricNames,
  metricNamesOf,
  readRules,
  ruleQueries,
} from "../../scripts/monitoring.js";
import { until } from "../helpers/eventually.js";

/** A span as the receiver got it. */
interface ReceivedSpan {
  service: string;
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  attributes: Record<string, unknown>;
}

/** OTLP JSON ids are hex; a protobuf-JSON encoder would send base64: accept both. */
function hexId(id: unknown): string | undefined {
  if (typeof id !== "string" || id === "") return undefined;
  return /^[0-9a-f]+$/i.test(id) && (id.length === 32 || id.length === 16)
    ? id.toLowerCase()
    : Buffer.from(id, "base64").toString("hex");
}

function attributesOf(list: { key: string; value: Record<string, unknown> }[] | undefined) {
  const out: Record<string, unknown> = {};
  for (const a of list ?? []) out[a.key] = Object.values(a.value)[0];
  return out;
}

/** An OTLP/HTTP trace receiver (`POST /v1/traces`, JSON) keeping every span. */
async function startReceiver(): Promise<{
  url: string;
  spans: ReceivedSpan[];
  contentTypes: Set<string>;
  server: Server;
}> {
  const spans: ReceivedSpan[] = [];
  const contentTypes = new Set<string>();
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.method !== "POST" || req.url !== "/v1/traces") {
        res.writeHead(404).end();
        return;
      }
      contentTypes.add(String(req.headers["content-type"]));
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      for (const rs of body.resourceSpans ?? []) {
        const service = String(attributesOf(rs.resource?.attributes)["service.name"]);
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            spans.push({
              service,
              name: s.name,
              kind: s.kind,
              traceId: hexId(s.traceId)!,
              spanId: hexId(s.spanId)!,
              parentSpanId: hexId(s.parentSpanId),
              attributes: attributesOf(s.attributes),
            });
      }
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, spans, contentTypes, server };
}

// OTLP span kinds are the API's + 1 (SPAN_KIND_INTERNAL = 1, …).
const OTLP = {
  SERVER: SpanKind.SERVER + 1,
  PRODUCER: SpanKind.PRODUCER + 1,
  CONSUMER: SpanKind.CONSUMER + 1,
};

const DATABASE_URL = process.env["DATABASE_URL"] || undefined;
const schema = `obs_${process.pid}_${randomBytes(3).toString("hex")}`;

void describe("observability end to end (every service its own process)", { timeout: 240_000 }, () => {
  let dir: string;
  let sys: ChaosSystem;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  const orders: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "shopstream-obs-"));
    receiver = await startReceiver();
    sys = new ChaosSystem({
      dataDir: join(dir, "data"),
      logDir: join(dir, "logs"),
      // PostgreSQL when DATABASE_URL is set (a schema of its own, dropped afterwards), else PGlite.
      databaseUrl: DATABASE_URL,
      auditSchema: DATABASE_URL ? schema : undefined,
      // A loaded machine (tsx compiling every process at once) may take long to start them.
      readyTimeoutMs: 120_000,
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        // Export every 200 ms instead of 5 s.
        OTEL_BSP_SCHEDULE_DELAY: "200",
        // The audit's periodic chain verification, soon after start and then every second.
        AUDIT_VERIFY_INTERVAL_MS: "1000",
      },
    });
    await sys.start();
    const customer = await sys.tokens.customer("obs-customer");
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${sys.url("orders")}/orders`, {
        method: "POST",
        headers: { "content-type": "application/json", ...customer },
        body: JSON.stringify({ email: "obs@example.com", items: [{ sku: "SKU-MUG", quantity: 1 }] }),
      });
      assert.equal(res.status, 202, await res.clone().text());
      orders.push(((await res.json()) as { orderId: string }).orderId);
    }
    for (const id of orders)
      await until(
        `order ${id} CONFIRMED`,
        async () => {
          const r = await fetch(`${sys.url("orders")}/orders/${id}`, { headers: customer });
          return ((await r.json()) as { status: string }).status === "CONFIRMED";
        },
        30_000,
      );
  });

  after(async () => {
    await sys?.stop();
    if (DATABASE_URL) {
      const db = new pg.Client({ connectionString: DATABASE_URL });
      await db.connect();
      await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).finally(() => db.end());
    }
    await new Promise((r) => receiver?.server.close(r));
    if (process.env["OBS_KEEP_LOGS"] !== "1") await rm(dir, { recursive: true, force: true });
  });

  void it("each order is one trace from POST /orders through all five services, every span parented on its cause", async () => {
    const orderId = orders[0]!;
    const placed = await until("the OrderPlaced publish span", () =>
      receiver.spans.find(
        (s) =>
          s.attributes["shopstream.order.id"] === orderId &&
          s.attributes["shopstream.event.type"] === "OrderPlaced",
      ),
    );
    // Spans are exported in batches: the content type is known once the first batch has arrived.
    assert.deepEqual([...receiver.contentTypes], ["application/json"]);
    const traceOf = () => receiver.spans.filter((s) => s.traceId === placed.traceId);
    /** The spans of `kind` in `service` about the event `type` (by the shopstream.event.type attribute). */
    const spansOf = (service: string, kind: number, type: string, name?: string) =>
      traceOf().filter(
        (s) =>
          s.service === service &&
          s.kind === kind &&
          s.attributes["shopstream.event.type"] === type &&
          (name === undefined || s.name === name),
      );
    // The happy path: each event's publisher, and each handler of it: [service, event type, span name].
    const producers: [string, string][] = [
      ["orders", "OrderPlaced"],
      ["inventory", "StockReserved"],
      ["payments", "PaymentCaptured"],
      ["orders", "OrderConfirmed"],
      ["inventory", "StockCommitted"],
      ["notifications", "NotificationSent"],
    ];
    const consumers: [string, string, string][] = [
      ["inventory", "OrderPlaced", `process ${Durables.INVENTORY_ORDERS}`],
      ["payments", "StockReserved", `process ${Durables.PAYMENTS_INVENTORY}`],
      ["orders", "PaymentCaptured", `process ${Durables.ORDERS_PAYMENTS}`],
      ["inventory", "OrderConfirmed", `process ${Durables.INVENTORY_ORDERS}`],
      ["notifications", "OrderConfirmed", `process ${Durables.NOTIFICATIONS_ORDERS}`],
      // The audit records every event of its stream.
      ...producers.map(([, type]): [string, string, string] => [
        "audit",
        type,
        `record ${catalog[type as EventType].stream}`,
      ]),
    ];
    await until(
      "every hop of the order exported",
      () =>
        traceOf().some((s) => s.name === "POST /orders") &&
        producers.every(([svc, type]) => spansOf(svc, OTLP.PRODUCER, type).length > 0) &&
        consumers.every(([svc, type, name]) => spansOf(svc, OTLP.CONSUMER, type, name).length > 0),
      30_000,
    );
    const trace = traceOf();
    const byId = new Map(trace.map((s) => [s.spanId, s]));

    // One root: the orders service's POST /orders span.
    const roots = trace.filter((s) => s.parentSpanId === undefined);
    assert.deepEqual(
      roots.map((r) => [r.service, r.name, r.kind]),
      [["orders", "POST /orders", OTLP.SERVER]],
    );
    const root = roots[0]!;
    // All five services in the one trace.
    assert.deepEqual([...new Set(trace.map((s) => s.service))].sort(), [...SERVICES].sort());
    // No other order's spans in it, and no span without its parent (all of them finished by now, held timers aside).
    for (const s of trace) {
      const order = s.attributes["shopstream.order.id"];
      if (order !== undefined) assert.equal(order, orderId, `${s.service} ${s.name}`);
    }

    // OrderPlaced is published inside the request.
    for (const p of spansOf("orders", OTLP.PRODUCER, "OrderPlaced"))
      assert.equal(p.parentSpanId, root.spanId, "OrderPlaced's publish is a child of POST /orders");
    // Every consumer span is a child of a publish span of the message it processed (same event id), in the service
    // that owns the event; every publish but the first is a child of the consumer span of the event that caused it.
    const ownerOf = new Map(producers.map(([svc, type]) => [type, svc]));
    for (const [svc, type, name] of consumers)
      for (const c of spansOf(svc, OTLP.CONSUMER, type, name)) {
        const parent = byId.get(c.parentSpanId ?? "");
        assert.ok(parent, `${svc} ${name} (${type}): its parent is in the trace`);
        assert.equal(parent.kind, OTLP.PRODUCER, `${svc} ${name} (${type}) is a child of a publish`);
        assert.equal(parent.service, ownerOf.get(type), `${type} published by ${ownerOf.get(type)}`);
        assert.equal(parent.attributes["messaging.message.id"], c.attributes["messaging.message.id"]);
      }
    const causes: [string, string, string, string][] = [
      ["inventory", "StockReserved", "OrderPlaced", `process ${Durables.INVENTORY_ORDERS}`],
      ["payments", "PaymentCaptured", "StockReserved", `process ${Durables.PAYMENTS_INVENTORY}`],
      ["orders", "OrderConfirmed", "PaymentCaptured", `process ${Durables.ORDERS_PAYMENTS}`],
      ["inventory", "StockCommitted", "OrderConfirmed", `process ${Durables.INVENTORY_ORDERS}`],
      ["notifications", "NotificationSent", "OrderConfirmed", `process ${Durables.NOTIFICATIONS_ORDERS}`],
    ];
    for (const [svc, type, causeType, handler] of causes)
      for (const p of spansOf(svc, OTLP.PRODUCER, type)) {
        const parent = byId.get(p.parentSpanId ?? "");
        assert.ok(parent, `${type}'s publish has its parent in the trace`);
        assert.deepEqual(
          [parent.service, parent.kind, parent.name, parent.attributes["shopstream.event.type"]],
          [svc, OTLP.CONSUMER, handler, causeType],
          `${type} is published by ${svc}'s handler of ${causeType}`,
        );
      }
    // The other orders are traces of their own.
    for (const other of orders.slice(1)) {
      const s = receiver.spans.find((x) => x.attributes["shopstream.order.id"] === other);
      if (s) assert.notEqual(s.traceId, placed.traceId, `${other} has its own trace`);
    }
  });

  void it("every metric the alert rules and the dashboard name exists in the services' /metrics, the kit's own report what happened", async () => {
    const scrape = async () => {
      const texts = new Map<string, string>();
      for (const s of SERVICES) texts.set(s, await (await fetch(`${sys.url(s)}/metrics`)).text());
      return texts;
    };
    // The audit verified its chain (every second here) since it started.
    const texts = await until(
      "the audit chain verified",
      async () => {
        const t = await scrape();
        const verified = /^shopstream_audit_chain_last_verified_timestamp_seconds\{[^}]*\} (\S+)$/m.exec(
          t.get("audit")!,
        );
        return verified && Number(verified[1]) > 0 ? t : undefined;
      },
      30_000,
    );
    const exposed = new Set([...texts.values()].flatMap((t) => [...exposedMetricNames(t)]));
    const dashboard = JSON.parse(await readFile(DASHBOARD_FILE, "utf8"));
    const used = [
      ...ruleQueries(readRules()).map((r) => ({ where: `rule ${r.rule}`, expr: r.expr })),
      ...dashboardQueries(dashboard).map((q) => ({ where: `panel "${q.panel}"`, expr: q.expr })),
    ];
    const missing = used.flatMap((u) =>
      metricNamesOf(u.expr)
        .filter((m) => !exposed.has(m))
        .map((m) => `${u.where}: ${m}`),
    );
    assert.deepEqual(missing, [], "metrics named in deploy/observability but not in any service's /metrics");
    assert.ok(used.length > 15);

    const value = (service: string, re: RegExp) => {
      const m = re.exec(texts.get(service)!);
      return m ? Number(m[1]) : undefined;
    };
    // Orders: 3 confirmed, timed from placement; published events counted by stream and type.
    assert.ok(
      (value(
        "orders",
        /^shopstream_order_completion_seconds_count\{[^}]*status="CONFIRMED"[^}]*\} (\S+)$/m,
      ) ?? 0) >= 3,
    );
    assert.ok(
      (value(
        "orders",
        /^shopstream_messages_published_total\{(?=[^}]*stream="ORDERS")(?=[^}]*type="OrderConfirmed")[^}]*\} (\S+)$/m,
      ) ?? 0) >= 3,
    );
    // The audit: the DLQ depth of every durable (0: nothing dead-lettered) — read as the audit's own NATS user —
    // and a chain that verifies.
    for (const durable of Object.values(Durables))
      assert.equal(
        value(
          "audit",
          new RegExp(`^shopstream_dlq_messages\\{[^}]*consumer="${durable}"[^}]*\\} (\\S+)$`, "m"),
        ),
        0,
        `shopstream_dlq_messages{consumer="${durable}"}`,
      );
    assert.equal(value("audit", /^shopstream_audit_chain_broken\{[^}]*\} (\S+)$/m), 0);
    assert.ok(
      (value("audit", /^shopstream_audit_chain_verifications_total\{[^}]*result="ok"[^}]*\} (\S+)$/m) ?? 0) >=
        1,
    );
    // Breakers closed.
    assert.equal(value("payments", /^payment_gateway_breaker_state\{[^}]*\} (\S+)$/m), 0);
    assert.equal(value("notifications", /^mail_provider_breaker_state\{[^}]*\} (\S+)$/m), 0);
  });
});
