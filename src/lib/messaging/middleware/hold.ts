/**
 * Timer holds: a handler that resolves `{ outcome: "hold", untilMs }` (e.g. an order whose timeout is not due yet)
 * keeps its message delivered and unacknowledged, held by the runner until `untilMs`, then runs it again in place.
 * One delivery and one ack per timer, where a delayed nak costs a nak and a second delivery. The runner holds it
 * outside its concurrency slots (see {@link RunnerControl.hold}), sends no `working()` for it when the hold ends well
 * within the ack wait, and hands it back if it stops first. A hold whose time has passed runs again at once.
 * Outside park, keep-in-place and the handler timeout: a held message is not a handler call (no timeout runs) and,
 * once due, goes through park (paused: parked) like any other.
 */
import type { Delivery } from "./delivery.js";
import { HAND_BACK, hooks, type Handle, type Middleware, type Outcome, type RunnerControl } from "./types.js";

/** Runs of the handler one message may hold for in a row (a handler that keeps answering "hold" for a time passed). */
const MAX_HOLDS = 1_000;

export function hold(control: RunnerControl): Middleware {
  const held = async (d: Delivery, first: Outcome & { outcome: "hold" }, again: Handle): Promise<Outcome> => {
    let o: Outcome = first;
    for (let n = 0; o.outcome === "hold"; n++) {
      if (n >= MAX_HOLDS)
        return { outcome: "failed", error: new Error(`held ${n} times in a row; giving up`) };
      if (!(await control.hold(d, o.untilMs))) return HAND_BACK;
      if (control.stopping) return HAND_BACK;
      o = await again(d);
    }
    return o;
  };
  return hooks({
    after: (o, d, again) => (o.outcome === "hold" ? held(d, o, again) : o),
  });
}
