import { Streams } from "../../lib/events/catalog.js";
import { Durables } from "../../lib/events/consumers.js";
import { HttpDependency, breakerGauge, pauseWhileOpen } from "../../lib/http-client.js";
import type { ConsumerSpec } from "../../lib/messaging/topology.js";
import type { ServiceDefinition } from "../../lib/service.js";
import { NotificationsConfig } from "./config.js";
import { notificationHandlers, type NotificationsDeps } from "./handlers.js";
import { Mailer } from "./mailer.js";
import { registerNotificationRoutes } from "./routes.js";
import { NotificationStore } from "./store.js";
import { openBucket } from "../../lib/kv.js";
import { CUSTOMER_KEYS_BUCKET, CUSTOMER_KEYS_DESCRIPTION, CustomerKeys } from "../../lib/pii/keys.js";
import { PersonalData } from "../../lib/pii/personal-data.js";

export const SERVICE = "notifications";
/** Durable consumer of OrderConfirmed and OrderCancelled. */
export const ORDERS_CONSUMER = Durables.NOTIFICATIONS_ORDERS;

/** The notifications service's durable consumers as declared (provisioning creates them from here too). */
export function notificationsConsumerSpecs(): ConsumerSpec[] {
  return [
    {
      stream: Streams.ORDERS,
      durable: ORDERS_CONSUMER,
      filterSubject: "orders.*",
      description: "notifications: e-mail on OrderConfirmed and OrderCancelled",
    },
  ];
}

/** What `setup` builds for `consumers`, per running instance (tests run several in one process). */
const depsOf = new WeakMap<object, NotificationsDeps>();

/** The dependencies a running instance built in `setup` (tests observe its client and store). */
export function internalsOf(ctx: object): NotificationsDeps | undefined {
  return depsOf.get(ctx);
}

/**
 * The notifications service: e-mails the customer once per (order, outcome) through the mail provider
 * (timeout, retry, circuit breaker; an open breaker pauses the consumer) and publishes NotificationSent.
 */
export const definition: ServiceDefinition<typeof NotificationsConfig> = {
  name: SERVICE,
  config: NotificationsConfig,
  async setup(ctx) {
    const c = ctx.config;
    const store = new NotificationStore(ctx.jsm);
    const http = new HttpDependency({
      name: "mail-provider",
      baseUrl: c.MAIL_PROVIDER_URL,
      timeoutMs: c.MAIL_TIMEOUT_MS,
      retries: c.MAIL_RETRIES,
      retryInitialDelayMs: c.MAIL_RETRY_INITIAL_MS,
      retryMaxDelayMs: c.MAIL_RETRY_MAX_MS,
      breakerThreshold: c.BREAKER_THRESHOLD,
      halfOpenAfterMs: c.BREAKER_HALF_OPEN_MS,
      logger: ctx.logger,
    });
    breakerGauge(http, ctx.metrics.registry, "mail_provider_breaker_state");
    pauseWhileOpen(http, () => [ctx.runners.get(ORDERS_CONSUMER)]);
    const keysKv = await openBucket(ctx.nc, CUSTOMER_KEYS_BUCKET, {
      replicas: c.STREAM_REPLICAS,
      description: CUSTOMER_KEYS_DESCRIPTION,
    });
    depsOf.set(ctx, {
      store,
      personalData: new PersonalData(new CustomerKeys(keysKv)),
      mailer: new Mailer(http),
      publisher: ctx.publisher,
      jsm: ctx.jsm,
      source: SERVICE,
    });
    registerNotificationRoutes(ctx.app, store);
    return { close: async () => http.close() };
  },
  consumers(ctx) {
    const deps = depsOf.get(ctx);
    if (!deps) throw new Error("notifications: consumers() before setup()");
    return [{ spec: notificationsConsumerSpecs()[0]!, handlers: notificationHandlers(deps) }];
  },
};
