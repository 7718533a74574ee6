/**
 * Fixture of the messaging conformance suite (test/conformance): a real `nats-server` (or 3-node cluster) on free
 * ports with a temp store dir, the ShopStream streams provisioned with `ensureStream(streamSpecs)`, a Publisher,
 * ConsumerRunners wired to a {@link Recorder} that captures every handler call, event factories and DLQ access.
 *
 * Synchronisation is by events, never by sleeping: {@link Recorder.until} resolves when a handler call makes a
 * condition true, {@link eventually} polls a server-side condition with a deadline.
 */
import { Writable } from "node:stream";
import {
  type ConsumerInfo,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import type { NatsConnection, NodeConnectionOptions } from "@nats-io/transport-node";
import { makeEvent, type AnyEnvelope, type Envelope, type EventType } from "../../src/lib/events/mod.js";
import {
  ConsumerRunner,
  type ConsumerRunnerOptions,
  type EventHandler,
  type HandlerContext,
  type HandlerMap,
} from "../../src/lib/messaging/consumer.js";
import { listDeadLetters, type DeadLetter } from "../../src/lib/messaging/dlq.js";
import { Publisher, type PublisherOptions } from "../../src/lib/messaging/publisher.js";
import { ensureConsumer, ensureStream, type ConsumerSpec } from "../../src/lib/messaging/topology.js";
import { streamSpecs } from "../../src/lib/service.js";
import { createLogger, type Logger } from "../../src/lib/telemetry/logger.js";
import { eventually as pollEventually } from "./eventually.js";
import { type NatsCluster, type NatsServer, connectTo, startNatsCluster, startNatsServer } from "./nats.js";

/** Source of every event the suite publishes. */
export const SOURCE = "conformance";

// ---------------------------------------------------------------------------------------------------------------
// Waiting on conditions

/** Rejects with `what` if `promise` has not settled within `ms`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Calls `fn` until it returns without throwing (its value is returned) or `timeoutMs` passes: the shared
 * {@link pollEventually} with this suite's positional arguments. For conditions on the server that no event
 * announces; the interval is a poll rate, not a wait.
 */
export function eventually<T>(fn: () => Promise<T> | T, timeoutMs = 10_000, intervalMs = 50): Promise<T> {
  return pollEventually(fn, { timeoutMs, intervalMs });
}

/** Resolves when `nc` next reports a status of `type` (e.g. `reconnect`); call it before causing the event. */
export function nextStatus(nc: NatsConnection, type: string): Promise<void> {
  return (async () => {
    for await (const s of nc.status()) if (s.type === type) return;
  })();
}

/** Resolves after `ms`: only for timing behaviour itself and for bounded "nothing happens" windows. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------------------------
// Events

/** Order ids of the suite: subject-safe and unique per test. */
export function orderId(prefix: string, i: number): string {
  return `${prefix}-${String(i).padStart(5, "0")}`;
}

/** The `data` of a valid OrderPlaced for `id`. */
export function orderPlacedData(id: string, i = 1): Envelope<"OrderPlaced">["data"] {
  const now = new Date();
  return {
    orderId: id,
    customerId: `cust-${i}`,
    email: `buyer${i}@example.com`,
    items: [{ sku: `SKU-${i % 7}`, quantity: 1 + (i % 3), unitPrice: 100 + i }],
    total: (1 + (i % 3)) * (100 + i),
    currency: "EUR",
    placedAt: now.toISOString(),
    timeoutAt: new Date(now.getTime() + 60_000).toISOString(),
  };
}

/** `n` OrderPlaced events, one per order `<prefix>-00000` … (so one subject each, ids `<order>:OrderPlaced`). */
export function orderPlacedEvents(
  n: number,
  prefix = "o",
  opts: { traceId?: string } = {},
): Envelope<"OrderPlaced">[] {
  return Array.from({ length: n }, (_, i) => {
    const id = orderId(prefix, i);
    return makeEvent("OrderPlaced", orderPlacedData(id, i), {
      aggregateId: id,
      source: SOURCE,
      traceId: opts.traceId,
    });
  });
}

/** `n` events of one order on its one subject (`orders.<id>`), distinct ids through `idSuffix`, in order. */
export function eventsOfOneOrder(id: string, n: number): Envelope<"OrderPlaced">[] {
  return Array.from({ length: n }, (_, k) =>
    makeEvent("OrderPlaced", orderPlacedData(id, k), {
      aggregateId: id,
      source: SOURCE,
      idSuffix: String(k).padStart(5, "0"),
    }),
  );
}

/** A PaymentCaptured (PAYMENTS stream, subject `payments.<id>.PaymentCaptured`). */
export function paymentCaptured(id: string): Envelope<"PaymentCaptured"> {
  return makeEvent(
    "PaymentCaptured",
    { orderId: id, paymentId: `pay-${id}`, amount: 1234, currency: "EUR" },
    { aggregateId: id, source: SOURCE },
  );
}

/** Publishes `events` with at most `parallel` publishes outstanding; resolves with their stream sequences. */
export async function publishAll(
  publisher: Publisher,
  events: readonly Envelope[],
  parallel = 32,
): Promise<number[]> {
  const seqs: number[] = new Array<number>(events.length);
  let next = 0;
  const worker = async () => {
    while (next < events.length) {
      const i = next++;
      seqs[i] = (await publisher.publish(events[i]!)).seq;
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, events.length) }, worker));
  return seqs;
}

// ---------------------------------------------------------------------------------------------------------------
// Capturing handler

/** One handler call as the {@link Recorder} saw it. */
export interface Call {
  id: string;
  type: EventType;
  event: AnyEnvelope;
  attempt: number;
  subject: string;
  streamSequence: number;
  /** Which runner (the tag given to {@link Recorder.handlers}). */
  runner: string;
  /** `performance.now()` when the call started. */
  at: number;
  /** How it ended: still running, resolved (`ok`) or threw (`error`). */
  outcome: "running" | "ok" | "error";
}

/** What a handler does with a call: resolve to succeed, throw to fail. The default succeeds at once. */
export type Behaviour = (event: AnyEnvelope, ctx: HandlerContext, call: Call) => Promise<void> | void;

/**
 * Records every handler call (start, attempt, outcome), the concurrency reached, and lets a test await a condition
 * on the calls: {@link until} is re-checked on every change, so it resolves as soon as the handler makes it true.
 */
export class Recorder {
  readonly calls: Call[] = [];
  /** Successful completions per event id. */
  readonly completed = new Map<string, number>();
  /** Handler calls currently running, and the most seen at once. */
  active = 0;
  maxActive = 0;
  readonly #waiters = new Set<() => void>();

  /** Handlers for `types` (default: every catalog type the suite publishes) that run `behaviour` per call. */
  handlers(
    behaviour: Behaviour = () => undefined,
    runner = "r1",
    types: EventType[] = defaultTypes,
  ): HandlerMap {
    const h: EventHandler<EventType> = async (event, ctx) => {
      const call: Call = {
        id: event.id,
        type: event.type,
        event: event as AnyEnvelope,
        attempt: ctx.attempt,
        subject: ctx.subject,
        streamSequence: ctx.streamSequence,
        runner,
        at: performance.now(),
        outcome: "running",
      };
      this.calls.push(call);
      this.active++;
      this.maxActive = Math.max(this.maxActive, this.active);
      this.#changed();
      try {
        await behaviour(event as AnyEnvelope, ctx, call);
        call.outcome = "ok";
        this.completed.set(event.id, (this.completed.get(event.id) ?? 0) + 1);
      } catch (err) {
        call.outcome = "error";
        throw err;
      } finally {
        this.active--;
        this.#changed();
      }
    };
    return Object.fromEntries(types.map((t) => [t, h]));
  }

  /** Calls of event `id`, in order. */
  callsOf(id: string): Call[] {
    return this.calls.filter((c) => c.id === id);
  }

  /** Distinct event ids completed successfully. */
  get completedIds(): Set<string> {
    return new Set(this.completed.keys());
  }

  /** True when every id in `ids` completed at least once. */
  allCompleted(ids: Iterable<string>): boolean {
    for (const id of ids) if (!this.completed.has(id)) return false;
    return true;
  }

  /** Resolves once `pred()` holds (checked now and after every handler start/end); rejects after `timeoutMs`. */
  until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (pred()) return Promise.resolve();
    let check!: () => void;
    const p = new Promise<void>((resolve) => {
      check = () => {
        if (pred()) {
          this.#waiters.delete(check);
          resolve();
        }
      };
      this.#waiters.add(check);
    });
    return within(p, timeoutMs, `${what} (${this.summary()})`).finally(() => this.#waiters.delete(check));
  }

  /** Resolves once every id in `ids` completed successfully. */
  untilCompleted(
    ids: Iterable<string>,
    timeoutMs: number,
    what = "every event to be handled",
  ): Promise<void> {
    const want = [...ids];
    return this.until(() => this.allCompleted(want), timeoutMs, `${what}: ${want.length} ids`);
  }

  summary(): string {
    const errors = this.calls.filter((c) => c.outcome === "error").length;
    return `${this.calls.length} calls, ${this.completed.size} ids completed, ${errors} failed, ${this.active} running`;
  }

  #changed(): void {
    for (const w of [...this.#waiters]) w();
  }
}

const defaultTypes: EventType[] = ["OrderPlaced", "OrderConfirmed", "OrderCancelled", "PaymentCaptured"];

// ---------------------------------------------------------------------------------------------------------------
// Logs

/** An in-memory pino destination: every line the library logs, parsed. */
export class LogSink {
  readonly lines: { level: string; msg: string; [k: string]: unknown }[] = [];
  readonly stream = new Writable({
    write: (chunk: Buffer, _enc, done) => {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.trim() === "") continue;
        try {
          this.lines.push(JSON.parse(line) as LogSink["lines"][number]);
        } catch {
          this.lines.push({ level: "unparsed", msg: line });
        }
      }
      if (process.env.TEST_LOG) process.stderr.write(chunk);
      done();
    },
  });

  /** Lines at level error (or fatal). */
  errors(): LogSink["lines"] {
    return this.lines.filter((l) => l.level === "error" || l.level === "fatal");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The fixture

/** Options of {@link startMessaging}. */
export interface MessagingOptions {
  /** Run a 3-node cluster with R3 streams instead of one server. */
  cluster?: boolean;
  /** Publisher options (defaults here: 2 s PubAck timeout, 50 ms first retry delay). */
  publisher?: PublisherOptions;
  /** Client connection options. */
  connection?: Partial<NodeConnectionOptions>;
  /** Provision the ShopStream streams (default true). */
  provision?: boolean;
}

/** Runner options the fixture fills in (js, publisher, logger); handlers default to a recorder's. */
export type RunnerOptions = Omit<
  ConsumerRunnerOptions,
  "js" | "publisher" | "logger" | "spec" | "handlers"
> & {
  handlers?: HandlerMap;
  js?: JetStreamClient;
  publisher?: Publisher;
};

/** A running server (or cluster) with the ShopStream streams and a client on it. */
export class Messaging {
  readonly server: NatsServer | undefined;
  readonly cluster: NatsCluster | undefined;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly publisher: Publisher;
  readonly logs: LogSink;
  readonly logger: Logger;
  readonly replicas: number;
  readonly #runners: ConsumerRunner[] = [];
  readonly #connections: NatsConnection[] = [];

  constructor(o: {
    server?: NatsServer;
    cluster?: NatsCluster;
    nc: NatsConnection;
    jsm: JetStreamManager;
    publisher: Publisher;
    logs: LogSink;
    logger: Logger;
    replicas: number;
  }) {
    this.server = o.server;
    this.cluster = o.cluster;
    this.nc = o.nc;
    this.js = jetstream(o.nc);
    this.jsm = o.jsm;
    this.publisher = o.publisher;
    this.logs = o.logs;
    this.logger = o.logger;
    this.replicas = o.replicas;
  }

  /** The server (single-node fixtures). */
  get single(): NatsServer {
    if (!this.server) throw new Error("not a single-server fixture");
    return this.server;
  }

  /** Declares a durable pull consumer (default on ORDERS, ack wait 2 s) and returns its spec. */
  async consumer(durable: string, spec: Partial<ConsumerSpec> = {}): Promise<ConsumerSpec> {
    const full: ConsumerSpec = { stream: "ORDERS", durable, ackWaitMs: 2_000, ...spec };
    await ensureConsumer(this.jsm, full, this.logger);
    return full;
  }

  /** Builds a runner on `spec` (not started); the fixture stops it on close. */
  runner(spec: ConsumerSpec, opts: RunnerOptions): ConsumerRunner {
    const r = new ConsumerRunner({
      js: opts.js ?? this.js,
      publisher: opts.publisher ?? this.publisher,
      logger: this.logger,
      fetchExpiresMs: 1_000,
      backoff: { initialMs: 50, maxMs: 1_000 },
      ...opts,
      spec,
      handlers: opts.handlers ?? {},
    });
    this.#runners.push(r);
    return r;
  }

  /** Builds and starts a runner. */
  async startRunner(spec: ConsumerSpec, opts: RunnerOptions): Promise<ConsumerRunner> {
    const r = this.runner(spec, opts);
    await r.start();
    return r;
  }

  /** Another client connection to the same server(s); closed by the fixture. */
  async connect(opts: Partial<NodeConnectionOptions> = {}): Promise<NatsConnection> {
    const nc = await connectTo(this.cluster ?? this.single, opts);
    this.#connections.push(nc);
    return nc;
  }

  /** The consumer's state on the server. */
  info(spec: Pick<ConsumerSpec, "stream" | "durable">): Promise<ConsumerInfo> {
    return this.jsm.consumers.info(spec.stream, spec.durable);
  }

  /** Resolves once the consumer has nothing pending and nothing unacknowledged: every message acked or termed. */
  async settled(spec: Pick<ConsumerSpec, "stream" | "durable">, timeoutMs = 15_000): Promise<ConsumerInfo> {
    return pollEventually(
      async () => {
        const ci = await this.info(spec);
        if (ci.num_pending !== 0 || ci.num_ack_pending !== 0) {
          throw new Error(
            `consumer ${spec.durable} not settled: pending ${ci.num_pending}, ack pending ${ci.num_ack_pending}`,
          );
        }
        return ci;
      },
      { what: `consumer ${spec.durable} settled`, timeoutMs },
    );
  }

  /** Entries of the DLQ (optionally of one consumer). */
  deadLetters(consumer?: string): Promise<DeadLetter[]> {
    return listDeadLetters(this.jsm, consumer ? { consumer } : {});
  }

  /** Messages stored in `stream`. */
  async streamCount(stream: string): Promise<number> {
    return (await this.jsm.streams.info(stream)).state.messages;
  }

  /** Stops the runners still running, closes the connections and removes the server(s) and their data. */
  async close(): Promise<void> {
    // Teardown only: a short stop timeout closes the runners' outstanding fetches instead of waiting them out.
    await Promise.allSettled(this.#runners.map((r) => r.stop(100)));
    await Promise.allSettled([...this.#connections, this.nc].map((c) => c.close()));
    await this.server?.cleanup();
    await this.cluster?.cleanup();
  }
}

/**
 * Starts a `nats-server` (or a 3-node cluster) on free ports with a temp store dir, connects, and provisions
 * every ShopStream stream (R3 on a cluster). Close it with {@link Messaging.close} (e.g. in `t.after`).
 */
export async function startMessaging(opts: MessagingOptions = {}): Promise<Messaging> {
  const logs = new LogSink();
  const logger = createLogger({
    service: "conformance",
    level: (process.env.TEST_LOG_LEVEL as "debug" | undefined) ?? "info",
    destination: logs.stream,
  });
  let server: NatsServer | undefined;
  let cluster: NatsCluster | undefined;
  try {
    if (opts.cluster) cluster = await startNatsCluster({ name: "conf" });
    else server = await startNatsServer();
    const nc = await connectTo((cluster ?? server)!, opts.connection);
    const jsm = await jetstreamManager(nc);
    const replicas = cluster ? 3 : 1;
    if (opts.provision !== false) {
      for (const s of streamSpecs) await ensureStream(jsm, s, { replicas }, logger);
    }
    const publisher = new Publisher(jetstream(nc), { timeoutMs: 2_000, retryDelayMs: 50, ...opts.publisher });
    return new Messaging({
      ...(server ? { server } : {}),
      ...(cluster ? { cluster } : {}),
      nc,
      jsm,
      publisher,
      logs,
      logger,
      replicas,
    });
  } catch (err) {
    await server?.cleanup();
    await cluster?.cleanup();
    throw err;
  }
}
