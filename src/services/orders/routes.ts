import { randomBytes } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { context, propagation, trace } from "@opentelemetry/api";
import { fingerprint } from "../../lib/canonical.js";
import { makeEvent, type EventData } from "../../lib/events/mod.js";
import { ORDER_ID_PATTERN } from "../../lib/ids.js";
import { ProblemError, problem, problemResponse, sendProblem } from "../../lib/http/problem.js";
import { bearerSecurity, principalOf } from "../../lib/http/auth.js";
import { SpanKind, SpanStatusCode, tracer } from "../../lib/telemetry/tracing.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { revealWith, type PersonalData, type Revealed } from "../../lib/pii/personal-data.js";
import { ConcurrencyError } from "../../lib/messaging/publisher.js";
import type { OrdersInFlight } from "./admission.js";
import type { SkuQuota } from "./limits.js";
import type { CatalogView } from "./catalog.js";
import { SOURCE } from "./handlers.js";
import { evolve, type Order } from "./order.js";
import { isTerminal, type LiveStreams } from "./live.js";
import type { CustomerIndex, IdempotencyKeys, OrderStore } from "./store.js";

const Sku = Type.String({ pattern: "^[A-Za-z0-9_-]{1,64}$", description: "catalog SKU" });
/**
 * Any text but control characters (C0, DEL, C1) and lone surrogates (not Unicode: they cannot be encoded
 * as UTF-8, so they would not survive the events, the logs or the audit log intact).
 */
export const CustomerId = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: "^(?:[^\\u0000-\\u001f\\u007f-\\u009f\\ud800-\\udfff]|[\\ud800-\\udbff][\\udc00-\\udfff])+$",
});

/**
 * Body of `POST /orders`. Prices are not accepted: they come from the catalog. The customer is the bearer token's
 * `sub`: `customerId` may be omitted, and when given must equal it (403 `customer-mismatch` otherwise).
 */
export function placeOrderBody(maxLines: number, maxLineQuantity = 1000) {
  return Type.Object(
    {
      customerId: Type.Optional({
        ...CustomerId,
        description: "optional: the token's `sub` is the customer; when given it must equal it",
      }),
      email: Type.String({ format: "email", maxLength: 254 }),
      items: Type.Array(
        Type.Object(
          { sku: Sku, quantity: Type.Integer({ minimum: 1, maximum: maxLineQuantity }) },
          { additionalProperties: false },
        ),
        { minItems: 1, maxItems: maxLines },
      ),
      currency: Type.Optional(Type.String({ pattern: "^[A-Z]{3}$" })),
    },
    { additionalProperties: false },
  );
}
type PlaceOrderBody = Static<ReturnType<typeof placeOrderBody>>;

/** An order as the API shows it. */
export const OrderView = Type.Object({
  orderId: Type.String(),
  status: Type.Union([Type.Literal("PENDING"), Type.Literal("CONFIRMED"), Type.Literal("CANCELLED")]),
  reason: Type.Optional(Type.String()),
  customerId: Type.String(),
  email: Type.Union([Type.String(), Type.Null()], {
    description: "the address given with the order; null once the customer's personal data was erased",
  }),
  personalData: Type.Union([Type.Literal("present"), Type.Literal("erased")], {
    description:
      "`erased` after `DELETE /customers/{id}/personal-data`: the e-mail can no longer be read anywhere",
  }),
  items: Type.Array(Type.Object({ sku: Type.String(), quantity: Type.Integer(), unitPrice: Type.Integer() })),
  total: Type.Integer({ description: "minor units (cents)" }),
  currency: Type.String(),
  createdAt: Type.String({ format: "date-time" }),
  updatedAt: Type.String({ format: "date-time" }),
});
export const OrderIdParam = Type.Object({ id: Type.String({ pattern: ORDER_ID_PATTERN }) });

/** A new order id: time-ordered (sorts by creation) and random, subject-token safe. */
export function newOrderId(now = Date.now()): string {
  return `ord_${now.toString(36).padStart(9, "0")}${randomBytes(8).toString("hex")}`;
}

/** An order as its live stream shows it: no personal data (a status feed has no use for the e-mail). */
function statusView(o: Order) {
  return {
    orderId: o.orderId,
    status: o.status,
    ...(o.reason ? { reason: o.reason } : {}),
    customerId: o.customerId,
    items: o.items,
    total: o.total,
    currency: o.currency,
    createdAt: o.createdAt,
    updatedAt: o.updatedAt,
  };
}

/** An order as GET /orders/{id} shows it: with its e-mail, or `null` and `personalData: "erased"`. */
export function view(o: Order, email: Revealed) {
  return {
    ...statusView(o),
    email: email.erased ? null : email.value,
    personalData: email.erased ? ("erased" as const) : ("present" as const),
  };
}

/** The 401 and 403 answers of an authenticated route. */
export const authResponses = {
  401: {
    ...problemResponse(
      "No bearer token, or one that is not valid (expired, wrong audience or signature, `alg: none`)",
    ),
    headers: {
      "WWW-Authenticate": {
        type: "string",
        description: '`Bearer`, with `error="invalid_token"` for a bad token',
      },
    },
  },
} as const;

/** 403 when the body's or query's customerId is not the token's `sub`. */
function customerMismatch(): ProblemError {
  return new ProblemError(
    403,
    "customer-mismatch",
    "Forbidden",
    "customerId must be the authenticated customer (the token's sub), or be omitted",
  );
}

/** 404 for an order that does not exist or is not the caller's: the two are answered alike (no existence oracle). */
export function orderNotFound(orderId: string): ProblemError {
  return new ProblemError(404, "order-not-found", "Not Found", `no order ${orderId}`);
}

/** Dependencies of the orders API. */
export interface OrdersApiDeps {
  store: OrderStore;
  catalog: CatalogView;
  idempotency: IdempotencyKeys;
  customers: CustomerIndex;
  /** Seals the e-mail of new orders and reveals it on reads (crypto-shredding: src/lib/pii). */
  personalData: PersonalData;
  logger: Logger;
  timeoutMs: number;
  maxLines: number;
  defaultCurrency: string;
  /** Admission control: orders in flight on this replica, and the limit beyond which POST /orders is shed. */
  inFlight: OrdersInFlight;
  /** Live order status (`GET /orders/{id}/events`); absent = the route answers 503. */
  live?: LiveStreams;
  /** Abuse limits (docs/security.md); absent = none beyond the schema's. */
  limits?: {
    /** POST /orders per customer per window (0 = none); needs @fastify/rate-limit registered on the app. */
    rate?: { max: number; windowMs: number };
    maxLineQuantity?: number;
    maxOrderQuantity?: number;
    skuQuota?: SkuQuota;
  };
}

/** Seconds a shed client is asked to wait (`Retry-After`). */
export const SHED_RETRY_AFTER_S = 1;

/**
 * Answers a shed `POST /orders`: 503 problem+json with `Retry-After`. Nothing has been read, claimed or
 * written for it, so a retry (with the same Idempotency-Key, if any) is a new request.
 */
function shed(reply: FastifyReply, inFlight: OrdersInFlight): FastifyReply {
  inFlight.shed();
  return sendProblem(
    reply.header("retry-after", String(SHED_RETRY_AFTER_S)),
    problem(
      503,
      "overloaded",
      "Service Unavailable",
      `too many orders in flight (limit ${inFlight.limit}): retry after ${SHED_RETRY_AFTER_S} s`,
    ),
  );
}

/** Registers the public order API: place an order, read one, list a customer's orders. */
export function registerOrderRoutes(app: FastifyInstance, d: OrdersApiDeps): void {
  const body = placeOrderBody(d.maxLines, d.limits?.maxLineQuantity);
  const rate = d.limits?.rate;
  const maxOrderQuantity = d.limits?.maxOrderQuantity ?? Infinity;

  app.post<{ Body: PlaceOrderBody; Headers: { "idempotency-key"?: string } }>(
    "/orders",
    {
      config: {
        auth: "customer",
        // Per customer (the token's sub), after authentication: 429 problem+json with Retry-After.
        ...(rate && rate.max > 0
          ? {
              rateLimit: {
                max: rate.max,
                timeWindow: rate.windowMs,
                hook: "preHandler" as const,
                keyGenerator: (req: FastifyRequest) => principalOf(req).sub,
                errorResponseBuilder: (_req: FastifyRequest, c: { max: number; after: string }) =>
                  new ProblemError(
                    429,
                    "rate-limited",
                    "Too Many Requests",
                    `more than ${c.max} orders in ${rate.windowMs} ms from this customer: retry in ${c.after}`,
                  ),
              },
            }
          : {}),
      },
      schema: {
        summary: "Place an order",
        security: bearerSecurity,
        description:
          "Validates the order, prices it from the catalog and appends OrderPlaced. The saga then reserves stock, charges the payment and confirms or cancels. An `Idempotency-Key` header makes retries safe.",
        body,
        headers: Type.Object({
          "idempotency-key": Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
        }),
        response: {
          202: Type.Object({ orderId: Type.String(), status: Type.String() }),
          400: problemResponse("The request is malformed or fails the schema (each field in `errors`)"),
          ...authResponses,
          403: problemResponse(
            "The body's customerId is not the authenticated customer (`customer-mismatch`)",
          ),
          409: problemResponse("A concurrent write conflicted: retry"),
          413: problemResponse("The body is larger than the limit"),
          429: {
            ...problemResponse(
              "Too many orders from this customer (`rate-limited`): retry after `Retry-After` seconds",
            ),
            headers: {
              "Retry-After": { type: "integer", minimum: 0, description: "seconds to wait before retrying" },
            },
          },
          415: problemResponse("The body's media type is not supported: send `application/json` (UTF-8)"),
          422: problemResponse(
            "The order cannot be placed as given (unknown or duplicate SKU, wrong currency, more units than an order may hold, more of one SKU than a customer may buy), or the Idempotency-Key was used with another body",
          ),
          503: {
            ...problemResponse(
              "Overloaded (too many orders in flight on this replica; nothing was placed) or temporarily unavailable: retry after `Retry-After` seconds, with the same Idempotency-Key",
            ),
            headers: {
              "Retry-After": { type: "integer", minimum: 1, description: "seconds to wait before retrying" },
            },
          },
        },
      },
      // Shed before the body is even parsed when this replica is full; the handler checks again as it admits.
      onRequest: async (_req, reply) => {
        if (d.inFlight.full) return shed(reply, d.inFlight);
      },
    },
    async (req, reply) => {
      const slot = d.inFlight.admit();
      if (!slot) return shed(reply, d.inFlight);
      const parent = propagation.extract(context.active(), req.headers);
      const span = tracer().startSpan(
        "POST /orders",
        { kind: SpanKind.SERVER, attributes: { "http.request.method": "POST", "http.route": "/orders" } },
        parent,
      );
      try {
        return await context.with(trace.setSpan(parent, span), async () => {
          const b = req.body;
          const customerId = principalOf(req).sub;
          if (b.customerId !== undefined && b.customerId !== customerId) throw customerMismatch();
          const currency = b.currency ?? d.defaultCurrency;
          const skus = new Set<string>();
          const problems: { pointer: string; message: string }[] = [];
          const items: EventData<"OrderPlaced">["items"] = [];
          b.items.forEach((line, i) => {
            if (skus.has(line.sku))
              problems.push({ pointer: `/body/items/${i}/sku`, message: `duplicate sku ${line.sku}` });
            skus.add(line.sku);
            const entry = d.catalog.get(line.sku);
            if (!entry)
              problems.push({ pointer: `/body/items/${i}/sku`, message: `unknown sku ${line.sku}` });
            else if (entry.currency !== currency)
              problems.push({
                pointer: `/body/items/${i}/sku`,
                message: `${line.sku} is priced in ${entry.currency}, not ${currency}`,
              });
            else items.push({ sku: line.sku, quantity: line.quantity, unitPrice: entry.price });
          });
          const units = b.items.reduce((n, l) => n + l.quantity, 0);
          if (problems.length === 0 && units > maxOrderQuantity) {
            throw new ProblemError(
              422,
              "order-too-large",
              "Unprocessable Content",
              `${units} units in one order; at most ${maxOrderQuantity}`,
              { errors: [{ pointer: "/body/items", message: `at most ${maxOrderQuantity} units in all` }] },
            );
          }
          if (problems.length > 0) {
            throw new ProblemError(
              422,
              "order-rejected",
              "Unprocessable Content",
              problems.map((p) => p.message).join("; "),
              {
                errors: problems,
              },
            );
          }
          const total = items.reduce((s, l) => s + l.unitPrice * l.quantity, 0);
          let orderId = newOrderId();
          let replayed = false;
          const key = req.headers["idempotency-key"];
          if (key) {
            // Keys are the customer's own: one customer's key never answers (or blocks) another's request.
            const fp = fingerprint({ ...b, customerId });
            const prior = await d.idempotency.claim(JSON.stringify([customerId, key]), {
              fingerprint: fp,
              orderId,
              at: new Date().toISOString(),
            });
            if (prior) {
              if (prior.fingerprint !== fp) {
                throw new ProblemError(
                  422,
                  "idempotency-key-reused",
                  "Unprocessable Content",
                  "this Idempotency-Key was used with a different request body",
                );
              }
              orderId = prior.orderId;
              replayed = true;
            }
          }
          span.setAttribute("shopstream.order.id", orderId);
          let status = "PENDING";
          const existing = replayed ? (await d.store.load(orderId)).order : null;
          if (existing) {
            status = existing.status;
          } else {
            // A customer's share of each SKU (checked when the order is placed, not when a key is replayed).
            const over = d.limits?.skuQuota?.take(customerId, items) ?? [];
            if (over.length > 0) {
              throw new ProblemError(
                422,
                "sku-limit",
                "Unprocessable Content",
                over.map((o) => `at most ${o.left} more of ${o.sku} for this customer now`).join("; "),
                {
                  errors: over.map((o) => ({
                    pointer: `/body/items/${o.index}/quantity`,
                    message: `at most ${o.left}`,
                  })),
                },
              );
            }
            const now = new Date();
            const event = makeEvent(
              "OrderPlaced",
              {
                orderId,
                customerId,
                email: await d.personalData.seal(customerId, b.email),
                items,
                total,
                currency,
                placedAt: now.toISOString(),
                timeoutAt: new Date(now.getTime() + d.timeoutMs).toISOString(),
              },
              { aggregateId: orderId, source: SOURCE, traceId: span.spanContext().traceId, now },
            );
            await d.customers.add(customerId, orderId);
            slot.track(orderId, now.getTime() + d.timeoutMs);
            try {
              await d.store.append(event, 0);
            } catch (err) {
              slot.untrack();
              // Already appended by an earlier attempt with this key (outside the duplicate window).
              if (!(err instanceof ConcurrencyError)) throw err;
            }
            d.logger.debug(
              { order_id: orderId, trace_id: event.trace_id, total, lines: items.length },
              "order placed",
            );
          }
          if (replayed) void reply.header("idempotent-replayed", "true");
          return reply.code(202).header("location", `/orders/${orderId}`).send({ orderId, status });
        });
      } catch (err) {
        span.setStatus({ code: SpanStatusCode.ERROR });
        throw err;
      } finally {
        slot.release();
        span.end();
      }
    },
  );

  app.get<{ Params: Static<typeof OrderIdParam> }>(
    "/orders/:id",
    {
      config: { auth: "customer" },
      schema: {
        summary: "Read an order",
        description: "A customer reads their own orders; an operator reads any.",
        security: bearerSecurity,
        params: OrderIdParam,
        response: {
          200: OrderView,
          400: problemResponse("The order id is malformed"),
          ...authResponses,
          404: problemResponse("No such order, or not the caller's"),
          503: problemResponse("Temporarily unavailable: retry later (`Retry-After`)"),
        },
      },
    },
    async (req) => {
      const who = principalOf(req);
      const { order } = await d.store.load(req.params.id);
      if (!order || (!who.operator && order.customerId !== who.sub)) throw orderNotFound(req.params.id);
      return view(order, await d.personalData.reveal(order.customerId, order.email));
    },
  );

  app.get<{ Params: Static<typeof OrderIdParam>; Headers: { "last-event-id"?: string } }>(
    "/orders/:id/events",
    {
      config: { auth: "customer" },
      schema: {
        summary: "Follow an order's status live (Server-Sent Events)",
        description:
          "`text/event-stream`: one message per status change as it happens (`id`: the event's ORDERS stream sequence; `data`: `{event, ...the order as GET /orders/{id} shows it, without its e-mail}`), `: heartbeat` comments in between; the stream ends after the terminal state (CONFIRMED or CANCELLED). Reconnect with `Last-Event-ID` to resume after the last message received; 204 when nothing follows it (the order had ended). A customer follows their own orders; an operator any. At most `LIVE_STREAMS_PER_CUSTOMER` open streams per customer.",
        security: bearerSecurity,
        params: OrderIdParam,
        headers: Type.Object({
          "last-event-id": Type.Optional(
            Type.String({ pattern: "^[0-9]{1,15}$", description: "the `id` of the last message received" }),
          ),
        }),
        response: {
          200: {
            description: "The order's status changes, as Server-Sent Events",
            content: { "text/event-stream": { schema: Type.String() } },
          },
          204: {
            description: "The order ended at or before Last-Event-ID: nothing more will come",
            type: "null",
          },
          400: problemResponse("The order id or Last-Event-ID is malformed"),
          ...authResponses,
          404: problemResponse("No such order, or not the caller's"),
          429: {
            ...problemResponse("Too many open streams of this customer (`too-many-streams`): close one"),
            headers: {
              "Retry-After": { type: "integer", minimum: 1, description: "seconds to wait before retrying" },
            },
          },
          503: problemResponse("Temporarily unavailable: retry later"),
        },
      },
    },
    async (req, reply) => {
      const live = d.live;
      if (!live)
        throw new ProblemError(503, "unavailable", "Service Unavailable", "live status is not running");
      const who = principalOf(req);
      const orderId = req.params.id;
      const after = Number(req.headers["last-event-id"] ?? "0");
      const all = await live.read(orderId, 0);
      let order: Order | null = null;
      for (const { event } of all.events) order = evolve(order, event);
      if (!order || (!who.operator && order.customerId !== who.sub)) throw orderNotFound(orderId);
      let before: Order | null = null;
      for (const { seq, event } of all.events) if (seq <= after) before = evolve(before, event);
      const history = all.events.filter((e) => e.seq > after);
      if (history.length === 0 && isTerminal(before)) return reply.code(204).send();
      const release = live.admit(who.sub);
      if (!release)
        throw new ProblemError(
          429,
          "too-many-streams",
          "Too Many Requests",
          "too many open live streams for this customer: close one first",
          { headers: { "retry-after": "5" } },
        );
      let sub;
      try {
        sub = await live.subscribe(orderId);
      } catch (err) {
        release();
        throw err;
      }
      reply.hijack();
      live.serve(
        reply,
        { orderId, sub, order: before, history, last: Math.max(after, all.last) },
        statusView,
        release,
      );
    },
  );

  const ListQuery = Type.Object({
    customerId: Type.Optional({
      ...CustomerId,
      description:
        "a customer lists their own orders (omit it, or give their own id); an operator names the customer",
    }),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
    after: Type.Optional(
      Type.String({
        pattern: ORDER_ID_PATTERN,
        description: "cursor: the last orderId of the previous page",
      }),
    ),
  });
  app.get<{ Querystring: Static<typeof ListQuery> }>(
    "/orders",
    {
      config: { auth: "customer" },
      schema: {
        summary: "List a customer's orders, newest first, paged",
        security: bearerSecurity,
        querystring: ListQuery,
        response: {
          200: Type.Object({ orders: Type.Array(OrderView), next: Type.Union([Type.String(), Type.Null()]) }),
          400: problemResponse(
            "The query is malformed (each field in `errors`), or an operator named no customerId",
          ),
          ...authResponses,
          403: problemResponse("A customer asked for another customer's orders (`customer-mismatch`)"),
          503: problemResponse("Temporarily unavailable: retry later (`Retry-After`)"),
        },
      },
    },
    async (req) => {
      const who = principalOf(req);
      const { limit, after } = req.query;
      let customerId = req.query.customerId;
      if (!who.operator) {
        if (customerId !== undefined && customerId !== who.sub) throw customerMismatch();
        customerId = who.sub;
      } else if (customerId === undefined) {
        throw new ProblemError(
          400,
          "validation",
          "Request validation failed",
          "an operator lists a customer's orders: give customerId",
          {
            errors: [{ pointer: "/querystring/customerId", message: "required for an operator" }],
          },
        );
      }
      const ids = await d.customers.list(customerId);
      const start = after ? ids.findIndex((id) => id < after) : 0;
      const page = start < 0 ? [] : ids.slice(start, start + limit);
      const [loaded, key] = await Promise.all([
        Promise.all(page.map((id) => d.store.load(id))),
        page.length > 0 ? d.personalData.keys.current(customerId) : null,
      ]);
      const orders = loaded.flatMap((l) =>
        l.order && l.order.customerId === customerId
          ? [view(l.order, revealWith(key, customerId, l.order.email))]
          : [],
      );
      const next = start >= 0 && ids.length > start + limit ? (page[page.length - 1] ?? null) : null;
      return { orders, next };
    },
  );
}
