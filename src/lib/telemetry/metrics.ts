import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/** Outcome of handling one message; the `outcome` label of the handler metrics. */
export type HandlerOutcome = "ack" | "skipped" | "retry" | "delayed" | "dlq" | "handed_back";

/**
 * The Prometheus metrics of one service process, in its own registry (served on `/metrics`).
 * Services add their own metrics to `registry`.
 */
export class Metrics {
  readonly registry: Registry;
  readonly handled: Counter<"consumer" | "type" | "outcome">;
  readonly handleDuration: Histogram<"consumer" | "type" | "outcome">;
  readonly published: Counter<"stream" | "type">;
  readonly publishDuration: Histogram<"stream">;
  readonly publishRetries: Counter<"stream">;
  readonly deadLettered: Counter<"consumer" | "code">;
  readonly consumerPending: Gauge<"stream" | "consumer">;
  readonly consumerAckPending: Gauge<"stream" | "consumer">;
  readonly consumerPaused: Gauge<"consumer">;
  readonly inFlight: Gauge<"consumer">;
  readonly #collectors: (() => Promise<void>)[] = [];

  constructor(service: string, opts: { defaultMetrics?: boolean } = {}) {
    this.registry = new Registry();
    this.registry.setDefaultLabels({ service });
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.handled = new Counter({
      name: "shopstream_messages_handled_total",
      help: "Messages handled by a consumer, by outcome (ack, skipped, retry, dlq, handed_back).",
      labelNames: ["consumer", "type", "outcome"],
      registers,
    });
    this.handleDuration = new Histogram({
      name: "shopstream_handler_duration_seconds",
      help: "Time from handler start to ack/nak/term.",
      labelNames: ["consumer", "type", "outcome"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.published = new Counter({
      name: "shopstream_messages_published_total",
      help: "Events published and acknowledged by JetStream (duplicates included).",
      labelNames: ["stream", "type"],
      registers,
    });
    this.publishDuration = new Histogram({
      name: "shopstream_publish_duration_seconds",
      help: "Time from publish to JetStream PubAck, retries included.",
      labelNames: ["stream"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers,
    });
    this.publishRetries = new Counter({
      name: "shopstream_publish_retries_total",
      help: "Publish attempts retried after a timeout or no-responders.",
      labelNames: ["stream"],
      registers,
    });
    this.deadLettered = new Counter({
      name: "shopstream_dead_lettered_total",
      help: "Messages copied to the DLQ, by error code.",
      labelNames: ["consumer", "code"],
      registers,
    });
    this.consumerPending = new Gauge({
      name: "shopstream_consumer_pending_messages",
      help: "Messages in the stream not yet delivered to the consumer (num_pending).",
      labelNames: ["stream", "consumer"],
      registers,
      collect: async () => {
        await Promise.all(this.#collectors.map((c) => c()));
      },
    });
    this.consumerAckPending = new Gauge({
      name: "shopstream_consumer_ack_pending_messages",
      help: "Messages delivered to the consumer and not yet acknowledged.",
      labelNames: ["stream", "consumer"],
      registers,
    });
    this.consumerPaused = new Gauge({
      name: "shopstream_consumer_paused",
      help: "1 while the consumer runner is paused (e.g. by an open circuit breaker).",
      labelNames: ["consumer"],
      registers,
    });
    this.inFlight = new Gauge({
      name: "shopstream_consumer_in_flight",
      help: "Messages being handled right now.",
      labelNames: ["consumer"],
      registers,
    });
  }

  /** Registers an async refresh run at each scrape (e.g. consumer info from the server). */
  onCollect(fn: () => Promise<void>): void {
    this.#collectors.push(fn);
  }
}
