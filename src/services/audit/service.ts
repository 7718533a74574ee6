/**
 * The audit service: records every event of every stream, and every DLQ entry, exactly once in an
 * append-only, hash-chained log (PostgreSQL, or embedded PGlite without `DATABASE_URL`), and serves
 * order timelines, chain verification, a paged listing and its read positions over HTTP. It reads the
 * streams as a projector (`projector.ts`): ordered consumers, no acknowledgements, its position per stream
 * in the database; no durable consumers.
 */
import type { Static } from "@sinclair/typebox";
import { describeError } from "../../lib/errors.js";
import type { CommonConfig, ServiceContext, ServiceDefinition } from "../../lib/service.js";
import { AuditConfig } from "./config.js";
import { Projector } from "./projector.js";
import { registerAuditRoutes } from "./routes.js";
import { defaultBackoff } from "../../lib/messaging/backoff.js";
import type { SqlDb } from "./store-sql.js";
import { AuditStore, openDb } from "./store.js";
import { AuditWriter } from "./writer.js";
import { ChainMonitor } from "./chain-monitor.js";
import { Gauge } from "prom-client";
import { Durables } from "../../lib/events/consumers.js";
import { deadLettersByConsumer } from "../../lib/messaging/dlq.js";

type Config = Static<typeof AuditConfig> & CommonConfig;
type Ctx = ServiceContext<Config>;

interface AuditState {
  store: AuditStore;
  writer: AuditWriter;
  projector: Projector;
}

const states = new WeakMap<object, AuditState>();

/** The store of a running audit service (tests and tools: direct SQL through `store.db`). */
export function auditStoreOf(ctx: object): AuditStore | undefined {
  return states.get(ctx)?.store;
}

/** The writer of a running audit service (its `stats` count batches, inserts and duplicates). */
export function auditWriterOf(ctx: object): AuditWriter | undefined {
  return states.get(ctx)?.writer;
}

/** The projector of a running audit service (its role, its readers). */
export function auditProjectorOf(ctx: object): Projector | undefined {
  return states.get(ctx)?.projector;
}

/** Options for {@link createAuditDefinition}. */
export interface AuditDefinitionOptions {
  /**
   * A database handle to use instead of opening one from the configuration; the service does not close
   * it. Lets several in-process replicas share one PGlite instance in tests.
   */
  db?: SqlDb;
}

const PING_TIMEOUT_MS = 2_000;

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens the configured database and prepares the table. PostgreSQL is retried with backoff for up to
 * DATABASE_CONNECT_TIMEOUT_MS (it may start after us); PGlite errors are final.
 */
async function openStore(
  ctx: Ctx,
  injected: SqlDb | undefined,
): Promise<{ store: AuditStore; owned: boolean }> {
  const c = ctx.config;
  const opts = { schema: c.AUDIT_SCHEMA, table: c.AUDIT_TABLE };
  if (injected) {
    const store = new AuditStore(injected, opts);
    await store.ensureSchema();
    return { store, owned: false };
  }
  const deadline = Date.now() + c.DATABASE_CONNECT_TIMEOUT_MS;
  for (let attempt = 1; ; attempt++) {
    let db: SqlDb | undefined;
    try {
      db = await openDb({
        databaseUrl: c.DATABASE_URL,
        dataDir: c.DATA_DIR,
        poolMax: c.DATABASE_POOL_MAX,
        logger: ctx.logger,
      });
      const store = new AuditStore(db, opts);
      await store.ensureSchema();
      return { store, owned: true };
    } catch (err) {
      await db?.close().catch(() => undefined);
      if (!c.DATABASE_URL || Date.now() >= deadline) {
        throw new Error(`audit database unavailable: ${describeError(err)}`, { cause: err });
      }
      const delay = Math.min(2_000, 100 * 2 ** Math.min(attempt, 5));
      ctx.logger.warn(
        { err: describeError(err), attempt, retry_in_ms: delay },
        "audit database not reachable yet",
      );
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/**
 * `shopstream_dlq_messages{consumer}`: entries in the DLQ per consumer, read from the DLQ stream at scrape time (the
 * audit reads every stream, the DLQ included, so its NATS user may ask for the DLQ's info). Every durable is reported,
 * with 0 when it has none.
 */
function registerDlqGauge(ctx: Ctx): void {
  const gauge: Gauge<"consumer"> = new Gauge({
    name: "shopstream_dlq_messages",
    help: "Entries in the DLQ stream per consumer (subject dlq.<consumer>), read from the server at scrape time.",
    labelNames: ["consumer"],
    registers: [ctx.metrics.registry],
    collect: async () => {
      try {
        const counts = await deadLettersByConsumer(ctx.jsm, Object.values(Durables));
        gauge.reset();
        for (const [consumer, n] of counts) gauge.set({ consumer }, n);
      } catch {
        /* NATS not answering: keep the last values */
      }
    },
  });
}

/** The audit service's definition; `opts.db` injects a shared database handle. */
export function createAuditDefinition(
  opts: AuditDefinitionOptions = {},
): ServiceDefinition<typeof AuditConfig> {
  return {
    name: "audit",
    config: AuditConfig,
    async setup(ctx) {
      const c = ctx.config;
      const { store, owned } = await openStore(ctx, opts.db);
      const writer = new AuditWriter(store, {
        maxBatch: c.AUDIT_BATCH_MAX,
        maxDelayMs: c.AUDIT_BATCH_DELAY_MS,
        logger: ctx.logger,
        registry: ctx.metrics.registry,
      });
      const projector = new Projector({
        js: ctx.js,
        jsm: ctx.jsm,
        store,
        writer,
        logger: ctx.logger,
        registry: ctx.metrics.registry,
        inFlight: c.AUDIT_CONCURRENCY,
        readBatch: c.AUDIT_READ_BATCH,
        standbyRetryMs: c.AUDIT_STANDBY_RETRY_MS,
        stallMs: c.AUDIT_STALL_MS,
        backoff: { ...defaultBackoff, initialMs: c.RETRY_INITIAL_MS, maxMs: c.RETRY_MAX_MS },
      });
      states.set(ctx, { store, writer, projector });
      registerAuditRoutes(ctx.app, store, projector);
      // The hash chain verified periodically, for the alerts (deploy/observability/alerts.rules.yml).
      const chain = new ChainMonitor({
        store,
        registry: ctx.metrics.registry,
        logger: ctx.logger,
        intervalMs: c.AUDIT_VERIFY_INTERVAL_MS,
      });
      registerDlqGauge(ctx);
      ctx.logger.info({ storage: store.db.kind, table: store.qualified }, "audit log ready");
      return {
        started: async () => {
          await projector.start();
          chain.start();
        },
        close: async () => {
          // Stop reading (the readers wait for their entries), write what is queued, let go of the database.
          await chain.stop();
          await projector.stop();
          await writer.close();
          if (owned) await store.db.close();
        },
      };
    },
    readiness: (ctx) => ({
      database: async () => {
        const store = states.get(ctx)?.store;
        if (!store) return "not open";
        await withTimeout(store.ping(), PING_TIMEOUT_MS, "audit database");
        return true;
      },
      projector: () => states.get(ctx)?.projector.readiness() ?? "not set up",
    }),
  };
}

/** The audit service. */
export const definition = createAuditDefinition();
