/**
 * A system to build known-bad states in, for the tests of the invariant checker and the chaos reconciliation: a
 * real nats-server (free ports, temp dir) with the ShopStream streams, the real payment-gateway and mail-provider
 * simulators (in process, on free ports), and the real inventory and audit services (their `startService`
 * composition roots; audit in PostgreSQL when DATABASE_URL is set, in a fresh schema per rig, else PGlite in the
 * temp dir), optionally the real notifications service.
 *
 * The orders and payments services do not run: the test plays them, step by step, through the same means they
 * use — events published onto the real streams with the project's Publisher (catalog-validated, deterministic
 * ids), charges and refunds at the real gateway with their idempotency keys, e-mails at the real mail provider —
 * so it can take a step twice, skip one, or take a wrong one. Inventory and audit react as they do in production.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/transport-node";
import type { FastifyInstance } from "fastify";
import {
  checkInvariants,
  NOTIFICATIONS_CONSUMER,
  violationsOf,
  waitForDrain,
  type CheckReport,
  type CheckTargets,
  type DrainResult,
} from "../../src/checker/checker.js";
import { gatherFacts, type SystemFacts } from "../../src/chaos/reconcile.js";
import type { CancelReason, NotificationKind } from "../../src/lib/events/catalog.js";
import { makeEvent, type AnyEnvelope, type Envelope } from "../../src/lib/events/envelope.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { startService, type RunningService } from "../../src/lib/service.js";
import { auditProjectorOf, auditStoreOf, definition as audit } from "../../src/services/audit/service.js";
import { openDb, type AuditStore } from "../../src/services/audit/store.js";
import type { StockRecord } from "../../src/services/inventory/inventory.js";
import { definition as inventory } from "../../src/services/inventory/service.js";
import { InventoryStore } from "../../src/services/inventory/store.js";
import { casUpdate } from "../../src/lib/kv.js";
import { definition as notifications } from "../../src/services/notifications/service.js";
import { buildMailProvider } from "../../src/simulators/mail-provider/app.js";
import { buildPaymentGateway } from "../../src/simulators/payment-gateway/app.js";
import { connectTo, startNatsServer, type NatsServer } from "./nats.js";
import { AUTH_ENV, operatorAuth } from "./auth.js";

const DATABASE_URL = process.env["DATABASE_URL"] || undefined;

/** The rig's catalog: a few SKUs with known stock (price in cents). */
export const CATALOG = [
  { sku: "SKU-A", name: "A", price: 500, currency: "EUR", stock: 100 },
  { sku: "SKU-B", name: "B", price: 700, currency: "EUR", stock: 100 },
  { sku: "SKU-SCARCE", name: "Scarce", price: 1000, currency: "EUR", stock: 5 },
] as const;
export type Sku = (typeof CATALOG)[number]["sku"];

const priceOf = (sku: Sku) => CATALOG.find((c) => c.sku === sku)!.price;

type Service = RunningService<never>;

async function post(url: string, body: unknown, idempotencyKey: string): Promise<any> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "idempotency-key": idempotencyKey },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${url}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** Options of {@link startRig}. */
export interface RigOptions {
  /** Also run the real notifications service (e-mails on terminal events through the mail provider). */
  notifications?: boolean;
}

/** See the module comment. */
export class Rig {
  /** Events published by the test, by id (their cause chain and trace). */
  readonly #published = new Map<string, AnyEnvelope>();
  /** Consumers whose service the test stopped: their backlog is the state under test, not work in flight. */
  readonly #stopped: string[] = [];
  /** The audit's projector was stopped by {@link stopAuditProjector}: its lag is the state under test. */
  #auditStopped = false;

  constructor(
    readonly dir: string,
    readonly nats: NatsServer,
    readonly nc: NatsConnection,
    readonly jsm: JetStreamManager,
    readonly publisher: Publisher,
    readonly gateway: FastifyInstance,
    readonly mail: FastifyInstance,
    readonly urls: { gateway: string; mail: string; inventory: string; audit: string },
    readonly services: { inventory: Service; audit: Service; notifications?: Service },
    readonly env: Record<string, string>,
    /** `Bearer <operator token>` for the checker's audit and inventory reads. */
    readonly authorization: string,
  ) {}

  /** Where the checker (and the reconciliation) read this system. */
  targets(extra: Partial<CheckTargets> = {}): CheckTargets {
    return {
      nc: this.nc,
      inventoryUrl: this.urls.inventory,
      auditUrl: this.urls.audit,
      gatewayUrl: this.urls.gateway,
      mailUrl: this.urls.mail,
      authorization: this.authorization,
      ...extra,
    };
  }

  /**
   * Waits until every durable consumer has processed (or dead-lettered) everything, `except` and the consumers of
   * services stopped by {@link stopNotifications} aside (their backlog is the state under test), and the audit has
   * recorded every stream to its end (unless {@link stopAuditProjector} stopped it); throws with the backlogs if
   * that takes more than 10 s.
   */
  async drain(except: string[] = []): Promise<DrainResult> {
    const r = await waitForDrain(this.jsm, {
      timers: ["orders-timeouts", ...this.#stopped, ...except],
      timeoutMs: 10_000,
      ...(this.#auditStopped ? {} : { auditUrl: this.urls.audit, authorization: this.authorization }),
    });
    if (!r.drained)
      throw new Error(`consumers not drained: ${r.backlogs.map((b) => JSON.stringify(b)).join(", ")}`);
    return r;
  }

  /** Drains, then runs the checker once. */
  async check(
    opts: { accepted?: Iterable<string>; except?: string[]; cancelWindowMs?: number } = {},
  ): Promise<CheckReport> {
    await this.drain(opts.except);
    return checkInvariants(
      this.targets({
        ...(opts.accepted ? { acceptedOrderIds: opts.accepted } : {}),
        ...(opts.cancelWindowMs !== undefined ? { cancelWindowMs: opts.cancelWindowMs } : {}),
      }),
    );
  }

  /** Drains, then gathers what the chaos reconciliation reads (it runs the checker with `accepted` too). */
  async facts(accepted: Iterable<string>): Promise<SystemFacts> {
    await this.drain();
    return gatherFacts(this.targets(), accepted);
  }

  // -------------------------------------------------------------------------------------------------------------
  // The saga, played step by step

  async #publish<T extends AnyEnvelope>(e: T): Promise<T> {
    await this.publisher.publish(e);
    this.#published.set(e.id, e);
    return e;
  }

  #cause(orderId: string): Pick<Envelope, "id" | "trace_id"> | undefined {
    return this.#published.get(`${orderId}:OrderPlaced`);
  }

  /** orders: OrderPlaced of `lines` (prices from the catalog), and waits until inventory has reserved or rejected. */
  async place(
    orderId: string,
    lines: { sku: Sku; quantity: number }[],
    opts: { email?: string; customerId?: string } = {},
  ): Promise<Envelope<"OrderPlaced">> {
    const now = new Date();
    const items = lines.map((l) => ({ ...l, unitPrice: priceOf(l.sku) }));
    const e = await this.#publish(
      makeEvent(
        "OrderPlaced",
        {
          orderId,
          customerId: opts.customerId ?? `cus-${orderId}`,
          email: opts.email ?? `${orderId}@example.com`,
          items,
          total: items.reduce((s, l) => s + l.quantity * l.unitPrice, 0),
          currency: "EUR",
          placedAt: now.toISOString(),
          timeoutAt: new Date(now.getTime() + 60_000).toISOString(),
        },
        { aggregateId: orderId, source: "orders" },
      ),
    );
    await this.drain();
    return e;
  }

  /** The total of a placed order. */
  totalOf(orderId: string): number {
    const e = this.#published.get(`${orderId}:OrderPlaced`) as Envelope<"OrderPlaced"> | undefined;
    if (!e) throw new Error(`order ${orderId} was not placed by this rig`);
    return e.data.total;
  }

  /** The gateway only: one charge of `amount` under `key` (payments uses `charge:<orderId>`); its charge id. */
  async charge(orderId: string, amount: number, key = `charge:${orderId}`): Promise<string> {
    const r = await post(
      `${this.urls.gateway}/v1/charges`,
      { orderId, customerId: `cus-${orderId}`, amount, currency: "EUR" },
      key,
    );
    if (r.status !== "captured") throw new Error(`charge of ${orderId} ${r.status}`);
    return r.id as string;
  }

  /**
   * payments: a refund of `amount` of the order's last capture at the gateway, and its PaymentRefunded (with
   * `event: false`, the gateway only: money moved unrecorded).
   */
  async refund(
    orderId: string,
    amount: number,
    key = `refund:${orderId}`,
    opts: { event?: boolean } = {},
  ): Promise<void> {
    const r = await post(`${this.urls.gateway}/v1/refunds`, { orderId, amount }, key);
    if (opts.event === false) return;
    await this.#publish(
      makeEvent(
        "PaymentRefunded",
        { orderId, paymentId: `pay-${orderId}`, refundId: r.id as string, amount, currency: "EUR" },
        {
          aggregateId: orderId,
          source: "payments",
          cause: this.#cause(orderId),
          idSuffix: key === `refund:${orderId}` ? undefined : key,
        },
      ),
    );
  }

  /** payments: charges the order total at the gateway and publishes PaymentCaptured. */
  async capture(orderId: string): Promise<void> {
    const amount = this.totalOf(orderId);
    const paymentId = await this.charge(orderId, amount);
    await this.#publish(
      makeEvent(
        "PaymentCaptured",
        { orderId, paymentId, amount, currency: "EUR" },
        { aggregateId: orderId, source: "payments", cause: this.#cause(orderId) },
      ),
    );
  }

  /** orders: OrderConfirmed. */
  async confirm(orderId: string): Promise<void> {
    await this.#publish(
      makeEvent(
        "OrderConfirmed",
        { orderId, paymentId: `pay-${orderId}`, total: this.totalOf(orderId), currency: "EUR" },
        { aggregateId: orderId, source: "orders", cause: this.#cause(orderId) },
      ),
    );
  }

  /** orders: OrderCancelled with `reason`. */
  async cancel(orderId: string, reason: CancelReason = "timeout"): Promise<void> {
    await this.#publish(
      makeEvent(
        "OrderCancelled",
        { orderId, reason },
        { aggregateId: orderId, source: "orders", cause: this.#cause(orderId) },
      ),
    );
  }

  /** The mail provider only: one e-mail of `kind` under `key` (notifications uses `<orderId>:<kind>`). */
  async sendMail(orderId: string, kind: NotificationKind, key = `${orderId}:${kind}`): Promise<string> {
    const r = await post(
      `${this.urls.mail}/v1/messages`,
      { to: `${orderId}@example.com`, subject: kind, text: kind, tags: { orderId, kind } },
      key,
    );
    return r.id as string;
  }

  /** notifications: e-mails the customer and publishes NotificationSent. */
  async notify(orderId: string, kind: NotificationKind): Promise<void> {
    const messageId = await this.sendMail(orderId, kind);
    await this.#publish(
      makeEvent(
        "NotificationSent",
        { orderId, kind, messageId },
        { aggregateId: orderId, source: "notifications", cause: this.#cause(orderId), idSuffix: kind },
      ),
    );
  }

  /** notifications, for a customer whose personal data was erased: no e-mail, NotificationWithheld. */
  async withhold(orderId: string, kind: NotificationKind): Promise<void> {
    await this.#publish(
      makeEvent(
        "NotificationWithheld",
        { orderId, kind, reason: "personal_data_erased" },
        { aggregateId: orderId, source: "notifications", cause: this.#cause(orderId), idSuffix: kind },
      ),
    );
  }

  /** A whole good saga ending CONFIRMED: placed, reserved, captured, confirmed, committed, e-mailed. */
  async confirmedOrder(orderId: string, lines: { sku: Sku; quantity: number }[]): Promise<void> {
    await this.place(orderId, lines);
    await this.capture(orderId);
    await this.confirm(orderId);
    await this.notify(orderId, "order_confirmed");
  }

  /** A whole good saga ending CANCELLED (payment declined): placed, reserved, cancelled, released, e-mailed. */
  async cancelledOrder(orderId: string, lines: { sku: Sku; quantity: number }[]): Promise<void> {
    await this.place(orderId, lines);
    await this.cancel(orderId, "payment_declined");
    await this.notify(orderId, "order_cancelled");
  }

  /**
   * A whole good saga ending CANCELLED after its confirmation: a {@link confirmedOrder}, then cancelled on request
   * (inventory returns the sold units), refunded in full, and e-mailed about the cancellation. Waits until
   * inventory has returned the stock.
   */
  async cancelledAfterConfirmation(
    orderId: string,
    lines: { sku: Sku; quantity: number }[],
    opts: { refund?: boolean; notify?: boolean } = {},
  ): Promise<void> {
    await this.confirmedOrder(orderId, lines);
    await this.cancel(orderId, "customer_request");
    if (opts.refund !== false) await this.refund(orderId, this.totalOf(orderId));
    if (opts.notify !== false) await this.notify(orderId, "order_cancelled");
    await this.drain();
  }

  /**
   * A poison message on the order's subject: a known type (`OrderConfirmed` in the type header) whose data breaks
   * its schema. Every consumer of ORDERS dead-letters it (non-retryable); the checker cannot decode it.
   */
  async poison(orderId: string): Promise<void> {
    const h = natsHeaders();
    h.set(Hdr.Type, "OrderConfirmed");
    const body = {
      ...makeEvent(
        "OrderConfirmed",
        { orderId, paymentId: "pay", total: 1, currency: "EUR" },
        { aggregateId: orderId, source: "orders", idSuffix: "poison" },
      ),
      data: { orderId, total: -1 },
    };
    await this.publisher.publishRaw(`orders.${orderId}`, new TextEncoder().encode(JSON.stringify(body)), {
      msgID: `${orderId}:poison`,
      headers: h,
      stream: "ORDERS",
    });
  }

  /**
   * Stops the notifications service (gracefully: what it holds is handed back). Its durable stays: whatever is
   * published from now on waits in it, neither processed nor dead-lettered.
   */
  async stopNotifications(): Promise<void> {
    const s = this.services.notifications;
    if (!s) throw new Error("the rig runs no notifications service");
    await this.drain();
    await s.stop();
    delete this.services.notifications;
    this.#stopped.push(NOTIFICATIONS_CONSUMER);
  }

  /**
   * Stops the audit's projector (after a drain): its HTTP API stays up, but whatever is published from now on is not
   * recorded, and its positions stay behind the streams.
   */
  async stopAuditProjector(): Promise<void> {
    await this.drain();
    await auditProjectorOf(this.services.audit.ctx)!.stop();
    this.#auditStopped = true;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Stores, altered behind the services' backs

  /** The audit service's store (its table, and `db` for SQL). */
  get auditStore(): AuditStore {
    const s = auditStoreOf(this.services.audit.ctx);
    if (!s) throw new Error("audit store not open");
    return s;
  }

  /** Runs `sql` on the audit table (`$table`) with its append-only trigger off, as a privileged intruder could. */
  async tamperAudit(sql: string, params: unknown[] = []): Promise<void> {
    const store = this.auditStore;
    await store.db.transaction(async (tx) => {
      await tx.query(`ALTER TABLE ${store.qualified} DISABLE TRIGGER "${store.table}_no_change"`);
      await tx.query(sql.replaceAll("$table", store.qualified), params);
      await tx.query(`ALTER TABLE ${store.qualified} ENABLE TRIGGER "${store.table}_no_change"`);
    });
  }

  /**
   * Rewrites a SKU's stock record in the inventory's `stock` KV bucket (a compare-and-set, as inventory writes it),
   * as a bug or an intruder could: the inventory service serves what is stored.
   */
  async tamperStock(sku: Sku, patch: Partial<Omit<StockRecord, "sku">>): Promise<StockRecord> {
    const store = await InventoryStore.open(this.nc, { replicas: 1 });
    const r = await casUpdate<StockRecord>(store.stock, sku, (cur) => {
      if (!cur) throw new Error(`no stock record for ${sku}`);
      return { ...cur, ...patch };
    });
    return r.value!;
  }

  /** The stock record of a SKU as inventory stored it. */
  async stockOf(sku: Sku): Promise<StockRecord> {
    const store = await InventoryStore.open(this.nc, { replicas: 1 });
    const s = await store.getStock(sku);
    if (!s) throw new Error(`no stock record for ${sku}`);
    return s;
  }

  /** The mail provider forgets every e-mail it recorded (its log is wiped, as a restart without its file does). */
  async wipeMailLog(): Promise<void> {
    const res = await fetch(`${this.urls.mail}/admin/reset`, { method: "POST" });
    if (!res.ok) throw new Error(`mail provider reset: ${res.status}`);
  }

  /** Stops the services, simulators and nats-server, and removes the audit schema and the temp dir. */
  async stop(): Promise<void> {
    const { notifications, inventory, audit } = this.services;
    await Promise.allSettled([notifications, inventory, audit].flatMap((s) => (s ? [s.stop()] : [])));
    await this.gateway.close();
    await this.mail.close();
    await this.nc.close().catch(() => undefined);
    await this.nats.cleanup();
    if (DATABASE_URL) {
      const db = await openDb({ databaseUrl: DATABASE_URL, dataDir: this.dir });
      await db.query(`DROP SCHEMA IF EXISTS "${this.env["AUDIT_SCHEMA"]}" CASCADE`);
      await db.close();
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Starts a rig (see the module comment); stop it with {@link Rig.stop}. */
export async function startRig(opts: RigOptions = {}): Promise<Rig> {
  const dir = await mkdtemp(join(tmpdir(), "shopstream-checker-"));
  const nats = await startNatsServer();
  const gateway = buildPaymentGateway({ logger: false });
  const mail = buildMailProvider({ logger: false });
  const started: Service[] = [];
  try {
    const gatewayUrl = await gateway.listen({ host: "127.0.0.1", port: 0 });
    const mailUrl = await mail.listen({ host: "127.0.0.1", port: 0 });
    const catalogFile = join(dir, "catalog.json");
    await writeFile(catalogFile, JSON.stringify({ items: CATALOG }));
    const env: Record<string, string> = {
      ...AUTH_ENV,
      NATS_URL: nats.url,
      PORT: "0",
      LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
      PAYMENT_GATEWAY_URL: gatewayUrl,
      MAIL_PROVIDER_URL: mailUrl,
      DATA_DIR: join(dir, "data"),
      AUDIT_SCHEMA: `checker_${process.pid}_${randomBytes(4).toString("hex")}`,
      CATALOG_FILE: catalogFile,
      RETRY_INITIAL_MS: "100",
      ...(DATABASE_URL ? { DATABASE_URL } : {}),
    };
    const start = async (def: unknown): Promise<Service> => {
      const s = (await startService(def as never, env)) as Service;
      started.push(s);
      return s;
    };
    const services = {
      inventory: await start(inventory),
      audit: await start(audit),
      ...(opts.notifications ? { notifications: await start(notifications) } : {}),
    };
    const nc = await connectTo(nats);
    const jsm = await jetstreamManager(nc);
    return new Rig(
      dir,
      nats,
      nc,
      jsm,
      new Publisher(jetstream(nc)),
      gateway,
      mail,
      { gateway: gatewayUrl, mail: mailUrl, inventory: services.inventory.url, audit: services.audit.url },
      services,
      env,
      (await operatorAuth()).authorization,
    );
  } catch (err) {
    for (const s of started.reverse()) await s.stop().catch(() => undefined);
    await gateway.close();
    await mail.close();
    await nats.cleanup();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Every violation of a report as `<invariant> <kind> <order, SKU or consumer>`, sorted: the whole verdict as one
 * list a test compares exactly, so a bad state must be reported as its kind, for its subject, and nothing else.
 */
export function verdict(r: CheckReport): string[] {
  return violationsOf(r)
    .map((v) => [v.invariant, v.kind, v.orderId ?? v.sku ?? v.consumer ?? "-"].join(" "))
    .sort();
}

/** The violations of a report about one order (or SKU, or consumer), as `<invariant> <kind>`, sorted. */
export function verdictOf(r: CheckReport, subject: string): string[] {
  return violationsOf(r)
    .filter((v) => (v.orderId ?? v.sku ?? v.consumer) === subject)
    .map((v) => `${v.invariant} ${v.kind}`)
    .sort();
}
