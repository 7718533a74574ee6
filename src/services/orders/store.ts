import { createHash } from "node:crypto";
import type { JetStreamManager } from "@nats-io/jetstream";
import {
  decodeEvent,
  isEventDecodeError,
  Streams,
  subjectOf,
  type AnyEnvelope,
  type Envelope,
} from "../../lib/events/mod.js";
import { oneAtATime, type KV } from "../../lib/kv.js";
import { directGet } from "../../lib/messaging/direct.js";
import { RecentMap } from "../../lib/recent-map.js";
import { ConcurrencyError, type Publisher } from "../../lib/messaging/publisher.js";
import { evolve, type Order } from "./order.js";

/** One event of an order with its stream sequence. */
export interface SequencedEvent {
  seq: number;
  event: AnyEnvelope;
}

/**
 * Reads the events of `orderId` stored after sequence `after`, in order (messages that are not valid events, and
 * an event stored twice, are skipped). Returns them with the last sequence read (`after` when there is none).
 */
export async function readOrderEvents(
  jsm: JetStreamManager,
  orderId: string,
  after: number,
  seen: Set<string> = new Set(),
): Promise<{ events: SequencedEvent[]; last: number }> {
  const subject = `orders.${orderId}`;
  const events: SequencedEvent[] = [];
  let last = after;
  for (;;) {
    const m = await directGet(jsm, Streams.ORDERS, {
      seq: last + 1,
      next_by_subj: subject,
    });
    if (!m) break;
    last = m.seq;
    let e: AnyEnvelope;
    try {
      e = decodeEvent(m.data);
    } catch (err) {
      if (isEventDecodeError(err)) continue;
      throw err;
    }
    if (seen.has(e.id)) continue;
    seen.add(e.id);
    events.push({ seq: m.seq, event: e });
  }
  return { events, last };
}

/** An order with the stream sequence of its last event: the expected version of the next append. */
export interface LoadedOrder {
  order: Order | null;
  version: number;
  events: AnyEnvelope[];
}

/**
 * The event store of the Order aggregate: the ORDERS stream, one subject per order (`orders.<id>`).
 * Loading reads the order's events in order; appending uses `Nats-Expected-Last-Subject-Sequence`, so
 * two replicas or two workers deciding the same order never fork it: the second gets a
 * {@link ConcurrencyError}, reloads, and finds the order already decided.
 */
export class OrderStore {
  /**
   * Orders as this process last loaded or appended them, with their version, most recent last (bounded). A
   * decision starts from here instead of reading the order's events back (two direct gets, the last one a
   * "not found"): if another writer appended meanwhile, the conditional append fails and the order is read.
   * A terminal order found here is terminal on the stream too (events are only ever appended after it).
   */
  readonly #recent: RecentMap<string, { order: Order; version: number }>;

  /** Called after this process appended an order's terminal event (OrderConfirmed or OrderCancelled). */
  onClosed: ((orderId: string) => void) | undefined;

  /**
   * Called by {@link applyDecision} after it appended a decision (`event`, OrderConfirmed or OrderCancelled) to
   * `order` (the order before it): once per order, a redelivered outcome decides nothing.
   */
  onDecided: ((order: Order, event: Envelope) => void) | undefined;

  constructor(
    private readonly jsm: JetStreamManager,
    private readonly publisher: Publisher,
    maxRecent = 20_000,
  ) {
    this.#recent = new RecentMap(maxRecent);
  }

  /** The order as this process last loaded or appended it, if it still remembers it. */
  recent(orderId: string): { order: Order; version: number } | undefined {
    return this.#recent.get(orderId);
  }

  /** Drops what this process remembers of an order (after a conflict, so the next decision reads it). */
  forget(orderId: string): void {
    this.#recent.delete(orderId);
  }

  #remember(orderId: string, order: Order | null, version: number): void {
    if (order) this.#recent.set(orderId, { order, version });
    else this.#recent.delete(orderId);
  }

  /**
   * Rebuilds an order from its events (null when it has none). A message on the subject that is not a
   * valid event (every consumer dead-letters it) is no part of the order's history, and an event stored
   * twice (the same id under another message id) is applied once; both still count for the version.
   */
  async load(orderId: string): Promise<LoadedOrder> {
    const { events, last: version } = await readOrderEvents(this.jsm, orderId, 0);
    const order = events.reduce<Order | null>((o, { event }) => evolve(o, event), null);
    this.#remember(orderId, order, version);
    return { order, version, events: events.map(({ event }) => event) };
  }

  /**
   * Appends an event to its order if the order is still at `expectedVersion` (0 for a new order).
   * A retry of the same event (same id) inside the duplicate window is accepted as already stored.
   * @throws ConcurrencyError when another event was appended first.
   */
  async append(event: Envelope, expectedVersion: number): Promise<number> {
    if (subjectOf(event) !== `orders.${event.aggregate_id}`)
      throw new Error(`${event.type} is not an order event`);
    const orderId = event.aggregate_id;
    const before = expectedVersion === 0 ? null : this.#recent.get(orderId);
    let ack;
    try {
      ack = await this.publisher.publish(event, { expectLastSubjectSequence: expectedVersion });
    } catch (err) {
      this.forget(orderId);
      throw err;
    }
    // Remember the order after the event only when the order before it is known at that very version.
    if (before === null || before?.version === expectedVersion)
      this.#remember(orderId, evolve(before?.order ?? null, event as AnyEnvelope), ack.seq);
    else this.forget(orderId);
    if (event.type === "OrderConfirmed" || event.type === "OrderCancelled") this.onClosed?.(orderId);
    return ack.seq;
  }
}

/** A request remembered under its Idempotency-Key. */
export interface IdempotencyRecord {
  fingerprint: string;
  orderId: string;
  at: string;
}

/**
 * Remembers `Idempotency-Key`s of POST /orders in KV (`order-requests`), keyed by a hash of the key,
 * with compare-and-set create so two concurrent requests with one key make one order.
 */
export class IdempotencyKeys {
  constructor(private readonly kv: KV) {}

  static keyOf(idempotencyKey: string): string {
    return createHash("sha256").update(idempotencyKey).digest("hex");
  }

  /** Claims the key for `record`; returns the record already stored when the key was taken. */
  async claim(idempotencyKey: string, record: IdempotencyRecord): Promise<IdempotencyRecord | null> {
    const key = IdempotencyKeys.keyOf(idempotencyKey);
    // One claim of a key at a time in this process: two concurrent creates could both succeed on a clustered
    // nats-server before 2.9.21 (see KeyedQueue), making two orders of one request.
    return oneAtATime(this.kv, key, async () => {
      try {
        await this.kv.create(key, JSON.stringify(record));
        return null;
      } catch (err) {
        const e = await this.kv.get(key);
        if (e && e.operation === "PUT") return e.json<IdempotencyRecord>();
        throw err;
      }
    });
  }
}

/** Index of orders by customer in KV (`orders-by-customer`): key `<hash(customerId)>.<orderId>`. */
export class CustomerIndex {
  constructor(private readonly kv: KV) {}

  static prefix(customerId: string): string {
    return createHash("sha256").update(customerId).digest("hex").slice(0, 32);
  }

  async add(customerId: string, orderId: string): Promise<void> {
    await this.kv.put(`${CustomerIndex.prefix(customerId)}.${orderId}`, "");
  }

  /** Order ids of a customer, newest first (ids sort by creation time). */
  async list(customerId: string): Promise<string[]> {
    const ids: string[] = [];
    const keys = await this.kv.keys(`${CustomerIndex.prefix(customerId)}.*`);
    for await (const k of keys) ids.push(k.slice(k.indexOf(".") + 1));
    return ids.sort().reverse();
  }
}

export { ConcurrencyError };
