/**
 * Live order status over Server-Sent Events (`GET /orders/{id}/events`, issue 13 part 2).
 *
 * The order's history is its subject on ORDERS (`orders.<id>`). A stream first subscribes (core NATS) to that
 * subject, then reads the events after the client's `Last-Event-ID` by direct gets, and sends each one; every
 * message on the subscription (and, as a safety net, every `pollMs`) makes it read on from the last sequence sent.
 * So an event appended between the read and the subscription is not missed, and a message lost on the core
 * subscription (a reconnect) is found by the next poll. The SSE `id` of an event is its ORDERS stream sequence.
 *
 * The stream ends after the order's terminal event (CONFIRMED or CANCELLED). A client that reconnects with a
 * `Last-Event-ID` at or after the terminal event gets 204 (an EventSource then stops reconnecting). Comments
 * (`: heartbeat`) are sent every `heartbeatMs` so proxies keep the connection open, a stream is ended after
 * `maxLifetimeMs` (the client reconnects with its Last-Event-ID), at most `maxPerCustomer` streams are open per
 * customer (429 beyond), and everything is released when the client goes away or the service stops.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { FastifyReply } from "fastify";
import { Gauge, type Registry } from "prom-client";
import type { Logger } from "../../lib/telemetry/logger.js";
import { evolve, type Order } from "./order.js";
import { readOrderEvents, type SequencedEvent } from "./store.js";

export type { SequencedEvent };

/** Is `o` in a state no event changes any more? */
export function isTerminal(o: Order | null): boolean {
  return o?.status === "CONFIRMED" || o?.status === "CANCELLED";
}

/** Settings of the live streams. */
export interface LiveOptions {
  /** Open streams per customer (token `sub`); more get 429. */
  maxPerCustomer: number;
  /** Interval of the `: heartbeat` comments. */
  heartbeatMs: number;
  /** Interval of the safety-net read (in case a message on the core subscription was missed). */
  pollMs: number;
  /** A stream is ended after this long; the client reconnects with its Last-Event-ID. */
  maxLifetimeMs: number;
}

/** What the body of one SSE message holds: the event's type and the order as it stands after it. */
export type LiveMessage = Record<string, unknown> & { event: string; status: string };

/** The open live streams of one orders process. */
export class LiveStreams {
  readonly #perCustomer = new Map<string, number>();
  readonly #open = new Set<() => void>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly opts: LiveOptions,
    private readonly logger: Logger,
  ) {}

  /** Open streams in all. */
  get size(): number {
    return this.#open.size;
  }

  registerMetrics(registry: Registry): void {
    const size = () => this.size;
    new Gauge({
      name: "shopstream_order_live_streams",
      help: "Open GET /orders/{id}/events streams (Server-Sent Events) on this replica",
      registers: [registry],
      collect() {
        this.set(size());
      },
    });
  }

  /** May `customer` open another stream? Takes the place when yes (give it back with the returned function). */
  admit(customer: string): (() => void) | null {
    const n = this.#perCustomer.get(customer) ?? 0;
    if (n >= this.opts.maxPerCustomer) return null;
    this.#perCustomer.set(customer, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#perCustomer.get(customer) ?? 1) - 1;
      if (left <= 0) this.#perCustomer.delete(customer);
      else this.#perCustomer.set(customer, left);
    };
  }

  /**
   * Serves the stream of `orderId` from after `lastEventId` on a hijacked reply. `history` are the events already
   * read after `lastEventId` (read before answering, so that 404 and 204 could still be answered), `order` the
   * order as it stands before them. `release` gives back the customer's place when the stream ends.
   */
  serve(
    reply: FastifyReply,
    start: {
      orderId: string;
      sub: Subscription;
      order: Order | null;
      history: SequencedEvent[];
      last: number;
    },
    view: (o: Order) => Record<string, unknown>,
    release: () => void,
  ): void {
    const { orderId, sub } = start;
    const raw = reply.raw;
    let order = start.order;
    let last = start.last;
    const seen = new Set(start.history.map((h) => h.event.id));
    let closed = false;
    let reading: Promise<void> | undefined;
    let again = false;
    const timers: NodeJS.Timeout[] = [];

    const close = () => {
      if (closed) return;
      closed = true;
      for (const t of timers) clearInterval(t);
      sub.unsubscribe();
      release();
      this.#open.delete(close);
      if (!raw.writableEnded) raw.end();
    };
    this.#open.add(close);

    const send = (batch: SequencedEvent[]) => {
      for (const { seq, event } of batch) {
        order = evolve(order, event);
        if (!order || closed) continue;
        const data: LiveMessage = { event: event.type, ...view(order), status: order.status };
        raw.write(`id: ${seq}\ndata: ${JSON.stringify(data)}\n\n`);
        if (isTerminal(order)) {
          close();
          return;
        }
      }
    };

    // Reads on from the last sequence; a read asked for while one runs runs once more after it.
    const readOn = (): void => {
      if (closed) return;
      if (reading) {
        again = true;
        return;
      }
      reading = (async () => {
        do {
          again = false;
          const r = await readOrderEvents(this.jsm, orderId, last, seen);
          last = r.last;
          send(r.events);
        } while (again && !closed);
      })()
        .catch((err: unknown) => {
          this.logger.warn(
            { err, order_id: orderId },
            "live stream read failed; ending it (the client resumes)",
          );
          close();
        })
        .finally(() => (reading = undefined));
    };

    raw.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    // Tell an EventSource how soon to reconnect after the stream is ended before the order is.
    raw.write(`retry: 2000\n\n`);
    raw.on("close", close);
    send(start.history);
    if (closed) return;
    timers.push(
      setInterval(() => {
        if (!closed) raw.write(": heartbeat\n\n");
      }, this.opts.heartbeatMs),
      setInterval(readOn, this.opts.pollMs),
      setTimeout(close, this.opts.maxLifetimeMs),
    );
    for (const t of timers) t.unref();
    void (async () => {
      for await (const _m of sub) readOn();
    })().catch(() => close());
    // An event appended between the history read and the subscription is found by this first read on.
    readOn();
  }

  /** The events of `orderId` after sequence `after` (see {@link readOrderEvents}). */
  read(orderId: string, after: number): Promise<{ events: SequencedEvent[]; last: number }> {
    return readOrderEvents(this.jsm, orderId, after);
  }

  /** Subscribes to the live events of `orderId` (call before reading its history, so nothing falls between). */
  async subscribe(orderId: string): Promise<Subscription> {
    const sub = this.nc.subscribe(`orders.${orderId}`);
    await this.nc.flush();
    return sub;
  }

  /** Ends every open stream (the service is stopping; clients resume from their Last-Event-ID elsewhere). */
  closeAll(): void {
    for (const close of [...this.#open]) close();
  }
}
