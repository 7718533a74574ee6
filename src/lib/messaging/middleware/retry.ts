/**
 * Retry: a failed attempt (the handler threw a retryable error, or any error that is not a ShopStreamError, or
 * timed out) is nak'd with exponential backoff and jitter — never a hot loop — until `maxAttempts`, counted by the
 * server's delivery count; the last one, and any non-retryable error at once, go to the dead-letter middleware.
 */
import { isNonRetryable } from "../../errors.js";
import { backoffDelay, type BackoffOptions } from "../backoff.js";
import { hooks, type Middleware } from "./types.js";

export function retry(o: { maxAttempts: number; backoff: BackoffOptions }): Middleware {
  return hooks({
    after(out, d) {
      if (out.outcome !== "failed") return out;
      if (isNonRetryable(out.error) || d.attempt >= o.maxAttempts)
        return { outcome: "dead-letter", error: out.error };
      return { outcome: "retry", delayMs: backoffDelay(d.attempt, o.backoff), error: out.error };
    },
  });
}
