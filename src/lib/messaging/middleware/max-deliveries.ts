/**
 * Poison that kills (or freezes) the process handling it never reports a failure, so failed attempts alone would
 * let it come back forever: a message the server has delivered more than `limit` times (its own count, so it
 * survives crashes and restarts) is dead-lettered as `MAX_DELIVERIES` before anything — decoding included — runs
 * on it again.
 */
import { MaxDeliveriesError } from "../handler.js";
import { hooks, type Middleware } from "./types.js";

export function maxDeliveries(limit: number): Middleware {
  if (!Number.isFinite(limit)) return hooks({});
  return hooks({
    before: (d) =>
      d.attempt > limit
        ? Promise.resolve({ outcome: "dead-letter", error: new MaxDeliveriesError(d.attempt, limit) })
        : undefined,
  });
}
