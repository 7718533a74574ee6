import { Type, type Static } from "@sinclair/typebox";
import { Env } from "../../lib/config.js";
import { defaultPorts } from "../../lib/ports.js";

/** Environment variables of the payments service (beside the common ones). */
export const PaymentsConfig = Type.Object({
  PORT: Env.port(defaultPorts.payments, "payments HTTP port"),
  PAYMENT_GATEWAY_URL: Env.url("payment gateway base URL", "http://127.0.0.1:9090"),
  GATEWAY_TIMEOUT_MS: Env.ms(2_000, "bound of one gateway call attempt"),
  GATEWAY_RETRIES: Type.Integer({
    minimum: 0,
    maximum: 10,
    default: 2,
    description: "gateway call attempts after the first, on timeouts, 5xx and 429",
  }),
  GATEWAY_RETRY_INITIAL_MS: Env.ms(100, "first gateway retry delay (exponential, jittered)"),
  GATEWAY_RETRY_MAX_MS: Env.ms(1_000, "longest gateway retry delay"),
  BREAKER_THRESHOLD: Type.Integer({
    minimum: 1,
    maximum: 1_000,
    default: 5,
    description: "consecutive failed gateway calls that open the circuit breaker",
  }),
  BREAKER_HALF_OPEN_MS: Env.ms(5_000, "time the breaker stays open before a probe call"),
  VERIFY_ORDER_PLACED: Type.Boolean({
    default: true,
    description:
      "before charging, check that the order's OrderPlaced is on the ORDERS stream; a StockReserved for an order that does not exist is dead-lettered (ORDER_NOT_FOUND) instead of charged",
  }),
  CHARGE_SETTLE_WAIT_MS: Env.ms(
    60_000,
    "how long an OrderCancelled waits for an in-flight charge to settle before failing normally",
  ),
});
export type PaymentsConfig = Static<typeof PaymentsConfig>;
