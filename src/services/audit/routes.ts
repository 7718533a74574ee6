/**
 * The audit HTTP API:
 * - `GET /audit/orders/:id` — an order's timeline, as it happened;
 * - `GET /audit/verify` — recomputes the whole hash chain;
 * - `GET /audit/events?after=&limit=` — every row, paged by position (for the invariant checker);
 * - `GET /audit/positions` — per stream, the projector's position, the stream's last sequence and the lag.
 */
import type { FastifyInstance, FastifyReply } from "fastify";
import { RetryableError, describeError } from "../../lib/errors.js";
import { problem, sendProblem } from "../../lib/http/problem.js";
import { ORDER_ID_PATTERN, isOrderId } from "../../lib/ids.js";
import { orderTimeline } from "./audit.js";
import type { Projector, ProjectorRole, StreamPosition } from "./projector.js";
import type { AuditStore } from "./store.js";

/** One event of `GET /audit/orders/:id`. */
export interface TimelineEvent {
  position: number;
  /** The publishing service (for a DeadLetter: the consumer that gave up). */
  service: string | null;
  type: string;
  /** When it happened (the event's timestamp; when absent, when it was recorded). */
  timestamp: string;
  trace_id: string | null;
  event_id: string;
  causation_id: string | null;
}

/** Body of `GET /audit/orders/:id`. */
export interface TimelineResponse {
  orderId: string;
  events: TimelineEvent[];
}

/** One row of `GET /audit/events`. */
export interface ListedEvent {
  position: number;
  event_id: string;
  type: string;
  order_id: string | null;
  stream: string;
  stream_seq: number | null;
  subject: string | null;
  source: string | null;
  timestamp: string | null;
}

/** Body of `GET /audit/events`. */
export interface EventsResponse {
  events: ListedEvent[];
  /** Pass as `after` for the next page (the last position returned, or `after` when none). */
  next: number;
  /** True when the page was full: there may be more. */
  more: boolean;
}

/** Body of `GET /audit/positions`. */
export interface PositionsResponse {
  /** This replica's role: `active` (it reads), `standby` (another replica reads) or `electing`. */
  role: ProjectorRole;
  /** Per stream: last sequence recorded, the stream's last sequence, and the difference. */
  streams: Record<string, StreamPosition>;
}

export const DEFAULT_PAGE = 1000;
export const MAX_PAGE = 10_000;

function badRequest(reply: FastifyReply, detail: string): FastifyReply {
  return sendProblem(reply, problem(400, "validation", "Bad Request", detail));
}

function nonNegativeInt(v: unknown): number | undefined {
  if (typeof v !== "string" || !/^\d{1,15}$/.test(v)) return undefined;
  return Number(v);
}

/** Database errors become 503 problems (retry later), not 500s. */
async function fromStore<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new RetryableError("AUDIT_STORE_UNAVAILABLE", `audit store: ${describeError(err)}`, { cause: err });
  }
}

export function registerAuditRoutes(app: FastifyInstance, store: AuditStore, projector?: Projector): void {
  if (projector)
    app.get("/audit/positions", async (): Promise<PositionsResponse> => {
      const streams = await fromStore(() => projector.positions());
      return { role: projector.role, streams };
    });

  app.get<{ Params: { id: string } }>("/audit/orders/:id", async (req, reply) => {
    const orderId = req.params.id;
    if (!isOrderId(orderId)) return badRequest(reply, `order id must match ${ORDER_ID_PATTERN}`);
    const rows = await fromStore(() => store.timeline(orderId));
    if (rows.length === 0)
      return sendProblem(
        reply,
        problem(404, "not-found", "Not Found", `no audit events for order ${orderId}`),
      );
    const body: TimelineResponse = {
      orderId,
      events: orderTimeline(rows).map((r) => ({
        position: r.position,
        service: r.source,
        type: r.eventType,
        timestamp: r.occurredAt ?? r.recordedAt,
        trace_id: r.traceId,
        event_id: r.eventId,
        causation_id: r.causationId,
      })),
    };
    return body;
  });

  app.get("/audit/verify", async () => fromStore(() => store.verify()));

  app.get<{ Querystring: Record<string, unknown> }>("/audit/events", async (req, reply) => {
    const q = req.query;
    const after = q["after"] === undefined ? 0 : nonNegativeInt(q["after"]);
    if (after === undefined) return badRequest(reply, "after must be a non-negative integer (a position)");
    const limit = q["limit"] === undefined ? DEFAULT_PAGE : nonNegativeInt(q["limit"]);
    if (limit === undefined || limit < 1 || limit > MAX_PAGE)
      return badRequest(reply, `limit must be an integer between 1 and ${MAX_PAGE}`);
    const rows = await fromStore(() => store.page(after, limit));
    const body: EventsResponse = {
      events: rows.map((r) => ({
        position: r.position,
        event_id: r.eventId,
        type: r.eventType,
        order_id: r.orderId,
        stream: r.stream,
        stream_seq: r.streamSeq,
        subject: r.subject,
        source: r.source,
        timestamp: r.occurredAt,
      })),
      next: rows.length > 0 ? rows[rows.length - 1]!.position : after,
      more: rows.length === limit,
    };
    return body;
  });
}
