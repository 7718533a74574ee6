/**
 * Tracing: when spans are exported, each delivery gets a CONSUMER span (messaging semantic conventions) whose
 * parent is the publisher's span from the `traceparent` header — or the envelope's `trace_id` without one — so one
 * order is one trace; the handler runs with it active, and a failed attempt records its error on it. When nothing
 * is exported no span or context is made at all: handlers get the shared non-recording span.
 */
import { describeError } from "../../errors.js";
import {
  SpanKind,
  SpanStatusCode,
  context,
  contextFromTraceId,
  extractTraceContext,
  isTracingExported,
  trace,
  tracer,
  type Span,
} from "../../telemetry/tracing.js";
import { Hdr } from "../headers.js";
import type { Delivery } from "./delivery.js";
import type { Handle, Middleware, Outcome } from "./types.js";

function ended(span: Span): (o: Outcome) => Outcome {
  return (o) => {
    // A failure that reaches here is a failed attempt (parked and kept-in-place runs are settled inside).
    if (o.outcome === "failed") {
      span.recordException(o.error as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: describeError(o.error) });
    }
    span.end();
    return o;
  };
}

/** Spans of decoded events (after the decode middleware). */
export const traceEvents: Middleware = (next: Handle) => (d: Delivery) => {
  const event = d.event;
  if (!event || !isTracingExported()) return next(d);
  const m = d.msg;
  const parent = m.headers?.get(Hdr.TraceParent)
    ? extractTraceContext(m.headers)
    : contextFromTraceId(event.trace_id);
  const span = tracer().startSpan(
    `process ${d.consumer}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": m.subject,
        "messaging.consumer.group.name": d.consumer,
        "messaging.message.id": event.id,
        "messaging.nats.stream.sequence": m.seq,
        "messaging.nats.delivery.count": d.attempt,
        "shopstream.event.type": event.type,
        "shopstream.order.id": event.aggregate_id,
      },
    },
    parent,
  );
  d.span = span;
  return context.with(trace.setSpan(parent, span), () => next(d)).then(ended(span));
};

/** Spans of raw (undecoded) messages. */
export const traceRaw: Middleware = (next: Handle) => (d: Delivery) => {
  if (!isTracingExported()) return next(d);
  const m = d.msg;
  const span = tracer().startSpan(`process ${d.consumer}`, {
    kind: SpanKind.CONSUMER,
    attributes: {
      "messaging.system": "nats",
      "messaging.operation.type": "process",
      "messaging.destination.name": m.subject,
      "messaging.consumer.group.name": d.consumer,
      "messaging.nats.stream.sequence": m.seq,
    },
  });
  d.span = span;
  return next(d).then(ended(span));
};
