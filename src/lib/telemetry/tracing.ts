import {
  INVALID_SPAN_CONTEXT,
  context,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  NodeTracerProvider,
  type SpanExporter,
  type SpanProcessor,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-node";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import type { MsgHdrs } from "@nats-io/transport-node";

export { SpanKind, SpanStatusCode, context, trace };
export type { Span, Tracer, Context };

/** Options for {@link initTracing}. */
export interface TracingOptions {
  /** `service.name` of every span. */
  service: string;
  /** OTLP/HTTP endpoint (e.g. http://otel-collector:4318); spans are exported only when set. */
  otlpEndpoint?: string | undefined;
  /** Extra exporter (tests use an in-memory one), run through a simple processor. */
  exporter?: SpanExporter | undefined;
}

/** A running tracer provider; `shutdown()` flushes spans (last step of the shutdown order). */
export interface Tracing {
  tracer: Tracer;
  shutdown(): Promise<void>;
}

let installed: NodeTracerProvider | undefined;
/** Whether the installed provider exports spans; see {@link isTracingExported}. */
let exported = false;

/**
 * The span handlers get when nothing is exported: non-recording, invalid, shared. With nothing exported no span is
 * made per message (see {@link isTracingExported}).
 */
export const NOOP_SPAN: Span = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/**
 * Installs the OpenTelemetry tracer provider and the W3C trace-context propagator for this process.
 * A provider is always installed so trace ids exist and propagate across services even when nothing
 * is exported (spans are then not recorded); OTLP/HTTP export is added when `otlpEndpoint` is set. Idempotent per process.
 */
export function initTracing(opts: TracingOptions): Tracing {
  if (!installed) {
    const processors: SpanProcessor[] = [];
    if (opts.otlpEndpoint) {
      const url = opts.otlpEndpoint.replace(/\/$/, "") + "/v1/traces";
      processors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url })));
    }
    if (opts.exporter) processors.push(new SimpleSpanProcessor(opts.exporter));
    exported = processors.length > 0;
    installed = new NodeTracerProvider({
      resource: resourceFromAttributes({ "service.name": opts.service }),
      // Nothing to export: spans are not recorded (they still get ids, so trace context and the events'
      // trace_id propagate as before). Recording a span nobody reads cost 3-7 % of a service's CPU.
      // With an exporter every span is recorded, whatever the caller sampled, so no hop goes missing.
      sampler: processors.length > 0 ? new AlwaysOnSampler() : new AlwaysOffSampler(),
      spanProcessors: processors,
    });
    installed.register({
      propagator: new W3CTraceContextPropagator(),
      // Nothing exported: no context manager either. Its AsyncLocalStorage turns on Node's promise hooks, a
      // cost on every promise of the process; without it no span is "active", and each message carries its
      // order's trace instead (the publisher parents its span on the event's trace_id).
      ...(processors.length > 0 ? {} : { contextManager: null }),
    });
  }
  const provider = installed;
  return {
    tracer: trace.getTracer("shopstream", "0.1.0"),
    shutdown: async () => {
      await provider.shutdown();
      installed = undefined;
      exported = false;
    },
  };
}

/**
 * Does this process export spans (an OTLP endpoint or an exporter was given to {@link initTracing})? When it does
 * not, spans would be non-recording and no context manager carries them, so the message path makes none at all:
 * the consumer runner gives handlers {@link NOOP_SPAN}, and the publisher writes the event's trace into
 * `traceparent` directly ({@link traceparentOf}).
 */
export function isTracingExported(): boolean {
  return exported;
}

/** Is a span context of `ctx` (or of the active context) valid, i.e. is some span active? */
export function hasActiveSpan(ctx: Context = context.active()): boolean {
  return activeTraceId(ctx) !== undefined;
}

/** The tracer used by the shared library (a no-op one until {@link initTracing} runs). */
export function tracer(): Tracer {
  return trace.getTracer("shopstream", "0.1.0");
}

const setter: TextMapSetter<MsgHdrs> = {
  set: (carrier, key, value) => carrier.set(key, value),
};
const getter: TextMapGetter<MsgHdrs | undefined> = {
  get: (carrier, key) => carrier?.get(key) || undefined,
  keys: (carrier) => (carrier ? carrier.keys() : []),
};

/** Writes the W3C `traceparent` (and `tracestate`) of `ctx` into NATS message headers. */
export function injectTraceHeaders(ctx: Context, headers: MsgHdrs): void {
  propagation.inject(ctx, headers, setter);
}

/** Reads the trace context a publisher put into NATS message headers. */
export function extractTraceContext(headers: MsgHdrs | undefined): Context {
  return propagation.extract(context.active(), headers, getter);
}

/** The trace id of the active span, or undefined when there is none. */
export function activeTraceId(ctx: Context = context.active()): string | undefined {
  const sc = trace.getSpanContext(ctx);
  return sc && trace.isSpanContextValid(sc) ? sc.traceId : undefined;
}

/**
 * The `traceparent` a non-recording publish span would carry: the event's trace id, a new span id, flags 00 (not
 * sampled) — what {@link injectTraceHeaders} writes for the span the AlwaysOff sampler makes when nothing is
 * exported, without making that span, its context and the propagator's carrier calls.
 */
export function traceparentOf(traceId: string): string {
  return `00-${traceId}-${randomSpanId()}-00`;
}

/** 16 random lowercase hex digits, never all zero (an all-zero span id is invalid). */
function randomSpanId(): string {
  const hi = (Math.random() * 0x100000000) >>> 0;
  const lo = ((Math.random() * 0xffffffff) >>> 0) + 1;
  return hi.toString(16).padStart(8, "0") + lo.toString(16).padStart(8, "0");
}

/**
 * Makes a span context from an envelope's trace id when no `traceparent` header came with a message
 * (e.g. an event published by a tool): the handler's span then still joins the order's trace.
 */
export function contextFromTraceId(traceId: string): Context {
  const spanId = Math.floor(Math.random() * 2 ** 52)
    .toString(16)
    .padStart(16, "0")
    .slice(-16);
  return trace.setSpanContext(context.active(), { traceId, spanId, traceFlags: 1, isRemote: true });
}
