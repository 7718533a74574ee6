/**
 * The handler timeout: a call that has not settled after `timeoutMs` is abandoned — a failed attempt with a
 * {@link HandlerTimeoutError}, its slot freed — and whatever it does later is ignored (a promise settles once).
 * No timer per call: the runner's one ticker calls {@link abandonOverdue} on the deliveries it holds.
 */
import { HandlerTimeoutError } from "../handler.js";
import type { Delivery } from "./delivery.js";
import type { Middleware, Outcome } from "./types.js";

export function timeout(timeoutMs: number): Middleware {
  if (!Number.isFinite(timeoutMs)) return (next) => next;
  return (next) => (d) =>
    new Promise<Outcome>((resolve) => {
      d.since = performance.now();
      // The first to resolve wins: the call's outcome, or the ticker's timeout (abandonOverdue).
      d.abandon = resolve;
      void next(d).then((o) => {
        if (d.abandon === resolve) d.abandon = undefined;
        resolve(o);
      });
    });
}

/** Abandons every handler call among `deliveries` that has run `timeoutMs` or longer by `now`. */
export function abandonOverdue(deliveries: Iterable<Delivery>, timeoutMs: number, now: number): void {
  for (const d of deliveries) {
    if (d.abandon && !d.done && now - d.since >= timeoutMs) {
      const abandon = d.abandon;
      d.abandon = undefined;
      abandon({ outcome: "failed", error: new HandlerTimeoutError(Math.round(now - d.since), timeoutMs) });
    }
  }
}
