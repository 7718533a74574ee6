/**
 * Logging and metrics of each message's final outcome: `shopstream_messages_handled_total` and
 * `shopstream_handler_duration_seconds` by (consumer, type, outcome) — an increment of cells read at scrape time,
 * nothing per message beyond that — `shopstream_dead_lettered_total`, a warning per failed attempt and an error per
 * dead letter. Outermost, so it sees what the runner will do.
 */
import type { Counter } from "prom-client";
import { describeError } from "../../errors.js";
import { isEventType } from "../../events/catalog.js";
import type { HandlerOutcome, HandlerTally } from "../../telemetry/metrics.js";
import { HandlerTimeoutError } from "../handler.js";
import type { Delivery } from "./delivery.js";
import { hooks, type Middleware, type Outcome } from "./types.js";

/** The `outcome` label of each outcome (one that should not reach the runner counts as the retry it becomes). */
const LABEL: Record<Outcome["outcome"], HandlerOutcome> = {
  ack: "ack",
  skip: "skipped",
  redeliver: "delayed",
  retry: "retry",
  "dead-lettered": "dlq",
  "hand-back": "handed_back",
  failed: "retry",
  defer: "retry",
  hold: "delayed",
  "dead-letter": "retry",
};

export interface ObserveOptions {
  tally?: HandlerTally | undefined;
  deadLettered?: Counter<"consumer" | "code"> | undefined;
}

/** Counts one outcome of `d` (also used by the runner for messages it hands back before they start). */
export function record(
  tally: HandlerTally | undefined,
  d: Pick<Delivery, "type" | "started">,
  o: Outcome,
): void {
  if (!tally) return;
  const type = isEventType(d.type) ? d.type : "unknown";
  // A hand-back is not handling: no duration.
  tally.record(
    type,
    LABEL[o.outcome],
    o.outcome === "hand-back" ? undefined : (performance.now() - d.started) / 1000,
  );
}

export function observe(opts: ObserveOptions): Middleware {
  return hooks({
    after(o, d) {
      record(opts.tally, d, o);
      if (o.outcome === "retry" && !o.logged) {
        d.logger.warn(
          { err: describeError(o.error), attempt: d.attempt, retry_in_ms: o.delayMs },
          o.error instanceof HandlerTimeoutError
            ? "handler timed out; abandoned, will retry"
            : "handler failed; will retry",
        );
      } else if (o.outcome === "dead-lettered") {
        opts.deadLettered?.inc({ consumer: d.consumer, code: o.code });
        d.logger.error(
          {
            err: describeError(o.error),
            code: o.code,
            attempt: d.attempt,
            subject: d.subject,
            seq: d.streamSequence,
          },
          "message dead-lettered",
        );
      }
      return o;
    },
  });
}
