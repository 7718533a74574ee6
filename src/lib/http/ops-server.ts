import Fastify, { LogController, type FastifyInstance } from "fastify";
import { Counter, Histogram } from "prom-client";
import type { Logger } from "../telemetry/logger.js";
import { installProblemHandlers, problemServerOptions } from "./problem.js";
import { installStrictJson, installStrictValidation } from "./validation.js";
import type { Metrics } from "../telemetry/metrics.js";

/**
 * A readiness check: returns true when ready, or a reason string when not; or `{ready, detail}` to say which
 * way it is ready (or not), shown under `detail` in `/ready` (e.g. the audit projector's `active` or `standby`).
 */
export type ReadinessCheck = () => ReadinessResult | Promise<ReadinessResult>;
export type ReadinessResult = boolean | string | { ready: boolean; detail: string };

/** Options for {@link createOpsServer}. */
export interface OpsServerOptions {
  service: string;
  metrics: Metrics;
  logger?: Logger;
  /** Named readiness checks, read at each request (may be filled later); `/ready` is 200 only when all pass. */
  readiness?: Record<string, ReadinessCheck>;
  /** Pass an existing fastify instance (a service's API) to add the ops routes to it. */
  app?: FastifyInstance;
  /** Body size limit in bytes for a new instance (default 1 MiB). */
  bodyLimit?: number;
}

/** The ops surface of a service: `/health`, `/ready`, `/metrics`, and `setDraining()` for shutdown. */
export interface OpsServer {
  app: FastifyInstance;
  /** After this, `/ready` answers 503 `draining` (first step of the shutdown order). */
  setDraining(): void;
  readonly draining: boolean;
}

/**
 * Adds `/health` (liveness: the process and its event loop answer), `/ready` (every readiness check
 * passes and the service is not draining) and `/metrics` (Prometheus text) to a fastify instance,
 * with HTTP RED metrics (requests by route and status, durations).
 */
export function createOpsServer(opts: OpsServerOptions): OpsServer {
  const app: FastifyInstance =
    opts.app ??
    (Fastify({
      ...(opts.logger ? { loggerInstance: opts.logger } : {}),
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: opts.bodyLimit ?? 1024 * 1024,
      ...problemServerOptions,
    }) as unknown as FastifyInstance);
  if (!opts.app) {
    installProblemHandlers(app);
    installStrictValidation(app);
    installStrictJson(app);
  }
  let draining = false;
  const requests = new Counter({
    name: "http_requests_total",
    help: "HTTP requests by method, route and status.",
    labelNames: ["method", "route", "status"],
    registers: [opts.metrics.registry],
  });
  const durations = new Histogram({
    name: "http_request_duration_seconds",
    help: "HTTP request durations by method and route.",
    labelNames: ["method", "route"],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [opts.metrics.registry],
  });
  app.addHook("onResponse", async (req, reply) => {
    const route = req.routeOptions.url ?? "unmatched";
    requests.inc({ method: req.method, route, status: String(reply.statusCode) });
    durations.observe({ method: req.method, route }, reply.elapsedTime / 1000);
  });
  app.get("/health", async () => ({ status: "ok", service: opts.service }));
  app.get("/ready", async (_req, reply) => {
    const failing: Record<string, string> = {};
    const detail: Record<string, string> = {};
    if (draining) failing["lifecycle"] = "draining";
    for (const [name, check] of Object.entries(opts.readiness ?? {})) {
      try {
        const r = await check();
        if (typeof r === "object") {
          detail[name] = r.detail;
          if (!r.ready) failing[name] = r.detail;
        } else if (r !== true) failing[name] = typeof r === "string" ? r : "not ready";
      } catch (err) {
        failing[name] = (err as Error).message;
      }
    }
    const details = Object.keys(detail).length > 0 ? { detail } : {};
    if (Object.keys(failing).length > 0) {
      return reply.code(503).send({ status: "not_ready", service: opts.service, failing, ...details });
    }
    return { status: "ready", service: opts.service, ...details };
  });
  app.get("/metrics", async (_req, reply) => {
    const body = await opts.metrics.registry.metrics();
    return reply.type(opts.metrics.registry.contentType).send(body);
  });
  return {
    app,
    setDraining: () => {
      draining = true;
    },
    get draining() {
      return draining;
    },
  };
}
