/**
 * The end of the pipeline: runs the handler and turns what it did into an {@link Outcome}. Resolving with nothing
 * (or `{ outcome: "ack" }`) is an ack; a {@link HandlerResult} is taken as it is; the control-flow errors of older
 * handlers mean the same results (`RedeliverLaterError` → redeliver, `DeferError` → defer); anything else thrown
 * is a failure, for the retry middleware to judge.
 */
import type { EventType } from "../../events/catalog.js";
import {
  DeferError,
  RedeliverLaterError,
  type EventHandler,
  type HandlerMap,
  type HandlerResult,
  type RawHandler,
  type RawMessage,
} from "../handler.js";
import type { Delivery } from "./delivery.js";
import { ACK, SKIP, type Handle, type Outcome } from "./types.js";

const SKIPPED: Promise<Outcome> = Promise.resolve(SKIP);

/** The outcome of a handler that resolved with `result`. */
export function outcomeOf(result: void | HandlerResult): Outcome {
  if (result === undefined || result === null || result.outcome === "ack") return ACK;
  if (result.outcome === "redeliver")
    return { outcome: "redeliver", delayMs: Math.max(0, Math.round(result.delayMs)) };
  if (result.outcome === "defer") return { outcome: "defer", retryAfterMs: Math.max(0, result.retryAfterMs) };
  if (result.outcome === "hold" && Number.isFinite(result.untilMs))
    return { outcome: "hold", untilMs: result.untilMs };
  return { outcome: "failed", error: new TypeError(`unknown handler result ${JSON.stringify(result)}`) };
}

/** The outcome of a handler that threw `err`. */
export function outcomeOfError(err: unknown): Outcome {
  if (err instanceof RedeliverLaterError) return { outcome: "redeliver", delayMs: err.delayMs };
  if (err instanceof DeferError) return { outcome: "defer", retryAfterMs: err.retryAfterMs };
  return { outcome: "failed", error: err };
}

/** Runs the handler of the decoded event's type (after the decode middleware); a type without one is skipped. */
export function dispatchEvents(handlers: HandlerMap): Handle {
  return (d: Delivery) => {
    const event = d.event;
    const handler = event && (handlers[event.type] as EventHandler<EventType> | undefined);
    if (!event || !handler) return SKIPPED;
    try {
      return Promise.resolve(handler(event, d)).then(outcomeOf, outcomeOfError);
    } catch (err) {
      // A handler that throws before returning its promise.
      return Promise.resolve(outcomeOfError(err));
    }
  };
}

/** Runs a raw handler on the undecoded message. */
export function dispatchRaw(raw: RawHandler): Handle {
  return (d: Delivery) => {
    const m = d.msg;
    const msg: RawMessage = {
      subject: m.subject,
      stream: m.info.stream,
      streamSequence: m.seq,
      data: m.data,
      headers: m.headers,
      timestamp: new Date(Math.floor(m.info.timestampNanos / 1e6)),
    };
    try {
      return Promise.resolve(raw(msg, d)).then(outcomeOf, outcomeOfError);
    } catch (err) {
      return Promise.resolve(outcomeOfError(err));
    }
  };
}
