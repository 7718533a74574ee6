import type { JetStreamManager } from "@nats-io/jetstream";
import { makeEvent, type Envelope } from "../../lib/events/envelope.js";
import type { HandlerContext, HandlerMap } from "../../lib/messaging/consumer.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
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
}

/**
 * The notifications handlers: e-mail the customer on OrderConfirmed and OrderCancelled, then publish
 * NotificationSent. Idempotent: a recorded send is not repeated, an unrecorded one is repeated with the
 * same idempotency key (the provider replays it), and the event id is `<orderId>:NotificationSent:<kind>`.
 * The address is read from the order's OrderPlaced and never logged.
 */
export function notificationHandlers(deps: NotificationsDeps): HandlerMap {
  const now = deps.now ?? (() => new Date());

  const notify = async (event: Envelope<NotifiedEvent>, h: HandlerContext) => {
    const orderId = event.data.orderId;
    const kind = kindOf(event.type);
    let sent = await deps.store.get(orderId, kind);
    if (!sent) {
      const order = await readOrderPlaced(deps.jsm, orderId);
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
  };

  return { OrderConfirmed: notify, OrderCancelled: notify };
}
