import { Type, type Static } from "@sinclair/typebox";
import { Env } from "../../lib/config.js";
import { defaultPorts } from "../../lib/ports.js";

const local = (port: number) => `http://127.0.0.1:${port}`;

/** Environment variables of the console (beside the common ones). */
export const ConsoleConfig = Type.Object({
  PORT: Env.port(defaultPorts.console, "console HTTP port"),
  ORDERS_URL: Env.url(
    "orders service base URL (orders and customers' order lists)",
    local(defaultPorts.orders),
  ),
  PAYMENTS_URL: Env.url(
    "payments service base URL (payments, its /metrics for the breaker)",
    local(defaultPorts.payments),
  ),
  NOTIFICATIONS_URL: Env.url(
    "notifications service base URL (e-mails, its /metrics for the breaker)",
    local(defaultPorts.notifications),
  ),
  AUDIT_URL: Env.url("audit service base URL (timelines, chain verification)", local(defaultPorts.audit)),
  PAYMENT_GATEWAY_URL: Env.url(
    "payment gateway base URL (ledger; fault switches in development)",
    local(defaultPorts["payment-gateway"]),
  ),
  MAIL_PROVIDER_URL: Env.url(
    "mail provider base URL (sent mail; fault switches in development)",
    local(defaultPorts["mail-provider"]),
  ),
  CONSOLE_DEV_CONTROLS: Type.Boolean({
    default: false,
    description: "show the simulators' fault switches (development only; `npm start` turns it on)",
  }),
  CONSOLE_MAX_REDRIVES: Type.Integer({
    minimum: 1,
    maximum: 100,
    default: 3,
    description: "how often one message may be redriven from the DLQ before it can only be discarded",
  }),
  CONSOLE_SAMPLE_MS: Env.ms(1_000, "how often the overview is sampled and pushed to open pages"),
  CONSOLE_ASSETS_DIR: Type.Optional(
    Type.String({
      minLength: 1,
      description:
        "directory of the built web UI (default: dist/console-ui when compiled, else bundled from web/console at start)",
    }),
  ),
});
export type ConsoleConfig = Static<typeof ConsoleConfig>;
