/**
 * Parking: a deferred message (the handler's dependency is not ready: `{ outcome: "defer" }` or a DeferError,
 * e.g. its breaker is open), and a retryable failure while the runner is paused, use no attempt. The message
 * stays with the runner — kept alive by its heartbeat — and runs again after the delay, once the runner is not
 * paused; if the runner stops meanwhile it is handed back.
 */
import { isNonRetryable } from "../../errors.js";
import { HandlerTimeoutError } from "../handler.js";
import type { Delivery } from "./delivery.js";
import { HAND_BACK, hooks, type Handle, type Middleware, type Outcome, type RunnerControl } from "./types.js";

/** Whether an outcome parks the message, given the runner's state. */
function parks(o: Outcome, control: RunnerControl): boolean {
  if (o.outcome === "defer") return true;
  // An abandoned (timed-out) call is a failed attempt, never parked: the hung call may still be running.
  return (
    o.outcome === "failed" &&
    control.paused &&
    !isNonRetryable(o.error) &&
    !(o.error instanceof HandlerTimeoutError)
  );
}

export function park(control: RunnerControl): Middleware {
  /** Holds `d` (its outcome so far: `first`) until it no longer parks, running it again with `again`. */
  const held = async (d: Delivery, first: Outcome | undefined, again: Handle): Promise<Outcome> => {
    let o = first;
    for (;;) {
      if (o) {
        if (!parks(o, control)) return o;
        if (o.outcome === "defer") {
          d.logger.debug({ retry_after_ms: o.retryAfterMs }, "handler deferred; parking message");
          await control.delay(o.retryAfterMs);
        } else {
          d.logger.debug("handler failed while paused; parking message");
        }
      }
      // Not parked time: a handler call that was abandonable must not be abandoned while its message waits here.
      d.abandon = undefined;
      if (control.paused) await control.untilResumed();
      if (control.stopping) return HAND_BACK;
      o = await again(d);
    }
  };
  return hooks({
    before: (d, again) => (control.paused || control.stopping ? held(d, undefined, again) : undefined),
    after: (o, d, again) => (parks(o, control) ? held(d, o, again) : o),
  });
}
