/**
 * A load generator for ShopStream: drives `POST /orders` open-loop (at a fixed rate, latency measured
 * from each order's *scheduled* send time, so a slow system cannot hide its queueing) or closed-loop (N
 * clients, each sending its next order when the previous one is answered), and tracks every accepted
 * order to its terminal event on the bus (or, with `followOverSse`, over each order's `GET /orders/{id}/events`
 * stream, as a client would). Used by the benchmark and the chaos harness.
 *
 * A request the orders service sheds (503 with `Retry-After`: too many orders in flight) is counted apart as
 * `shed`: refused up front with nothing placed, it is neither an error nor a lost order. It is not retried.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { Pool } from "undici";
import { Hdr } from "../lib/messaging/headers.js";
import { readSse } from "./sse.js";

/** The body of one order. */
export interface OrderBody {
  customerId: string;
  email: string;
  items: { sku: string; quantity: number }[];
  currency?: string;
}

/** What happened to one order the generator sent. */
export interface OrderRecord {
  /** Index in the run. */
  i: number;
  /** When it was meant to be sent (open loop) or was sent (closed loop), ms since epoch. */
  scheduledAt: number;
  /** When the request was actually handed to the HTTP client (open loop: at or after `scheduledAt`). */
  sentAt?: number;
  /** When the HTTP answer came. */
  answeredAt?: number;
  httpStatus?: number;
  orderId?: string;
  /** Transport error (connection refused, reset, timeout) — the client does not know the outcome. */
  error?: string;
  /** Shed by the orders service (503 with `Retry-After`): refused before anything was placed. */
  shed?: boolean;
  /** The `Retry-After` of a shed request, in seconds. */
  retryAfterS?: number;
  terminal?: "CONFIRMED" | "CANCELLED";
  terminalAt?: number;
  /** Why following the order over Server-Sent Events failed (`followOverSse` only). */
  followError?: string;
}

/** Follows terminal order events on the bus (a core subscription on `orders.*`; no JSON decoding). */
export class TerminalTracker {
  readonly terminals = new Map<string, { status: "CONFIRMED" | "CANCELLED"; at: number; count: number }>();
  #sub: Subscription | undefined;
  readonly #waiters = new Map<string, () => void>();

  constructor(private readonly nc: NatsConnection) {}

  async start(): Promise<void> {
    this.#sub = this.nc.subscribe("orders.*");
    void (async () => {
      for await (const m of this.#sub!) {
        const type = m.headers?.get(Hdr.Type);
        if (type !== "OrderConfirmed" && type !== "OrderCancelled") continue;
        const id = m.subject.slice("orders.".length);
        const prior = this.terminals.get(id);
        if (prior) prior.count++;
        else
          this.terminals.set(id, {
            status: type === "OrderConfirmed" ? "CONFIRMED" : "CANCELLED",
            at: Date.now(),
            count: 1,
          });
        this.#waiters.get(id)?.();
      }
    })();
    await this.nc.flush();
  }

  /** Resolves when every id has a terminal event, or at the deadline; returns the ids still open. */
  async waitAll(ids: Iterable<string>, timeoutMs: number): Promise<string[]> {
    const open = new Set([...ids].filter((id) => !this.terminals.has(id)));
    if (open.size === 0) return [];
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      for (const id of open) {
        this.#waiters.set(id, () => {
          this.#waiters.delete(id);
          open.delete(id);
          if (open.size === 0) {
            clearTimeout(timer);
            resolve();
          }
        });
      }
    });
    for (const id of open) this.#waiters.delete(id);
    return [...open];
  }

  stop(): void {
    this.#sub?.unsubscribe();
  }
}

/**
 * Counts of a run so far: `failed` are requests neither accepted nor shed (transport errors, other statuses);
 * `shed` are those the orders service refused with 503 and `Retry-After`.
 */
export interface LoadCounts {
  elapsedMs: number;
  sent: number;
  accepted: number;
  failed: number;
  shed: number;
}

/** How to drive the load. */
export type LoadMode =
  | { kind: "open"; ratePerSec: number; durationMs: number }
  | { kind: "closed"; concurrency: number; durationMs: number };

export interface LoadOptions {
  ordersUrl: string;
  mode: LoadMode;
  /** The order to send as number `i` (default: one line of a default-catalog SKU). */
  body?: (i: number) => OrderBody;
  /** HTTP timeout per request (default 10 s). */
  timeoutMs?: number;
  /** Called once per second with the counts so far. */
  onTick?: (s: LoadCounts) => void;
  /** Stops early when aborted. */
  signal?: AbortSignal;
  /** Max sockets to the orders service (default 256). */
  maxSockets?: number;
  /**
   * The bearer token of a customer (each order is sent as the customer its body names): e.g.
   * `DevTokens.token` with the stack's development secret (src/lib/http/dev-token.ts). Without it no
   * `Authorization` is sent (the orders service answers 401).
   */
  token?: (customerId: string) => string | Promise<string>;
  /**
   * Follow every accepted order to its terminal state over `GET /orders/{id}/events` (Server-Sent Events) instead
   * of the bus: `terminal`/`terminalAt` of its record are set from the stream, and in closed loop a client sends its
   * next order only once the previous one has ended. Needs `token`. A stream refused with 429 (too many open streams
   * of one customer) is retried after its Retry-After; one that ends early is resumed with Last-Event-ID.
   */
  followOverSse?: { timeoutMs?: number; maxStreams?: number };
}

const defaultSkus = ["SKU-TSHIRT", "SKU-MUG", "SKU-HOODIE", "SKU-CAP", "SKU-STICKERS"];
/** A default order: one or two lines of the default catalog's high-stock SKUs. */
export function defaultOrder(i: number): OrderBody {
  const a = defaultSkus[i % defaultSkus.length]!;
  const items = [{ sku: a, quantity: 1 + (i % 3) }];
  if (i % 4 === 0) items.push({ sku: defaultSkus[(i + 2) % defaultSkus.length]!, quantity: 1 });
  return { customerId: `load-${i % 1000}`, email: `load-${i % 1000}@example.com`, items };
}

/** What one POST /orders came to: an answer, or a transport error. */
type PostResult = { status?: number; body?: string; retryAfter?: string; error?: string };

/**
 * Sends one order over a keep-alive connection pool; resolves with status and body (never rejects). undici's
 * pool, not `http.request`: the generator shares the machine with the system it measures, so its own CPU per
 * request is kept low.
 */
async function post(
  pool: Pool,
  path: string,
  body: string,
  timeoutMs: number,
  token: string | undefined,
): Promise<PostResult> {
  try {
    const res = await pool.request({
      path,
      method: "POST",
      headers: token
        ? { "content-type": "application/json", authorization: `Bearer ${token}` }
        : { "content-type": "application/json" },
      body,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    const retryAfter = res.headers["retry-after"];
    return {
      status: res.statusCode,
      body: await res.body.text(),
      ...(typeof retryAfter === "string" ? { retryAfter } : {}),
    };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/**
 * Follows one order over `GET /orders/{id}/events` until its terminal state, resuming with Last-Event-ID, waiting
 * out 429s; resolves with the terminal status and when it was received, or an error (never rejects).
 */
export async function followOrder(
  pool: Pool,
  basePath: string,
  orderId: string,
  token: string | undefined,
  timeoutMs: number,
): Promise<{ terminal?: "CONFIRMED" | "CANCELLED"; at?: number; error?: string }> {
  const deadline = Date.now() + timeoutMs;
  let lastId: string | undefined;
  while (Date.now() < deadline) {
    try {
      const res = await pool.request({
        path: `${basePath}/orders/${orderId}/events`,
        method: "GET",
        headers: {
          accept: "text/event-stream",
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...(lastId !== undefined ? { "last-event-id": lastId } : {}),
        },
        headersTimeout: Math.max(1, deadline - Date.now()),
        bodyTimeout: Math.max(1, deadline - Date.now()),
      });
      if (res.statusCode === 429) {
        await res.body.dump();
        const s = Number(res.headers["retry-after"] ?? "1");
        await new Promise((r) => setTimeout(r, Math.min(Math.max(s, 0.1) * 1000, deadline - Date.now())));
        continue;
      }
      if (res.statusCode !== 200) {
        await res.body.dump();
        return { error: `GET /orders/${orderId}/events: ${res.statusCode}` };
      }
      for await (const item of readSse(res.body)) {
        if (item.kind !== "message") continue;
        lastId = item.id;
        const status = (JSON.parse(item.data) as { status?: string }).status;
        if (status === "CONFIRMED" || status === "CANCELLED") {
          await res.body.dump().catch(() => undefined);
          return { terminal: status, at: Date.now() };
        }
      }
    } catch (err) {
      if (Date.now() >= deadline) return { error: (err as Error).message };
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { error: `no terminal state of ${orderId} within ${timeoutMs} ms` };
}

/**
 * Runs the load and returns a record per order sent. Accepted orders have `orderId`; pair the run with
 * a {@link TerminalTracker} started before it to learn their outcomes.
 */
export async function runLoad(o: LoadOptions): Promise<OrderRecord[]> {
  const url = new URL(o.ordersUrl);
  const pool = new Pool(url.origin, { connections: o.maxSockets ?? 256, pipelining: 1 });
  const path = `${url.pathname.replace(/\/+$/, "")}/orders`;
  const make = o.body ?? defaultOrder;
  const timeoutMs = o.timeoutMs ?? 10_000;
  const sse = o.followOverSse
    ? new Pool(url.origin, { connections: o.followOverSse.maxStreams ?? 1024, pipelining: 1 })
    : undefined;
  const basePath = url.pathname.replace(/\/+$/, "");
  const records: OrderRecord[] = [];
  const inflight = new Set<Promise<void>>();
  let accepted = 0;
  let failed = 0;
  let shed = 0;
  const t0 = Date.now();
  const tick = setInterval(
    () => o.onTick?.({ elapsedMs: Date.now() - t0, sent: records.length, accepted, failed, shed }),
    1_000,
  );
  const send = (i: number, scheduledAt: number): Promise<void> => {
    const rec: OrderRecord = { i, scheduledAt, sentAt: Date.now() };
    records.push(rec);
    const order = make(i);
    let token: string | undefined;
    const p = Promise.resolve(o.token?.(order.customerId))
      .then(
        (t) => {
          token = t;
          return post(pool, path, JSON.stringify(order), timeoutMs, t);
        },
        (err: unknown): PostResult => ({ error: `no token: ${(err as Error).message}` }),
      )
      .then(async (r) => {
        rec.answeredAt = Date.now();
        if (r.error !== undefined) {
          rec.error = r.error;
          failed++;
          return;
        }
        rec.httpStatus = r.status;
        if (r.status === 202) {
          try {
            rec.orderId = (JSON.parse(r.body ?? "{}") as { orderId?: string }).orderId;
            accepted++;
          } catch {
            failed++;
          }
          if (sse && rec.orderId !== undefined) {
            const f = await followOrder(
              sse,
              basePath,
              rec.orderId,
              token,
              o.followOverSse?.timeoutMs ?? 120_000,
            );
            if (f.terminal) {
              rec.terminal = f.terminal;
              rec.terminalAt = f.at;
            } else rec.followError = f.error;
          }
        } else if (r.status === 503 && r.retryAfter !== undefined) {
          rec.shed = true;
          const s = Number(r.retryAfter);
          if (Number.isFinite(s)) rec.retryAfterS = s;
          shed++;
        } else failed++;
      });
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
    return p;
  };
  const end = t0 + o.mode.durationMs;
  try {
    if (o.mode.kind === "open") {
      const interval = 1000 / o.mode.ratePerSec;
      let i = 0;
      while (!o.signal?.aborted) {
        const due = t0 + i * interval;
        if (due >= end) break;
        const wait = due - Date.now();
        // Always yield: a sender that is behind schedule must still let responses, timers and the terminal
        // tracker run, or it starves the event loop and every answer waits for the end of the run.
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        else await new Promise((r) => setImmediate(r));
        // Send everything that is due now (a late timer must not lower the offered rate).
        const now = Date.now();
        while (t0 + i * interval <= now && t0 + i * interval < end) {
          void send(i, t0 + i * interval);
          i++;
        }
      }
    } else {
      let i = 0;
      const client = async () => {
        while (Date.now() < end && !o.signal?.aborted) await send(i++, Date.now());
      };
      await Promise.all(Array.from({ length: o.mode.concurrency }, client));
    }
    await Promise.all([...inflight]);
  } finally {
    clearInterval(tick);
    await pool.destroy();
    await sse?.destroy();
  }
  return records;
}

/** What a run's records add up to; `shed` requests are neither `failed` nor accepted. */
export interface LoadSummary {
  sent: number;
  accepted: number;
  shed: number;
  /** Shed requests per second of the run (0 for a run of no duration). */
  shedPerSec: number;
  failed: number;
}

/** Sums a run's records, shed requests apart. `durationMs` is the load's duration, for the shed rate. */
export function summarizeLoad(records: readonly OrderRecord[], durationMs: number): LoadSummary {
  let accepted = 0;
  let shed = 0;
  for (const r of records) {
    if (r.orderId !== undefined) accepted++;
    else if (r.shed) shed++;
  }
  const sent = records.length;
  return {
    sent,
    accepted,
    shed,
    shedPerSec: durationMs > 0 ? Math.round((shed / durationMs) * 10_000) / 10 : 0,
    failed: sent - accepted - shed,
  };
}

/** Percentile (0..100) of a list of numbers (nearest rank); NaN when empty. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}
