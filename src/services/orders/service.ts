import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import { bearerSecurityScheme } from "../../lib/http/auth.js";
import type { Static } from "@sinclair/typebox";
import { Durables } from "../../lib/events/consumers.js";
import { Streams, type Envelope } from "../../lib/events/mod.js";
import { Histogram, type Registry } from "prom-client";
import { openBucket } from "../../lib/kv.js";
import type { ConsumerSpec } from "../../lib/messaging/topology.js";
import type { ServiceDefinition } from "../../lib/service.js";
import { OrdersInFlight } from "./admission.js";
import { CatalogView } from "./catalog.js";
import { LiveStreams } from "./live.js";
import { OrdersConfig } from "./config.js";
import { SkuQuota } from "./limits.js";
import { sagaHandlers, timeoutHandlers } from "./handlers.js";
import { registerCancelRoute } from "./cancel-route.js";
import { registerOrderRoutes } from "./routes.js";
import { registerPersonalDataRoutes } from "./personal-data.js";
import { CUSTOMER_KEYS_BUCKET, CUSTOMER_KEYS_DESCRIPTION, CustomerKeys } from "../../lib/pii/keys.js";
import { PersonalData } from "../../lib/pii/personal-data.js";
import { CustomerIndex, IdempotencyKeys, OrderStore } from "./store.js";
import type { Order } from "./order.js";

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
 * `shopstream_order_completion_seconds{status}`: the time from an order's placement (its `placedAt`) to the terminal
 * event this process appended, by status (CONFIRMED, CANCELLED). Its p99 for CONFIRMED is the order latency objective
 * (ShopStreamOrderLatencyHigh in deploy/observability/alerts.rules.yml). Returns the store's `onDecided` hook.
 */
export function orderCompletionMetric(registry: Registry): (order: Order, event: Envelope) => void {
  const histogram = new Histogram({
    name: "shopstream_order_completion_seconds",
    help: "Time from an order's placement to its terminal event (OrderConfirmed, OrderCancelled), by status.",
    labelNames: ["status"],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60, 120],
    registers: [registry],
  });
  return (order, event) => {
    const seconds = (Date.parse(event.timestamp) - Date.parse(order.createdAt)) / 1000;
    if (!Number.isFinite(seconds)) return;
    const status = event.type === "OrderConfirmed" ? "CONFIRMED" : "CANCELLED";
    histogram.observe({ status }, Math.max(0, seconds));
  };
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
      const [catalogKv, requestsKv, customersKv, keysKv] = await Promise.all([
        openBucket(ctx.nc, "catalog", { replicas, description: "Catalog (owned by inventory)" }),
        openBucket(ctx.nc, "order-requests", { replicas, description: "Idempotency-Keys of POST /orders" }),
        openBucket(ctx.nc, "orders-by-customer", { replicas, description: "Order ids by customer" }),
        openBucket(ctx.nc, CUSTOMER_KEYS_BUCKET, { replicas, description: CUSTOMER_KEYS_DESCRIPTION }),
      ]);
      const keys = new CustomerKeys(keysKv);
      // A returning customer's order is sealed with the key remembered from their last one (no read per order); the
      // watch forgets a key as soon as an erasure purges it (src/lib/pii/keys.ts).
      await keys.watchForSealing(ctx.logger);
      await catalog.start(catalogKv, ctx.logger);
      store = new OrderStore(ctx.jsm, ctx.publisher);
      const orderStore = store;
      // Admission control (docs/architecture.md): orders placed here and not yet closed, per replica.
      const inFlight = new OrdersInFlight(ctx.config.MAX_ORDERS_IN_FLIGHT);
      inFlight.registerMetrics(ctx.metrics.registry);
      store.onClosed = (orderId) => inFlight.closed(orderId);
      store.onDecided = orderCompletionMetric(ctx.metrics.registry);
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
      // Live order status (Server-Sent Events): ended before the HTTP server closes, or it would wait for them.
      const live = new LiveStreams(
        ctx.nc,
        ctx.jsm,
        {
          maxPerCustomer: ctx.config.LIVE_STREAMS_PER_CUSTOMER,
          heartbeatMs: ctx.config.LIVE_HEARTBEAT_MS,
          pollMs: ctx.config.LIVE_POLL_MS,
          maxLifetimeMs: ctx.config.LIVE_MAX_LIFETIME_MS,
        },
        ctx.logger,
      );
      live.registerMetrics(ctx.metrics.registry);
      ctx.app.addHook("preClose", async () => live.closeAll());
      // Per-customer rate limit of POST /orders (in memory, per replica); routes opt in by their config.
      await ctx.app.register(rateLimit, { global: false });
      const personalData = new PersonalData(keys);
      registerOrderRoutes(ctx.app, {
        store,
        catalog,
        idempotency: new IdempotencyKeys(requestsKv),
        customers: new CustomerIndex(customersKv),
        personalData,
        logger: ctx.logger,
        timeoutMs: ctx.config.ORDER_TIMEOUT_MS,
        maxLines: ctx.config.MAX_ORDER_LINES,
        defaultCurrency: ctx.config.DEFAULT_CURRENCY,
        inFlight,
        live,
        limits: {
          rate: { max: ctx.config.ORDER_RATE_LIMIT_MAX, windowMs: ctx.config.ORDER_RATE_LIMIT_WINDOW_MS },
          maxLineQuantity: ctx.config.MAX_LINE_QUANTITY,
          maxOrderQuantity: ctx.config.MAX_ORDER_QUANTITY,
          skuQuota: new SkuQuota(ctx.config.SKU_UNITS_PER_CUSTOMER, ctx.config.SKU_QUOTA_WINDOW_MS),
        },
      });
      registerPersonalDataRoutes(ctx.app, { keys, logger: ctx.logger });
      registerCancelRoute(ctx.app, {
        store,
        personalData,
        logger: ctx.logger,
        windowMs: ctx.config.CANCEL_WINDOW_MS,
      });
      ctx.app.get("/openapi.json", { schema: { hide: true }, config: { auth: "none" } }, async () =>
        ctx.app.swagger(),
      );
      return {
        close: async () => {
          live.closeAll();
          inFlight.stop();
          catalog.close();
          keys.stopWatching();
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
