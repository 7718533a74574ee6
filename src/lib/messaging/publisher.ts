import { headers as natsHeaders, errors as natsErrors, type MsgHdrs } from "@nats-io/transport-node";
import {
  JetStreamApiError,
  JetStreamApiCodes,
  JetStreamError,
  PubHeaders,
  type JetStreamClient,
  type PubAck,
} from "@nats-io/jetstream";
import { ExponentialBackoff, handleWhen, retry } from "cockatiel";
import { context, trace } from "@opentelemetry/api";
import { RetryableError } from "../errors.js";
import { KeyedQueue } from "../keyed-queue.js";
import { encodeEvent } from "../events/codec.js";
import { EventVersions } from "../events/versions.js";
import { streamOf, subjectOf, type Envelope } from "../events/envelope.js";
import type { CounterCell, HistogramCell, Metrics } from "../telemetry/metrics.js";
import {
  SpanKind,
  SpanStatusCode,
  contextFromTraceId,
  hasActiveSpan,
  injectTraceHeaders,
  isTracingExported,
  traceparentOf,
  tracer,
} from "../telemetry/tracing.js";
import { Hdr } from "./headers.js";
import { HeaderBlock, PubAcks } from "./pubacks.js";
import { connectionOf } from "./pull.js";

/** Another writer appended to the aggregate first: reload and decide again. Retryable. */
export class ConcurrencyError extends RetryableError {
  override readonly name = "ConcurrencyError";
  constructor(subject: string, expected: number, cause?: unknown) {
    super("CONCURRENCY_CONFLICT", `${subject} is no longer at sequence ${expected}`, { status: 409, cause });
  }
}

/** JetStream did not confirm a publish after every retry. Retryable. */
export class PublishError extends RetryableError {
  override readonly name = "PublishError";
  constructor(subject: string, cause: unknown) {
    super(
      "PUBLISH_FAILED",
      `publish to ${subject} not confirmed: ${(cause as Error)?.message ?? String(cause)}`,
      {
        cause,
      },
    );
  }
}

/** Options for {@link Publisher}. */
export interface PublisherOptions {
  metrics?: Metrics | undefined;
  /** Time to wait for each PubAck (default 5 s). */
  timeoutMs?: number;
  /** Attempts per publish, the first included (default 6), on timeouts and no-responders only. */
  maxAttempts?: number;
  /** First retry delay; doubles per attempt (default 100 ms, capped at 2 s). */
  retryDelayMs?: number;
  /**
   * The schema version each event type is written at (default: the current ones). During a rollout producers
   * keep writing the previous version (`EVENT_VERSIONS`): events are built at the current version and downcast.
   */
  versions?: EventVersions;
}

/** Options of one publish. */
export interface PublishOptions {
  /**
   * Optimistic concurrency: the append succeeds only if the last message on the event's subject has
   * this stream sequence (0 = the subject is empty). Otherwise a {@link ConcurrencyError} is thrown.
   */
  expectLastSubjectSequence?: number;
  /** Extra headers. */
  headers?: MsgHdrs;
}

/**
 * Is `err` NATS or JetStream being briefly unavailable — a timeout, no responders, "JetStream temporarily
 * unavailable" (503) or no stream leader during an election — rather than anything wrong with the request?
 */
export function isTransientNatsError(err: unknown): boolean {
  if (err instanceof natsErrors.TimeoutError || err instanceof natsErrors.NoRespondersError) return true;
  if (err instanceof natsErrors.RequestError)
    return err.isNoResponders() || err.cause instanceof natsErrors.TimeoutError;
  if (err instanceof natsErrors.ClosedConnectionError) return false;
  // JetStream temporarily unavailable (e.g. a stream leader election): 503 from the API, or the
  // client's "jetstream is not enabled" while a stream has no leader.
  if (err instanceof JetStreamApiError) return err.status === 503;
  return (
    (err instanceof JetStreamError && err.name === "JetStreamNotEnabled") ||
    (err as Error)?.name === "JetStreamNotEnabled"
  );
}

/**
 * Publishes events to JetStream and waits for their PubAck.
 *
 * Contract: `Nats-Msg-Id` is the event id, so a publish retried after a timeout or no-responders
 * (retried here with the same id and backoff), or redone after a crash, is stored once within the
 * stream's duplicate window. The event is validated against its schema before it leaves, at the version
 * {@link PublisherOptions.versions} writes for its type (downcast when that is older than the current one). Its W3C trace context
 * travels in the message headers: with spans exported, a span (kind PRODUCER) wraps each publish; without, the
 * `traceparent` names the event's trace directly (no span is made).
 *
 * PubAcks are tracked on one inbox subscription per publisher ({@link PubAcks}) rather than one request each.
 */
export class Publisher {
  readonly #js: JetStreamClient;
  readonly #acks: PubAcks | undefined;
  readonly #conditional = new KeyedQueue();
  readonly #opts: Required<Omit<PublisherOptions, "metrics">> & { metrics?: Metrics | undefined };
  readonly #versions: EventVersions;
  /** One retry policy per stream label, made once (not per publish: that was measurable garbage). */
  readonly #policies = new Map<string, ReturnType<typeof retry>>();
  /** The metric cells of each event type (published count, and its stream's publish duration). */
  readonly #cells = new Map<string, { published: CounterCell; duration: HistogramCell }>();

  constructor(js: JetStreamClient, opts: PublisherOptions = {}) {
    this.#js = js;
    const nc = connectionOf(js);
    this.#acks = nc && PubAcks.supported ? new PubAcks(nc) : undefined;
    this.#opts = {
      metrics: opts.metrics,
      timeoutMs: opts.timeoutMs ?? 5_000,
      maxAttempts: opts.maxAttempts ?? 6,
      retryDelayMs: opts.retryDelayMs ?? 100,
      versions: opts.versions ?? EventVersions.CURRENT,
    };
    this.#versions = this.#opts.versions;
  }

  /**
   * Publishes one event on its subject ({@link subjectOf}).
   * @returns the PubAck (`duplicate` is true when the server already had this event id).
   * @throws ConcurrencyError when `expectLastSubjectSequence` does not hold.
   * @throws PublishError when JetStream did not confirm after every retry.
   * @throws EventDecodeError when the event does not match its schema (a bug in the caller).
   */
  async publish(event: Envelope, opts: PublishOptions = {}): Promise<PubAck> {
    const subject = subjectOf(event);
    const data = encodeEvent(event, this.#versions);
    const stream = streamOf(event.type);
    const cells = this.#cellsOf(event.type, stream);
    const started = performance.now();
    if (!isTracingExported()) {
      const traceparent = traceparentOf(event.trace_id);
      try {
        const ack = await this.#send(subject, data, {
          msgID: event.id,
          headers: opts.headers,
          expectLastSubjectSequence: opts.expectLastSubjectSequence,
          stream,
          type: event.type,
          traceparent,
        });
        if (cells) cells.published.value++;
        return ack;
      } finally {
        cells?.duration.observe((performance.now() - started) / 1000);
      }
    }
    // The active span (a handler's, a request's) is the parent; when there is none (a publish outside any span),
    // the event's own trace is, so the message always carries its order's trace.
    const active = context.active();
    const parent = hasActiveSpan(active) ? active : contextFromTraceId(event.trace_id);
    const span = tracer().startSpan(
      `send ${subject}`,
      {
        kind: SpanKind.PRODUCER,
        attributes: {
          "messaging.system": "nats",
          "messaging.operation.type": "send",
          "messaging.operation.name": "publish",
          "messaging.destination.name": subject,
          "messaging.message.id": event.id,
          "shopstream.event.type": event.type,
          "shopstream.order.id": event.aggregate_id,
        },
      },
      parent,
    );
    const h = opts.headers ?? natsHeaders();
    injectTraceHeaders(trace.setSpan(parent, span), h);
    try {
      const ack = await this.#send(subject, data, {
        msgID: event.id,
        headers: h,
        expectLastSubjectSequence: opts.expectLastSubjectSequence,
        stream,
        type: event.type,
      });
      span.setAttribute("messaging.nats.stream.sequence", ack.seq);
      if (ack.duplicate) span.setAttribute("shopstream.duplicate", true);
      if (cells) cells.published.value++;
      return ack;
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      cells?.duration.observe((performance.now() - started) / 1000);
      span.end();
    }
  }

  /**
   * Publishes raw bytes with a message id, retrying transient failures with the same id. Used for
   * events (through {@link publish}) and for DLQ copies and redrives.
   */
  publishRaw(
    subject: string,
    data: Uint8Array,
    o: { msgID: string; headers?: MsgHdrs; expectLastSubjectSequence?: number | undefined; stream?: string },
  ): Promise<PubAck> {
    return this.#send(subject, data, o);
  }

  #send(subject: string, data: Uint8Array, o: Send): Promise<PubAck> {
    const policy = this.#policy(o.stream ?? "");
    // Conditional appends to one subject go one at a time (see KeyedQueue: on clustered nats-server before
    // 2.9.21 two concurrent ones could both be accepted, forking an aggregate).
    const sent =
      o.expectLastSubjectSequence !== undefined
        ? this.#conditional.run(subject, () => policy.execute(() => this.#attempt(subject, data, o)))
        : policy.execute(() => this.#attempt(subject, data, o));
    return sent.catch((err: unknown) => {
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence) {
        throw new ConcurrencyError(subject, o.expectLastSubjectSequence ?? -1, err);
      }
      throw new PublishError(subject, err);
    });
  }

  /** One attempt: on the publisher's own PubAck tracking when nats.js allows it, else `js.publish`. */
  #attempt(subject: string, data: Uint8Array, o: Send): Promise<PubAck> {
    const acks = this.#acks;
    if (acks && !o.headers && safeHeaderValue(o.msgID) && (!o.type || safeHeaderValue(o.type))) {
      // The header block written out at once (MsgHdrs checks and copies each key and value).
      let text = `NATS/1.0\r\n${PubHeaders.MsgIdHdr}: ${o.msgID}\r\n`;
      if (o.type) text += `${Hdr.Type}: ${o.type}\r\n`;
      if (o.traceparent) text += `${Hdr.TraceParent}: ${o.traceparent}\r\n`;
      if (o.expectLastSubjectSequence !== undefined)
        text += `${PubHeaders.ExpectedLastSubjectSequenceHdr}: ${o.expectLastSubjectSequence}\r\n`;
      return acks.publish(subject, data, new HeaderBlock(`${text}\r\n`), this.#opts.timeoutMs);
    }
    const h = o.headers ?? (o.type || o.traceparent ? natsHeaders() : undefined);
    if (h && o.type) h.set(Hdr.Type, o.type);
    if (h && o.traceparent) h.set(Hdr.TraceParent, o.traceparent);
    if (acks) {
      h!.set(PubHeaders.MsgIdHdr, o.msgID);
      if (o.expectLastSubjectSequence !== undefined)
        h!.set(PubHeaders.ExpectedLastSubjectSequenceHdr, String(o.expectLastSubjectSequence));
      return acks.publish(subject, data, h!, this.#opts.timeoutMs);
    }
    return this.#js.publish(subject, data, {
      msgID: o.msgID,
      timeout: this.#opts.timeoutMs,
      ...(h ? { headers: h } : {}),
      ...(o.expectLastSubjectSequence !== undefined
        ? { expect: { lastSubjectSequence: o.expectLastSubjectSequence } }
        : {}),
    });
  }

  #policy(key: string): ReturnType<typeof retry> {
    let policy = this.#policies.get(key);
    if (!policy) {
      policy = retry(handleWhen(isTransientNatsError), {
        maxAttempts: this.#opts.maxAttempts - 1,
        backoff: new ExponentialBackoff({ initialDelay: this.#opts.retryDelayMs, maxDelay: 2_000 }),
      });
      if (this.#opts.metrics && key) {
        const stream = key;
        policy.onRetry(() => this.#opts.metrics?.publishRetries.inc({ stream }));
      }
      this.#policies.set(key, policy);
    }
    return policy;
  }

  #cellsOf(type: string, stream: string): { published: CounterCell; duration: HistogramCell } | undefined {
    const metrics = this.#opts.metrics;
    if (!metrics) return undefined;
    let cells = this.#cells.get(type);
    if (!cells) {
      cells = {
        published: metrics.published.cell({ stream, type }),
        duration: metrics.publishDuration.cell({ stream }),
      };
      this.#cells.set(type, cells);
    }
    return cells;
  }
}

/** What one send carries besides subject and body. */
interface Send {
  msgID: string;
  headers?: MsgHdrs | undefined;
  expectLastSubjectSequence?: number | undefined;
  stream?: string | undefined;
  /** The event type, for the `Shopstream-Type` header (events only). */
  type?: string | undefined;
  /** The `traceparent` to write (events published without an exported span). */
  traceparent?: string | undefined;
}

/** A header value that cannot break the header block (nats.js refuses CR and LF in values too). */
function safeHeaderValue(v: string): boolean {
  return !/[\r\n]/.test(v);
}
