import { Counter, Histogram } from "prom-client";
import type { JetStreamManager } from "@nats-io/jetstream";
import { Streams } from "../../lib/events/catalog.js";
import { Durables } from "../../lib/events/consumers.js";
import { HttpDependency, breakerGauge, pauseWhileOpen } from "../../lib/http-client.js";
import { directGet } from "../../lib/messaging/direct.js";
import type { ConsumerSpec } from "../../lib/messaging/topology.js";
import type { ConsumerDefinition, ServiceDefinition } from "../../lib/service.js";
import { PaymentsConfig } from "./config.js";
import { GATEWAY_MISMATCH, PaymentGateway } from "./gateway.js";
import { paymentHandlers, type PaymentsDeps } from "./handlers.js";
import { registerPaymentRoutes } from "./routes.js";
import { PaymentStore } from "./store.js";

export const SERVICE = "payments";
/** Durable consumer of StockReserved. */
export const INVENTORY_CONSUMER = Durables.PAYMENTS_INVENTORY;
/** Durable consumer of OrderCancelled. */
export const ORDERS_CONSUMER = Durables.PAYMENTS_ORDERS;

/** Is there an event on the order's ORDERS subject (its first is OrderPlaced)? */
async function orderExists(jsm: JetStreamManager, orderId: string): Promise<boolean> {
  return (await directGet(jsm, Streams.ORDERS, { seq: 1, next_by_subj: `orders.${orderId}` })) !== null;
}

/** The payments service's durable consumers as declared (provisioning creates them from here too). */
export function paymentsConsumerSpecs(): ConsumerSpec[] {
  return [
    {
      stream: Streams.INVENTORY,
      durable: INVENTORY_CONSUMER,
      filterSubject: "inventory.*.StockReserved",
      description: "payments: charge on StockReserved",
    },
    {
      stream: Streams.ORDERS,
      durable: ORDERS_CONSUMER,
      filterSubject: "orders.*",
      description: "payments: refund on OrderCancelled",
    },
  ];
}

/** What `setup` builds for `consumers`, per running instance (tests run several in one process). */
const depsOf = new WeakMap<object, PaymentsDeps>();

/** The dependencies a running instance built in `setup` (tests observe its client and store). */
export function internalsOf(ctx: object): PaymentsDeps | undefined {
  return depsOf.get(ctx);
}

/**
 * The payments service: charges an order's total when its stock is reserved and refunds the capture
 * when the order is cancelled afterwards, at the payment gateway (timeout, retry, circuit breaker; an
 * open breaker pauses both consumers). State per order in the `payments` KV bucket.
 */
export const definition: ServiceDefinition<typeof PaymentsConfig> = {
  name: SERVICE,
  config: PaymentsConfig,
  async setup(ctx) {
    const c = ctx.config;
    const store = await PaymentStore.open(ctx.nc, c.STREAM_REPLICAS);
    const http = new HttpDependency({
      name: "payment-gateway",
      baseUrl: c.PAYMENT_GATEWAY_URL,
      timeoutMs: c.GATEWAY_TIMEOUT_MS,
      retries: c.GATEWAY_RETRIES,
      retryInitialDelayMs: c.GATEWAY_RETRY_INITIAL_MS,
      retryMaxDelayMs: c.GATEWAY_RETRY_MAX_MS,
      breakerThreshold: c.BREAKER_THRESHOLD,
      halfOpenAfterMs: c.BREAKER_HALF_OPEN_MS,
      logger: ctx.logger,
    });
    breakerGauge(http, ctx.metrics.registry, "payment_gateway_breaker_state");
    pauseWhileOpen(http, () => [ctx.runners.get(INVENTORY_CONSUMER), ctx.runners.get(ORDERS_CONSUMER)]);
    // Worth an alert: the gateway (or something between) answered about another charge than the one asked.
    const mismatches = new Counter({
      name: "shopstream_payments_gateway_mismatch_total",
      help: "Charge answers of the payment gateway whose order id, amount, currency or shape did not match the charge (by the first field that differed); each is dead-lettered, never confirmed.",
      labelNames: ["field"],
      registers: [ctx.metrics.registry],
    });
    const processDuration = new Histogram({
      name: "payment_process_duration_seconds",
      help: "Time to process a payment at the gateway (retries included), by outcome.",
      labelNames: ["status"],
      buckets: [0.1, 0.3, 1, 3],
      registers: [ctx.metrics.registry],
    });
    depsOf.set(ctx, {
      store,
      gateway: new PaymentGateway(http, (orderId, fields) => {
        mismatches.inc({ field: fields[0] ?? "unknown" });
        ctx.logger.error(
          { order_id: orderId, fields, code: GATEWAY_MISMATCH },
          "payment gateway answer does not match the charge: not trusted, the charge is dead-lettered",
        );
      }),
      publisher: ctx.publisher,
      source: SERVICE,
      processDuration,
      chargeSettleWaitMs: c.CHARGE_SETTLE_WAIT_MS,
      ...(c.VERIFY_ORDER_PLACED ? { orderExists: (id: string) => orderExists(ctx.jsm, id) } : {}),
    });
    registerPaymentRoutes(ctx.app, store);
    return { close: async () => http.close() };
  },
  consumers(ctx) {
    const deps = depsOf.get(ctx);
    if (!deps) throw new Error("payments: consumers() before setup()");
    const handlers = paymentHandlers(deps);
    const [inventory, orders] = paymentsConsumerSpecs();
    const defs: ConsumerDefinition[] = [
      { spec: inventory!, handlers: handlers.inventory },
      { spec: orders!, handlers: handlers.orders },
    ];
    return defs;
  },
};
