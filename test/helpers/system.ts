/**
 * The whole ShopStream system for end-to-end tests: a real nats-server on free ports with a temp dir,
 * the two simulators, and the five services started in this process through their real
 * `startService` composition roots (each with its own NATS connection, KV buckets, consumers and HTTP
 * server). Audit stores in PostgreSQL when `DATABASE_URL` is set (a fresh schema per system), else in
 * PGlite under the temp dir.
 */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { startService, type RunningService } from "../../src/lib/service.js";
import { startNatsServer, type NatsServer } from "../../src/stack/nats-server.js";
import { buildPaymentGateway } from "../../src/simulators/payment-gateway/app.js";
import { buildMailProvider } from "../../src/simulators/mail-provider/app.js";
import { createOrdersService } from "../../src/services/orders/service.js";
import { definition as inventory } from "../../src/services/inventory/service.js";
import { definition as payments } from "../../src/services/payments/service.js";
import { definition as notifications } from "../../src/services/notifications/service.js";
import { definition as audit } from "../../src/services/audit/service.js";
import { checkInvariants, formatReport, waitForDrain, type CheckReport } from "../../src/checker/checker.js";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { until as pollUntil } from "./eventually.js";
import { connectTo, startAuthNatsServer } from "./nats.js";
import type { ServiceUser } from "../../src/lib/messaging/permissions.js";
import { provisionAll } from "../../src/tools/provisioning.js";
import { isValidSubject } from "../../src/lib/http/auth.js";
import { authEnv, customerAuth, operatorAuth, operatorFetch, testVerifier } from "./auth.js";

/** The customer of a test request whose body names none usable. */
export const DEFAULT_TEST_CUSTOMER = "test-customer";

/** The customer a body names, when a token can carry it; else {@link DEFAULT_TEST_CUSTOMER}. */
export function customerOf(body: unknown): string {
  let b = body;
  if (typeof b === "string") {
    try {
      b = JSON.parse(b);
    } catch {
      return DEFAULT_TEST_CUSTOMER;
    }
  }
  const c = (b as { customerId?: unknown } | null)?.customerId;
  return typeof c === "string" && isValidSubject(c) ? c : DEFAULT_TEST_CUSTOMER;
}

export interface SystemOptions {
  /** Catalog items replacing the default catalog. */
  catalog?: { sku: string; name: string; price: number; currency: string; stock: number }[];
  /** Extra env for every service. */
  env?: Record<string, string>;
  orderTimeoutMs?: number;
  /**
   * Run nats-server with authentication (src/lib/messaging/permissions.ts): provisioning as `admin`, each service
   * with its own restricted user; the test's own connection (observer, checker) is `admin`.
   */
  auth?: boolean;
}

export interface OrderBody {
  customerId: string;
  email: string;
  items: { sku: string; quantity: number }[];
  currency?: string;
}

export interface System {
  nats: NatsServer;
  nc: NatsConnection;
  gateway: FastifyInstance;
  mail: FastifyInstance;
  urls: {
    orders: string;
    inventory: string;
    payments: string;
    notifications: string;
    audit: string;
    gateway: string;
    mail: string;
  };
  services: Record<"orders" | "inventory" | "payments" | "notifications" | "audit", RunningService<never>>;
  /** Orders answered 202. */
  accepted: Set<string>;
  /**
   * POSTs an order as the customer its body names (a bearer token for `body.customerId`, or for
   * {@link DEFAULT_TEST_CUSTOMER}); an `authorization` in `headers` replaces it.
   */
  placeOrder(
    body: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; body: any; headers: Headers }>;
  /** Resolves with the order's terminal view (CONFIRMED or CANCELLED), awaiting its terminal event. */
  waitForTerminal(orderId: string, timeoutMs?: number): Promise<any>;
  /**
   * Polls `cond` until it is truthy (for state that has no event to await, e.g. metrics); a thrown error counts as
   * "not yet". Fails after `timeoutMs` (30 s) naming `what` and the last value or error ({@link pollUntil}).
   */
  until<T>(
    what: string,
    cond: () => Promise<T | undefined | false> | T | undefined | false,
    timeoutMs?: number,
  ): Promise<T>;
  /**
   * Waits until every service answers /ready 200 (at most `timeoutMs` each), failing with the last answer: a
   * runner counts as unbound between a failed pull and the next good one, which a loaded machine can cause.
   */
  untilAllReady(timeoutMs?: number): Promise<void>;
  setGatewayFaults(f: {
    outage?: boolean;
    failureRate?: number;
    latencyMs?: number;
    latencyJitterMs?: number;
  }): Promise<void>;
  setMailFaults(f: { outage?: boolean; failureRate?: number; latencyMs?: number }): Promise<void>;
  /** Runs the checker once (`cancelWindowMs`: the orders service's CANCEL_WINDOW_MS, checked when given). */
  check(opts?: { cancelWindowMs?: number }): Promise<CheckReport>;
  /**
   * Waits until every durable consumer is drained (nothing pending or unacknowledged, timers aside; at most
   * 30 s), then runs the checker once and throws with the formatted report when an invariant is violated.
   */
  assertInvariants(opts?: { cancelWindowMs?: number }): Promise<CheckReport>;
  stop(): Promise<void>;
}

/** GET a URL as an operator and parse its JSON body (untyped: tests assert on the shape). */
export async function getJson(url: string): Promise<any> {
  const r = await operatorFetch(url);
  return r.json();
}

export async function startSystem(opts: SystemOptions = {}): Promise<System> {
  const dir = await mkdtemp(join(tmpdir(), "shopstream-e2e-"));
  const authServer = opts.auth ? await startAuthNatsServer() : undefined;
  const nats = authServer?.server ?? (await startNatsServer());
  const nc = authServer ? await authServer.connectAs("admin") : await connectTo(nats);
  const auth = await testVerifier();
  const gateway = buildPaymentGateway({ logger: false, auth });
  const mail = buildMailProvider({ logger: false, auth });
  const gatewayUrl = await gateway.listen({ host: "127.0.0.1", port: 0 });
  const mailUrl = await mail.listen({ host: "127.0.0.1", port: 0 });
  let catalogFile: string | undefined;
  if (opts.catalog) {
    catalogFile = join(dir, "catalog.json");
    await writeFile(catalogFile, JSON.stringify({ items: opts.catalog }));
  }
  const schema = `e2e_${Date.now().toString(36)}_${Math.floor(Math.random() * 1e6)}`;
  const env: Record<string, string> = {
    NATS_URL: nats.url,
    PORT: "0",
    LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
    PAYMENT_GATEWAY_URL: gatewayUrl,
    MAIL_PROVIDER_URL: mailUrl,
    DATA_DIR: join(dir, "data"),
    AUDIT_SCHEMA: schema,
    ORDER_TIMEOUT_MS: String(opts.orderTimeoutMs ?? 60_000),
    RETRY_INITIAL_MS: "100",
    BREAKER_HALF_OPEN_MS: "1000",
    ...(await authEnv()),
    ...(process.env["DATABASE_URL"] ? { DATABASE_URL: process.env["DATABASE_URL"] } : {}),
    ...(catalogFile ? { CATALOG_FILE: catalogFile } : {}),
    ...opts.env,
  };
  if (authServer) await provisionAll(nc, env);
  const started: RunningService<never>[] = [];
  const start = async (def: unknown) => {
    const name = (def as { name: string }).name as ServiceUser;
    const own = authServer ? { ...env, ...authServer.secrets.env(name) } : env;
    const s = (await startService(def as never, own)) as RunningService<never>;
    started.push(s);
    return s;
  };
  const svc = {
    inventory: await start(inventory),
    audit: await start(audit),
    payments: await start(payments),
    notifications: await start(notifications),
    orders: await start(createOrdersService()),
  };
  const urls = {
    orders: svc.orders.url,
    inventory: svc.inventory.url,
    payments: svc.payments.url,
    notifications: svc.notifications.url,
    audit: svc.audit.url,
    gateway: gatewayUrl,
    mail: mailUrl,
  };
  const accepted = new Set<string>();

  const until: System["until"] = (what, cond, timeoutMs = 30_000) => pollUntil(what, cond, timeoutMs);

  // Terminal events of every order, as they are published (core subscription on the ORDERS subjects).
  const terminal = new Map<string, string>();
  const waiters = new Map<string, (() => void)[]>();
  const sub: Subscription = nc.subscribe("orders.*");
  void (async () => {
    for await (const m of sub) {
      try {
        const e = decodeEvent(m.data);
        if (e.type === "OrderConfirmed" || e.type === "OrderCancelled") {
          terminal.set(e.aggregate_id, e.type);
          for (const w of waiters.get(e.aggregate_id) ?? []) w();
          waiters.delete(e.aggregate_id);
        }
      } catch {
        /* poison published by a test */
      }
    }
  })();
  await nc.flush();

  const system: System = {
    nats,
    nc,
    gateway,
    mail,
    urls,
    services: svc,
    accepted,
    async placeOrder(body, headers = {}) {
      const res = await fetch(`${urls.orders}/orders`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(await customerAuth(customerOf(body))),
          ...headers,
        },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
      const text = await res.text();
      let parsed: any = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      if (res.status === 202) accepted.add(parsed.orderId);
      return { status: res.status, body: parsed, headers: res.headers };
    },
    async waitForTerminal(orderId, timeoutMs = 30_000) {
      if (!terminal.has(orderId)) {
        const current = await getJson(`${urls.orders}/orders/${orderId}`);
        if (current.status !== "CONFIRMED" && current.status !== "CANCELLED") {
          await new Promise<void>((resolve, reject) => {
            const t = setTimeout(
              () => reject(new Error(`order ${orderId} not terminal after ${timeoutMs} ms`)),
              timeoutMs,
            );
            const list = waiters.get(orderId) ?? [];
            list.push(() => {
              clearTimeout(t);
              resolve();
            });
            waiters.set(orderId, list);
            if (terminal.has(orderId)) list[list.length - 1]!();
          });
        }
      }
      return getJson(`${urls.orders}/orders/${orderId}`);
    },
    until,
    async untilAllReady(timeoutMs = 10_000) {
      for (const name of ["orders", "inventory", "payments", "notifications", "audit"] as const) {
        let last = "";
        await until(
          `${name} ready`,
          async () => {
            const r = await fetch(`${urls[name]}/ready`);
            last = `${r.status} ${await r.text()}`;
            return r.status === 200;
          },
          timeoutMs,
        ).catch(() => assert.fail(`${name}/ready: ${last}`));
      }
    },
    async setGatewayFaults(f) {
      await fetch(`${gatewayUrl}/admin/faults`, {
        method: "PUT",
        headers: { "content-type": "application/json", ...(await operatorAuth()) },
        body: JSON.stringify(f),
      });
    },
    async setMailFaults(f) {
      await fetch(`${mailUrl}/admin/faults`, {
        method: "PUT",
        headers: { "content-type": "application/json", ...(await operatorAuth()) },
        body: JSON.stringify(f),
      });
    },
    async check(opts = {}) {
      return checkInvariants({
        ...opts,
        nc,
        inventoryUrl: urls.inventory,
        auditUrl: urls.audit,
        gatewayUrl,
        mailUrl,
        acceptedOrderIds: accepted,
        authorization: (await operatorAuth()).authorization,
      });
    },
    async assertInvariants(opts = {}) {
      // The trailing effects of terminal orders (commits, e-mails) land before their messages are acknowledged, and
      // the audit's position moves with its rows: once every consumer is drained and the audit has caught up with
      // every stream, they are all there, and the checker runs once. A consumer
      // that does not drain within 30 s is reported by the checker itself (I6), with whatever else is wrong.
      const drain = await waitForDrain(await jetstreamManager(nc), {
        timeoutMs: 30_000,
        auditUrl: urls.audit,
        authorization: (await operatorAuth()).authorization,
      });
      const report = await system.check(opts);
      if (!report.ok)
        throw new Error(
          `invariants violated${drain.drained ? "" : ` (consumers not drained after ${drain.waitedMs} ms)`}:\n${formatReport(report)}`,
        );
      return report;
    },
    async stop() {
      sub.unsubscribe();
      for (const s of started.reverse()) await s.stop();
      await gateway.close();
      await mail.close();
      await nc.close();
      await (authServer ?? nats).cleanup();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return system;
}
