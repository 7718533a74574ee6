import type { JetStreamManager } from "@nats-io/jetstream";
import { NonRetryableError } from "../../lib/errors.js";
import { Streams, type EventData, type NotificationKind } from "../../lib/events/catalog.js";
import { decodeEvent } from "../../lib/events/codec.js";
import { subjectOf, type Envelope } from "../../lib/events/envelope.js";
import { directGet } from "../../lib/messaging/direct.js";
import type { SentNotification } from "./notification.js";

/**
 * Name of the KV bucket that recorded sent e-mails before NotificationSent itself became the record. No longer
 * created, read or written; a bucket left over from an older version is harmless (nothing reads it) and may be
 * deleted with `nats kv del notifications`.
 */
export const LEGACY_NOTIFICATIONS_BUCKET = "notifications";

/**
 * The subject of an order's NotificationSent (`notifications.<orderId>.NotificationSent`): at most one message per
 * kind — the e-mail of its outcome, and for an order cancelled after its confirmation, both.
 */
export const notificationSubject = (orderId: string): string =>
  subjectOf({ type: "NotificationSent", aggregate_id: orderId });

/**
 * The subject of an order's NotificationWithheld: at most one message per kind, an e-mail withheld because the
 * customer's personal data was erased.
 */
export const withheldSubject = (orderId: string): string =>
  subjectOf({ type: "NotificationWithheld", aggregate_id: orderId });

/** An order's e-mails as recorded on its subject, with the subject's last sequence (the next append's expectation). */
export interface SentRecord {
  sent: SentNotification[];
  /** Stream sequence of the subject's last message; 0 when it has none. */
  lastSeq: number;
}

/** An order's withheld e-mails as recorded on its subject, with the subject's last sequence. */
export interface WithheldRecord {
  kinds: NotificationKind[];
  /** Stream sequence of the subject's last message; 0 when it has none. */
  lastSeq: number;
}

/** The two records of an order's e-mails, each on its own subject. */
type RecordType = "NotificationSent" | "NotificationWithheld";

/** At most this many messages are read from one order's subject (two kinds; more is a breach). */
const MAX_RECORDS = 4;

/**
 * E-mails sent, read from the NOTIFICATIONS stream: an order's NotificationSent is the record of its e-mail.
 * It is appended only when the subject is where the appender last saw it (`Nats-Expected-Last-Subject-Sequence`,
 * 0 for the first e-mail, see handlers.ts), and only when no e-mail of that kind is recorded, so the subject
 * holds at most one message per kind: the e-mail of the order's outcome, or, for an order cancelled after its
 * confirmation, the confirmation's and the cancellation's.
 */
export class NotificationStore {
  readonly #jsm: JetStreamManager;

  constructor(jsm: JetStreamManager) {
    this.#jsm = jsm;
  }

  /**
   * The e-mails recorded for an order, oldest first, and the subject's last sequence (direct gets next_by_subj:
   * any replica answers; one read per message plus one that finds nothing).
   */
  async sent(orderId: string): Promise<SentRecord> {
    const { records, lastSeq } = await this.#read(orderId, "NotificationSent");
    return {
      sent: records.map(({ event: e }) => ({
        orderId: e.data.orderId,
        kind: e.data.kind,
        messageId: e.data.messageId,
        sentAt: e.timestamp,
      })),
      lastSeq,
    };
  }

  /**
   * The kinds of e-mail recorded as withheld for an order (its NotificationWithheld records: one per kind, like
   * NotificationSent — two for an erased customer's order cancelled after its confirmation), with the subject's
   * last sequence.
   */
  async withheld(orderId: string): Promise<WithheldRecord> {
    const { records, lastSeq } = await this.#read(orderId, "NotificationWithheld");
    return { kinds: records.map(({ event }) => event.data.kind), lastSeq };
  }

  /** The records of `type` on an order's subject, oldest first, with the subject's last sequence (0: none). */
  async #read<T extends RecordType>(
    orderId: string,
    type: T,
  ): Promise<{ records: { event: Envelope<T> }[]; lastSeq: number }> {
    const subject = subjectOf({ type, aggregate_id: orderId });
    const records: { event: Envelope<T> }[] = [];
    let lastSeq = 0;
    for (let i = 0; i <= MAX_RECORDS; i++) {
      const m = await directGet(this.#jsm, Streams.NOTIFICATIONS, {
        seq: lastSeq + 1,
        next_by_subj: subject,
      });
      if (!m) return { records, lastSeq };
      lastSeq = m.seq;
      const event = decodeEvent(m.data);
      if (event.type !== type) {
        throw new NonRetryableError(
          "NOTIFICATION_RECORD_INVALID",
          `order ${orderId}: ${subject} holds a ${event.type}`,
        );
      }
      records.push({ event: event as Envelope<T> });
    }
    throw new NonRetryableError(
      "NOTIFICATION_RECORD_INVALID",
      `order ${orderId}: ${subject} holds more than ${MAX_RECORDS} messages`,
    );
  }

  /** Every e-mail sent for an order (none, one, or two for an order cancelled after its confirmation). */
  async list(orderId: string): Promise<SentNotification[]> {
    return (await this.sent(orderId)).sent;
  }
}

/** The order is not in the ORDERS stream, or its first event is not OrderPlaced. Not retryable. */
export class OrderNotFoundError extends NonRetryableError {
  override readonly name = "OrderNotFoundError";
  constructor(orderId: string, detail: string) {
    super("ORDER_PLACED_NOT_FOUND", `order ${orderId}: ${detail}`, { status: 404 });
  }
}

/**
 * Reads an order's OrderPlaced, the first event on its ORDERS subject (direct get: any replica answers).
 * @throws OrderNotFoundError when there is none.
 */
export async function readOrderPlaced(
  jsm: JetStreamManager,
  orderId: string,
): Promise<EventData<"OrderPlaced">> {
  const subject = subjectOf({ type: "OrderPlaced", aggregate_id: orderId });
  const m = await directGet(jsm, Streams.ORDERS, { seq: 1, next_by_subj: subject });
  if (!m) throw new OrderNotFoundError(orderId, `no events on ${subject}`);
  const event = decodeEvent(m.data);
  if (event.type !== "OrderPlaced") {
    throw new OrderNotFoundError(orderId, `first event on ${subject} is ${event.type}, not OrderPlaced`);
  }
  return event.data;
}
