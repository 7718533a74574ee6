/**
 * Provisioning: every stream, durable consumer and KV bucket of ShopStream, created (or verified, or updated where
 * the declaration allows) from the same declarations the services verify at start-up. Runs with the NATS `admin`
 * user: `npm run provision` (src/tools/provision.ts), the local stack before it starts the services, the Kubernetes
 * provisioning Job. Idempotent.
 */
import { Type } from "@sinclair/typebox";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { parseConfig } from "../lib/config.js";
import { openBucket } from "../lib/kv.js";
import { CUSTOMER_KEYS_BUCKET, CUSTOMER_KEYS_DESCRIPTION } from "../lib/pii/keys.js";
import { ensureConsumer, ensureStream, type ConsumerSpec } from "../lib/messaging/topology.js";
import { CONSUMER_CONTROL_DESCRIPTION, CommonConfig, streamSpecs } from "../lib/service.js";
import { CONSUMER_CONTROL_BUCKET } from "../lib/messaging/consumer-control.js";
import type { Logger } from "../lib/telemetry/logger.js";
import { inventoryConsumerSpecs } from "../services/inventory/service.js";
import { notificationsConsumerSpecs } from "../services/notifications/service.js";
import { OrdersConfig } from "../services/orders/config.js";
import { ordersConsumerSpecs } from "../services/orders/service.js";
import { paymentsConsumerSpecs } from "../services/payments/service.js";

/** The KV buckets, with the descriptions their owners open them with. */
export const bucketSpecs: { name: string; description: string }[] = [
  { name: "catalog", description: "ShopStream catalog: sku → {sku, name, price, currency}" },
  { name: "stock", description: "ShopStream stock: sku → {initial, available, reserved, committed, holds}" },
  { name: "reservations", description: "ShopStream reservations: orderId → {status, items}" },
  { name: "order-requests", description: "Idempotency-Keys of POST /orders" },
  { name: "orders-by-customer", description: "Order ids by customer" },
  { name: "payments", description: "Payment state per order (payments service)" },
  { name: CUSTOMER_KEYS_BUCKET, description: CUSTOMER_KEYS_DESCRIPTION },
  { name: CONSUMER_CONTROL_BUCKET, description: CONSUMER_CONTROL_DESCRIPTION },
];

/** The settings provisioning reads: those the declarations depend on (the same variables the services read). */
export const ProvisionConfig = Type.Composite([
  Type.Pick(CommonConfig, ["STREAM_REPLICAS"]),
  Type.Pick(OrdersConfig, ["ORDER_TIMEOUT_MS", "TIMEOUT_MAX_ACK_PENDING", "TIMEOUT_ACK_WAIT_MARGIN_MS"]),
]);

/** Every durable consumer of every service, as declared with the settings in `env`. */
export function allConsumerSpecs(env: NodeJS.ProcessEnv): ConsumerSpec[] {
  const c = parseConfig(ProvisionConfig, env);
  return [
    ...ordersConsumerSpecs(c),
    ...inventoryConsumerSpecs(),
    ...paymentsConsumerSpecs(),
    ...notificationsConsumerSpecs(),
    // The audit has no durable: it reads every stream with ordered consumers (src/services/audit/projector.ts).
  ];
}

/** What {@link provisionAll} did to each object: `created`, `updated` or `unchanged`. */
export type ProvisionReport = { kind: "stream" | "consumer" | "bucket"; name: string; outcome: string }[];

/**
 * Creates every stream, consumer and bucket that is missing, updates the consumer settings the declaration may
 * change in place, and verifies the rest (an incompatible existing object is a TopologyError: nothing is changed).
 * `nc` must be connected with a user allowed to administer JetStream (`admin`).
 */
export async function provisionAll(
  nc: NatsConnection,
  env: NodeJS.ProcessEnv,
  logger?: Logger,
): Promise<ProvisionReport> {
  const c = parseConfig(ProvisionConfig, env);
  const jsm = await jetstreamManager(nc);
  const report: ProvisionReport = [];
  for (const s of streamSpecs)
    report.push({
      kind: "stream",
      name: s.name,
      outcome: await ensureStream(jsm, s, { replicas: c.STREAM_REPLICAS }, logger),
    });
  for (const spec of allConsumerSpecs(env))
    report.push({
      kind: "consumer",
      name: `${spec.stream}/${spec.durable}`,
      outcome: await ensureConsumer(jsm, spec, logger),
    });
  for (const b of bucketSpecs) {
    const existed = await jsm.streams.info(`KV_${b.name}`).then(
      () => true,
      () => false,
    );
    await openBucket(nc, b.name, { replicas: c.STREAM_REPLICAS, description: b.description });
    report.push({ kind: "bucket", name: b.name, outcome: existed ? "unchanged" : "created" });
  }
  return report;
}
