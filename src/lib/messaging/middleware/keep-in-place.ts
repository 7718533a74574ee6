/**
 * Keep in place: a handler that failed because NATS itself was briefly unavailable (a timeout, no responders, no
 * stream leader during an election — also behind a PublishError) did nothing wrong with the message. It uses no
 * attempt: the message is deferred with backoff (capped at 5 s), run again until NATS answers. An election must
 * not dead-letter business events.
 */
import { describeError, isNonRetryable } from "../../errors.js";
import { backoffDelay, type BackoffOptions } from "../backoff.js";
import { HandlerTimeoutError } from "../handler.js";
import { isTransientNatsError } from "../publisher.js";
import { hooks, type Middleware } from "./types.js";

/** Is `err`, or an error it wraps, NATS being briefly unavailable (and nothing that must not be retried)? */
export function isNatsUnavailable(err: unknown): boolean {
  if (isNonRetryable(err) || err instanceof HandlerTimeoutError) return false;
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (isTransientNatsError(e)) return true;
  }
  return false;
}

export function keepInPlace(backoff: BackoffOptions): Middleware {
  return hooks({
    after(o, d) {
      if (o.outcome !== "failed" || !isNatsUnavailable(o.error)) return o;
      d.kept++;
      if (d.kept === 1 || d.kept % 10 === 0)
        d.logger.warn(
          { err: describeError(o.error), parked: d.kept },
          "NATS unavailable; message kept, retried in place",
        );
      return { outcome: "defer", retryAfterMs: Math.min(5_000, backoffDelay(d.kept, backoff)) };
    },
  });
}
