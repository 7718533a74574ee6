/**
 * Messaging conformance, tracing: the W3C trace context travels from the publisher's span through the message headers
 * to the handler's span, so one order is one trace; without headers the envelope's trace_id is used. Runs in its own
 * process (node --test runs each file separately), since the tracer provider is process-wide.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { encodeEvent, makeEvent, subjectOf, type AnyEnvelope } from "../../src/lib/events/mod.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import {
  SpanKind,
  SpanStatusCode,
  activeTraceId,
  initTracing,
  trace,
  tracer,
} from "../../src/lib/telemetry/tracing.js";
import {
  Recorder,
  SOURCE,
  eventually,
  orderPlacedData,
  paymentCaptured,
  startMessaging,
} from "../helpers/messaging.js";

const exporter = new InMemorySpanExporter();
const tracing = initTracing({ service: "conformance", exporter });
after(() => tracing.shutdown());

/** The finished spans matching `pred`, once there are `n` of them. */
function spans(pred: (s: ReadableSpan) => boolean, n = 1): Promise<ReadableSpan[]> {
  return eventually(() => {
    const found = exporter.getFinishedSpans().filter(pred);
    assert.equal(found.length, n, "finished spans");
    return found;
  }, 10_000);
}

const consumerSpanOf = (durable: string, eventId: string) => (s: ReadableSpan) =>
  s.kind === SpanKind.CONSUMER &&
  s.name === `process ${durable}` &&
  s.attributes["messaging.message.id"] === eventId;

void describe("messaging conformance: tracing", () => {
  void it("the trace context crosses publish → handler: same trace, the producer span is the handler span's parent", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("traced");
    const rec = new Recorder();
    const inHandler: { traceId?: string; activeIsCtxSpan?: boolean; envelopeTraceId?: string } = {};
    let follow: AnyEnvelope | undefined;
    await f.startRunner(spec, {
      handlers: rec.handlers(async (event, ctx) => {
        inHandler.traceId = activeTraceId();
        inHandler.activeIsCtxSpan = trace.getActiveSpan() === ctx.span;
        inHandler.envelopeTraceId = event.trace_id;
        // The next step of the saga, published from the handler, joins the same trace.
        follow = makeEvent("PaymentCaptured", paymentCaptured(event.aggregate_id).data, {
          aggregateId: event.aggregate_id,
          source: SOURCE,
          cause: event,
        });
        await f.publisher.publish(follow);
      }),
    });

    // An API request's span is active while the order is placed.
    const orderId = "traced-1";
    let rootTraceId = "";
    let rootSpanId = "";
    let event!: AnyEnvelope;
    await tracer().startActiveSpan("POST /orders", async (root) => {
      rootTraceId = root.spanContext().traceId;
      rootSpanId = root.spanContext().spanId;
      event = makeEvent("OrderPlaced", orderPlacedData(orderId), {
        aggregateId: orderId,
        source: SOURCE,
        traceId: activeTraceId(),
      });
      await f.publisher.publish(event);
      root.end();
    });
    assert.equal(event.trace_id, rootTraceId, "the envelope carries the active trace id");
    await rec.untilCompleted([event.id], 10_000);

    const [producer] = await spans(
      (s) => s.kind === SpanKind.PRODUCER && s.name === `send ${subjectOf(event)}`,
    );
    const [consumer] = await spans(consumerSpanOf(spec.durable, event.id));
    assert.equal(producer!.spanContext().traceId, rootTraceId);
    assert.equal(producer!.parentSpanContext?.spanId, rootSpanId, "publish is a child of the request");
    assert.equal(consumer!.spanContext().traceId, rootTraceId, "the handler's span is in the same trace");
    assert.equal(consumer!.parentSpanContext?.spanId, producer!.spanContext().spanId, "child of the publish");
    assert.equal(consumer!.parentSpanContext?.isRemote, true);
    assert.equal(consumer!.attributes["messaging.nats.delivery.count"], 1);
    assert.equal(consumer!.attributes["shopstream.order.id"], orderId);
    assert.equal(inHandler.traceId, rootTraceId, "the trace is active inside the handler");
    assert.equal(inHandler.activeIsCtxSpan, true, "ctx.span is the active span");
    assert.equal(inHandler.envelopeTraceId, rootTraceId);

    const [next] = await spans(
      (s) => s.kind === SpanKind.PRODUCER && s.name === `send ${subjectOf(follow!)}`,
    );
    assert.equal(follow!.trace_id, rootTraceId, "the caused event keeps the trace id");
    assert.equal(next!.spanContext().traceId, rootTraceId);
    assert.equal(
      next!.parentSpanContext?.spanId,
      consumer!.spanContext().spanId,
      "published from the handler",
    );
  });

  void it("without a traceparent header the handler's span joins the envelope's trace_id", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("untraced");
    const rec = new Recorder();
    await f.startRunner(spec, { handlers: rec.handlers() });
    const event = makeEvent("OrderPlaced", orderPlacedData("tool-1"), {
      aggregateId: "tool-1",
      source: "tool",
    });
    const h = natsHeaders();
    h.set(Hdr.Type, event.type);
    await f.js.publish(subjectOf(event), encodeEvent(event), { msgID: event.id, headers: h });
    await rec.untilCompleted([event.id], 10_000);

    const [consumer] = await spans(consumerSpanOf(spec.durable, event.id));
    assert.equal(consumer!.spanContext().traceId, event.trace_id);
  });

  void it("a failed attempt's span records the error; the successful retry's span does not", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("flaky-traced");
    const rec = new Recorder();
    await f.startRunner(spec, {
      handlers: rec.handlers((_e, ctx) => {
        if (ctx.attempt === 1) throw new Error("first attempt fails");
      }),
    });
    const event = makeEvent("OrderPlaced", orderPlacedData("flaky-1"), {
      aggregateId: "flaky-1",
      source: SOURCE,
    });
    await f.publisher.publish(event);
    await rec.untilCompleted([event.id], 10_000);

    const both = await spans(consumerSpanOf(spec.durable, event.id), 2);
    const byAttempt = (n: number) => both.find((s) => s.attributes["messaging.nats.delivery.count"] === n)!;
    assert.equal(byAttempt(1).status.code, SpanStatusCode.ERROR);
    assert.match(byAttempt(1).status.message ?? "", /first attempt fails/);
    assert.ok(byAttempt(1).events.some((e) => e.name === "exception"));
    assert.notEqual(byAttempt(2).status.code, SpanStatusCode.ERROR);
    assert.equal(
      byAttempt(1).spanContext().traceId,
      byAttempt(2).spanContext().traceId,
      "both in the order's trace",
    );
  });
});
