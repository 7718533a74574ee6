import { Type, type Static } from "@sinclair/typebox";
import { Env } from "../../lib/config.js";
import { defaultPorts } from "../../lib/ports.js";

/** Environment variables of the notifications service (beside the common ones). */
export const NotificationsConfig = Type.Object({
  PORT: Env.port(defaultPorts.notifications, "notifications HTTP port"),
  MAIL_PROVIDER_URL: Env.url("mail provider base URL", "http://127.0.0.1:9091"),
  MAIL_TIMEOUT_MS: Env.ms(2_000, "bound of one mail provider call attempt"),
  MAIL_RETRIES: Type.Integer({
    minimum: 0,
    maximum: 10,
    default: 2,
    description: "mail provider call attempts after the first, on timeouts, 5xx and 429",
  }),
  MAIL_RETRY_INITIAL_MS: Env.ms(100, "first mail provider retry delay (exponential, jittered)"),
  MAIL_RETRY_MAX_MS: Env.ms(1_000, "longest mail provider retry delay"),
  BREAKER_THRESHOLD: Type.Integer({
    minimum: 1,
    maximum: 1_000,
    default: 5,
    description: "consecutive failed mail provider calls that open the circuit breaker",
  }),
  BREAKER_HALF_OPEN_MS: Env.ms(5_000, "time the breaker stays open before a probe call"),
});
export type NotificationsConfig = Static<typeof NotificationsConfig>;
