/**
 * "Is the system quiet?": every order is terminal and every durable consumer has caught up. The harness waits
 * for this after a scenario, before it reconciles.
 *
 * Orders are followed on the bus: the load generator's {@link TerminalTracker} for terminal events, plus a
 * subscription that notes every OrderPlaced (so orders whose client never learnt the outcome are waited for
 * too). A core subscription misses what is published while the harness is disconnected (NATS killed), so an
 * order that still looks open is looked up in the ORDERS stream before it is called stuck.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { Streams } from "../lib/events/catalog.js";
import { decodeEvent } from "../lib/events/codec.js";
import { Hdr } from "../lib/messaging/headers.js";
import { TerminalTracker } from "../load/generator.js";
import { auditBacklogs, consumerBacklogs, type Backlog } from "../checker/checker.js";

/** Consumers whose backlog is a timer, not work (an open ack per open order until its deadline). */
export const TIMER_CONSUMERS = new Set(["orders-timeouts"]);

/** Follows OrderPlaced and terminal events of every order on the bus. */
export class OrderWatch {
  readonly terminals: TerminalTracker;
  /** Order ids seen placed. */
  readonly placed = new Set<string>();
  /** Terminal states found in the stream for orders whose terminal event the subscription missed. */
  readonly fromStream = new Map<string, "CONFIRMED" | "CANCELLED">();
  #sub: Subscription | undefined;

  constructor(private readonly nc: NatsConnection) {
    this.terminals = new TerminalTracker(nc);
  }

  async start(): Promise<void> {
    await this.terminals.start();
    this.#sub = this.nc.subscribe("orders.*");
    void (async () => {
      for await (const m of this.#sub!) {
        if (m.headers?.get(Hdr.Type) !== "OrderPlaced") continue;
        // Only a valid OrderPlaced places an order (poison may carry the header too).
        try {
          const e = decodeEvent(m.data);
          if (e.type === "OrderPlaced") this.placed.add(e.aggregate_id);
        } catch {
          /* poison: dead-lettered by every consumer, not an order */
        }
      }
    })();
    await this.nc.flush();
  }

  isTerminal(id: string): boolean {
    return this.terminals.terminals.has(id) || this.fromStream.has(id);
  }

  /** Ids among `ids` (default: every order seen placed) not known to be terminal. */
  open(ids: Iterable<string> = this.placed): string[] {
    return [...ids].filter((id) => !this.isTerminal(id));
  }

  /** Looks `ids` up in the ORDERS stream (last event of `orders.<id>`), noting those found terminal. */
  async resolveFromStream(jsm: JetStreamManager, ids: string[]): Promise<void> {
    for (const id of ids) {
      try {
        const m = await jsm.direct.getMessage(Streams.ORDERS, { last_by_subj: `orders.${id}` });
        const type = m?.header.get(Hdr.Type);
        if (type === "OrderConfirmed") this.fromStream.set(id, "CONFIRMED");
        else if (type === "OrderCancelled") this.fromStream.set(id, "CANCELLED");
      } catch {
        // Not found or NATS busy: still open.
      }
    }
  }

  stop(): void {
    this.terminals.stop();
    this.#sub?.unsubscribe();
  }
}

/** What {@link waitQuiet} found. */
export interface QuietResult {
  quiet: boolean;
  waitedMs: number;
  /** Orders still not terminal at the end (accepted or seen placed). */
  open: string[];
  /** Consumers with work left at the end. */
  backlogs: Backlog[];
}

/**
 * Waits until every order in `accepted` and every order seen placed is terminal and no durable consumer (timers
 * aside) has pending or unacknowledged messages and the audit (with `auditUrl`) is not behind on any stream — seen
 * twice in a row, half a second apart — or `timeoutMs`.
 */
export async function waitQuiet(
  watch: OrderWatch,
  jsm: () => Promise<JetStreamManager>,
  accepted: Iterable<string>,
  timeoutMs: number,
  log?: (msg: string) => void,
  auditUrl?: string,
): Promise<QuietResult> {
  const t0 = Date.now();
  const deadline = t0 + timeoutMs;
  const ids = [...accepted];
  let calm = 0;
  let lastLookup = 0;
  let lastReport = t0;
  let open: string[] = [];
  let backlogs: Backlog[] = [];
  for (;;) {
    open = [...new Set([...watch.open(ids), ...watch.open()])];
    try {
      const m = await jsm();
      if (open.length > 0 && Date.now() - lastLookup > 2_000) {
        // Terminal events published while we were disconnected never reached the subscription.
        lastLookup = Date.now();
        await watch.resolveFromStream(m, open.slice(0, 500));
        open = open.filter((id) => !watch.isTerminal(id));
      }
      backlogs = open.length === 0 ? await consumerBacklogs(m, TIMER_CONSUMERS) : backlogs;
      // The audit keeps its position in its database, not in a durable: its lag is read from the audit.
      if (open.length === 0 && backlogs.length === 0 && auditUrl !== undefined)
        backlogs = await auditBacklogs(auditUrl).catch((err: unknown) => [
          { consumer: `(audit not answering: ${(err as Error).message})`, pending: 1, ackPending: 0 },
        ]);
    } catch (err) {
      backlogs = [{ consumer: `(NATS not answering: ${(err as Error).message})`, pending: 1, ackPending: 0 }];
    }
    calm = open.length === 0 && backlogs.length === 0 ? calm + 1 : 0;
    if (calm >= 2) return { quiet: true, waitedMs: Date.now() - t0, open, backlogs };
    if (Date.now() >= deadline) return { quiet: false, waitedMs: Date.now() - t0, open, backlogs };
    if (Date.now() - lastReport > 10_000) {
      lastReport = Date.now();
      log?.(
        `waiting for quiet: ${open.length} orders open, backlog ${backlogs.map((b) => `${b.consumer} ${b.pending}/${b.ackPending}`).join(", ") || "none"}`,
      );
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
