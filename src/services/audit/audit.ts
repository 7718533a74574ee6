/**
 * The audit log's domain: what a row is, how rows are chained and verified, how an order's timeline is
 * ordered. Pure functions, no I/O.
 *
 * The hash chain (a persistent format: changing it invalidates every stored chain):
 *
 *     hash(row) = hex(SHA-256(prev_hash + canonical(row without hash)))
 *
 * where `prev_hash` is the previous row's hash (64 zeros for position 1) and `canonical` is the canonical
 * JSON (`canonicalJson` of `src/lib/canonical.ts`, the one definition) of an object whose keys are the
 * column names, sorted: `causation_id, event_id, event_type, occurred_at, order_id, payload, position,
 * prev_hash, recorded_at, source, stream, stream_seq, subject, trace_id`.
 * Numbers are JSON numbers, timestamps ISO-8601 UTC with milliseconds (`2024-01-01T00:00:00.000Z`),
 * absent values `null`, and `payload` the stored text itself (a JSON string value).
 */
import { createHash } from "node:crypto";
import { canonicalJson, canonicalJsonOf } from "../../lib/canonical.js";
import { isSkuEventType } from "../../lib/events/catalog.js";
import type { EnvelopeShape } from "../../lib/events/envelope.js";
import { ORDER_ID_UNANCHORED } from "../../lib/ids.js";
import { Hdr } from "../../lib/messaging/headers.js";

/** Re-exported for the audit's importers: the one definition is in `src/lib/canonical.ts`. */
export { canonicalJson };

/** `prev_hash` of the first row. */
export const GENESIS_HASH = "0".repeat(64);

/** `event_type` of a row recording a DLQ entry. */
export const DEAD_LETTER_TYPE = "DeadLetter";

/** One event to record, before the store gives it a position and chains it. Values are as stored. */
export interface AuditEntry {
  /** Unique key: the envelope id, or `dlq:<DLQ sequence>` for a DLQ entry. */
  eventId: string;
  stream: string;
  streamSeq: number | null;
  subject: string | null;
  eventType: string;
  orderId: string | null;
  /** The publishing service (for a DLQ entry: the consumer that gave up). */
  source: string | null;
  traceId: string | null;
  causationId: string | null;
  /** When the event happened (ISO, UTC, ms), or null when it carried no usable timestamp. */
  occurredAt: string | null;
  /** Canonical JSON text of the whole envelope (or of the DLQ entry's description). */
  payload: string;
}

/** A stored row: an entry with its position in the log and its link in the chain. */
export interface AuditRow extends AuditEntry {
  position: number;
  recordedAt: string;
  prevHash: string;
  hash: string;
}

// ---------------------------------------------------------------------------------------------------
// sanitising, hashing
// ---------------------------------------------------------------------------------------------------

// eslint-disable-next-line no-control-regex -- NUL is exactly what must be replaced
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * A string PostgreSQL can store in a `text` column exactly as given: NUL characters and lone surrogates
 * (which would be rejected, or silently changed on the way to UTF-8) become U+FFFD. The payload keeps
 * the original, escaped.
 */
export function storableText(s: string): string {
  return s.replace(UNSTORABLE, "\ufffd");
}

function storableOrNull(s: unknown): string | null {
  return typeof s === "string" ? storableText(s) : null;
}

/**
 * A timestamp as stored in a `timestamptz` column and hashed: ISO-8601 UTC with milliseconds, or null
 * when `value` is not a date or lies outside years 1–9999.
 */
export function normalizeTimestamp(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  const d = value instanceof Date ? value : typeof value === "string" ? new Date(value) : null;
  if (d === null || Number.isNaN(d.getTime())) return null;
  const year = d.getUTCFullYear();
  if (year < 1 || year > 9999) return null;
  return d.toISOString();
}

/** The hashed columns: every column but `hash`, as named in {@link hashedFields}. */
const HASHED_COLUMNS = [
  "causation_id",
  "event_id",
  "event_type",
  "occurred_at",
  "order_id",
  "payload",
  "position",
  "prev_hash",
  "recorded_at",
  "source",
  "stream",
  "stream_seq",
  "subject",
  "trace_id",
] as const;

/** The object whose canonical JSON is hashed (every column but `hash`). */
export function hashedFields(row: Omit<AuditRow, "hash">): Record<(typeof HASHED_COLUMNS)[number], unknown> {
  return {
    causation_id: row.causationId,
    event_id: row.eventId,
    event_type: row.eventType,
    occurred_at: row.occurredAt,
    order_id: row.orderId,
    payload: row.payload,
    position: row.position,
    prev_hash: row.prevHash,
    recorded_at: row.recordedAt,
    source: row.source,
    stream: row.stream,
    stream_seq: row.streamSeq,
    subject: row.subject,
    trace_id: row.traceId,
  };
}

/** The hash of a row: SHA-256 over `prev_hash` followed by the canonical JSON of its other fields. */
export function rowHash(row: Omit<AuditRow, "hash">): string {
  return createHash("sha256").update(row.prevHash).update(hashedText(row)).digest("hex");
}

/** {@link canonicalJson} for the hashed columns, with their order worked out once (hot: once per row). */
const hashedColumnsText = canonicalJsonOf(HASHED_COLUMNS);

/**
 * `canonicalJson(hashedFields(row))`, through the fixed-shape writer of `src/lib/canonical.ts` (an unusual
 * row, e.g. with an undefined or non-finite value, takes `canonicalJson` itself). A unit test holds the
 * two equal.
 */
export function hashedText(row: Omit<AuditRow, "hash">): string {
  return hashedColumnsText(hashedFields(row));
}

/**
 * Chains new entries after the row at (`lastPosition`, `lastHash`): consecutive positions, each row's
 * `prev_hash` the hash of the one before.
 */
export function chainEntries(
  entries: readonly AuditEntry[],
  last: { position: number; hash: string },
  recordedAt: string,
): AuditRow[] {
  let position = last.position;
  let prevHash = last.hash;
  return entries.map((e) => {
    position++;
    const unhashed = { ...e, position, recordedAt, prevHash };
    const row: AuditRow = { ...unhashed, hash: rowHash(unhashed) };
    prevHash = row.hash;
    return row;
  });
}

// ---------------------------------------------------------------------------------------------------
// verification
// ---------------------------------------------------------------------------------------------------

/** Outcome of verifying the whole chain. */
export interface VerifyResult {
  ok: boolean;
  /** Rows read. */
  rows: number;
  /** Position of the first row that breaks the chain (absent when ok). */
  firstBadPosition?: number;
  /** What is wrong with that row. */
  reason?: string;
  /** Hash of the last row (64 zeros for an empty log): anchor it elsewhere to detect truncation. */
  lastHash: string;
}

/**
 * Verifies rows fed in position order, one page at a time: positions 1, 2, 3… without gaps, each
 * `prev_hash` equal to the previous row's stored hash, each stored hash equal to the recomputed one.
 * After a bad row it goes on from that row's stored values, so only the first break is reported.
 */
export class ChainVerifier {
  #rows = 0;
  #expectedPosition = 1;
  #prevHash = GENESIS_HASH;
  #firstBad: { position: number; reason: string } | undefined;

  push(row: AuditRow): void {
    this.#rows++;
    let reason: string | undefined;
    if (row.position !== this.#expectedPosition)
      reason = `position ${row.position} where ${this.#expectedPosition} was expected (rows missing)`;
    else if (row.prevHash !== this.#prevHash) reason = "prev_hash is not the previous row's hash";
    else if (rowHash(row) !== row.hash) reason = "hash does not match the row's contents";
    if (reason !== undefined && this.#firstBad === undefined)
      this.#firstBad = { position: row.position, reason };
    this.#expectedPosition = row.position + 1;
    this.#prevHash = row.hash;
  }

  get lastPosition(): number {
    return this.#expectedPosition - 1;
  }

  result(): VerifyResult {
    const r: VerifyResult = { ok: this.#firstBad === undefined, rows: this.#rows, lastHash: this.#prevHash };
    if (this.#firstBad) {
      r.firstBadPosition = this.#firstBad.position;
      r.reason = this.#firstBad.reason;
    }
    return r;
  }
}

// ---------------------------------------------------------------------------------------------------
// entries from events and dead letters
// ---------------------------------------------------------------------------------------------------

/** The entry recording an event delivered on `stream`, as it was published (any version its type has had). */
export function entryFromEvent(
  event: EnvelopeShape,
  at: { stream: string; subject: string; streamSeq: number },
): AuditEntry {
  return {
    eventId: storableText(event.id),
    stream: at.stream,
    streamSeq: at.streamSeq,
    subject: storableText(at.subject),
    eventType: event.type,
    // The catalog events' aggregate is a SKU: they are on no order's timeline.
    orderId: isSkuEventType(event.type) ? null : storableText(event.aggregate_id),
    source: storableText(event.source),
    traceId: event.trace_id,
    causationId: storableOrNull(event.causation_id),
    occurredAt: normalizeTimestamp(event.timestamp),
    payload: canonicalJson(event),
  };
}

/** A DLQ message as the audit sees it. */
export interface DeadLetterMessage {
  stream: string;
  subject: string;
  /** The DLQ stream sequence: the entry's identity. */
  sequence: number;
  data: Uint8Array;
  /** Headers, first value of each. */
  headers: Record<string, string>;
  /** When the DLQ stored it. */
  storedAt: Date;
}

/** A message body as far as it reads: parsed JSON, else UTF-8 text, else neither (bytes). */
interface ReadBody {
  parsed: boolean;
  body: unknown;
  text: string | undefined;
}

function readBody(data: Uint8Array): ReadBody {
  let text: string | undefined;
  let body: unknown;
  let parsed = false;
  try {
    text = utf8.decode(data);
    body = JSON.parse(text);
    // A body that parses to what canonical JSON cannot write (e.g. `1e400`, which parses to Infinity) would make
    // its entry fail on every attempt: such a body is recorded as the text it is.
    canonicalJson(body);
    parsed = true;
  } catch {
    /* not UTF-8, not JSON, or not representable as canonical JSON: recorded as it is */
  }
  return { parsed, body, text };
}

/** The trace id of a recorded body: the body's `trace_id` when it is one, else the `traceparent` header's, else null. */
function traceIdOf(b: ReadBody, traceparent: string | undefined): string | null {
  const bodyTrace = b.parsed ? str(b.body, "trace_id") : undefined;
  return (
    (bodyTrace && TRACE_ID.test(bodyTrace) ? bodyTrace : undefined) ??
    TRACE_PARENT.exec(traceparent ?? "")?.[1] ??
    null
  );
}

/** `body` (parsed), else `body_text`, else `body_base64`. */
function putBody(payload: Record<string, unknown>, data: Uint8Array, b: ReadBody): void {
  if (b.parsed) payload["body"] = b.body;
  else if (b.text !== undefined) payload["body_text"] = b.text;
  else payload["body_base64"] = Buffer.from(data).toString("base64");
}

/** `event_type` of a row recording a stream message that is not a catalog event. */
export const UNDECODABLE_TYPE = "Undecodable";

/** A message of an event stream that does not decode as a catalog event, as the audit sees it. */
export interface UndecodableMessage extends DeadLetterMessage {
  /** Why it does not decode: the decode error's code and message. */
  error: { code: string; message: string };
}

/**
 * The entry recording a message of an event stream that is not a catalog event (malformed, unknown type,
 * failing its schema): nothing read is skipped. `event_id` is `raw:<stream>:<sequence>`, the type
 * `Undecodable`, the order id from the subject; the payload holds the decode error, the headers and the
 * body the way a DLQ entry's is recorded (parsed, text or base64).
 */
export function entryFromUndecodable(m: UndecodableMessage): AuditEntry {
  const b = readBody(m.data);
  const payload: Record<string, unknown> = {
    error: m.error,
    headers: m.headers,
    size: m.data.length,
  };
  putBody(payload, m.data, b);
  const orderId = ORDER_SUBJECT.exec(m.subject)?.[1];
  const traceId = traceIdOf(b, m.headers[Hdr.TraceParent]);
  return {
    eventId: `raw:${m.stream}:${m.sequence}`,
    stream: m.stream,
    streamSeq: m.sequence,
    subject: storableText(m.subject),
    eventType: UNDECODABLE_TYPE,
    orderId: orderId !== undefined ? storableText(orderId) : null,
    source: null,
    traceId,
    causationId: null,
    occurredAt: normalizeTimestamp(m.storedAt),
    payload: canonicalJson(payload),
  };
}

/** A saga subject, its order id captured. */
const ORDER_SUBJECT = new RegExp(
  `^(?:orders|inventory|payments|notifications)\\.(${ORDER_ID_UNANCHORED})(?:\\.|$)`,
);
const TRACE_PARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/;
const TRACE_ID = /^[0-9a-f]{32}$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

function str(o: unknown, k: string): string | undefined {
  if (o === null || typeof o !== "object" || Array.isArray(o)) return undefined;
  const v = (o as Record<string, unknown>)[k];
  return typeof v === "string" && v !== "" ? v : undefined;
}

function int(s: string | undefined): number | null {
  if (s === undefined || !/^\d{1,15}$/.test(s)) return null;
  return Number(s);
}

/**
 * The entry recording a DLQ message, whatever its body: `event_id` is `dlq:<DLQ sequence>`, the type
 * `DeadLetter`, the order id taken from the body when it parses (`aggregate_id`, else `data.orderId`),
 * else from the original subject. The payload holds the DLQ headers (consumer, code, error, attempts,
 * original stream, subject and sequence, time), every other header, and the body: parsed when it is
 * JSON, as text when it is UTF-8, else base64.
 */
export function entryFromDeadLetter(m: DeadLetterMessage): AuditEntry {
  const h = (k: string): string | undefined => {
    const v = m.headers[k];
    return v === undefined || v === "" ? undefined : v;
  };
  const { parsed, body, text } = readBody(m.data);
  const data =
    parsed && typeof body === "object" && body !== null ? (body as { data?: unknown }).data : undefined;
  const originalSubject = h(Hdr.DlqSubject);
  const orderId =
    (parsed ? (str(body, "aggregate_id") ?? str(data, "orderId")) : undefined) ??
    (originalSubject ? ORDER_SUBJECT.exec(originalSubject)?.[1] : undefined) ??
    ORDER_SUBJECT.exec(m.subject)?.[1];
  const traceId = traceIdOf({ parsed, body, text }, h(Hdr.TraceParent));
  const dlq = {
    consumer: h(Hdr.DlqConsumer) ?? null,
    code: h(Hdr.DlqCode) ?? null,
    error: h(Hdr.DlqError) ?? null,
    attempts: int(h(Hdr.DlqAttempts)),
    stream: h(Hdr.DlqStream) ?? null,
    subject: originalSubject ?? null,
    sequence: int(h(Hdr.DlqSequence)),
    at: h(Hdr.DlqAt) ?? null,
  };
  const payload: Record<string, unknown> = {
    dlq,
    headers: m.headers,
    size: m.data.length,
  };
  putBody(payload, m.data, { parsed, body, text });
  return {
    eventId: `dlq:${m.sequence}`,
    stream: m.stream,
    streamSeq: m.sequence,
    subject: storableText(m.subject),
    eventType: DEAD_LETTER_TYPE,
    orderId: orderId !== undefined ? storableText(orderId) : null,
    source: dlq.consumer !== null ? storableText(dlq.consumer) : null,
    traceId,
    causationId: parsed ? storableOrNull(str(body, "id")) : null,
    occurredAt: normalizeTimestamp(dlq.at) ?? normalizeTimestamp(m.storedAt),
    payload: canonicalJson(payload),
  };
}

// ---------------------------------------------------------------------------------------------------
// timelines
// ---------------------------------------------------------------------------------------------------

/** The fields that order a timeline. */
export interface TimelineItem {
  position: number;
  eventId: string;
  causationId: string | null;
  occurredAt: string | null;
  recordedAt: string;
}

/**
 * Orders one order's rows as they happened: every event after the event that caused it (when that
 * one is in the timeline too), otherwise by event time, then by position. Rows are recorded in the
 * order consumers of different streams reach them, so positions alone can put an effect before its
 * cause. A causation cycle (only forged data has one) falls back to time order.
 */
export function orderTimeline<T extends TimelineItem>(rows: readonly T[]): T[] {
  const time = (r: T) => r.occurredAt ?? r.recordedAt;
  const before = (a: T, b: T) => time(a) < time(b) || (time(a) === time(b) && a.position < b.position);
  const sorted = [...rows].sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
  const ids = new Set(sorted.map((r) => r.eventId));
  const children = new Map<string, T[]>();
  const waiting = new Map<T, number>();
  for (const r of sorted) {
    const cause = r.causationId;
    if (cause !== null && cause !== r.eventId && ids.has(cause)) {
      const list = children.get(cause) ?? [];
      list.push(r);
      children.set(cause, list);
      waiting.set(r, 1);
    }
  }
  const out: T[] = [];
  const done = new Set<T>();
  // `ready` stays sorted; timelines are small, so insertion into an array is fine.
  const ready: T[] = sorted.filter((r) => !waiting.has(r));
  const insert = (r: T) => {
    let i = ready.length;
    while (i > 0 && before(r, ready[i - 1]!)) i--;
    ready.splice(i, 0, r);
  };
  while (out.length < sorted.length) {
    let next = ready.shift();
    if (next === undefined) next = sorted.find((r) => !done.has(r))!; // a cycle: break it by time
    if (done.has(next)) continue;
    done.add(next);
    out.push(next);
    for (const child of children.get(next.eventId) ?? []) {
      if (done.has(child)) continue;
      const w = (waiting.get(child) ?? 1) - 1;
      waiting.set(child, w);
      if (w === 0) insert(child);
    }
  }
  return out;
}
