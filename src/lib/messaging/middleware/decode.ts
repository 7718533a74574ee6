/**
 * Decoding: a known event type this consumer has no handler for is acknowledged on its `Shopstream-Type` header,
 * without decoding ({@link skipUnhandled}); every other message is decoded and checked against its schema
 * ({@link decode}), and one that fails is dead-lettered at once — redelivery cannot fix bytes.
 */
import { isEventType, type EventType } from "../../events/catalog.js";
import { decodeEvent } from "../../events/codec.js";
import { SKIP, hooks, type Middleware, type Outcome } from "./types.js";

const SKIPPED: Promise<Outcome> = Promise.resolve(SKIP);

/** Skips (acks) messages whose header names a known type that `handles` refuses. */
export function skipUnhandled(handles: (type: EventType) => boolean): Middleware {
  return hooks({
    before: (d) => (d.type && isEventType(d.type) && !handles(d.type) ? SKIPPED : undefined),
  });
}

/** Decodes the event into the delivery; dead-letters what does not decode (EventDecodeError, non-retryable). */
export const decode: Middleware = hooks({
  before(d) {
    try {
      d.decoded(decodeEvent(d.msg.data));
    } catch (error) {
      return Promise.resolve({ outcome: "dead-letter", error });
    }
    return undefined;
  },
});
