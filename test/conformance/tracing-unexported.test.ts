/**
 * Messaging conformance, tracing with nothing exported (no OTLP endpoint: the default): spans are not
 * recorded and no context manager is installed (its AsyncLocalStorage would tax every promise), yet every
 * message still carries its order's trace: the publisher parents its span on the event's trace_id, so the
 * `traceparent` of an event, and of the events its handler publishes, names the order's trace. Runs in its
 * own process, since the tracer provider is process-wide.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type { MsgHdrs } from "@nats-io/transport-node";
import { makeEvent, subjectOf, type AnyEnvelope } from "../../src/lib/events/mod.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { context, hasActiveSpan, initTracing, trace, tracer } from "../../src/lib/telemetry/tracing.js";
import { Recorder, SOURCE, orderPlacedData, paymentCaptured, startMessaging } from "../helpers/messaging.js";

const tracing = initTracing({ service: "conformance-unexported" });
after(() => tracing.shutdown());

/** The trace id of a `traceparent` header value. */
function traceIdOf(h: MsgHdrs | undefined): string | undefined {
  return h?.get(Hdr.TraceParent)?.split("-")[1];
}

void describe("messaging conformance: tracing with nothing exported", () => {
  void it("records no span and installs no context manager", () => {
    const span = tracer().startSpan("not recorded");
    assert.equal(span.isRecording(), false);
    assert.match(span.spanContext().traceId, /^[0-9a-f]{32}$/, "ids are still made");
    // With a context manager, the span would be active inside `with`.
    const seen = context.with(trace.setSpan(context.active(), span), () => hasActiveSpan());
    assert.equal(seen, false);
    span.end();
  });

  void it("every message carries its order's trace, across a handler's publish", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("unexported");
    const rec = new Recorder();
    let follow: AnyEnvelope | undefined;
    await f.startRunner(spec, {
      handlers: rec.handlers(async (event) => {
        if (event.type !== "OrderPlaced") return;
        follow = makeEvent("PaymentCaptured", paymentCaptured(event.aggregate_id).data, {
          aggregateId: event.aggregate_id,
          source: SOURCE,
          cause: event,
        });
        await f.publisher.publish(follow);
      }),
    });
    const event = makeEvent("OrderPlaced", orderPlacedData("unexported-1"), {
      aggregateId: "unexported-1",
      source: SOURCE,
    });
    await f.publisher.publish(event);
    await rec.untilCompleted([event.id], 10_000);
    assert.ok(follow, "the handler published");
    const stored = await f.jsm.streams.getMessage(spec.stream, { last_by_subj: subjectOf(event) });
    assert.equal(traceIdOf(stored?.header), event.trace_id, "the placed event's traceparent");
    const next = await f.jsm.streams.getMessage("PAYMENTS", { last_by_subj: subjectOf(follow) });
    assert.equal(follow.trace_id, event.trace_id);
    assert.equal(traceIdOf(next?.header), event.trace_id, "the caused event's traceparent");
  });
});
