import type { Consumer, JetStreamClient, JsMsg } from "@nats-io/jetstream";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { context, trace, type Span } from "@opentelemetry/api";
import {
  NonRetryableError,
  RetryableError,
  ShopStreamError,
  describeError,
  isNonRetryable,
} from "../errors.js";
import { catalog, isEventType, type EventType } from "../events/catalog.js";
import { decodeEvent } from "../events/codec.js";
import type { AnyEnvelope, Envelope } from "../events/envelope.js";
import type { Logger } from "../telemetry/logger.js";
import type { HandlerOutcome, Metrics } from "../telemetry/metrics.js";
import {
  SpanKind,
  SpanStatusCode,
  contextFromTraceId,
  extractTraceContext,
  tracer,
} from "../telemetry/tracing.js";
import { backoffDelay, defaultBackoff, type BackoffOptions } from "./backoff.js";
import { DeadLetterCode, deadLetter } from "./dlq.js";
import { Hdr } from "./headers.js";
import { isTransientNatsError, type Publisher } from "./publisher.js";
import type { ConsumerSpec } from "./topology.js";

/**
 * Thrown by a handler to say "not now, and it is not this message's fault" (e.g. a circuit breaker is
 * open). The runner keeps the message (sending `working()` so it is not redelivered), runs it again
 * after `retryAfterMs` once the runner is not paused, and does not count it as a failed attempt.
 */
export class DeferError extends RetryableError {
  override readonly name = "DeferError";
  readonly retryAfterMs: number;
  constructor(message: string, retryAfterMs = 500, cause?: unknown) {
    super("DEFERRED", message, { cause });
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Thrown by a handler to have the message delivered again after `delayMs` — a durable timer (e.g. an
 * order's timeout). Nak'd with that delay; not a failure, never dead-lettered for it, but each
 * redelivery does count in the server's delivery count, so give such consumers a high `maxAttempts` and
 * `maxDeliveries` (orders' `orders-timeouts`: 50 and 1000).
 */
export class RedeliverLaterError extends RetryableError {
  override readonly name = "RedeliverLaterError";
  readonly delayMs: number;
  constructor(delayMs: number, message = "not due yet") {
    super("REDELIVER_LATER", message);
    this.delayMs = Math.max(0, Math.round(delayMs));
  }
}

/**
 * The runner gave up waiting for a handler call: it had not settled after the consumer's handler timeout. A
 * failed attempt (nak with backoff; dead-lettered as `HANDLER_TIMEOUT` on the last one). Made by the runner,
 * never thrown by handlers.
 */
export class HandlerTimeoutError extends RetryableError {
  override readonly name = "HandlerTimeoutError";
  constructor(elapsedMs: number, timeoutMs: number) {
    super(
      DeadLetterCode.HandlerTimeout,
      `handler did not settle within ${timeoutMs} ms (abandoned after ${elapsedMs} ms; its outcome is ignored)`,
    );
  }
}

/** The server has delivered a message more often than the consumer's `maxDeliveries`. Made by the runner. */
export class MaxDeliveriesError extends NonRetryableError {
  override readonly name = "MaxDeliveriesError";
  constructor(deliveries: number, maxDeliveries: number) {
    super(
      DeadLetterCode.MaxDeliveries,
      `delivered ${deliveries} times, more than maxDeliveries ${maxDeliveries}: earlier deliveries ended without ` +
        `an outcome (the process died or hung while handling it); the handler was not run again`,
    );
  }
}

/** Handler timeout of a consumer that declares none (120 s): see {@link ConsumerRunnerOptions.handlerTimeoutMs}. */
export const DEFAULT_HANDLER_TIMEOUT_MS = 120_000;

/** What a handler gets besides the event. */
export interface HandlerContext {
  /** Delivery attempt, 1 on first delivery. */
  attempt: number;
  subject: string;
  streamSequence: number;
  /** Logger with `trace_id`, `order_id`, `event_id` and `event_type` bound. */
  logger: Logger;
  /** The handler's span (kind CONSUMER); child spans and publishes join the order's trace. */
  span: Span;
  /** Tells the server the handler is still working: resets the ack wait. Sent automatically too. */
  working(): void;
}

/** Business logic for one event type. Throws to fail; the runner decides retry, DLQ or park. */
export type EventHandler<T extends EventType> = (event: Envelope<T>, ctx: HandlerContext) => Promise<void>;

/** Handlers by event type. Known types without a handler are acknowledged and skipped. */
export type HandlerMap = { [T in EventType]?: EventHandler<T> };

/** A message as a raw handler sees it: bytes and headers, not decoded. */
export interface RawMessage {
  subject: string;
  stream: string;
  streamSequence: number;
  data: Uint8Array;
  headers: JsMsg["headers"];
  /** Publish time at the server. */
  timestamp: Date;
}

/**
 * A handler that takes every message undecoded (audit of the DLQ, tools). It replaces `handlers`;
 * errors follow the same ack/nak/DLQ rules.
 */
export type RawHandler = (
  msg: RawMessage,
  ctx: Omit<HandlerContext, "span"> & { span: Span },
) => Promise<void>;

/** Options for {@link ConsumerRunner}. */
export interface ConsumerRunnerOptions {
  js: JetStreamClient;
  spec: ConsumerSpec;
  handlers: HandlerMap;
  /** When set, messages are not decoded and go to this handler instead of `handlers`. */
  raw?: RawHandler | undefined;
  publisher: Publisher;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** Messages handled at once by this process (default 16); keep below the consumer's max_ack_pending. */
  concurrency?: number;
  /**
   * Failed attempts before a message goes to the DLQ (default 5). Attempts are the server's delivery count: a
   * failure on delivery `maxAttempts` or later is dead-lettered with the handler's error code.
   */
  maxAttempts?: number;
  /**
   * Deliveries, as counted by the server (`deliveryCount`, so it survives crashes and restarts), after which a
   * message is dead-lettered with code `MAX_DELIVERIES` **without running the handler again**: poison that kills
   * the process (or freezes it past the ack wait) never reports a failure, so `maxAttempts` alone would let it
   * come back forever. Overrides the spec's `maxDeliveries`; default 2 × `maxAttempts` — one half for the
   * failed attempts, the other for deliveries lost for reasons that are not the message's (another message
   * crashed the process, graceful-stop hand-backs, a NATS outage longer than the ack wait). Every redelivery
   * counts, `RedeliverLaterError` ones too: timer consumers need a high value (`Infinity`: never). Parked
   * (`DeferError`, paused) and kept-in-place messages are kept alive with `working()` and are not redelivered,
   * so they use none.
   */
  maxDeliveries?: number;
  /**
   * Longest one handler call may run (default {@link DEFAULT_HANDLER_TIMEOUT_MS}, 120 s: far above the slowest
   * legitimate handler — a payment with three 2 s gateway attempts, or a publish retried through a NATS
   * election, ≈ 40 s; `Infinity`: never). A call still running then is abandoned: its message is nak'd with
   * backoff as a failed attempt (or dead-lettered as `HANDLER_TIMEOUT` on the last attempt) and its
   * concurrency slot is freed; the hung promise is left behind and its eventual outcome ignored. Time spent
   * parked or waiting to retry in place does not count. Overrides the spec's `handlerTimeoutMs`.
   */
  handlerTimeoutMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** Longest a pull request waits for messages (default and minimum 1 s). Bounds stop latency. */
  fetchExpiresMs?: number;
  /** Interval of automatic `working()` while a handler runs or a message is parked (default ack wait / 3). */
  heartbeatMs?: number;
  /**
   * Called after a pull found the durable consumer missing on the server (deleted underneath the runner, which
   * then reports itself not ready until a pull succeeds again): the service provisions it again from its spec.
   */
  onConsumerMissing?: (() => void) | undefined;
}

/**
 * A message between the start of its handling and its outcome (handler running, parked, or waiting to run again
 * in place). One runner-wide ticker walks these for heartbeats and handler timeouts: no timer per message.
 */
interface Flight {
  readonly m: JsMsg;
  /** `performance.now()` of the last `working()` (of the start, before the first). */
  beat: number;
  /** `performance.now()` when the current handler call began. */
  since: number;
  /** Rejects the current handler call with a timeout; set only while a call runs. */
  abandon: ((err: Error) => void) | undefined;
  /** The runner is done with the message: a late `ctx.working()` of an abandoned handler is not sent. */
  done: boolean;
}

type State = "idle" | "running" | "stopping" | "stopped";

/**
 * Runs handlers on a durable pull consumer with bounded concurrency and backpressure.
 *
 * Contract, per message:
 * - **ack** after the handler resolves (or at once when the type is known but not handled here);
 * - **nak with delay** (exponential backoff with jitter) when it throws a retryable error, or any error
 *   that is not a {@link ShopStreamError}, before `maxAttempts`;
 * - **DLQ, then term** when it throws a non-retryable error (schema-invalid, unknown type: at once) or
 *   fails its last attempt; if the DLQ copy cannot be stored, nak with delay instead — never a drop;
 * - **park** on a {@link DeferError}, or any retryable error while paused: kept with `working()`, run
 *   again after resume, no attempt used;
 * - **keep and retry in place** when NATS itself was briefly unavailable to the handler (a timeout, no
 *   responders, no stream leader during an election): kept with `working()`, run again with backoff until
 *   NATS answers, no attempt used — an election must not dead-letter business events;
 * - **abandon** a handler call that has not settled after `handlerTimeoutMs`: a failed attempt like a thrown
 *   retryable error (nak with backoff, DLQ `HANDLER_TIMEOUT` on the last attempt), its slot freed at once, the
 *   hung promise left behind and its outcome ignored;
 * - **DLQ without running the handler** (`MAX_DELIVERIES`) when the server's delivery count exceeds
 *   `maxDeliveries`: earlier deliveries ended without an outcome, e.g. the handler crashed the process.
 *
 * Backpressure: the runner pulls only as many messages as it has free slots, so nothing is buffered
 * beyond `concurrency`. `pause()` stops pulling; `stop()` stops pulling, hands back (nak) messages not
 * started, and waits for in-flight handlers up to a timeout.
 */
export class ConsumerRunner {
  readonly name: string;
  readonly #o: Required<
    Omit<ConsumerRunnerOptions, "metrics" | "backoff" | "heartbeatMs" | "raw" | "onConsumerMissing">
  > & {
    metrics?: Metrics | undefined;
    onConsumerMissing?: (() => void) | undefined;
    raw?: RawHandler | undefined;
    backoff: BackoffOptions;
    heartbeatMs: number;
  };
  /** Period of the ticker: the heartbeat interval, finer when the handler timeout needs it. */
  readonly #tickMs: number;
  #ticker: NodeJS.Timeout | undefined;
  /** Messages being handled, parked or kept in place: what the ticker beats and times. */
  readonly #flights = new Set<Flight>();
  #state: State = "idle";
  #paused = false;
  #bound = false;
  /** Why the last pull failed, while not bound (for {@link notReadyReason}). */
  #unbound: string | undefined;
  #inFlight = 0;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #idle: (() => void) | undefined;
  #consumer: Consumer | undefined;
  #currentFetch: { close(): Promise<void | Error> } | undefined;
  /** The one stop in progress or done: concurrent and repeated stop() calls share it. */
  #stopping: Promise<{ abandoned: number }> | undefined;
  /** Wakes handlers waiting out a DeferError when stop() begins, so their messages are handed back. */
  readonly #onStop = new Set<() => void>();
  /** Messages handed back while our last fetch may still be open; nak'd when the pull loop has ended. */
  readonly #heldBack: JsMsg[] = [];
  #loopEnded = false;

  constructor(opts: ConsumerRunnerOptions) {
    this.name = opts.spec.durable;
    const ackWait = opts.spec.ackWaitMs ?? 30_000;
    const maxAttempts = Math.max(1, opts.maxAttempts ?? 5);
    this.#o = {
      ...opts,
      concurrency: Math.max(1, opts.concurrency ?? 16),
      maxAttempts,
      maxDeliveries: Math.max(1, opts.maxDeliveries ?? opts.spec.maxDeliveries ?? 2 * maxAttempts),
      handlerTimeoutMs: Math.max(
        1,
        opts.handlerTimeoutMs ?? opts.spec.handlerTimeoutMs ?? DEFAULT_HANDLER_TIMEOUT_MS,
      ),
      backoff: { ...defaultBackoff, ...opts.backoff },
      fetchExpiresMs: Math.max(1_000, opts.fetchExpiresMs ?? 1_000),
      heartbeatMs: opts.heartbeatMs ?? Math.max(100, Math.floor(ackWait / 3)),
    };
    // A timeout is noticed at most a quarter of it late; setInterval takes at most 2^31-1 ms.
    this.#tickMs = Math.max(10, Math.min(this.#o.heartbeatMs, this.#o.handlerTimeoutMs / 4, 2 ** 31 - 1));
  }

  /** True while running, bound to its consumer and not stopping (feeds `/ready`). */
  get ready(): boolean {
    return this.#state === "running" && this.#bound;
  }
  /** Why the runner is not {@link ready}, naming its consumer; undefined when it is ready. */
  get notReadyReason(): string | undefined {
    if (this.ready) return undefined;
    const what = `consumer ${this.#o.spec.stream}/${this.name}`;
    if (this.#state === "idle") return `${what}: not started`;
    if (this.#state !== "running") return `${what}: stopping`;
    return `${what}: ${this.#unbound ?? "not bound"}`;
  }
  get paused(): boolean {
    return this.#paused;
  }
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Starts pulling. Resolves once the consumer was found on the server. */
  async start(): Promise<void> {
    if (this.#state !== "idle") throw new Error(`runner ${this.name} already started`);
    this.#consumer = await this.#o.js.consumers.get(this.#o.spec.stream, this.#o.spec.durable);
    this.#bound = true;
    this.#state = "running";
    this.#ticker = setInterval(() => this.#tick(), this.#tickMs);
    this.#ticker.unref();
    this.#loop = this.#pullLoop();
  }

  /** Stops pulling new messages (in-flight ones finish). Used by circuit breakers; attempts are not used up. */
  pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    this.#o.metrics?.consumerPaused.set({ consumer: this.name }, 1);
    this.#o.logger.warn({ consumer: this.name }, "consumer paused");
  }

  /** Resumes pulling and runs parked messages again. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#o.metrics?.consumerPaused.set({ consumer: this.name }, 0);
    this.#o.logger.info({ consumer: this.name }, "consumer resumed");
    this.#kick();
  }

  /**
   * Graceful stop: stop pulling, hand back (nak, redelivered after one pull expiry) messages not yet started or
   * parked, and wait for in-flight handlers to finish and ack, at most `timeoutMs`.
   * Concurrent and repeated calls share the one stop and its result.
   * @returns how many handlers were still running when the timeout hit (no more heartbeats for them: their
   * messages are redelivered after the ack wait).
   */
  stop(timeoutMs = 10_000): Promise<{ abandoned: number }> {
    return (this.#stopping ??= this.#stop(timeoutMs));
  }

  async #stop(timeoutMs: number): Promise<{ abandoned: number }> {
    if (this.#state === "idle") {
      this.#state = "stopped";
      return { abandoned: 0 };
    }
    if (this.#state === "stopped") return { abandoned: 0 };
    this.#state = "stopping";
    this.#kick();
    for (const wake of [...this.#onStop]) wake();
    const deadline = Date.now() + timeoutMs;
    const idle = new Promise<void>((resolve) => {
      if (this.#inFlight === 0) resolve();
      else this.#idle = resolve;
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>(
      (resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))),
    );
    await Promise.race([Promise.all([idle, this.#loop]), timeout]);
    clearTimeout(timer);
    const abandoned = this.#inFlight;
    if (abandoned > 0)
      this.#o.logger.warn({ consumer: this.name, abandoned }, "drain timeout: handlers still running");
    await this.#currentFetch?.close().catch(() => undefined);
    this.#state = "stopped";
    clearInterval(this.#ticker);
    return { abandoned };
  }

  /**
   * The runner's one periodic task: abandons handler calls past the handler timeout, and sends `working()` for
   * every message held longer than the heartbeat interval minus one tick (so at least once per interval).
   */
  #tick(): void {
    const now = performance.now();
    const { heartbeatMs, handlerTimeoutMs } = this.#o;
    const beatAfter = heartbeatMs - this.#tickMs;
    for (const f of this.#flights) {
      if (f.abandon && now - f.since >= handlerTimeoutMs) {
        const abandon = f.abandon;
        f.abandon = undefined;
        abandon(new HandlerTimeoutError(Math.round(now - f.since), handlerTimeoutMs));
      }
      if (now - f.beat >= beatAfter) {
        f.beat = now;
        try {
          f.m.working();
        } catch {
          // Connection closed: the server redelivers the message after the ack wait.
        }
      }
    }
  }

  #kick(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  async #pullLoop(): Promise<void> {
    const { concurrency, fetchExpiresMs } = this.#o;
    // Pull when at least this many slots are free, so a saturated runner does not pull one at a time.
    const threshold = Math.max(1, Math.floor(concurrency / 4));
    let failures = 0;
    while (this.#state === "running") {
      const free = concurrency - this.#inFlight;
      if (this.#paused || free < Math.min(threshold, concurrency)) {
        await this.#sleep(this.#paused ? 60_000 : 1_000);
        continue;
      }
      try {
        const batch = await this.#consumer!.fetch({ max_messages: free, expires: fetchExpiresMs });
        this.#currentFetch = batch;
        for await (const m of batch) {
          if (this.#state !== "running") {
            this.#handBack(m);
            continue;
          }
          this.#inFlight++;
          this.#o.metrics?.inFlight.set({ consumer: this.name }, this.#inFlight);
          void this.#process(m).finally(() => this.#settled());
        }
        this.#currentFetch = undefined;
        this.#bound = true;
        failures = 0;
      } catch (err) {
        this.#currentFetch = undefined;
        failures++;
        this.#bound = false;
        const missing = await this.#consumerMissing(err);
        this.#unbound = missing ? "not found on the server" : `pull failed (${describeError(err)})`;
        this.#o.logger.warn(
          { consumer: this.name, err: describeError(err) },
          missing ? "consumer not found on the server; retrying" : "fetch failed; retrying",
        );
        if (missing && this.#state === "running") this.#o.onConsumerMissing?.();
        if (this.#state === "running") await this.#sleep(Math.min(5_000, 100 * 2 ** Math.min(failures, 6)));
      }
    }
    // No fetch of ours is open any more: hand back what stop() held.
    this.#loopEnded = true;
    for (const m of this.#heldBack.splice(0)) {
      try {
        m.nak(this.#handBackDelayMs());
      } catch {
        // Connection closed: the server redelivers it after the ack wait.
      }
    }
  }

  /**
   * After a failed pull: is the durable consumer gone from the server? A pull open when it is deleted fails with
   * 409 "consumer deleted"; a pull on a missing one gets no answer from nats-server 2.9 (it fails on missed
   * heartbeats), so the consumer's info is asked.
   */
  async #consumerMissing(err: unknown): Promise<boolean> {
    if (err instanceof Error && err.message === "consumer deleted") return true;
    return this.#consumer!.info().then(
      () => false,
      (e: unknown) => e instanceof JetStreamApiError && e.code === JetStreamApiCodes.ConsumerNotFound,
    );
  }

  #settled(): void {
    this.#inFlight--;
    this.#o.metrics?.inFlight.set({ consumer: this.name }, this.#inFlight);
    if (this.#inFlight === 0 && this.#idle) {
      const r = this.#idle;
      this.#idle = undefined;
      r();
    }
    // A slot freed: the pull loop may be waiting for room.
    if (this.#state === "running" && !this.#paused) this.#kick();
  }

  /**
   * Handed-back messages are redelivered after one pull expiry (plus a margin): other runners of this consumer
   * stopping at the same time (a process shutting down several, or a rolling restart) have then closed their
   * last pull, so the message goes to a running replica instead of bouncing between stopping ones, each bounce
   * a delivery attempt (seen under load in the conformance scenario "concurrent close").
   */
  #handBackDelayMs(): number {
    return this.#o.fetchExpiresMs + 100;
  }

  #handBack(m: JsMsg): void {
    if (this.#loopEnded) {
      m.nak(this.#handBackDelayMs());
    } else {
      // Our fetch may still be open: nak'd now, the message would come straight back to it, again and again,
      // each time using up a delivery attempt. Keep it (alive) until the pull loop has ended.
      m.working();
      this.#heldBack.push(m);
    }
    this.#count(m.headers?.get(Hdr.Type) || "unknown", "handed_back", 0);
  }

  #count(type: string, outcome: HandlerOutcome, startedAt: number): void {
    const labels = { consumer: this.name, type: isEventType(type) ? type : "unknown", outcome };
    this.#o.metrics?.handled.inc(labels);
    if (startedAt > 0)
      this.#o.metrics?.handleDuration.observe(labels, (performance.now() - startedAt) / 1000);
  }

  async #process(m: JsMsg): Promise<void> {
    const started = performance.now();
    const attempt = m.info.deliveryCount;
    const hinted = m.headers?.get(Hdr.Type) ?? "";
    // Known type this consumer does not handle: ack without decoding.
    if (!this.#o.raw && hinted && isEventType(hinted) && !this.#o.handlers[hinted]) {
      m.ack();
      this.#count(hinted, "skipped", started);
      return;
    }
    // Delivered too often without an outcome (the server's count: a process that died or hung on it counted
    // too): dead-lettered before anything — decoding included — runs on it again.
    if (attempt > this.#o.maxDeliveries) {
      const error = new MaxDeliveriesError(attempt, this.#o.maxDeliveries);
      await this.#deadLetter(m, error, attempt, hinted || "unknown", started);
      return;
    }
    if (this.#o.raw) {
      await this.#processRaw(m, this.#o.raw, started);
      return;
    }
    let event: AnyEnvelope;
    try {
      event = decodeEvent(m.data);
    } catch (err) {
      await this.#deadLetter(m, err, attempt, hinted, started);
      return;
    }
    const handler = this.#o.handlers[event.type] as EventHandler<EventType> | undefined;
    if (!handler) {
      m.ack();
      this.#count(event.type, "skipped", started);
      return;
    }
    const parent = m.headers?.get(Hdr.TraceParent)
      ? extractTraceContext(m.headers)
      : contextFromTraceId(event.trace_id);
    const span = tracer().startSpan(
      `process ${this.name}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          "messaging.system": "nats",
          "messaging.operation.type": "process",
          "messaging.destination.name": m.subject,
          "messaging.consumer.group.name": this.name,
          "messaging.message.id": event.id,
          "messaging.nats.stream.sequence": m.seq,
          "messaging.nats.delivery.count": attempt,
          "shopstream.event.type": event.type,
          "shopstream.order.id": event.aggregate_id,
        },
      },
      parent,
    );
    // The child logger is made on first use: most handled messages log nothing (pino serialises a child's
    // bindings when it is created).
    let child: Logger | undefined;
    const logger = () =>
      (child ??= this.#o.logger.child({
        trace_id: event.trace_id,
        order_id: event.aggregate_id,
        event_id: event.id,
        event_type: event.type,
        consumer: this.name,
      }));
    const f = flight(m, started);
    const ctx = handlerContext(f, attempt, logger, span);
    await this.#run(f, event.type, attempt, logger, span, started, () =>
      context.with(trace.setSpan(parent, span), () => handler(event, ctx)),
    );
  }

  /**
   * Runs a handler under the runner's policy — ack on success; nak with backoff, DLQ, park or delayed
   * redelivery on failure; abandon past the handler timeout (see the class contract) — with `working()`
   * heartbeats from the runner's ticker while it runs, is parked or is kept in place.
   */
  async #run(
    f: Flight,
    type: string,
    attempt: number,
    logger: () => Logger,
    span: Span,
    started: number,
    invoke: () => Promise<void>,
  ): Promise<void> {
    const m = f.m;
    this.#flights.add(f);
    let parked = 0;
    try {
      for (;;) {
        if (this.#paused) await this.#parked(m);
        if (this.#state !== "running") {
          this.#handBack(m);
          return;
        }
        try {
          await this.#call(f, invoke);
          f.abandon = undefined;
          m.ack();
          this.#count(type, "ack", started);
          return;
        } catch (err) {
          f.abandon = undefined;
          if (err instanceof RedeliverLaterError) {
            m.nak(err.delayMs);
            this.#count(type, "delayed", started);
            return;
          }
          // Abandoned: a failed attempt, never parked or retried here (the hung call may still be running).
          const timedOut = err instanceof HandlerTimeoutError;
          const deferred = !timedOut && err instanceof DeferError;
          // NATS itself briefly unavailable (a stream or KV bucket without a leader during an election, a
          // timeout, no responders): nothing is wrong with the message, so it uses up no attempt; it is kept
          // and run again here, with backoff, until NATS answers (or the runner stops and hands it back).
          if (!timedOut && !deferred && !isNonRetryable(err) && isNatsUnavailable(err)) {
            parked++;
            if (parked === 1 || parked % 10 === 0)
              logger().warn(
                { err: describeError(err), parked },
                "NATS unavailable; message kept, retried in place",
              );
            await this.#delayUnlessStopping(Math.min(5_000, backoffDelay(parked, this.#o.backoff)));
            continue;
          }
          if (deferred || (!timedOut && this.#paused && !isNonRetryable(err))) {
            logger().debug({ err: describeError(err) }, "handler deferred; parking message");
            if (deferred) await this.#delayUnlessStopping(err.retryAfterMs);
            continue;
          }
          span.recordException(err as Error);
          span.setStatus({ code: SpanStatusCode.ERROR, message: describeError(err) });
          if (isNonRetryable(err) || attempt >= this.#o.maxAttempts) {
            await this.#deadLetter(m, err, attempt, type, started);
            return;
          }
          const delay = backoffDelay(attempt, this.#o.backoff);
          logger().warn(
            { err: describeError(err), attempt, retry_in_ms: delay },
            timedOut ? "handler timed out; abandoned, will retry" : "handler failed; will retry",
          );
          m.nak(delay);
          this.#count(type, "retry", started);
          return;
        }
      }
    } finally {
      f.done = true;
      this.#flights.delete(f);
      span.end();
    }
  }

  /**
   * One handler call, which the ticker can abandon: the returned promise rejects with a
   * {@link HandlerTimeoutError} once the call has run `handlerTimeoutMs`, and a promise settles only once, so
   * whatever the abandoned call does later is ignored (no second ack or nak).
   */
  #call(f: Flight, invoke: () => Promise<void>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      f.since = performance.now();
      f.abandon = reject;
      invoke().then(resolve, reject);
    });
  }

  async #processRaw(m: JsMsg, raw: RawHandler, started: number): Promise<void> {
    const type = m.headers?.get(Hdr.Type) || "unknown";
    const span = tracer().startSpan(`process ${this.name}`, {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": m.subject,
        "messaging.consumer.group.name": this.name,
        "messaging.nats.stream.sequence": m.seq,
      },
    });
    let child: Logger | undefined;
    const logger = () =>
      (child ??= this.#o.logger.child({ consumer: this.name, subject: m.subject, seq: m.seq }));
    const msg: RawMessage = {
      subject: m.subject,
      stream: m.info.stream,
      streamSequence: m.seq,
      data: m.data,
      headers: m.headers,
      timestamp: new Date(Math.floor(m.info.timestampNanos / 1e6)),
    };
    const attempt = m.info.deliveryCount;
    const f = flight(m, started);
    const ctx = handlerContext(f, attempt, logger, span);
    await this.#run(f, type, attempt, logger, span, started, () => raw(msg, ctx));
  }

  /** Waits (the message kept alive by the heartbeat) until resumed or stopping. */
  async #parked(_m: JsMsg): Promise<void> {
    while (this.#paused && this.#state === "running") await this.#delay(250);
  }

  /** Like {@link #delay}, but resolves at once when the runner is stopping. */
  #delayUnlessStopping(ms: number): Promise<void> {
    if (this.#state !== "running") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#onStop.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#onStop.add(done);
    });
  }

  #delay(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms));
  }

  async #deadLetter(m: JsMsg, err: unknown, attempt: number, type: string, started: number): Promise<void> {
    const code = err instanceof ShopStreamError ? err.code : DeadLetterCode.HandlerFailed;
    const logger = this.#o.logger.child({ consumer: this.name, subject: m.subject, seq: m.seq });
    try {
      await deadLetter(this.#o.publisher, m, {
        consumer: this.name,
        code,
        error: describeError(err),
        attempts: attempt,
      });
      // A bare +TERM: nats-server < 2.10 ignores "+TERM <reason>" entirely (it compares the whole payload), so
      // the message would stay pending and come back every ack wait. The reason is in the DLQ entry anyway.
      m.term();
      this.#o.metrics?.deadLettered.inc({ consumer: this.name, code });
      this.#count(type, "dlq", started);
      logger.error({ err: describeError(err), code, attempt }, "message dead-lettered");
    } catch (dlqErr) {
      // Never drop: if the DLQ copy failed, the message comes back later.
      m.nak(backoffDelay(attempt, this.#o.backoff));
      this.#count(type, "retry", started);
      logger.error({ err: describeError(dlqErr) }, "DLQ publish failed; message will be redelivered");
    }
  }
}

/** Is `err`, or an error it wraps (e.g. a {@link PublishError}), NATS being briefly unavailable? */
function isNatsUnavailable(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (isTransientNatsError(e)) return true;
  }
  return false;
}

/** A message's {@link Flight}, not yet tracked. */
function flight(m: JsMsg, now: number): Flight {
  return { m, beat: now, since: 0, abandon: undefined, done: false };
}

/** What a handler (typed or raw) is given for one delivery; the logger is made on first use. */
function handlerContext(f: Flight, attempt: number, logger: () => Logger, span: Span): HandlerContext {
  const m = f.m;
  return {
    attempt,
    subject: m.subject,
    streamSequence: m.seq,
    get logger() {
      return logger();
    },
    span,
    // Not once the runner is done with the message: an abandoned handler must not keep its redelivery at bay.
    working: () => {
      if (!f.done) m.working();
    },
  };
}

/** The catalog types a stream carries, for consumers that accept everything on it (audit). */
export function typesOfStream(stream: string): EventType[] {
  return (Object.keys(catalog) as EventType[]).filter((t) => catalog[t].stream === stream);
}
