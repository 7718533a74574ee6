/**
 * The inventory service: stock per SKU and reservations in JetStream KV, the `inventory-orders` consumer
 * (reserve on OrderPlaced, commit on OrderConfirmed, release on OrderCancelled) and an operators' HTTP API: stock
 * and reservations to read, products, prices and stock adjustments to change (catalog-routes.ts).
 */
import swagger from "@fastify/swagger";
import { Streams } from "../../lib/events/catalog.js";
import { bearerSecurityScheme } from "../../lib/http/auth.js";
import { Durables } from "../../lib/events/consumers.js";
import type { ConsumerSpec } from "../../lib/messaging/topology.js";
import type { ServiceContext, ServiceDefinition } from "../../lib/service.js";
import type { CommonConfig } from "../../lib/service.js";
import { AdjustmentOutbox } from "./adjustments.js";
import { DEFAULT_CATALOG, loadCatalogFile } from "./catalog.js";
import { InventoryConfig } from "./config.js";
import { createHandlers } from "./handlers.js";
import { registerInventoryRoutes } from "./routes.js";
import { InventoryStore } from "./store.js";

export const SERVICE_NAME = "inventory";
/** The durable consumer of the ORDERS stream shared by every inventory replica. */
export const ORDERS_CONSUMER = Durables.INVENTORY_ORDERS;

type Ctx = ServiceContext<InventoryConfig & CommonConfig>;

/** The store of each running instance (several may run in one process, e.g. in tests). */
const stores = new WeakMap<Ctx, InventoryStore>();

/** The adjustment outbox of each running instance. */
const outboxes = new WeakMap<Ctx, AdjustmentOutbox>();

/** The adjustment outbox of a running instance (tests). */
export function adjustmentOutboxOf(ctx: object): AdjustmentOutbox | undefined {
  return outboxes.get(ctx as Ctx);
}

/** The store of a running instance (set once its setup has opened the buckets). */
export function storeOf(ctx: Ctx): InventoryStore {
  const store = stores.get(ctx);
  if (!store) throw new Error("inventory store is not open yet");
  return store;
}

/** The inventory service's durable consumers as declared (provisioning creates them from here too). */
export function inventoryConsumerSpecs(): ConsumerSpec[] {
  return [
    {
      stream: Streams.ORDERS,
      durable: ORDERS_CONSUMER,
      filterSubject: "orders.*",
      description: "inventory: reserve on OrderPlaced, commit on OrderConfirmed, release on OrderCancelled",
    },
  ];
}

export const definition: ServiceDefinition<typeof InventoryConfig> = {
  name: SERVICE_NAME,
  config: InventoryConfig,
  async setup(ctx) {
    // Read the catalog source before touching state, so a bad file stops the service with nothing changed.
    const file = ctx.config.CATALOG_FILE;
    const items = file ? await loadCatalogFile(file) : DEFAULT_CATALOG;
    const store = await InventoryStore.open(ctx.nc, { replicas: ctx.config.STREAM_REPLICAS });
    const seeded = await store.seed(items, ctx.logger);
    ctx.logger.info({ source: file ?? "default catalog", ...seeded }, "catalog loaded");
    stores.set(ctx, store);
    // Stock adjustment events kept by a crash or a failed publish are published in the background from the start.
    const outbox = new AdjustmentOutbox(store, {
      publisher: ctx.publisher,
      jsm: ctx.jsm,
      logger: ctx.logger,
      source: SERVICE_NAME,
    });
    outboxes.set(ctx, outbox);
    outbox.schedule();
    await ctx.app.register(swagger, {
      openapi: {
        openapi: "3.1.0",
        info: {
          title: "ShopStream inventory API",
          version: "1.0.0",
          description:
            "Stock per SKU and reservations (read), and the operators' catalog and stock changes (each an event on INVENTORY). Operators only: every call carries `Authorization: Bearer <JWT>` with the `operator` scope (docs/security.md). Errors are application/problem+json (RFC 9457).",
        },
        components: { securitySchemes: bearerSecurityScheme },
      },
    });
    registerInventoryRoutes(
      ctx.app,
      () => storeOf(ctx),
      () => ({ publisher: ctx.publisher, jsm: ctx.jsm, logger: ctx.logger, source: SERVICE_NAME, outbox }),
    );
    ctx.app.get("/openapi.json", { schema: { hide: true }, config: { auth: "none" } }, async () =>
      ctx.app.swagger(),
    );
    return { close: () => outbox.stop() };
  },
  readiness: (ctx) => ({ buckets: () => (stores.has(ctx) ? true : "KV buckets not open") }),
  consumers: (ctx) => [
    {
      spec: inventoryConsumerSpecs()[0]!,
      handlers: createHandlers({
        store: storeOf(ctx),
        publisher: ctx.publisher,
        jsm: ctx.jsm,
        source: SERVICE_NAME,
      }),
    },
  ],
};
