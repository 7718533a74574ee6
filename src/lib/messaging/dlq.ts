import { errors as natsErrors, headers as natsHeaders } from "@nats-io/transport-node";
import { JetStreamApiError, type JetStreamManager, type JsMsg, type StoredMsg } from "@nats-io/jetstream";
import { Streams } from "../events/catalog.js";
import { NonRetryableError } from "../errors.js";
import { Hdr } from "./headers.js";
import { PublishError, type Publisher } from "./publisher.js";

/** Subject prefix of the DLQ stream; a dead letter of consumer C lands on `dlq.C`. */
export const DLQ_SUBJECT_PREFIX = "dlq";
/**
 * Subject prefix of discard records in the DLQ stream: discarding the entry of consumer C writes a record on
 * `dlq._discarded.C` (the reason, who, and the entry's DLQ headers, no body), which the audit projector records like
 * every DLQ message; then the entry is deleted. Not a dead letter: {@link listDeadLetters} skips them.
 */
export const DISCARD_SUBJECT_PREFIX = `${DLQ_SUBJECT_PREFIX}._discarded`;

/** The DLQ stream: every message a consumer gave up on, with why. */
export const dlqStreamSpec = {
  name: Streams.DLQ,
  subjects: [`${DLQ_SUBJECT_PREFIX}.>`],
  description: "Dead letters: messages past max attempts or non-retryable, with the error in headers",
};

/**
 * The codes the consumer runner itself puts on a DLQ entry (`Shopstream-Dlq-Code`); every other code is the
 * `code` of the error the handler threw (e.g. `GATEWAY_DOWN`, `EVENT_SCHEMA_INVALID`).
 */
export const DeadLetterCode = {
  /** The handler threw something that is not a ShopStream error, on its last attempt. */
  HandlerFailed: "HANDLER_FAILED",
  /**
   * The handler did not settle within the consumer's handler timeout on its last attempt (each earlier timeout
   * was a failed attempt too); the hung call was abandoned.
   */
  HandlerTimeout: "HANDLER_TIMEOUT",
  /**
   * The server had delivered the message more often than the consumer's `maxDeliveries`: earlier deliveries
   * ended without any outcome (the process died or hung while handling it). Dead-lettered without running the
   * handler again.
   */
  MaxDeliveries: "MAX_DELIVERIES",
} as const;
export type DeadLetterCode = (typeof DeadLetterCode)[keyof typeof DeadLetterCode];

/** Why a message was dead-lettered. */
export interface DeadLetterReason {
  consumer: string;
  code: string;
  error: string;
  attempts: number;
}

/**
 * Copies a delivered message to the DLQ with its error, attempt count, original stream, subject and
 * sequence in headers (the body and original headers kept as they were). The DLQ message id is
 * `<stream>:<seq>:<consumer>`, so copying the same delivery twice (a crash before `term`) stores it once.
 * The caller `term`s the original only after this resolves.
 *
 * A message close to the size limit does not fit once the DLQ headers are added; its entry is then stored
 * without the body and with `Shopstream-Dlq-Body-Omitted: <size>` — the body stays in its own stream at the
 * recorded sequence, where {@link redriveDeadLetter} reads it back. It is never retried for that.
 */
export async function deadLetter(publisher: Publisher, msg: JsMsg, reason: DeadLetterReason): Promise<void> {
  const h = natsHeaders();
  if (msg.headers) {
    for (const k of msg.headers.keys()) {
      if (k.startsWith("Nats-")) continue;
      for (const v of msg.headers.values(k)) h.append(k, v);
    }
  }
  h.set(Hdr.DlqConsumer, reason.consumer);
  h.set(Hdr.DlqCode, reason.code);
  h.set(Hdr.DlqError, reason.error.replace(/[\r\n]+/g, " ").slice(0, 1024));
  h.set(Hdr.DlqAttempts, String(reason.attempts));
  h.set(Hdr.DlqStream, msg.info.stream);
  h.set(Hdr.DlqSubject, msg.subject);
  h.set(Hdr.DlqSequence, String(msg.seq));
  h.set(Hdr.DlqAt, new Date().toISOString());
  const subject = `${DLQ_SUBJECT_PREFIX}.${reason.consumer}`;
  const msgID = `${msg.info.stream}:${msg.seq}:${reason.consumer}`;
  try {
    await publisher.publishRaw(subject, msg.data, { msgID, headers: h, stream: Streams.DLQ });
  } catch (err) {
    if (!isTooLarge(err)) throw err;
    h.set(Hdr.DlqBodyOmitted, String(msg.data.length));
    await publisher.publishRaw(subject, new Uint8Array(0), { msgID, headers: h, stream: Streams.DLQ });
  }
}

/** Was a publish refused because the message exceeds the server's max_payload or the stream's max_msg_size? */
function isTooLarge(err: unknown): boolean {
  const cause = err instanceof PublishError ? err.cause : err;
  return (
    (cause instanceof natsErrors.InvalidArgumentError && cause.message.includes("max_payload")) ||
    (cause instanceof JetStreamApiError && cause.code === 10054) // message size exceeds maximum allowed
  );
}

/** One DLQ entry as listed/inspected by operators. */
export interface DeadLetter {
  dlqSequence: number;
  consumer: string;
  code: string;
  error: string;
  attempts: number;
  stream: string;
  subject: string;
  sequence: number;
  at: string;
  type: string | undefined;
  /** The body; empty when `bodyOmitted` (then it is in `stream` at `sequence`). */
  data: Uint8Array;
  /** True when the entry was stored without the body because the copy would have been too large. */
  bodyOmitted: boolean;
  /** How often this message had been redriven before it landed here again (0: never). */
  redrives: number;
  /** Its earlier dead-letterings, oldest first (one per redrive); this entry itself is not in it. */
  history: AttemptRecord[];
  /** Every header of the entry, first value each (the event's own ones and the DLQ's). */
  headers: Record<string, string>;
}

/** One dead-lettering of a message: when, by which consumer, why, after how many attempts. */
export interface AttemptRecord {
  at: string;
  consumer: string;
  code: string;
  attempts: number;
  error: string;
}

/** Headers a direct get adds to the stored message (nats-server's JSApiMsgGet reply), not part of the entry. */
const DIRECT_GET_HEADERS = new Set([
  "Nats-Stream",
  "Nats-Sequence",
  "Nats-Subject",
  "Nats-Time-Stamp",
  "Nats-Last-Sequence",
  "Nats-Num-Pending",
]);

function parseHistory(values: string[]): AttemptRecord[] {
  const out: AttemptRecord[] = [];
  for (const v of values) {
    try {
      const r = JSON.parse(v) as Partial<AttemptRecord>;
      out.push({
        at: String(r.at ?? ""),
        consumer: String(r.consumer ?? ""),
        code: String(r.code ?? ""),
        attempts: Number(r.attempts ?? 0),
        error: String(r.error ?? ""),
      });
    } catch {
      /* a malformed value is not history */
    }
  }
  return out;
}

function toDeadLetter(m: StoredMsg): DeadLetter {
  const g = (k: string) => m.header.get(k);
  const headers: Record<string, string> = {};
  // The event's own headers and the DLQ's; not the Nats-* ones a direct get adds (stream, sequence, time), so an
  // entry reads the same whether it was listed (direct get) or inspected (a get through the stream leader).
  for (const k of m.header.keys()) if (!DIRECT_GET_HEADERS.has(k)) headers[k] = m.header.get(k);
  const redrives = Number(g(Hdr.RedriveCount));
  return {
    dlqSequence: m.seq,
    consumer: g(Hdr.DlqConsumer),
    code: g(Hdr.DlqCode),
    error: g(Hdr.DlqError),
    attempts: Number(g(Hdr.DlqAttempts)),
    stream: g(Hdr.DlqStream),
    subject: g(Hdr.DlqSubject),
    sequence: Number(g(Hdr.DlqSequence)),
    at: g(Hdr.DlqAt),
    type: g(Hdr.Type) || undefined,
    data: m.data,
    bodyOmitted: m.header.has(Hdr.DlqBodyOmitted),
    redrives: Number.isInteger(redrives) && redrives > 0 ? redrives : 0,
    history: m.header.has(Hdr.RedriveHistory) ? parseHistory(m.header.values(Hdr.RedriveHistory)) : [],
    headers,
  };
}

/**
 * Entries in the DLQ per consumer (the counts of the subjects `dlq.<consumer>`), from the DLQ stream's info: what
 * `shopstream_dlq_messages{consumer}` reports. Every consumer of `known` is in the answer, with 0 when it has none.
 */
export async function deadLettersByConsumer(
  jsm: JetStreamManager,
  known: Iterable<string> = [],
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const c of known) out.set(c, 0);
  const info = await jsm.streams.info(Streams.DLQ, { subjects_filter: `${DLQ_SUBJECT_PREFIX}.>` });
  for (const [subject, n] of Object.entries(info.state.subjects ?? {}))
    if (!subject.startsWith(`${DISCARD_SUBJECT_PREFIX}.`))
      out.set(subject.slice(DLQ_SUBJECT_PREFIX.length + 1), n);
  return out;
}

/** Lists DLQ entries (oldest first), optionally only those of one consumer; discard records are not entries. */
export async function listDeadLetters(
  jsm: JetStreamManager,
  opts: { consumer?: string; limit?: number } = {},
): Promise<DeadLetter[]> {
  const out: DeadLetter[] = [];
  const limit = opts.limit ?? 100;
  const subject = opts.consumer ? `${DLQ_SUBJECT_PREFIX}.${opts.consumer}` : `${DLQ_SUBJECT_PREFIX}.>`;
  let seq = 1;
  while (out.length < limit) {
    let m: StoredMsg | null;
    try {
      m = await jsm.direct.getMessage(Streams.DLQ, { seq, next_by_subj: subject });
    } catch {
      break;
    }
    if (!m) break;
    seq = m.seq + 1;
    if (m.subject.startsWith(`${DISCARD_SUBJECT_PREFIX}.`)) continue;
    out.push(toDeadLetter(m));
  }
  return out;
}

/** Reads one DLQ entry by its DLQ sequence (null when there is none, or it is a discard record). */
export async function inspectDeadLetter(
  jsm: JetStreamManager,
  dlqSequence: number,
): Promise<DeadLetter | null> {
  const m = await jsm.streams.getMessage(Streams.DLQ, { seq: dlqSequence }).catch(() => null);
  return m && !m.subject.startsWith(`${DISCARD_SUBJECT_PREFIX}.`) ? toDeadLetter(m) : null;
}

/** There is no DLQ entry with that sequence (code `DLQ_ENTRY_NOT_FOUND`, HTTP 404). */
export class DeadLetterNotFoundError extends NonRetryableError {
  override readonly name = "DeadLetterNotFoundError";
  constructor(readonly dlqSequence: number) {
    super("DLQ_ENTRY_NOT_FOUND", `no DLQ entry ${dlqSequence}`, { status: 404 });
  }
}

/**
 * The message of a DLQ entry has been redriven as often as allowed already (code `REDRIVE_LIMIT`, HTTP 409):
 * it keeps failing, so redriving it again would only loop. Discard it with a reason, or fix the cause and raise
 * the cap.
 */
export class RedriveLimitError extends NonRetryableError {
  override readonly name = "RedriveLimitError";
  constructor(
    readonly dlqSequence: number,
    readonly redrives: number,
  ) {
    super(
      "REDRIVE_LIMIT",
      `DLQ entry ${dlqSequence} has been redriven ${redrives} times already, the most allowed: discard it with a reason instead`,
      { status: 409 },
    );
  }
}

async function getEntry(jsm: JetStreamManager, dlqSequence: number): Promise<StoredMsg> {
  const m = await jsm.streams.getMessage(Streams.DLQ, { seq: dlqSequence }).catch((err: unknown) => {
    if (err instanceof JetStreamApiError && err.code === 404) return null;
    throw err;
  });
  if (!m || m.subject.startsWith(`${DISCARD_SUBJECT_PREFIX}.`))
    throw new DeadLetterNotFoundError(dlqSequence);
  return m;
}

/**
 * Discards a DLQ entry with a reason: writes a discard record on `dlq._discarded.<consumer>` (message id
 * `discard:<dlqSequence>`, so doing it twice records it once) carrying the entry's DLQ headers, the reason and who,
 * without the body — the audit projector records it on the order's trail — then deletes the entry. Nothing is
 * republished.
 */
export async function discardDeadLetter(
  jsm: JetStreamManager,
  publisher: Publisher,
  dlqSequence: number,
  opts: { reason: string; by: string },
): Promise<{ recordSeq: number }> {
  const m = await getEntry(jsm, dlqSequence);
  const dl = toDeadLetter(m);
  const h = natsHeaders();
  for (const k of m.header.keys()) {
    if (k.startsWith("Nats-")) continue;
    for (const v of m.header.values(k)) h.append(k, v);
  }
  h.set(Hdr.DlqDiscarded, String(dlqSequence));
  h.set(Hdr.DlqDiscardReason, opts.reason.replace(/[\r\n]+/g, " ").slice(0, 1024));
  h.set(Hdr.DlqDiscardedBy, opts.by.replace(/[\r\n]+/g, " ").slice(0, 128));
  const ack = await publisher.publishRaw(`${DISCARD_SUBJECT_PREFIX}.${dl.consumer}`, new Uint8Array(0), {
    msgID: `discard:${dlqSequence}`,
    headers: h,
    stream: Streams.DLQ,
  });
  await jsm.streams.deleteMessage(Streams.DLQ, dlqSequence, false);
  return { recordSeq: ack.seq };
}

/**
 * Redrives a DLQ entry: republishes its body and headers to the original subject (with message id
 * `redrive:<dlqSequence>` so it is not taken for a duplicate of the original, and a
 * `Shopstream-Redrive` header), then removes the entry from the DLQ. Every consumer of that subject
 * sees the event again; handlers are idempotent, so only the one that failed has work to do. An entry
 * stored without its body (too large to copy) is redriven with the body read from the original stream.
 *
 * The republished message counts its redrives (`Shopstream-Redrive-Count`) and carries this entry's attempt record
 * in `Shopstream-Redrive-History`, so a message that fails again arrives in the DLQ with its history; with
 * `maxRedrives`, an entry whose message has been redriven that often already is refused ({@link RedriveLimitError}).
 */
export async function redriveDeadLetter(
  jsm: JetStreamManager,
  publisher: Publisher,
  dlqSequence: number,
  opts: { maxRedrives?: number } = {},
): Promise<{ subject: string; seq: number; redrives: number }> {
  const m = await getEntry(jsm, dlqSequence);
  const dl = toDeadLetter(m);
  if (opts.maxRedrives !== undefined && dl.redrives >= opts.maxRedrives)
    throw new RedriveLimitError(dlqSequence, dl.redrives);
  const h = natsHeaders();
  for (const k of m.header.keys()) {
    if (k.startsWith("Nats-") || k.startsWith("Shopstream-Dlq-") || k === Hdr.RedriveCount) continue;
    for (const v of m.header.values(k)) h.append(k, v);
  }
  h.set(Hdr.Redrive, String(dlqSequence));
  h.set(Hdr.RedriveCount, String(dl.redrives + 1));
  const record: AttemptRecord = {
    at: dl.at,
    consumer: dl.consumer,
    code: dl.code,
    attempts: dl.attempts,
    error: dl.error.slice(0, 256),
  };
  // A message stored without its body was too large to carry the DLQ's headers: it has no room for a history
  // either (its redrive count still travels), so a message near the size limit is republished whole.
  if (!dl.bodyOmitted) h.append(Hdr.RedriveHistory, JSON.stringify(record));
  let data = m.data;
  if (dl.bodyOmitted) {
    const original = await jsm.streams.getMessage(dl.stream, { seq: dl.sequence }).catch(() => null);
    if (!original) {
      throw new Error(
        `DLQ entry ${dlqSequence} has no body and ${dl.stream} no longer has sequence ${dl.sequence}`,
      );
    }
    data = original.data;
  }
  const ack = await publisher.publishRaw(dl.subject, data, {
    msgID: `redrive:${dlqSequence}`,
    headers: h,
    stream: dl.stream,
  });
  await jsm.streams.deleteMessage(Streams.DLQ, dlqSequence, false);
  return { subject: dl.subject, seq: ack.seq, redrives: dl.redrives + 1 };
}
