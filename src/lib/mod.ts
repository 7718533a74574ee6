/** The shared library every ShopStream service stands on. */
export * from "./errors.js";
export * from "./config.js";
export * from "./events/mod.js";
export * from "./messaging/backoff.js";
export * from "./messaging/connection.js";
export * from "./messaging/consumer.js";
export * from "./messaging/dlq.js";
export * from "./messaging/headers.js";
export * from "./messaging/publisher.js";
export * from "./messaging/topology.js";
export * from "./telemetry/logger.js";
export * from "./telemetry/metrics.js";
export * from "./telemetry/tracing.js";
export * from "./http/ops-server.js";
export * from "./lifecycle.js";
export * from "./service.js";
