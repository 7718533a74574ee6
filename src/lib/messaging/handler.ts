/**
 * The handler contract of the consumer runner: what a handler is given, what it may return, and the errors that
 * steer the runner when thrown (kept for the services that throw them; returning an outcome is the same).
 */
import type { JsMsg } from "@nats-io/jetstream";
import type { Span } from "@opentelemetry/api";
import { NonRetryableError, RetryableError } from "../errors.js";
import type { EventType } from "../events/catalog.js";
import type { Envelope } from "../events/envelope.js";
import type { Logger } from "../telemetry/logger.js";
import { DeadLetterCode } from "./dlq.js";

/** What a handler gets besides the event. */
export interface HandlerContext {
  /** Delivery attempt, 1 on first delivery. */
  attempt: number;
  subject: string;
  streamSequence: number;
  /** Logger with `trace_id`, `order_id`, `event_id` and `event_type` bound. */
  logger: Logger;
  /**
   * The handler's span (kind CONSUMER) when spans are exported: child spans and publishes join the order's trace.
   * A shared non-recording span otherwise.
   */
  span: Span;
  /** Tells the server the handler is still working: resets the ack wait. Sent automatically too. */
  working(): void;
}

/**
 * What a handler may resolve with instead of nothing (nothing is `ack`):
 * - `{ outcome: "redeliver", delayMs }`: deliver the message again after `delayMs` — a durable timer. Not a
 *   failure, never dead-lettered for it; each one is a delivery on the server's count (see `maxDeliveries`).
 * - `{ outcome: "defer", retryAfterMs }`: not now, and not this message's fault (a dependency's breaker is open):
 *   the runner keeps the message (`working()`), runs it again after `retryAfterMs` once not paused, and uses no
 *   attempt.
 * - `{ outcome: "hold", untilMs }`: a timer held by this runner — the message stays delivered (no nak, no
 *   redelivery), outside the concurrency slots, and the handler runs again at `untilMs` (epoch ms, `Date.now()`).
 *   No `working()` is sent when the hold ends well within the consumer's ack wait (give such a consumer an ack wait
 *   above its longest hold); a longer hold is kept alive with `working()` like a parked message. A crash loses
 *   nothing: the server redelivers after the ack wait. A stop hands it back at once. Uses no attempt.
 *
 * Throwing {@link RedeliverLaterError} or {@link DeferError} does the same.
 */
export type HandlerResult =
  | { readonly outcome: "ack" }
  | { readonly outcome: "redeliver"; readonly delayMs: number }
  | { readonly outcome: "defer"; readonly retryAfterMs: number }
  | { readonly outcome: "hold"; readonly untilMs: number };

/** Business logic for one event type. Throws to fail; the runner decides retry, DLQ or park. */
export type EventHandler<T extends EventType> = (
  event: Envelope<T>,
  ctx: HandlerContext,
) => Promise<void | HandlerResult>;

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
export type RawHandler = (msg: RawMessage, ctx: HandlerContext) => Promise<void | HandlerResult>;

/**
 * Thrown by a handler to say "not now, and it is not this message's fault" (e.g. a circuit breaker is
 * open). The runner keeps the message (sending `working()` so it is not redelivered), runs it again
 * after `retryAfterMs` once the runner is not paused, and does not count it as a failed attempt.
 * Same as resolving with `{ outcome: "defer", retryAfterMs }`.
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
 * `maxDeliveries` (orders' `orders-timeouts`: 50 and 1000). Same as resolving with `{ outcome: "redeliver" }`.
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
