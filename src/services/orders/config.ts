import { Type } from "@sinclair/typebox";
import { Env } from "../../lib/config.js";
import { defaultPorts } from "../../lib/ports.js";

/** Environment variables of the orders service (beside the common ones). */
export const OrdersConfig = Type.Object({
  PORT: Env.port(defaultPorts.orders, "orders HTTP port"),
  ORDER_TIMEOUT_MS: Type.Integer({
    minimum: 1_000,
    default: 60_000,
    description: "an order still PENDING this long after it was placed is cancelled with reason timeout",
  }),
  CANCEL_WINDOW_MS: Type.Integer({
    minimum: 0,
    default: 86_400_000,
    description:
      "a CONFIRMED order may be cancelled (POST /orders/{id}/cancel: refund and stock returned) this long after its confirmation; 409 after; 0 = only PENDING orders",
  }),
  MAX_ORDER_LINES: Type.Integer({ minimum: 1, maximum: 100, default: 50, description: "lines per order" }),
  DEFAULT_CURRENCY: Type.String({ pattern: "^[A-Z]{3}$", default: "EUR", description: "ISO 4217 code" }),
  TIMEOUT_MAX_ACK_PENDING: Type.Integer({
    minimum: 1_000,
    default: 500_000,
    description: "pending order timers the server may hold (peak orders/s × ORDER_TIMEOUT_MS/1000)",
  }),
  TIMEOUT_ACK_WAIT_MARGIN_MS: Type.Integer({
    minimum: 10_000,
    default: 60_000,
    description:
      "ack wait of orders-timeouts beyond ORDER_TIMEOUT_MS: timers are held without heartbeats; after a crash a timeout is decided up to this much late",
  }),
  MAX_ORDERS_IN_FLIGHT: Type.Integer({
    minimum: 0,
    default: 1_000,
    description:
      "orders placed on this replica and not yet CONFIRMED or CANCELLED, beyond which POST /orders is shed (503, Retry-After); ≈ 2 s objective × orders/s completed; 0 = no limit",
  }),
  // Abuse limits (OWASP API4 / API6; docs/security.md). Generous defaults: the benchmark's load generator sends
  // thousands of orders/s spread over a thousand customers, none of them near a limit.
  ORDER_RATE_LIMIT_MAX: Type.Integer({
    minimum: 0,
    default: 1_000,
    description:
      "POST /orders per customer (token sub) per ORDER_RATE_LIMIT_WINDOW_MS on this replica, beyond which 429 with Retry-After; 0 = no limit",
  }),
  ORDER_RATE_LIMIT_WINDOW_MS: Type.Integer({
    minimum: 100,
    default: 1_000,
    description: "window of ORDER_RATE_LIMIT_MAX",
  }),
  MAX_LINE_QUANTITY: Type.Integer({
    minimum: 1,
    maximum: 1_000,
    default: 1_000,
    description: "units on one order line (400 beyond)",
  }),
  MAX_ORDER_QUANTITY: Type.Integer({
    minimum: 1,
    default: 5_000,
    description: "units on one order, all lines together (422 order-too-large beyond)",
  }),
  SKU_UNITS_PER_CUSTOMER: Type.Integer({
    minimum: 0,
    default: 10_000,
    description:
      "units of one SKU a customer may order per SKU_QUOTA_WINDOW_MS on this replica (422 sku-limit beyond), so one buyer cannot take a hot SKU's whole stock; 0 = no limit",
  }),
  SKU_QUOTA_WINDOW_MS: Type.Integer({
    minimum: 1_000,
    default: 3_600_000,
    description: "window of SKU_UNITS_PER_CUSTOMER",
  }),
  LIVE_STREAMS_PER_CUSTOMER: Type.Integer({
    minimum: 1,
    maximum: 1_000,
    default: 5,
    description:
      "open GET /orders/{id}/events streams per customer on this replica (429 with Retry-After beyond)",
  }),
  LIVE_HEARTBEAT_MS: Type.Integer({
    minimum: 100,
    default: 15_000,
    description: "interval of the heartbeat comments on an order's live stream",
  }),
  LIVE_POLL_MS: Type.Integer({
    minimum: 100,
    default: 5_000,
    description: "interval at which a live stream reads the order's events in case a live message was missed",
  }),
  LIVE_MAX_LIFETIME_MS: Type.Integer({
    minimum: 1_000,
    default: 300_000,
    description: "a live stream is ended after this long (the client resumes with Last-Event-ID)",
  }),
});
