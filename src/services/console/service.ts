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
    const sampler = new OverviewSampler(ctx.jsm, flow, {
      payments: c.PAYMENTS_URL,
      notifications: c.NOTIFICATIONS_URL,
    });
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
        flow.stop();
      },
    };
  },
};
