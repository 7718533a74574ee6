import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { NonRetryableError } from "../../lib/errors.js";
import { Streams, type EventData } from "../../lib/events/catalog.js";
import { decodeEvent } from "../../lib/events/codec.js";
import { subjectOf } from "../../lib/events/envelope.js";
import { Unchanged, casUpdate, openBucket, readJson, type KV } from "../../lib/kv.js";
import { directGet } from "../../lib/messaging/direct.js";
import type { NotificationKind, SentNotification } from "./notification.js";

/** Name of the KV bucket recording sent e-mails, key `<orderId>.<kind>`. */
export const NOTIFICATIONS_BUCKET = "notifications";

const kinds: NotificationKind[] = ["order_confirmed", "order_cancelled"];

/** E-mails sent, one record per (order, kind), in the `notifications` KV bucket. */
export class NotificationStore {
  readonly #kv: KV;

  constructor(kv: KV) {
    this.#kv = kv;
  }

  static async open(nc: NatsConnection, replicas = 1): Promise<NotificationStore> {
    const kv = await openBucket(nc, NOTIFICATIONS_BUCKET, {
      replicas,
      description: "E-mails sent per order and kind (notifications service)",
    });
    return new NotificationStore(kv);
  }

  async get(orderId: string, kind: NotificationKind): Promise<SentNotification | null> {
    return (await readJson<SentNotification>(this.#kv, `${orderId}.${kind}`)).value;
  }

  /** Every e-mail sent for an order. */
  async list(orderId: string): Promise<SentNotification[]> {
    const all = await Promise.all(kinds.map((k) => this.get(orderId, k)));
    return all.filter((n): n is SentNotification => n !== null);
  }

  /** Records a sent e-mail; the first record wins (a redo of the same send has the same message id). */
  async record(n: SentNotification): Promise<SentNotification> {
    // Usually absent: try the create first, read only when it exists.
    const r = await casUpdate<SentNotification>(
      this.#kv,
      `${n.orderId}.${n.kind}`,
      (cur) => (cur === null ? n : Unchanged),
      { known: { value: null, revision: 0 } },
    );
    return r.value ?? n;
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
