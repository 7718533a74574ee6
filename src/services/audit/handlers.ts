/**
 * What the audit records of a stream message: a catalog event of an audited stream as an event row, a body
 * that does not decode as one as a raw `Undecodable` row, and every DLQ entry, whatever its body, as a
 * `DeadLetter` row. Nothing read is skipped.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { Streams } from "../../lib/events/catalog.js";
import { decodePublished, isEventDecodeError } from "../../lib/events/codec.js";
import { describeError } from "../../lib/errors.js";
import { entryFromDeadLetter, entryFromEvent, entryFromUndecodable, type AuditEntry } from "./audit.js";

/** The event streams the audit records (the DLQ aside). */
export const AUDITED_STREAMS = [Streams.ORDERS, Streams.INVENTORY, Streams.PAYMENTS, Streams.NOTIFICATIONS];

/** Every stream the audit projector reads: the event streams and the DLQ. */
export const PROJECTED_STREAMS = [...AUDITED_STREAMS, Streams.DLQ];

/**
 * The durable consumers the audit used before it became a projector (`audit-orders`, …, `audit-dlq`). They are
 * deleted at start when present: left alone they would keep every message of their stream as pending.
 */
export const LEGACY_AUDIT_DURABLES: readonly { stream: string; durable: string }[] = PROJECTED_STREAMS.map(
  (stream) => ({ stream, durable: `audit-${stream.toLowerCase()}` }),
);

function headersOf(msg: JsMsg): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const k of msg.headers?.keys() ?? []) headers[k] = msg.headers!.get(k);
  return headers;
}

/** The row recording one message of `stream` (an event stream or the DLQ). */
export function entryFromMessage(stream: string, msg: JsMsg): AuditEntry {
  const at = { stream, subject: msg.subject, sequence: msg.seq, data: msg.data };
  if (stream === Streams.DLQ)
    return entryFromDeadLetter({ ...at, headers: headersOf(msg), storedAt: msg.time });
  try {
    // As published (its own version's schema, not upcast): the log keeps what was on the stream.
    const event = decodePublished(msg.data);
    return entryFromEvent(event, { stream, subject: msg.subject, streamSeq: msg.seq });
  } catch (err) {
    const error = isEventDecodeError(err)
      ? { code: err.code, message: err.message }
      : { code: "EVENT_UNREADABLE", message: describeError(err) };
    return entryFromUndecodable({ ...at, headers: headersOf(msg), storedAt: msg.time, error });
  }
}
