import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import { bearerSecurityScheme } from "../../lib/http/auth.js";
import type { Static } from "@sinclair/typebox";
import { Durables } from "../../lib/events/consumers.js";
import { Streams } from "../../lib/events/mod.js";
import { openBucket } from "../../lib/kv.js";
import type { ConsumerSpec } from "../../lib/messaging/topology.js";
import type { ServiceDefinition } from "../../lib/service.js";
import { OrdersInFlight } from "./admission.js";
import { CatalogView } from "./catalog.js";
import { OrdersConfig } from "./config.js";
import { SkuQuota } from "./limits.js";
import { sagaHandlers, timeoutHandlers } from "./handlers.js";
import { registerCancelRoute } from "./cancel-route.js";
import { registerOrderRoutes } from "./routes.js";
import { CustomerIndex, IdempotencyKeys, OrderStore } from "./store.js";

/** The orders service's durable consumers as declared (provisioning creates them from here too). */
export function ordersConsumerSpecs(
  c: Pick<
    Static<typeof OrdersConfig>,
    "TIMEOUT_MAX_ACK_PENDING" | "ORDER_TIMEOUT_MS" | "TIMEOUT_ACK_WAIT_MARGIN_MS"
  >,
): ConsumerSpec[] {
  return [
    {
      stream: Streams.INVENTORY,
      durable: Durables.ORDERS_INVENTORY,
      filterSubject: "inventory.*.StockRejected",
    },
    { stream: Streams.PAYMENTS, durable: Durables.ORDERS_PAYMENTS, filterSubject: "payments.*.*" },
    {
      stream: Streams.ORDERS,
      durable: Durables.ORDERS_TIMEOUTS,
      filterSubject: "orders.*",
      maxAckPending: c.TIMEOUT_MAX_ACK_PENDING,
      // Each OrderPlaced is held by the runner until its deadline (a timer hold: see timeoutHandlers) with no
      // working(): the ack wait covers the whole hold. The runner holds up to maxAckPending of them outside
      // its concurrency slots. After a crash they come back once the ack wait has passed.
      ackWaitMs: c.ORDER_TIMEOUT_MS + c.TIMEOUT_ACK_WAIT_MARGIN_MS,
      // Holds use no delivery; redeliveries come from crashes and hand-backs only. Kept well above the
      // default so rolling restarts (each a hand-back) do not dead-letter timers, and finite so an OrderPlaced
      // that crashes the process at its deadline still ends in the DLQ.
      maxDeliveries: 1_000,
    },
  ];
}

/**
 * The orders service: the public order API, the event-sourced Order aggregate, the saga's decisions
 * on inventory and payment outcomes, and order timeouts. Each call makes an independent instance.
 */
export function createOrdersService(): ServiceDefinition<typeof OrdersConfig> {
  const catalog = new CatalogView();
  let store: OrderStore | undefined;
  return {
    name: "orders",
    config: OrdersConfig,
    bodyLimit: 64 * 1024,
    async setup(ctx) {
      const replicas = ctx.config.STREAM_REPLICAS;
      const [catalogKv, requestsKv, customersKv] = await Promise.all([
        openBucket(ctx.nc, "catalog", { replicas, description: "Catalog (owned by inventory)" }),
        openBucket(ctx.nc, "order-requests", { replicas, description: "Idempotency-Keys of POST /orders" }),
        openBucket(ctx.nc, "orders-by-customer", { replicas, description: "Order ids by customer" }),
      ]);
      await catalog.start(catalogKv, ctx.logger);
      store = new OrderStore(ctx.jsm, ctx.publisher);
      const orderStore = store;
      // Admission control (docs/architecture.md): orders placed here and not yet closed, per replica.
      const inFlight = new OrdersInFlight(ctx.config.MAX_ORDERS_IN_FLIGHT);
      inFlight.registerMetrics(ctx.metrics.registry);
      store.onClosed = (orderId) => inFlight.closed(orderId);
      await inFlight.watch(
        ctx.nc,
        async (orderId) => ((await orderStore.load(orderId)).order?.status ?? "PENDING") !== "PENDING",
        ctx.logger,
      );
      await ctx.app.register(swagger, {
        openapi: {
          openapi: "3.1.0",
          info: {
            title: "ShopStream orders API",
            version: "1.0.0",
            description:
              "Place, read and cancel orders. Every call carries `Authorization: Bearer <JWT>` (docs/security.md). Errors are application/problem+json (RFC 9457).",
          },
          components: { securitySchemes: bearerSecurityScheme },
        },
      });
      // Per-customer rate limit of POST /orders (in memory, per replica); routes opt in by their config.
      await ctx.app.register(rateLimit, { global: false });
      registerOrderRoutes(ctx.app, {
        store,
        catalog,
        idempotency: new IdempotencyKeys(requestsKv),
        customers: new CustomerIndex(customersKv),
        logger: ctx.logger,
        timeoutMs: ctx.config.ORDER_TIMEOUT_MS,
        maxLines: ctx.config.MAX_ORDER_LINES,
        defaultCurrency: ctx.config.DEFAULT_CURRENCY,
        inFlight,
        limits: {
          rate: { max: ctx.config.ORDER_RATE_LIMIT_MAX, windowMs: ctx.config.ORDER_RATE_LIMIT_WINDOW_MS },
          maxLineQuantity: ctx.config.MAX_LINE_QUANTITY,
          maxOrderQuantity: ctx.config.MAX_ORDER_QUANTITY,
          skuQuota: new SkuQuota(ctx.config.SKU_UNITS_PER_CUSTOMER, ctx.config.SKU_QUOTA_WINDOW_MS),
        },
      });
      registerCancelRoute(ctx.app, { store, logger: ctx.logger, windowMs: ctx.config.CANCEL_WINDOW_MS });
      ctx.app.get("/openapi.json", { schema: { hide: true }, config: { auth: "none" } }, async () =>
        ctx.app.swagger(),
      );
      return {
        close: async () => {
          inFlight.stop();
          catalog.close();
        },
      };
    },
    readiness: () => ({
      catalog: () => (catalog.size > 0 ? true : "catalog is empty (is inventory running?)"),
    }),
    consumers: (ctx) => {
      if (!store) throw new Error("orders: setup must run before consumers");
      const [inventory, payments, timeouts] = ordersConsumerSpecs(ctx.config);
      return [
        { spec: inventory!, handlers: sagaHandlers(store) },
        { spec: payments!, handlers: sagaHandlers(store) },
        { spec: timeouts!, handlers: timeoutHandlers(store), maxAttempts: 50 },
      ];
    },
  };
}

/** The orders service definition run by `main.ts`. */
export const definition = createOrdersService();
