/**
 * The operations console: a web UI and its API over the running system (docs/console.md). It reads JetStream
 * (stream and consumer info, the ORDERS stream live, the DLQ) with the NATS `operator` user and the other services'
 * HTTP APIs with the signed-in operator's own token; it redrives and discards dead letters. It owns no stream and
 * consumes no durable.
 */
import swagger from "@fastify/swagger";
import { bearerSecurityScheme } from "../../lib/http/auth.js";
import type { ServiceDefinition } from "../../lib/service.js";
import { ConsoleConfig } from "./config.js";
import { OrderFlow, OverviewSampler, type OverviewSample } from "./overview.js";
import { registerConsoleRoutes } from "./routes.js";
import { loadUi } from "./ui.js";
import { openBucket } from "../../lib/kv.js";
import { CONSUMER_CONTROL_BUCKET, type ConsumerControl } from "../../lib/messaging/consumer-control.js";
import { CONSUMER_CONTROL_DESCRIPTION } from "../../lib/service.js";

/** Samples kept for the overview's charts (at one a second: five minutes). */
const HISTORY = 300;

export const definition: ServiceDefinition<typeof ConsoleConfig> = {
  name: "console",
  config: ConsoleConfig,
  async setup(ctx) {
    const c = ctx.config;
    const ui = await loadUi(c.CONSOLE_ASSETS_DIR);
    const flow = new OrderFlow(ctx.js, ctx.logger);
    flow.start();
    // Manual pauses: written here, followed by every service's runners (src/lib/messaging/consumer-control.ts).
    const control = await openBucket(ctx.nc, CONSUMER_CONTROL_BUCKET, {
      replicas: c.STREAM_REPLICAS,
      description: CONSUMER_CONTROL_DESCRIPTION,
    });
    const paused = new Map<string, ConsumerControl>();
    const watch = await control.watch();
    void (async () => {
      for await (const e of watch) {
        let v: ConsumerControl | undefined;
        try {
          v = e.operation === "PUT" ? e.json<ConsumerControl>() : undefined;
        } catch {
          v = undefined;
        }
        if (v?.paused) paused.set(e.key, v);
        else paused.delete(e.key);
      }
    })().catch((err: unknown) => ctx.logger.error({ err }, "console: consumer-control watch ended"));
    const sampler = new OverviewSampler(
      ctx.jsm,
      flow,
      { payments: c.PAYMENTS_URL, notifications: c.NOTIFICATIONS_URL },
      (durable) => paused.get(durable),
    );
    const history: OverviewSample[] = [];
    const listeners = new Set<(s: OverviewSample) => void>();
    let sampling = false;
    const tick = async () => {
      if (sampling) return;
      sampling = true;
      try {
        const s = await sampler.sample(c.CONSOLE_SAMPLE_MS);
        history.push(s);
        if (history.length > HISTORY) history.shift();
        for (const l of listeners) l(s);
      } catch (err) {
        ctx.logger.warn({ err }, "console: overview sample failed");
      } finally {
        sampling = false;
      }
    };
    const timer = setInterval(() => void tick(), c.CONSOLE_SAMPLE_MS);
    timer.unref();

    await ctx.app.register(swagger, {
      openapi: {
        openapi: "3.1.0",
        info: {
          title: "ShopStream console API",
          version: "1.0.0",
          description:
            "The operations console's API: overview (live), orders and their sagas, dead letters (redrive, discard). Every call needs an operator's bearer token. Errors are application/problem+json (RFC 9457).",
        },
        components: { securitySchemes: bearerSecurityScheme },
      },
    });
    const open = { config: { auth: "none" as const }, schema: { hide: true } };
    const asset = (name: string) => async (_req: unknown, reply: import("fastify").FastifyReply) => {
      const f = ui.get(name);
      if (!f) return reply.code(404).send();
      return reply
        .header("content-type", f.type)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .header(
          "content-security-policy",
          "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        )
        .send(f.body);
    };
    ctx.app.get("/", open, asset("index.html"));
    ctx.app.get("/assets/app.js", open, asset("app.js"));
    ctx.app.get("/assets/app.css", open, asset("app.css"));
    registerConsoleRoutes(ctx.app, {
      config: c,
      jsm: ctx.jsm,
      publisher: ctx.publisher,
      sampler,
      history: () => history,
      control,
      onSample: (fn) => {
        listeners.add(fn);
        return () => listeners.delete(fn);
      },
    });
    ctx.app.get("/openapi.json", { schema: { hide: true }, config: { auth: "none" } }, async () =>
      ctx.app.swagger(),
    );
    return {
      close: async () => {
        clearInterval(timer);
        watch.stop();
        flow.stop();
      },
    };
  },
};
