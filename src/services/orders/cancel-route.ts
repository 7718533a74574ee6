import type { FastifyInstance } from "fastify";
import type { Static } from "@sinclair/typebox";
import { makeEvent } from "../../lib/events/mod.js";
import { bearerSecurity, principalOf } from "../../lib/http/auth.js";
import { ProblemError, problemResponse } from "../../lib/http/problem.js";
import { ConcurrencyError } from "../../lib/messaging/publisher.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { SOURCE } from "./handlers.js";
import { decideCancelRequest } from "./order.js";
import { authResponses, orderNotFound, OrderIdParam, OrderView, view } from "./routes.js";
import type { OrderStore } from "./store.js";
import type { PersonalData } from "../../lib/pii/personal-data.js";
import type { Order } from "./order.js";

/** Dependencies of `POST /orders/{id}/cancel`. */
export interface CancelRouteDeps {
  store: OrderStore;
  /** Reveals the order's e-mail for the answer (or shows it erased), as GET /orders/{id} does. */
  personalData: PersonalData;
  logger: Logger;
  /** How long after its confirmation a CONFIRMED order may still be cancelled (0: only PENDING orders). */
  windowMs: number;
  now?: () => Date;
}

function isEmptyObject(v: unknown): boolean {
  return typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0;
}

/** Conditional appends tried before a request that keeps losing to the saga gives up with 409 (retry). */
const MAX_APPEND_TRIES = 5;

/**
 * Registers `POST /orders/{id}/cancel`: the order's customer (the token's `sub`; another customer's order is
 * 404) or an operator cancels a PENDING order, or a CONFIRMED one within `windowMs` of its confirmation (409
 * `cancel-window-closed` after). The cancellation is an OrderCancelled appended with optimistic concurrency on
 * the order's subject, so it and the saga's own decision (a capture confirming it, a timeout) are ordered by the
 * stream: whichever comes second sees the first. Compensations follow asynchronously: inventory releases the
 * reservation or returns the sold units, payments refunds a capture (also one landing after the cancellation).
 * Idempotent: a request for a cancelled order answers 200 with the order, appending nothing.
 */
export function registerCancelRoute(app: FastifyInstance, d: CancelRouteDeps): void {
  const now = d.now ?? (() => new Date());
  app.post<{ Params: Static<typeof OrderIdParam> }>(
    "/orders/:id/cancel",
    {
      config: { auth: "customer" },
      schema: {
        summary: "Cancel an order",
        description:
          "The order's customer or an operator cancels a PENDING order, or a CONFIRMED one within the cancellation window (`CANCEL_WINDOW_MS` after its confirmation). The answer is the order, CANCELLED; its stock is released (or returned) and any capture refunded asynchronously. Idempotent: cancelling a cancelled order answers it as it is. No body (or `{}`).",
        security: bearerSecurity,
        params: OrderIdParam,
        response: {
          200: OrderView,
          400: problemResponse("The order id is malformed, or a body other than `{}` was sent"),
          ...authResponses,
          404: problemResponse("No such order, or not the caller's"),
          409: problemResponse(
            "The order can no longer be cancelled (`cancel-window-closed`: confirmed longer ago than the window), or it kept changing while cancelling (`conflict`: retry)",
          ),
          503: problemResponse("Temporarily unavailable: retry later (`Retry-After`)"),
        },
      },
    },
    async (req) => {
      // No body, or an empty JSON object (what many clients send with a POST); anything else is a mistake.
      const body: unknown = req.body;
      if (body !== undefined && body !== null && !isEmptyObject(body)) {
        throw new ProblemError(400, "validation", "Request validation failed", "this request takes no body", {
          errors: [{ pointer: "/body", message: "must be absent or {}" }],
        });
      }
      const who = principalOf(req);
      const orderId = req.params.id;
      const shown = async (o: Order) => view(o, await d.personalData.reveal(o.customerId, o.email));
      for (let i = 0; i < MAX_APPEND_TRIES; i++) {
        const { order, version, events } = await d.store.load(orderId);
        if (!order || (!who.operator && order.customerId !== who.sub)) throw orderNotFound(orderId);
        const decision = decideCancelRequest(order, {
          by: who.operator ? "operator" : "customer",
          now: now(),
          windowMs: d.windowMs,
        });
        if (decision.kind === "already_cancelled") return shown(order);
        if (decision.kind === "window_closed") {
          throw new ProblemError(
            409,
            "cancel-window-closed",
            "Conflict",
            `order ${orderId} was confirmed at ${decision.confirmedAt}; it could be cancelled for ${decision.windowMs} ms after that`,
          );
        }
        // Caused by the order's last event, so the cancellation stays in the order's trace and audit timeline.
        const event = makeEvent(decision.event.type, decision.event.data, {
          aggregateId: orderId,
          source: SOURCE,
          cause: events[events.length - 1],
        });
        try {
          await d.store.append(event, version);
        } catch (err) {
          // The saga (or another request) appended first: read the order again and decide on what it is now.
          if (err instanceof ConcurrencyError) continue;
          throw err;
        }
        d.logger.info(
          { order_id: orderId, trace_id: event.trace_id, reason: event.data.reason, was: order.status },
          "order cancelled on request",
        );
        const after = d.store.recent(orderId)?.order;
        return shown(
          after?.status === "CANCELLED"
            ? after
            : { ...order, status: "CANCELLED", reason: event.data.reason },
        );
      }
      throw new ProblemError(
        409,
        "conflict",
        "Conflict",
        `order ${orderId} kept changing while cancelling: retry`,
      );
    },
  );
}
