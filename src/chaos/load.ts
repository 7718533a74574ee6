/**
 * Order load for chaos runs: an open-loop generator (a fixed rate; latency counted from each order's scheduled
 * send time) in front of a tiny round-robin load balancer over the orders replicas that are up.
 *
 * The balancer does what a Kubernetes Service plus a careful client do: it sends only to replicas whose `/ready`
 * answers 200 (polled), moves on to another replica when a connection is refused, and retries an order whose
 * outcome is unknown (connection reset, timeout, 5xx) with the same `Idempotency-Key`, until a retry budget runs
 * out. Only a 202 counts as accepted.
 */
import http from "node:http";
import { defaultOrder, type OrderBody } from "../load/generator.js";
import { SCARCE_SKU } from "./system.js";

/** What happened to one order the generator sent. */
export interface ChaosOrder {
  /** Index in the scenario. */
  i: number;
  /** Its `Idempotency-Key`. */
  key: string;
  /** When it was due (open loop), ms since epoch: latency is counted from here. */
  scheduledAt: number;
  /** When the 202 came (or the last answer / error). */
  answeredAt?: number;
  /** Last HTTP status (202 = accepted). */
  status?: number;
  orderId?: string;
  /** HTTP attempts made (retries with the same key included). */
  attempts: number;
  /** Why it was not accepted, when it was not. */
  error?: string;
}

/**
 * The order mix of chaos runs: mostly the load generator's default orders (high-stock SKUs), one in 20 from a
 * customer the gateway declines, one in 25 with a line of {@link SCARCE_SKU}, which sells out during a run.
 */
export function chaosOrder(i: number): OrderBody {
  const o = defaultOrder(i);
  if (i % 20 === 7) return { ...o, customerId: `decline-chaos-${i % 100}` };
  if (i % 25 === 3)
    return {
      ...o,
      items: [...o.items.filter((l) => l.sku !== SCARCE_SKU), { sku: SCARCE_SKU, quantity: 1 + (i % 2) }],
    };
  return o;
}

interface Answer {
  status?: number;
  body?: string;
  error?: string;
  code?: string;
}

/** Round-robin over the ready orders replicas; see the module comment. */
export class OrdersBalancer {
  readonly #backends: () => string[];
  readonly #ready = new Map<string, boolean>();
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  #rr = 0;
  #timer: NodeJS.Timeout | undefined;
  readonly #token: ((customerId: string) => Promise<string>) | undefined;

  /**
   * `backends` is asked each time: replicas come and go. `token` gives the bearer token of a customer (each order
   * is sent as the customer its body names).
   */
  constructor(backends: () => string[], token?: (customerId: string) => Promise<string>) {
    this.#backends = backends;
    this.#token = token;
  }

  /** Starts polling `/ready` of every backend every 250 ms. */
  start(): void {
    const poll = async () => {
      await Promise.all(
        this.#backends().map(async (url) => {
          try {
            const res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(1_000) });
            await res.body?.cancel();
            this.#ready.set(url, res.status === 200);
          } catch {
            this.#ready.set(url, false);
          }
        }),
      );
    };
    void poll();
    this.#timer = setInterval(() => void poll(), 250);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#agent.destroy();
  }

  /** The next backend not in `tried`: a ready one if any, else any. */
  pick(tried: Set<string>): string | undefined {
    const all = this.#backends().filter((u) => !tried.has(u));
    if (all.length === 0) return undefined;
    const ready = all.filter((u) => this.#ready.get(u) !== false);
    const pool = ready.length > 0 ? ready : all;
    return pool[this.#rr++ % pool.length];
  }

  /** One POST /orders attempt at `base`. Never rejects. */
  post(base: string, body: string, key: string, timeoutMs: number, token?: string): Promise<Answer> {
    const url = new URL(base);
    return new Promise((resolve) => {
      const req = http.request(
        {
          agent: this.#agent,
          host: url.hostname,
          port: url.port,
          path: "/orders",
          method: "POST",
          headers: {
            "content-type": "application/json",
            "content-length": Buffer.byteLength(body),
            "idempotency-key": key,
            ...(token ? { authorization: `Bearer ${token}` } : {}),
          },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
          res.on("error", (err: NodeJS.ErrnoException) => resolve({ error: err.message, code: err.code }));
        },
      );
      req.on("timeout", () => req.destroy(Object.assign(new Error("timeout"), { code: "ETIMEDOUT" })));
      req.on("error", (err: NodeJS.ErrnoException) => resolve({ error: err.message, code: err.code }));
      req.end(body);
    });
  }

  /**
   * Places one order: tries the replicas in turn; a refused connection moves on at once, an unknown outcome
   * (reset, timeout, 5xx, 409) is retried with the same key after a short pause, until `deadline`.
   */
  async place(rec: ChaosOrder, body: OrderBody, deadline: number, timeoutMs: number): Promise<void> {
    const text = JSON.stringify(body);
    const token = await this.#token?.(body.customerId);
    const tried = new Set<string>();
    let pause = 100;
    // A client backs off: exponentially, with jitter, up to 2 s between rounds.
    const backOff = async () => {
      await sleep(pause / 2 + Math.random() * (pause / 2));
      pause = Math.min(2_000, pause * 2);
    };
    for (;;) {
      const base = this.pick(tried);
      if (base === undefined) {
        // Every replica refused the connection: none is up. Wait for one.
        tried.clear();
        if (Date.now() >= deadline) return;
        await backOff();
        continue;
      }
      rec.attempts++;
      const a = await this.post(base, text, rec.key, timeoutMs, token);
      rec.answeredAt = Date.now();
      if (a.status === 202) {
        rec.status = 202;
        delete rec.error;
        try {
          rec.orderId = (JSON.parse(a.body ?? "{}") as { orderId?: string }).orderId;
        } catch {
          rec.error = `202 without an order id: ${a.body?.slice(0, 200)}`;
        }
        return;
      }
      tried.add(base);
      if (a.error !== undefined) {
        rec.error = `${a.code ?? ""} ${a.error}`.trim();
        // Refused: the request never reached a process; the next replica may take it at once.
        if (a.code === "ECONNREFUSED") continue;
      } else {
        rec.status = a.status;
        rec.error = `${a.status} ${a.body?.slice(0, 300)}`;
        const retry = a.status === undefined || a.status >= 500 || a.status === 409 || a.status === 429;
        if (!retry) return;
      }
      if (Date.now() >= deadline) return;
      await backOff();
    }
  }
}

/** Options of {@link runOpenLoad}. */
export interface OpenLoadOptions {
  balancer: OrdersBalancer;
  ratePerSec: number;
  /** Stops sending new orders when aborted (orders in flight finish). */
  signal: AbortSignal;
  /** Sends at most this many. */
  maxOrders?: number;
  /** Idempotency key of order `i`. */
  key: (i: number) => string;
  body?: (i: number) => OrderBody;
  /** How long after its scheduled time an order is retried at most (default 30 s). */
  retryForMs?: number;
  /** Bound of one HTTP attempt (default 10 s). */
  requestTimeoutMs?: number;
  /** Called with each order once its outcome is known. */
  onSettled?: (rec: ChaosOrder) => void;
}

/** Sends orders at a fixed rate until aborted; resolves with every order once all have settled. */
export async function runOpenLoad(o: OpenLoadOptions): Promise<ChaosOrder[]> {
  const make = o.body ?? chaosOrder;
  const records: ChaosOrder[] = [];
  const inflight = new Set<Promise<void>>();
  const interval = 1000 / o.ratePerSec;
  const t0 = Date.now();
  const retryFor = o.retryForMs ?? 30_000;
  const timeout = o.requestTimeoutMs ?? 10_000;
  let i = 0;
  const max = o.maxOrders ?? Number.POSITIVE_INFINITY;
  while (!o.signal.aborted && i < max) {
    const due = t0 + i * interval;
    const wait = due - Date.now();
    if (wait > 1) {
      await new Promise<void>((r) => {
        const done = () => {
          clearTimeout(t);
          o.signal.removeEventListener("abort", done);
          r();
        };
        const t = setTimeout(done, wait);
        o.signal.addEventListener("abort", done);
      });
      continue;
    }
    // Everything due now goes out now: a late timer must not lower the offered rate.
    const now = Date.now();
    while (t0 + i * interval <= now && i < max && !o.signal.aborted) {
      const scheduledAt = t0 + i * interval;
      const rec: ChaosOrder = { i, key: o.key(i), scheduledAt, attempts: 0 };
      records.push(rec);
      const p = o.balancer
        .place(rec, make(i), scheduledAt + retryFor, timeout)
        .then(() => o.onSettled?.(rec));
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
      i++;
    }
  }
  await Promise.all([...inflight]);
  return records;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
