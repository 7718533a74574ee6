import type { JetStreamManager } from "@nats-io/jetstream";
import { isRequestedCancel } from "../../lib/events/catalog.js";
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
} from "./notification.js";
import { readOrderPlaced, type NotificationStore } from "./store.js";

/** What the notifications handler needs. */
export interface NotificationsDeps {
  /** Reads an order's NotificationSent (or NotificationWithheld) records back (only on a redelivery or a lost append). */
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

/**
 * An order's subject on NOTIFICATIONS cannot take the e-mail: it holds a message that is no NotificationSent, or
 * more records than an order can have. A breach no retry fixes (dead-lettered).
 */
export class NotificationKindConflictError extends NonRetryableError {
  override readonly name = "NotificationKindConflictError";
  constructor(orderId: string, recorded: NotificationKind, wanted: NotificationKind) {
    super(
      "NOTIFICATION_KIND_CONFLICT",
      `order ${orderId}: an e-mail ${recorded} already recorded, cannot record ${wanted}`,
    );
  }
}

/** Conditional appends tried before an e-mail's record gives up (retryably): each loss means another kind landed. */
const MAX_APPEND_TRIES = 3;

/**
 * The notifications handlers: e-mail the customer on OrderConfirmed and OrderCancelled, then publish
 * NotificationSent. The address is read from the order's OrderPlaced and never logged.
 *
 * NotificationSent is the record of the e-mail (no KV write): it is a conditional append to the order's own
 * subject `notifications.<orderId>.NotificationSent`, id `<orderId>:NotificationSent:<kind>`, expecting the
 * subject's last sequence as last seen (0 on a first delivery: an order's first e-mail goes to an empty subject).
 * The subject holds at most one message per kind: one for an order's outcome, two for an order cancelled after its
 * confirmation (`order_confirmed`, then `order_cancelled`; in the other order if the two events were handled the
 * other way round). Idempotent under every redelivery and crash point:
 * - crash before the provider call, or between the call and the append: the redelivery calls the provider
 *   again with the same idempotency key `<orderId>:<kind>`; the provider replays the same message id, so no
 *   second e-mail and the same event;
 * - crash after the append, before the ack: the redelivery (attempt > 1) reads the subject first and finds
 *   the record: nothing sent, nothing appended. A first delivery does not look (it has not been handled
 *   before); if another copy of the event was (a reset consumer, two replicas), or the other kind was recorded
 *   first, the append is refused (ConcurrencyError) and the subject read back: this kind there means done;
 *   otherwise the append is tried again at the subject's last sequence — unless this is a cancellation that is not
 *   a request (only a request may cancel a confirmed order: a forked order, {@link NotificationKindConflictError},
 *   dead-lettered), or the subject already holds two records.
 */
export function notificationHandlers(deps: NotificationsDeps): HandlerMap {
  const placed = new RecentMap<string, Envelope<"OrderPlaced">["data"]>(deps.maxRemembered ?? 50_000);

  const remember = (event: Envelope<"OrderPlaced">): Promise<void> => {
    placed.set(event.data.orderId, event.data);
    return Promise.resolve();
  };

  /** Only a cancellation on request may follow a confirmation (a second e-mail); any other is a forked order. */
  const refuseForkedCancel = (event: Envelope<NotifiedEvent>, recorded: readonly NotificationKind[]) => {
    if (event.type !== "OrderCancelled" || recorded.length === 0) return;
    if (isRequestedCancel((event as Envelope<"OrderCancelled">).data.reason)) return;
    throw new NotificationKindConflictError(event.data.orderId, recorded[0]!, kindOf(event.type));
  };

  /**
   * Appends an order's record of `kind` (its NotificationSent or NotificationWithheld) to the record's subject,
   * expecting the subject's last sequence `expected`. A refused append reads the subject back: this kind there means
   * done (another delivery recorded it); otherwise it is tried again at the subject's last sequence — unless this
   * is a cancellation that is not a request after a confirmation (a forked order), or the subject already holds two
   * records ({@link NotificationKindConflictError}, dead-lettered).
   */
  const record = async (
    event: Envelope<NotifiedEvent>,
    recordEvent: Envelope,
    expected: number,
    read: () => Promise<{ kinds: NotificationKind[]; lastSeq: number }>,
    h: HandlerContext,
  ): Promise<void> => {
    const orderId = event.data.orderId;
    const kind = kindOf(event.type);
    for (let i = 0; ; i++) {
      try {
        await deps.publisher.publish(recordEvent, { expectLastSubjectSequence: expected });
        return;
      } catch (err) {
        if (!(err instanceof ConcurrencyError)) throw err;
        // Already recorded by another delivery of this outcome, or the order's other e-mail landed first.
        const recorded = await read();
        if (recorded.kinds.includes(kind)) {
          h.logger.debug({ kind, record: recordEvent.type }, "e-mail already recorded");
          return;
        }
        refuseForkedCancel(event, recorded.kinds);
        if (recorded.kinds.length >= 2) {
          throw new NotificationKindConflictError(orderId, recorded.kinds[recorded.kinds.length - 1]!, kind);
        }
        if (i + 1 >= MAX_APPEND_TRIES) throw err;
        expected = recorded.lastSeq;
      }
    }
  };

  const sentKinds = async (orderId: string) => {
    const r = await deps.store.sent(orderId);
    return { kinds: r.sent.map((n) => n.kind), lastSeq: r.lastSeq };
  };

  const notify = async (event: Envelope<NotifiedEvent>, h: HandlerContext) => {
    const orderId = event.data.orderId;
    const kind = kindOf(event.type);
    let expected = 0;
    if (h.attempt > 1) {
      const recorded = await sentKinds(orderId);
      if (recorded.kinds.includes(kind)) {
        placed.delete(orderId);
        return;
      }
      refuseForkedCancel(event, recorded.kinds);
      expected = recorded.lastSeq;
    }
    const order = placed.get(orderId) ?? (await readOrderPlaced(deps.jsm, orderId));
    const to = await deps.personalData.reveal(order.customerId, order.email);
    if (to.erased) {
      // No address to write to: the outcome is recorded as NotificationWithheld on the order's own subject (one per
      // kind, like NotificationSent; idempotent under redelivery), never a retry or a dead letter.
      const withheld = makeEvent(
        "NotificationWithheld",
        { orderId, kind, reason: "personal_data_erased" },
        { aggregateId: orderId, source: deps.source, cause: event, idSuffix: kind },
      );
      await record(event, withheld, 0, () => deps.store.withheld(orderId), h);
      h.logger.info({ kind }, "e-mail withheld: the customer's personal data was erased");
      placed.delete(orderId);
      return;
    }
    const mail =
      event.type === "OrderConfirmed"
        ? confirmedMail(order, (event as Envelope<"OrderConfirmed">).data)
        : cancelledMail(order, (event as Envelope<"OrderCancelled">).data);
    const messageId = await deps.mailer.send(to.value, orderId, kind, mail);
    const sentEvent = makeEvent(
      "NotificationSent",
      { orderId, kind, messageId },
      { aggregateId: orderId, source: deps.source, cause: event, idSuffix: kind },
    );
    await record(event, sentEvent, expected, () => sentKinds(orderId), h);
    h.logger.debug({ kind, message_id: messageId }, "customer notified");
    placed.delete(orderId);
  };

  return { OrderPlaced: remember, OrderConfirmed: notify, OrderCancelled: notify };
}
