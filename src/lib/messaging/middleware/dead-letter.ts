/**
 * Dead-lettering: a message given up on is copied to the DLQ with why (`send`), and only then terminated. If the
 * copy cannot be stored, the message is nak'd with backoff instead: never a drop.
 */
import { ShopStreamError, describeError } from "../../errors.js";
import { backoffDelay, type BackoffOptions } from "../backoff.js";
import { DeadLetterCode, type DeadLetterReason } from "../dlq.js";
import type { Delivery } from "./delivery.js";
import { hooks, type Middleware, type Outcome } from "./types.js";

/** Stores the DLQ copy of a delivery (the runner's: `deadLetter(publisher, msg, reason)`). */
export type SendDeadLetter = (d: Delivery, reason: DeadLetterReason) => Promise<void>;

export function deadLetter(send: SendDeadLetter, backoff: BackoffOptions): Middleware {
  return hooks({
    after(o, d): Outcome | Promise<Outcome> {
      if (o.outcome !== "dead-letter") return o;
      const error = o.error;
      const code = error instanceof ShopStreamError ? error.code : DeadLetterCode.HandlerFailed;
      const reason = { consumer: d.consumer, code, error: describeError(error), attempts: d.attempt };
      return send(d, reason).then(
        (): Outcome => ({ outcome: "dead-lettered", code, error }),
        (dlqErr: unknown): Outcome => {
          d.logger.error({ err: describeError(dlqErr) }, "DLQ publish failed; message will be redelivered");
          return { outcome: "retry", delayMs: backoffDelay(d.attempt, backoff), error, logged: true };
        },
      );
    },
  });
}
