import type { JetStreamManager } from "@nats-io/jetstream";
import { NonRetryableError } from "../../lib/errors.js";
import { Streams, type EventData, type NotificationKind } from "../../lib/events/catalog.js";
import { decodeEvent } from "../../lib/events/codec.js";
import { subjectOf } from "../../lib/events/envelope.js";
import { directGet } from "../../lib/messaging/direct.js";
import type { SentNotification } from "./notification.js";

/**
 * Name of the KV bucket that recorded sent e-mails before NotificationSent itself became the record. No longer
 * created, read or written; a bucket left over from an older version is harmless (nothing reads it) and may be
 * deleted with `nats kv del notifications`.
 */
export const LEGACY_NOTIFICATIONS_BUCKET = "notifications";

/** The subject of an order's NotificationSent: at most one message, its e-mail (`notifications.<orderId>.NotificationSent`). */
export const notificationSubject = (orderId: string): string =>
  subjectOf({ type: "NotificationSent", aggregate_id: orderId });

/** The subject of an order's NotificationWithheld: at most one message, its e-mail withheld after an erasure. */
export const withheldSubject = (orderId: string): string =>
  subjectOf({ type: "NotificationWithheld", aggregate_id: orderId });

/**
 * E-mails sent, read from the NOTIFICATIONS stream: an order's NotificationSent is the record of its e-mail.
 * It is appended only to an empty subject (`Nats-Expected-Last-Subject-Sequence: 0`, see handlers.ts), so the
 * subject holds at most one message per order — the one e-mail of the order's single outcome.
 */
export class NotificationStore {
  readonly #jsm: JetStreamManager;

  constructor(jsm: JetStreamManager) {
    this.#jsm = jsm;
  }

  /** The e-mail recorded for an order (its NotificationSent, direct get last_by_subj: any replica answers), or null. */
  async sent(orderId: string): Promise<SentNotification | null> {
    const m = await directGet(this.#jsm, Streams.NOTIFICATIONS, {
      last_by_subj: notificationSubject(orderId),
    });
    if (!m) return null;
    const event = decodeEvent(m.data);
    if (event.type !== "NotificationSent") {
      throw new NonRetryableError(
        "NOTIFICATION_RECORD_INVALID",
        `order ${orderId}: ${notificationSubject(orderId)} holds a ${event.type}`,
      );
    }
    const d = event.data;
    return { orderId: d.orderId, kind: d.kind, messageId: d.messageId, sentAt: event.timestamp };
  }

  /** The kind of e-mail recorded as withheld for an order (its NotificationWithheld), or null. */
  async withheld(orderId: string): Promise<NotificationKind | null> {
    const m = await directGet(this.#jsm, Streams.NOTIFICATIONS, { last_by_subj: withheldSubject(orderId) });
    if (!m) return null;
    const event = decodeEvent(m.data);
    if (event.type !== "NotificationWithheld") {
      throw new NonRetryableError(
        "NOTIFICATION_RECORD_INVALID",
        `order ${orderId}: ${withheldSubject(orderId)} holds a ${event.type}`,
      );
    }
    return event.data.kind;
  }

  /** Every e-mail sent for an order (zero or one). */
  async list(orderId: string): Promise<SentNotification[]> {
    const n = await this.sent(orderId);
    return n ? [n] : [];
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
