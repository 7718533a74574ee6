import { randomBytes } from "node:crypto";
import { Type, type Static } from "@sinclair/typebox";
import { catalog, type EventData, type EventType, type StreamName } from "./catalog.js";

/**
 * The envelope every event travels in: the original design's `id, type, aggregate_id, data,
 * timestamp, trace_id`, plus `version` (schema version of `data`), `causation_id` (the id of the
 * event that caused this one, or null at the edge) and `source` (the publishing service).
 */
export interface Envelope<T extends EventType = EventType> {
  id: string;
  type: T;
  version: number;
  aggregate_id: string;
  data: EventData<T>;
  timestamp: string;
  trace_id: string;
  causation_id: string | null;
  source: string;
}

/** Any event of the catalog, discriminated on `type`. */
export type AnyEnvelope = { [T in EventType]: Envelope<T> }[EventType];

/** The runtime schema of the envelope (with `data` checked separately against the catalog). */
export const EnvelopeSchema = Type.Object(
  {
    id: Type.String({ minLength: 1, maxLength: 256 }),
    type: Type.String({ minLength: 1, maxLength: 64 }),
    version: Type.Integer({ minimum: 1 }),
    aggregate_id: Type.String({ minLength: 1, maxLength: 128 }),
    data: Type.Unknown(),
    timestamp: Type.String({ minLength: 1, maxLength: 64 }),
    trace_id: Type.String({ pattern: "^[0-9a-f]{32}$" }),
    causation_id: Type.Union([Type.String({ maxLength: 256 }), Type.Null()]),
    source: Type.String({ minLength: 1, maxLength: 64 }),
  },
  { additionalProperties: false },
);
export type EnvelopeShape = Static<typeof EnvelopeSchema>;

/** A new random W3C trace id (32 lowercase hex digits). */
export function newTraceId(): string {
  return randomBytes(16).toString("hex");
}

/** Options for {@link makeEvent}. */
export interface MakeEventOptions {
  /** The aggregate the event belongs to (the order id for every saga event). */
  aggregateId: string;
  /** The publishing service. */
  source: string;
  /** The event this one is a consequence of: gives causation_id and trace_id. */
  cause?: Pick<Envelope, "id" | "trace_id"> | undefined;
  /** Trace id when there is no cause (e.g. from the incoming HTTP request's span). */
  traceId?: string | undefined;
  /**
   * Suffix making the id unique when one aggregate has several events of the same type
   * (e.g. the notification kind). The id stays deterministic: a redo publishes the same id.
   */
  idSuffix?: string | undefined;
  /** Clock override for tests. */
  now?: Date | undefined;
}

/**
 * Builds an envelope with a deterministic id, `<aggregateId>:<type>[:<suffix>]`, so that a retry or a
 * crash-and-redo of the same step publishes the same id and is de-duplicated by the server.
 */
export function makeEvent<T extends EventType>(
  type: T,
  data: EventData<T>,
  opts: MakeEventOptions,
): Envelope<T> {
  const id = opts.idSuffix ? `${opts.aggregateId}:${type}:${opts.idSuffix}` : `${opts.aggregateId}:${type}`;
  return {
    id,
    type,
    version: catalog[type].version,
    aggregate_id: opts.aggregateId,
    data,
    timestamp: (opts.now ?? new Date()).toISOString(),
    trace_id: opts.cause?.trace_id ?? opts.traceId ?? newTraceId(),
    causation_id: opts.cause?.id ?? null,
    source: opts.source,
  };
}

/** The owning stream of an event type. */
export function streamOf(type: EventType): StreamName {
  return catalog[type].stream;
}

/**
 * The subject an event is published on. ORDERS keeps one subject per order (`orders.<id>`), which is
 * the event-sourced aggregate's stream and the unit of optimistic concurrency; the other contexts put
 * the type last (`inventory.<id>.StockReserved`) so a consumer can filter on the types it needs.
 */
export function subjectOf(env: Pick<Envelope, "type" | "aggregate_id">): string {
  const stream = streamOf(env.type);
  if (stream === "ORDERS") return `orders.${env.aggregate_id}`;
  return `${stream.toLowerCase()}.${env.aggregate_id}.${env.type}`;
}
