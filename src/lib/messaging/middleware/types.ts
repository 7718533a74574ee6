/**
 * The message pipeline of the consumer runner, after Watermill's router: a handler takes a {@link Delivery} and
 * resolves with its {@link Outcome}; middleware wraps a handler into another one (retry, dead-letter, park,
 * tracing, ...). The runner only pulls, keeps the messages alive and settles each outcome on the server (ack, nak,
 * term). Every piece runs without a broker: a delivery wraps anything shaped like a {@link Message}.
 */
import type { JsMsg } from "@nats-io/jetstream";
import type { Delivery } from "./delivery.js";

/** What the pipeline needs of a delivered message: a JetStream message, or a test's fake. */
export type Message = Pick<
  JsMsg,
  "subject" | "seq" | "data" | "headers" | "info" | "ack" | "nak" | "term" | "working"
>;

/**
 * How handling a message ended, as the runner settles it:
 * - `ack` / `skip`: acknowledged (`skip`: a type this consumer does not handle);
 * - `redeliver`: nak'd with `delayMs`, not a failure (a durable timer);
 * - `retry`: a failed attempt, nak'd with `delayMs` (backoff);
 * - `dead-lettered`: copied to the DLQ, then terminated;
 * - `hand-back`: the runner is stopping; given back for another runner.
 *
 * Inside the pipeline, before a middleware resolves them: `failed` (the handler threw), `defer` (run again in place
 * later), `dead-letter` (to be copied to the DLQ).
 */
export type Outcome =
  | { readonly outcome: "ack" }
  | { readonly outcome: "skip" }
  | { readonly outcome: "redeliver"; readonly delayMs: number }
  | {
      readonly outcome: "retry";
      readonly delayMs: number;
      readonly error: unknown;
      readonly logged?: boolean;
    }
  | { readonly outcome: "dead-lettered"; readonly code: string; readonly error: unknown }
  | { readonly outcome: "hand-back" }
  | { readonly outcome: "failed"; readonly error: unknown }
  | { readonly outcome: "defer"; readonly retryAfterMs: number }
  | { readonly outcome: "dead-letter"; readonly error: unknown };

/** A step of the pipeline: resolves with the outcome of one delivery. Never rejects. */
export type Handle = (d: Delivery) => Promise<Outcome>;

/** Wraps a handler into another (Watermill's `HandlerMiddleware`). */
export type Middleware = (next: Handle) => Handle;

/** What middleware may ask of the runner it runs in. */
export interface RunnerControl {
  /** Paused (by a breaker): nothing new is pulled, failures park instead of using attempts. */
  readonly paused: boolean;
  /** stop() was called: messages not finished are handed back. */
  readonly stopping: boolean;
  /** Resolves once resumed or stopping. */
  untilResumed(): Promise<void>;
  /** Resolves after `ms`, or at once when the runner stops. */
  delay(ms: number): Promise<void>;
}

export const ACK: Outcome = Object.freeze({ outcome: "ack" });
export const SKIP: Outcome = Object.freeze({ outcome: "skip" });
export const HAND_BACK: Outcome = Object.freeze({ outcome: "hand-back" });

/** `handle` wrapped in `middleware`, the first outermost. */
export function compose(middleware: readonly Middleware[], handle: Handle): Handle {
  return middleware.reduceRight((next, m) => m(next), handle);
}
