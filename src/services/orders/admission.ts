import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { Counter, Gauge, type Registry } from "prom-client";
import { Hdr } from "../../lib/messaging/headers.js";
import type { Logger } from "../../lib/telemetry/logger.js";

/**
 * An order past its deadline by this much is no longer counted even if no terminal event was seen for it: the
 * timer has then failed to close it (its OrderPlaced dead-lettered, say), and counting it would only shrink the
 * limit until a restart. Long enough that a timer lagging behind a backlog still closes the order first.
 */
export const EXPIRY_GRACE_MS = 60_000;

/** A place taken by one `POST /orders` from admission until the order is placed or the request ends. */
export interface AdmissionSlot {
  /**
   * The request is about to append the OrderPlaced of `orderId`: from now on the order itself is counted (until
   * its terminal event, or `timeoutAt` + {@link EXPIRY_GRACE_MS}). Call it before the append, so a terminal event
   * that overtakes the append's answer still finds it.
   */
  track(orderId: string, timeoutAt: number): void;
  /** The append did not place a new order (it failed, or the order already existed): do not count it. */
  untrack(): void;
  /** The request is done: frees the slot unless it became a tracked order. Idempotent. */
  release(): void;
}

/**
 * Admission control of `POST /orders`, per replica: the orders this process placed and has not seen closed
 * (CONFIRMED or CANCELLED, timeouts included), plus the requests admitted and not yet answered. Beyond `limit`,
 * new orders are shed (503 with Retry-After) before anything is written.
 *
 * It learns that an order is closed from its own appends (the decisions this process makes) and from a core
 * subscription to the ORDERS subjects, which also carries the decisions other replicas make on its orders; the
 * type header is read only for orders it tracks. Terminal events of orders it does not track (placed by another
 * replica, or before a restart) change nothing, so the count never goes below zero. After a reconnect, when
 * terminal events may have been missed, every tracked order is checked against the stream once; an order still
 * unseen long after its deadline expires ({@link EXPIRY_GRACE_MS}).
 */
export class OrdersInFlight {
  /** 0 = no limit (counted, never shed). */
  readonly limit: number;
  /** Tracked order id → when it stops counting anyway (ms). Insertion order ≈ placement order ≈ expiry order. */
  readonly #orders = new Map<string, number>();
  #reserved = 0;
  readonly #now: () => number;
  #sub: Subscription | undefined;
  #status: { stop?: () => void } | undefined;
  #shed: Counter | undefined;

  constructor(limit: number, opts: { now?: () => number } = {}) {
    this.limit = limit;
    this.#now = opts.now ?? Date.now;
  }

  /** Orders in flight on this replica: tracked orders plus admitted requests not yet placed. */
  get count(): number {
    this.#expire();
    return this.#orders.size + this.#reserved;
  }

  /** True when a new order would be shed. */
  get full(): boolean {
    return this.limit > 0 && this.count >= this.limit;
  }

  /** Takes a place for one request, or null when full (the caller sheds it and counts it with {@link shed}). */
  admit(): AdmissionSlot | null {
    if (this.full) return null;
    this.#reserved++;
    let state: "reserved" | "tracked" | "released" = "reserved";
    // Set only when this slot added the order (two requests with one Idempotency-Key may both append it).
    let tracked: string | undefined;
    return {
      track: (orderId, timeoutAt) => {
        if (state !== "reserved") return;
        state = "tracked";
        this.#reserved--;
        if (this.#orders.has(orderId)) return;
        this.#orders.set(orderId, timeoutAt + EXPIRY_GRACE_MS);
        tracked = orderId;
      },
      untrack: () => {
        if (state !== "tracked") return;
        state = "released";
        if (tracked !== undefined) this.#orders.delete(tracked);
      },
      release: () => {
        if (state !== "reserved") return;
        state = "released";
        this.#reserved--;
      },
    };
  }

  /** Counts one shed request (the `shopstream_orders_shed_total` counter). */
  shed(): void {
    this.#shed?.inc();
  }

  /** The order is CONFIRMED or CANCELLED: it no longer counts. Unknown ids are ignored. */
  closed(orderId: string): void {
    this.#orders.delete(orderId);
  }

  /** Ids of the tracked orders, oldest first. */
  tracked(): string[] {
    this.#expire();
    return [...this.#orders.keys()];
  }

  #expire(): void {
    if (this.#orders.size === 0) return;
    const now = this.#now();
    for (const [id, expiresAt] of this.#orders) {
      if (expiresAt > now) break;
      this.#orders.delete(id);
    }
  }

  /**
   * Registers the gauges `shopstream_orders_in_flight`, `shopstream_orders_in_flight_limit` and the counter
   * `shopstream_orders_shed_total` in the service's registry (read at scrape time: no cost per order).
   */
  registerMetrics(registry: Registry): void {
    const registers = [registry];
    const count = () => this.count;
    const limit = this.limit;
    new Gauge({
      name: "shopstream_orders_in_flight",
      help: "Orders this replica placed that are not CONFIRMED or CANCELLED yet, plus admitted requests not yet placed.",
      registers,
      collect() {
        this.set(count());
      },
    });
    new Gauge({
      name: "shopstream_orders_in_flight_limit",
      help: "MAX_ORDERS_IN_FLIGHT: beyond it POST /orders is shed with 503 (0 = no limit).",
      registers,
      collect() {
        this.set(limit);
      },
    });
    this.#shed = new Counter({
      name: "shopstream_orders_shed_total",
      help: "POST /orders answered 503 with Retry-After because too many orders were in flight on this replica.",
      registers,
    });
  }

  /**
   * Follows the terminal events of the orders it tracks on `subjects` (core NATS, no decoding), and after each
   * reconnect asks `isClosed` about every tracked order once (terminal events published meanwhile were missed).
   */
  async watch(
    nc: NatsConnection,
    isClosed: (orderId: string) => Promise<boolean>,
    logger: Logger,
    subjects = "orders.>",
  ): Promise<void> {
    this.#sub = nc.subscribe(subjects, {
      callback: (err, m) => {
        if (err) return;
        // orders.<orderId>[.<more>]
        const start = m.subject.indexOf(".") + 1;
        const end = m.subject.indexOf(".", start);
        const id = end < 0 ? m.subject.slice(start) : m.subject.slice(start, end);
        if (!this.#orders.has(id)) return;
        const type = m.headers?.get(Hdr.Type);
        if (type === "OrderConfirmed" || type === "OrderCancelled") this.#orders.delete(id);
      },
    });
    const status = nc.status();
    this.#status = status as { stop?: () => void };
    void (async () => {
      for await (const s of status) {
        if (s.type !== "reconnect") continue;
        void this.#recheck(isClosed, logger);
      }
    })().catch(() => undefined);
    await nc.flush();
  }

  /** Asks the stream about each tracked order, a few at a time; an error leaves the order counted. */
  async #recheck(isClosed: (orderId: string) => Promise<boolean>, logger: Logger): Promise<void> {
    const ids = this.tracked();
    let closed = 0;
    for (let i = 0; i < ids.length; i += 32) {
      await Promise.all(
        ids.slice(i, i + 32).map(async (id) => {
          try {
            if (this.#orders.has(id) && (await isClosed(id))) {
              this.#orders.delete(id);
              closed++;
            }
          } catch {
            /* still counted; expires at its deadline + grace at the latest */
          }
        }),
      );
    }
    logger.info({ checked: ids.length, closed }, "orders in flight re-checked after a NATS reconnect");
  }

  /** Stops following terminal events. */
  stop(): void {
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    this.#status?.stop?.();
    this.#status = undefined;
  }
}
