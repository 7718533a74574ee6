import type { JetStreamManager } from "@nats-io/jetstream";
import { makeEvent, type Envelope } from "../../lib/events/envelope.js";
import type { HandlerContext, HandlerMap } from "../../lib/messaging/consumer.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import { RecentMap } from "../../lib/recent-map.js";
import type { Mailer } from "./mailer.js";
import { cancelledMail, confirmedMail, kindOf, type NotifiedEvent } from "./notification.js";
import { readOrderPlaced, type NotificationStore } from "./store.js";

/** What the notifications handler needs. */
export interface NotificationsDeps {
  store: NotificationStore;
  mailer: Mailer;
  publisher: Publisher;
  jsm: JetStreamManager;
  /** The publishing service (`source` of events). */
  source: string;
  now?: () => Date;
  /** OrderPlaced data remembered from the ORDERS stream, at most this many orders (default 50,000). */
  maxRemembered?: number;
}

/**
 * The notifications handlers: e-mail the customer on OrderConfirmed and OrderCancelled, then publish
 * NotificationSent. Idempotent: a recorded send is not repeated, an unrecorded one is repeated with the
 * same idempotency key (the provider replays it), and the event id is `<orderId>:NotificationSent:<kind>`.
 * The address is read from the order's OrderPlaced and never logged.
 *
 * Round trips saved on the way (each is a NATS request per order): the OrderPlaced that the consumer receives
 * anyway (it reads the whole ORDERS stream) is remembered in memory until the order's e-mail, so the address
 * is read back from the stream only when this process did not see it (a restart, another replica); and on
 * a first delivery the sent-record is not looked up first: a first delivery has not been handled before,
 * and if another copy of the event was (a reset consumer), the provider replays the e-mail for its key and
 * the record already stored wins.
 */
export function notificationHandlers(deps: NotificationsDeps): HandlerMap {
  const now = deps.now ?? (() => new Date());
  const placed = new RecentMap<string, Envelope<"OrderPlaced">["data"]>(deps.maxRemembered ?? 50_000);

  const remember = (event: Envelope<"OrderPlaced">): Promise<void> => {
    placed.set(event.data.orderId, event.data);
    return Promise.resolve();
  };

  const notify = async (event: Envelope<NotifiedEvent>, h: HandlerContext) => {
    const orderId = event.data.orderId;
    const kind = kindOf(event.type);
    let sent = h.attempt > 1 ? await deps.store.get(orderId, kind) : null;
    if (!sent) {
      const order = placed.get(orderId) ?? (await readOrderPlaced(deps.jsm, orderId));
      const mail =
        event.type === "OrderConfirmed"
          ? confirmedMail(order, (event as Envelope<"OrderConfirmed">).data)
          : cancelledMail(order, (event as Envelope<"OrderCancelled">).data);
      const messageId = await deps.mailer.send(order.email, orderId, kind, mail);
      sent = await deps.store.record({ orderId, kind, messageId, sentAt: now().toISOString() });
      h.logger.debug({ kind, message_id: sent.messageId }, "customer notified");
    }
    await deps.publisher.publish(
      makeEvent(
        "NotificationSent",
        { orderId, kind, messageId: sent.messageId },
        { aggregateId: orderId, source: deps.source, cause: event, idSuffix: kind },
      ),
    );
    placed.delete(orderId);
  };

  return { OrderPlaced: remember, OrderConfirmed: notify, OrderCancelled: notify };
}
