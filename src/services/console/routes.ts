/**
 * The console's API (`/api/...`, operator-only like every route that declares nothing) and its live overview stream
 * (Server-Sent Events over a fetch, so the token travels in the Authorization header, never in a URL).
 */
import type { FastifyInstance } from "fastify";
import type { KV } from "@nats-io/kv";
import { setConsumerPaused } from "../../lib/messaging/consumer-control.js";
import { Type, type Static } from "@sinclair/typebox";
import type { JetStreamManager } from "@nats-io/jetstream";
import { bearerSecurity, principalOf } from "../../lib/http/auth.js";
import { ProblemError, problemResponse } from "../../lib/http/problem.js";
import {
  DeadLetterNotFoundError,
  RedriveLimitError,
  discardDeadLetter,
  inspectDeadLetter,
  listDeadLetters,
  redriveDeadLetter,
  type DeadLetter,
} from "../../lib/messaging/dlq.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import { ORDER_ID_PATTERN } from "../../lib/ids.js";
import { FaultPatchSchema } from "../../simulators/shared.js";
import { maskPersonalData } from "./mask.js";
import type { OverviewSample, OverviewSampler } from "./overview.js";
import type { Session } from "./api-types.js";
import type { TimelineEvent } from "../audit/routes.js";
import { upstream } from "./upstream.js";
import type { ConsoleConfig } from "./config.js";

/** What the console's routes need. */
export interface ConsoleRouteDeps {
  config: ConsoleConfig;
  jsm: JetStreamManager;
  publisher: Publisher;
  sampler: OverviewSampler;
  /** The samples kept for charts, oldest first, and a way to follow new ones. */
  history: () => readonly OverviewSample[];
  onSample: (fn: (s: OverviewSample) => void) => () => void;
  /** The consumer-control bucket (manual pauses). */
  control: KV;
}

const authResponses = {
  401: problemResponse("No bearer token, or not a valid one"),
  403: problemResponse("Not an operator token"),
};
const Seq = Type.Integer({
  minimum: 1,
  maximum: Number.MAX_SAFE_INTEGER,
  description: "DLQ stream sequence",
});
const DeadLetterQuery = Type.Object(
  {
    stream: Type.Optional(Type.String({ maxLength: 64, description: "original stream, e.g. ORDERS" })),
    type: Type.Optional(Type.String({ maxLength: 64, description: "event type, e.g. StockReserved" })),
    consumer: Type.Optional(Type.String({ maxLength: 128, description: "durable that gave up" })),
    error: Type.Optional(Type.String({ maxLength: 256, description: "text in the error code or message" })),
    since: Type.Optional(Type.String({ format: "date-time", description: "dead-lettered at or after" })),
    until: Type.Optional(Type.String({ format: "date-time", description: "dead-lettered before" })),
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 200 }),
  },
  { additionalProperties: false },
);
const RedriveBody = Type.Object(
  {
    seqs: Type.Array(Seq, { minItems: 1, maxItems: 100, uniqueItems: true }),
    confirm: Type.Literal(true, { description: "must be true: the caller confirmed the redrive" }),
  },
  { additionalProperties: false },
);
const DiscardBody = Type.Object(
  {
    reason: Type.String({ minLength: 3, maxLength: 500, pattern: "\\S", description: "why it is discarded" }),
  },
  { additionalProperties: false },
);
const Simulator = Type.Object({
  simulator: Type.Union([Type.Literal("payment-gateway"), Type.Literal("mail-provider")]),
});

/** A dead letter as the console shows it: fields, the attempt history, the body decoded and (by default) masked. */
export function viewDeadLetter(e: DeadLetter, unmask = false) {
  const { data, headers, ...fields } = e;
  let event: unknown;
  let bodyText: string | undefined;
  const text = Buffer.from(data).toString("utf8");
  try {
    event = JSON.parse(text);
  } catch {
    bodyText = data.length > 0 ? text.slice(0, 4096) : undefined;
  }
  const shown = (v: unknown) => (unmask ? v : maskPersonalData(v));
  const orderId =
    (typeof event === "object" &&
    event !== null &&
    typeof (event as { aggregate_id?: unknown }).aggregate_id === "string"
      ? (event as { aggregate_id: string }).aggregate_id
      : undefined) ?? /^[a-z]+\.([A-Za-z0-9_-]+)/.exec(e.subject)?.[1];
  return {
    ...fields,
    orderId: orderId ?? null,
    masked: !unmask,
    headers: shown(headers),
    ...(event !== undefined ? { event: shown(event) } : {}),
    ...(bodyText !== undefined ? { bodyText: shown(bodyText) } : {}),
  };
}

function matches(e: DeadLetter, q: Static<typeof DeadLetterQuery>): boolean {
  if (q.stream && e.stream !== q.stream) return false;
  if (q.type && e.type !== q.type) return false;
  if (q.consumer && e.consumer !== q.consumer) return false;
  if (q.error) {
    const needle = q.error.toLowerCase();
    if (!e.code.toLowerCase().includes(needle) && !e.error.toLowerCase().includes(needle)) return false;
  }
  const at = Date.parse(e.at);
  if (q.since && !(at >= Date.parse(q.since))) return false;
  if (q.until && !(at < Date.parse(q.until))) return false;
  return true;
}

function toProblem(err: unknown): never {
  if (err instanceof DeadLetterNotFoundError)
    throw new ProblemError(404, "not-found", "Not Found", err.message);
  if (err instanceof RedriveLimitError)
    throw new ProblemError(409, "redrive-limit", "Redrive limit reached", err.message);
  throw err;
}

/** Registers the console API on `app`. */
export function registerConsoleRoutes(app: FastifyInstance, d: ConsoleRouteDeps): void {
  const c = d.config;
  const common = { security: bearerSecurity };

  app.get(
    "/api/session",
    { schema: { ...common, summary: "Who is signed in, and what the console offers" } },
    async (req): Promise<Session> => ({
      sub: principalOf(req).sub,
      devControls: c.CONSOLE_DEV_CONTROLS,
      maxRedrives: c.CONSOLE_MAX_REDRIVES,
      sampleMs: c.CONSOLE_SAMPLE_MS,
    }),
  );

  app.get(
    "/api/overview",
    { schema: { ...common, summary: "The latest overview sample and the kept history" } },
    async () => ({
      samples: d.history(),
    }),
  );

  app.get(
    "/api/overview/stream",
    {
      schema: {
        ...common,
        summary:
          "The overview, live: Server-Sent Events, one `sample` event per sample (the kept history first)",
        produces: ["text/event-stream"],
      },
    },
    async (req, reply) => {
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        connection: "keep-alive",
        "x-accel-buffering": "no",
      });
      const send = (s: OverviewSample) => raw.write(`event: sample\ndata: ${JSON.stringify(s)}\n\n`);
      for (const s of d.history()) send(s);
      const off = d.onSample(send);
      const ping = setInterval(() => raw.write(": ping\n\n"), 15_000);
      req.raw.on("close", () => {
        off();
        clearInterval(ping);
      });
    },
  );

  app.get(
    "/api/consumers",
    { schema: { ...common, summary: "Every durable consumer: lag, redeliveries, paused" } },
    async () => ({
      consumers: await d.sampler.consumers(),
    }),
  );

  const ConsumerParams = Type.Object({
    stream: Type.String({ pattern: "^[A-Z][A-Z_]{0,31}$" }),
    durable: Type.String({ pattern: "^[A-Za-z0-9_-]{1,64}$" }),
  });
  for (const action of ["pause", "resume"] as const) {
    app.post<{ Params: Static<typeof ConsumerParams> }>(
      `/api/consumers/:stream/:durable/${action}`,
      {
        schema: {
          ...common,
          params: ConsumerParams,
          summary:
            action === "pause"
              ? "Pause a durable by hand: every replica of its service stops pulling (messages wait in the stream)"
              : "Resume a durable paused by hand",
          response: { 404: problemResponse("No such durable consumer"), ...authResponses },
        },
      },
      async (req) => {
        const { stream, durable } = req.params;
        const info = await d.jsm.consumers.info(stream, durable).catch(() => undefined);
        if (!info?.config.durable_name)
          throw new ProblemError(
            404,
            "not-found",
            "Not Found",
            `no durable consumer ${durable} on ${stream}`,
          );
        const by = principalOf(req).sub;
        await setConsumerPaused(d.control, durable, action === "pause", by);
        req.log.warn({ stream, consumer: durable, by }, `consumer ${action}d by hand`);
        return { stream, durable, paused: action === "pause" };
      },
    );
  }

  const OrdersQuery = Type.Object(
    { customerId: Type.String({ minLength: 1, maxLength: 128, pattern: "^[^\\u0000-\\u001f]+$" }) },
    { additionalProperties: false },
  );
  app.get<{ Querystring: Static<typeof OrdersQuery> }>(
    "/api/orders",
    {
      schema: {
        ...common,
        querystring: OrdersQuery,
        summary: "A customer's orders (from the orders service)",
      },
    },
    async (req, reply) => {
      const q = new URLSearchParams({ customerId: req.query.customerId, limit: "50" });
      const part = await upstream(`${c.ORDERS_URL}/orders?${q.toString()}`, req.headers.authorization);
      if (!part.ok)
        throw new ProblemError(
          part.status >= 400 && part.status < 500 ? part.status : 502,
          "upstream",
          "Orders service",
          part.error,
        );
      return reply.send(part.body);
    },
  );

  const OrderParams = Type.Object({ id: Type.String({ pattern: ORDER_ID_PATTERN }) });
  app.get<{ Params: Static<typeof OrderParams> }>(
    "/api/orders/:id",
    {
      schema: {
        ...common,
        params: OrderParams,
        summary:
          "One order's saga: status, audit timeline (delays, causes), payment, e-mail and ledger at the providers, chain verdict",
        response: { 404: problemResponse("No such order anywhere"), ...authResponses },
      },
    },
    async (req) => {
      const id = req.params.id;
      const auth = req.headers.authorization;
      const enc = encodeURIComponent(id);
      const [order, timeline, payment, notification, ledger, mail, verify] = await Promise.all([
        upstream(`${c.ORDERS_URL}/orders/${enc}`, auth),
        upstream<{ events: TimelineEvent[] }>(`${c.AUDIT_URL}/audit/orders/${enc}`, auth),
        upstream(`${c.PAYMENTS_URL}/payments/${enc}`, auth),
        upstream(`${c.NOTIFICATIONS_URL}/notifications/${enc}`, auth),
        upstream(`${c.PAYMENT_GATEWAY_URL}/v1/ledger?orderId=${enc}`, auth),
        upstream<{ messages: unknown[] }>(`${c.MAIL_PROVIDER_URL}/v1/messages?orderId=${enc}`, auth),
        upstream(`${c.AUDIT_URL}/audit/verify`, auth),
      ]);
      if (!order.ok && order.status === 404 && !timeline.ok && timeline.status === 404)
        throw new ProblemError(404, "not-found", "Not Found", `no order ${id}`);
      return {
        orderId: id,
        order,
        timeline: timeline.ok
          ? { ...timeline, body: { events: enrichTimeline(timeline.body.events) } }
          : timeline,
        payment,
        notification,
        ledger,
        mail: mail.ok ? { ...mail, body: maskPersonalData(mail.body) } : mail,
        verify,
      };
    },
  );

  app.get<{ Querystring: Static<typeof DeadLetterQuery> }>(
    "/api/dead-letters",
    {
      schema: {
        ...common,
        querystring: DeadLetterQuery,
        summary: "Dead letters, filtered, oldest first (personal data masked)",
      },
    },
    async (req) => {
      const all = await listDeadLetters(d.jsm, { limit: 5_000 });
      const picked = all.filter((e) => matches(e, req.query)).slice(0, req.query.limit);
      return {
        total: all.length,
        deadLetters: picked.map((e) => viewDeadLetter(e)),
        maxRedrives: c.CONSOLE_MAX_REDRIVES,
      };
    },
  );

  const SeqParams = Type.Object({ seq: Seq });
  const UnmaskQuery = Type.Object(
    { unmask: Type.Boolean({ default: false }) },
    { additionalProperties: false },
  );
  app.get<{ Params: Static<typeof SeqParams>; Querystring: Static<typeof UnmaskQuery> }>(
    "/api/dead-letters/:seq",
    {
      schema: {
        ...common,
        params: SeqParams,
        querystring: UnmaskQuery,
        summary: "One dead letter with its attempt history (masked unless unmask=true)",
        response: { 404: problemResponse("No such DLQ entry"), ...authResponses },
      },
    },
    async (req) => {
      const e = await inspectDeadLetter(d.jsm, req.params.seq);
      if (!e) throw new ProblemError(404, "not-found", "Not Found", `no DLQ entry ${req.params.seq}`);
      if (req.query.unmask)
        req.log.info({ dlq_seq: e.dlqSequence, by: principalOf(req).sub }, "dead letter unmasked");
      return viewDeadLetter(e, req.query.unmask);
    },
  );

  app.post<{ Body: Static<typeof RedriveBody> }>(
    "/api/dead-letters/redrive",
    {
      schema: {
        ...common,
        body: RedriveBody,
        summary:
          "Redrive one or many dead letters (each at most CONSOLE_MAX_REDRIVES times); the outcome of each",
      },
    },
    async (req) => {
      const results = [];
      for (const seq of req.body.seqs) {
        try {
          const r = await redriveDeadLetter(d.jsm, d.publisher, seq, { maxRedrives: c.CONSOLE_MAX_REDRIVES });
          req.log.info(
            { dlq_seq: seq, subject: r.subject, redrives: r.redrives, by: principalOf(req).sub },
            "dead letter redriven",
          );
          results.push({ seq, ok: true, subject: r.subject, redrives: r.redrives });
        } catch (err) {
          const code =
            err instanceof DeadLetterNotFoundError || err instanceof RedriveLimitError
              ? err.code
              : "REDRIVE_FAILED";
          results.push({ seq, ok: false, code, error: err instanceof Error ? err.message : String(err) });
        }
      }
      return { results };
    },
  );

  app.post<{ Params: Static<typeof SeqParams>; Body: Static<typeof DiscardBody> }>(
    "/api/dead-letters/:seq/discard",
    {
      schema: {
        ...common,
        params: SeqParams,
        body: DiscardBody,
        summary: "Discard a dead letter with a reason (recorded on the audit trail)",
        response: { 404: problemResponse("No such DLQ entry"), ...authResponses },
      },
    },
    async (req) => {
      const by = principalOf(req).sub;
      const r = await discardDeadLetter(d.jsm, d.publisher, req.params.seq, {
        reason: req.body.reason.trim(),
        by,
      }).catch(toProblem);
      req.log.info({ dlq_seq: req.params.seq, by }, "dead letter discarded");
      return { seq: req.params.seq, discarded: true, recordSeq: r.recordSeq };
    },
  );

  if (c.CONSOLE_DEV_CONTROLS) {
    const base = (s: Static<typeof Simulator>["simulator"]) =>
      s === "payment-gateway" ? c.PAYMENT_GATEWAY_URL : c.MAIL_PROVIDER_URL;
    app.get<{ Params: Static<typeof Simulator> }>(
      "/api/dev/faults/:simulator",
      { schema: { ...common, params: Simulator, summary: "Development: a simulator's fault switches" } },
      async (req) => {
        const part = await upstream(`${base(req.params.simulator)}/admin/faults`, req.headers.authorization);
        if (!part.ok) throw new ProblemError(502, "upstream", "Simulator", part.error);
        return part.body;
      },
    );
    app.put<{ Params: Static<typeof Simulator>; Body: Static<typeof FaultPatchSchema> }>(
      "/api/dev/faults/:simulator",
      {
        schema: {
          ...common,
          params: Simulator,
          body: FaultPatchSchema,
          summary: "Development: switch a simulator's faults",
        },
      },
      async (req) => {
        const part = await upstream(`${base(req.params.simulator)}/admin/faults`, req.headers.authorization, {
          method: "PUT",
          body: req.body,
        });
        if (!part.ok) throw new ProblemError(502, "upstream", "Simulator", part.error);
        req.log.warn(
          { simulator: req.params.simulator, faults: req.body, by: principalOf(req).sub },
          "simulator faults switched",
        );
        return part.body;
      },
    );
  }
}

/** Each event with its delay from the previous one and its cause's type (the event its causation id names). */
export function enrichTimeline(events: TimelineEvent[]) {
  const typeOf = new Map(events.map((e) => [e.event_id, e.type]));
  return events.map((e, i) => {
    const prev = i > 0 ? Date.parse(events[i - 1]!.timestamp) : NaN;
    const delay = Date.parse(e.timestamp) - prev;
    return {
      ...e,
      delayMs: Number.isFinite(delay) ? delay : null,
      cause: e.causation_id ? (typeOf.get(e.causation_id) ?? e.causation_id) : null,
    };
  });
}
