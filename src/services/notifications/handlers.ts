import type { JetStreamManager } from "@nats-io/jetstream";
import { makeEvent, type Envelope } from "../../lib/events/envelope.js";
import type { HandlerContext, HandlerMap } from "../../lib/messaging/consumer.js";
import { NonRetryableError } from "../../lib/errors.js";
import { ConcurrencyError, type Publisher } from "../../lib/messaging/publisher.js";
import { RecentMap } from "../../lib/recent-map.js";
import type { Mailer } from "./mailer.js";
import type { PersonalData } from "../../lib/pii/personal-data.js";
import {
  cancelledMail,
  confirmedMail,
  kindOf,
  type NotificationKind,
  type NotifiedEvent,
  type SentNotification,
} from "./notification.js";
import { readOrderPlaced, type NotificationStore } from "./store.js";

/** What the notifications handler needs. */
export interface NotificationsDeps {
  /** Reads an order's NotificationSent (or NotificationWithheld) back (only on a redelivery or a lost append). */
  store: Pick<NotificationStore, "sent" | "withheld">;
  /** Opens the sealed e-mail address with the customer's data key (crypto-shredding: src/lib/pii). */
  personalData: Pick<PersonalData, "reveal">;
  mailer: Mailer;
  publisher: Publisher;
  jsm: JetStreamManager;
  /** The publishing service (`source` of events). */
  source: string;
  /** OrderPlaced data remembered from the ORDERS stream, at most this many orders (default 50,000). */
  maxRemembered?: number;
}

/** An order's subject on NOTIFICATIONS records an e-mail of another kind than its outcome: two outcomes, a bug. */
export class NotificationKindConflictError extends NonRetryableError {
  override readonly name = "NotificationKindConflictError";
  constructor(orderId: string, recorded: NotificationKind, wanted: NotificationKind) {
    super(
      "NOTIFICATION_KIND_CONFLICT",
      `order ${orderId}: NotificationSent ${recorded} already recorded, cannot record ${wanted}`,
    );
  }
}

/**
 * The notifications handlers: e-mail the customer on OrderConfirmed and OrderCancelled, then publish
 * NotificationSent. The address is read from the order's OrderPlaced and never logged.
 *
 * NotificationSent is the record of the e-mail (no KV write): it is a conditional append to the order's own
 * subject `notifications.<orderId>.NotificationSent` (`Nats-Expected-Last-Subject-Sequence: 0`), id
 * `<orderId>:NotificationSent:<kind>`. An order has one outcome, so the subject holds at most one message.
 * Idempotent under every redelivery and crash point:
 * - crash before the provider call, or between the call and the append: the redelivery calls the provider
 *   again with the same idempotency key `<orderId>:<kind>`; the provider replays the same message id, so no
 *   second e-mail and the same event;
 * - crash after the append, before the ack: the redelivery (attempt > 1) reads the subject first and finds
 *   the record: nothing sent, nothing appended. A first delivery does not look (it has not been handled
 *   before); if another copy of the event was (a reset consumer, two replicas), the append is refused
 *   (ConcurrencyError) or de-duplicated by its id, and the record is read back: the same kind means done;
 * - another kind recorded: the order would have two outcomes, an invariant breach that no retry fixes:
 *   {@link NotificationKindConflictError}, dead-lettered.
 *
 * Round trips saved: the OrderPlaced that the consumer receives anyway (it reads the whole ORDERS stream) is
 * remembered in memory until the order's e-mail, so the address is read back from the stream only when this
 * process did not see it (a restart, another replica).
 */
export function notificationHandlers(deps: NotificationsDeps): HandlerMap {
  const placed = new RecentMap<string, Envelope<"OrderPlaced">["data"]>(deps.maxRemembered ?? 50_000);

  const remember = (event: Envelope<"OrderPlaced">): Promise<void> => {
    placed.set(event.data.orderId, event.data);
    return Promise.resolve();
  };

  /** Is the e-mail of `kind` recorded? Throws when another kind is. */
  const recorded = async (orderId: string, kind: NotificationKind): Promise<SentNotification | null> => {
    const sent = await deps.store.sent(orderId);
    if (sent && sent.kind !== kind) throw new NotificationKindConflictError(orderId, sent.kind, kind);
    return sent;
  };

  /**
   * The customer's personal data was erased, so there is no address to write to: the outcome is recorded as
   * NotificationWithheld, a conditional append to the order's own subject like NotificationSent (one per order,
   * idempotent under redelivery), never a retry or a dead letter.
   */
  const withhold = async (event: Envelope<NotifiedEvent>, kind: NotificationKind, h: HandlerContext) => {
    const orderId = event.data.orderId;
    try {
      await deps.publisher.publish(
        makeEvent(
          "NotificationWithheld",
          { orderId, kind, reason: "personal_data_erased" },
          { aggregateId: orderId, source: deps.source, cause: event, idSuffix: kind },
        ),
        { expectLastSubjectSequence: 0 },
      );
      h.logger.info({ kind }, "e-mail withheld: the customer's personal data was erased");
    } catch (err) {
      if (!(err instanceof ConcurrencyError)) throw err;
      const recordedKind = await deps.store.withheld(orderId);
      if (recordedKind === null) throw err;
      if (recordedKind !== kind) throw new NotificationKindConflictError(orderId, recordedKind, kind);
    }
  };

  const notify = async (event: Envelope<NotifiedEvent>, h: HandlerContext) => {
    const orderId = event.data.orderId;
    const kind = kindOf(event.type);
    if (h.attempt > 1 && (await recorded(orderId, kind))) {
      placed.delete(orderId);
      return;
    }
    const order = placed.get(orderId) ?? (await readOrderPlaced(deps.jsm, orderId));
    const to = await deps.personalData.reveal(order.customerId, order.email);
    if (to.erased) {
      await withhold(event, kind, h);
      placed.delete(orderId);
      return;
    }
    const mail =
      event.type === "OrderConfirmed"
        ? confirmedMail(order, (event as Envelope<"OrderConfirmed">).data)
        : cancelledMail(order, (event as Envelope<"OrderCancelled">).data);
    const messageId = await deps.mailer.send(to.value, orderId, kind, mail);
    try {
      await deps.publisher.publish(
        makeEvent(
          "NotificationSent",
          { orderId, kind, messageId },
          { aggregateId: orderId, source: deps.source, cause: event, idSuffix: kind },
        ),
        { expectLastSubjectSequence: 0 },
      );
      h.logger.debug({ kind, message_id: messageId }, "customer notified");
    } catch (err) {
      if (!(err instanceof ConcurrencyError)) throw err;
      // Already recorded by another delivery of this outcome; a conflict with nothing there is retried.
      if (!(await recorded(orderId, kind))) throw err;
      h.logger.debug({ kind }, "e-mail already recorded");
    }
    placed.delete(orderId);
  };

  return { OrderPlaced: remember, OrderConfirmed: notify, OrderCancelled: notify };
}
