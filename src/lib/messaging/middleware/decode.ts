/**
 * Decoding: a known event type this consumer has no handler for is acknowledged on its `Shopstream-Type` header,
 * without decoding ({@link skipUnhandled}); every other message is decoded, checked against the schema of its
 * version and upcast to the current one ({@link decode}). One that fails is dead-lettered at once — redelivery
 * cannot fix bytes — except an event of a version newer than this process reads: a newer release wrote it during a
 * rollout. That one is kept by this runner (its heartbeat keeps it delivered: no delivery attempt is used) until the
 * runner stops — it is then handed back, for a replica of the new release — or until `futureVersionWaitMs` after
 * it was stored, when it is dead-lettered as `EVENT_VERSION_AHEAD` (to be redriven once the new release runs).
 */
import { isEventType, type EventType } from "../../events/catalog.js";
import { DecodeErrorCode, EventDecodeError, decodeEvent, isVersionAhead } from "../../events/codec.js";
import { EventVersions } from "../../events/versions.js";
import type { Delivery } from "./delivery.js";
import { HAND_BACK, SKIP, hooks, type Middleware, type Outcome, type RunnerControl } from "./types.js";

const SKIPPED: Promise<Outcome> = Promise.resolve(SKIP);

/** Skips (acks) messages whose header names a known type that `handles` refuses. */
export function skipUnhandled(handles: (type: EventType) => boolean): Middleware {
  return hooks({
    before: (d) => (d.type && isEventType(d.type) && !handles(d.type) ? SKIPPED : undefined),
  });
}

/** How {@link decode} reads and how long it keeps an event of a future version. */
export interface DecodeOptions {
  /** The versions this process reads (default: every known one). */
  versions?: EventVersions | undefined;
  /** How long after it was stored an event of a future version is kept before the DLQ (default 10 min). */
  futureVersionWaitMs?: number | undefined;
}

/** Default {@link DecodeOptions.futureVersionWaitMs}: longer than a rollout. */
export const FUTURE_VERSION_WAIT_MS = 600_000;

/** When the server stored the message (epoch ms), or undefined when its delivery info does not say. */
function storedAt(d: Delivery): number | undefined {
  const ns = (d.msg.info as { timestampNanos?: number } | undefined)?.timestampNanos;
  return typeof ns === "number" && ns > 0 ? ns / 1e6 : undefined;
}

/**
 * Decodes the event into the delivery (upcast to the current version); dead-letters what does not decode
 * (EventDecodeError, non-retryable), and keeps a future version first (see the file's header).
 */
export function decode(control: RunnerControl, opts: DecodeOptions = {}): Middleware {
  const versions = opts.versions ?? EventVersions.CURRENT;
  const waitMs = opts.futureVersionWaitMs ?? FUTURE_VERSION_WAIT_MS;
  /** Keeps a future version until the runner stops (hand back) or its wait is over (DLQ). */
  const keep = async (d: Delivery, error: EventDecodeError): Promise<Outcome> => {
    const deadline = (storedAt(d) ?? Date.now()) + waitMs;
    if (Date.now() < deadline && !control.stopping) {
      d.logger.warn(
        { code: error.code, attempt: d.attempt },
        `${error.message}; kept for a replica that reads it (handed back on stop)`,
      );
      // A timer may fire a millisecond before Date.now() reaches the deadline: wait out the rest, not hand back.
      while (Date.now() < deadline && !control.stopping) await control.delay(deadline - Date.now());
      if (control.stopping) return HAND_BACK;
    }
    if (Date.now() < deadline) return HAND_BACK;
    const why = `${error.message}; no replica read it within ${waitMs} ms of its publication: redrive it once a release that reads it runs`;
    return { outcome: "dead-letter", error: new EventDecodeError(DecodeErrorCode.VersionAhead, why, error) };
  };
  return hooks({
    before(d) {
      try {
        d.decoded(decodeEvent(d.msg.data, versions));
      } catch (error) {
        if (isVersionAhead(error)) return keep(d, error);
        return Promise.resolve({ outcome: "dead-letter", error });
      }
      return undefined;
    },
  });
}
