import { Counter, Gauge, Registry, collectDefaultMetrics, type MetricObjectWithValues } from "prom-client";

/** Outcome of handling one message; the `outcome` label of the handler metrics. */
export type HandlerOutcome = "ack" | "skipped" | "retry" | "delayed" | "dlq" | "handed_back";

type Labels<L extends string> = Record<L, string>;
type Value = { value: number; labels: Record<string, string | number>; metricName?: string };

/** One label set of a {@link CellCounter}: the code that counts holds it and adds to it, no lookup per count. */
export class CounterCell {
  value = 0;
}

/** One label set of a {@link CellHistogram}: per-bucket counts (not cumulative), sum and count. */
export class HistogramCell {
  readonly counts: number[];
  sum = 0;
  count = 0;
  readonly #bounds: readonly number[];

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(value: number): void {
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

/**
 * The cells of one metric, by label set. Cells are made once per label set and kept by their users, so counting
 * is an increment; Prometheus reads them at scrape time (the registry calls `get()`), so a scrape always shows
 * every count, with nothing to flush.
 */
abstract class CellMetric<L extends string, C> {
  readonly name: string;
  readonly help: string;
  readonly aggregator = "sum" as const;
  readonly labelNames: readonly L[];
  readonly #cells = new Map<string, { labels: Labels<L>; cell: C }>();

  constructor(o: { name: string; help: string; labelNames: readonly L[]; registers: Registry[] }) {
    this.name = o.name;
    this.help = o.help;
    this.labelNames = o.labelNames;
    // The registry only needs name, help, type and get(): see prom-client's Registry.getMetricsAsString.
    for (const r of o.registers) r.registerMetric(this as never);
  }

  /** The cell of `labels` (made on first use). */
  cell(labels: Labels<L>): C {
    const key = this.labelNames.map((n) => labels[n]).join("\u0000");
    let entry = this.#cells.get(key);
    if (!entry) {
      entry = { labels: { ...labels }, cell: this.newCell() };
      this.#cells.set(key, entry);
    }
    return entry.cell;
  }

  /** Forgets every label set (prom-client's `Registry.resetMetrics`). */
  reset(): void {
    this.#cells.clear();
  }

  protected abstract newCell(): C;

  protected entries(): IterableIterator<{ labels: Labels<L>; cell: C }> {
    return this.#cells.values();
  }
}

/** A Prometheus counter whose label sets are {@link CounterCell}s. */
export class CellCounter<L extends string> extends CellMetric<L, CounterCell> {
  readonly type = "counter" as const;

  inc(labels: Labels<L>, n = 1): void {
    this.cell(labels).value += n;
  }

  protected newCell(): CounterCell {
    return new CounterCell();
  }

  async get(): Promise<MetricObjectWithValues<{ value: number; labels: Labels<L> }>> {
    // Label sets never counted are left out, as prom-client does (cells are made ahead of their first count).
    const values = [...this.entries()]
      .filter(({ cell }) => cell.value !== 0)
      .map(({ labels, cell }) => ({ labels, value: cell.value }));
    return {
      name: this.name,
      help: this.help,
      type: "counter",
      aggregator: this.aggregator,
      collect: () => undefined,
      values,
    } as never;
  }
}

/** A Prometheus histogram whose label sets are {@link HistogramCell}s. */
export class CellHistogram<L extends string> extends CellMetric<L, HistogramCell> {
  readonly type = "histogram" as const;
  readonly buckets: readonly number[];

  constructor(o: {
    name: string;
    help: string;
    labelNames: readonly L[];
    buckets: readonly number[];
    registers: Registry[];
  }) {
    super(o);
    this.buckets = o.buckets;
  }

  observe(labels: Labels<L>, value: number): void {
    this.cell(labels).observe(value);
  }

  protected newCell(): HistogramCell {
    return new HistogramCell(this.buckets);
  }

  async get(): Promise<MetricObjectWithValues<Value & { labels: Labels<L> }>> {
    const values: Value[] = [];
    for (const { labels, cell } of this.entries()) {
      if (cell.count === 0) continue;
      let acc = 0;
      this.buckets.forEach((le, i) => {
        acc += cell.counts[i]!;
        values.push({ labels: { le, ...labels }, value: acc, metricName: `${this.name}_bucket` });
      });
      values.push(
        { labels: { le: "+Inf", ...labels }, value: cell.count, metricName: `${this.name}_bucket` },
        { labels, value: cell.sum, metricName: `${this.name}_sum` },
        { labels, value: cell.count, metricName: `${this.name}_count` },
      );
    }
    return {
      name: this.name,
      help: this.help,
      type: "histogram",
      aggregator: this.aggregator,
      collect: () => undefined,
      values,
    } as never;
  }
}

const HANDLER_OUTCOMES: readonly HandlerOutcome[] = [
  "ack",
  "skipped",
  "retry",
  "delayed",
  "dlq",
  "handed_back",
];

/**
 * The handler outcomes of one consumer: `shopstream_messages_handled_total` and
 * `shopstream_handler_duration_seconds`, one pair of cells per (type, outcome), found without building a key.
 */
export class HandlerTally {
  readonly #metrics: Metrics;
  readonly #consumer: string;
  readonly #byType = new Map<string, { count: CounterCell; duration: HistogramCell }[]>();

  constructor(metrics: Metrics, consumer: string) {
    this.#metrics = metrics;
    this.#consumer = consumer;
  }

  /** Counts one message of `type` that ended in `outcome`, and its handling time when given. */
  record(type: string, outcome: HandlerOutcome, seconds?: number): void {
    let cells = this.#byType.get(type);
    if (!cells) {
      cells = HANDLER_OUTCOMES.map((o) => {
        const labels = { consumer: this.#consumer, type, outcome: o };
        return {
          count: this.#metrics.handled.cell(labels),
          duration: this.#metrics.handleDuration.cell(labels),
        };
      });
      this.#byType.set(type, cells);
    }
    const c = cells[HANDLER_OUTCOMES.indexOf(outcome)]!;
    c.count.value++;
    if (seconds !== undefined) c.duration.observe(seconds);
  }
}

/**
 * The Prometheus metrics of one service process, in its own registry (served on `/metrics`).
 * Services add their own metrics to `registry`.
 *
 * The per-message ones (handled, handler duration, published, publish duration, in flight) cost an increment on
 * the message path: their counts live in cells the counting code holds, read when the registry is scraped.
 */
export class Metrics {
  readonly registry: Registry;
  readonly handled: CellCounter<"consumer" | "type" | "outcome">;
  readonly handleDuration: CellHistogram<"consumer" | "type" | "outcome">;
  readonly published: CellCounter<"stream" | "type">;
  readonly publishDuration: CellHistogram<"stream">;
  readonly publishRetries: Counter<"stream">;
  readonly deadLettered: Counter<"consumer" | "code">;
  readonly consumerPending: Gauge<"stream" | "consumer">;
  readonly consumerAckPending: Gauge<"stream" | "consumer">;
  readonly consumerPaused: Gauge<"consumer">;
  readonly inFlight: Gauge<"consumer">;
  readonly #collectors: (() => Promise<void>)[] = [];
  readonly #inFlightOf = new Map<string, () => number>();

  constructor(service: string, opts: { defaultMetrics?: boolean } = {}) {
    this.registry = new Registry();
    this.registry.setDefaultLabels({ service });
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.handled = new CellCounter({
      name: "shopstream_messages_handled_total",
      help: "Messages handled by a consumer, by outcome (ack, skipped, retry, delayed, dlq, handed_back).",
      labelNames: ["consumer", "type", "outcome"],
      registers,
    });
    this.handleDuration = new CellHistogram({
      name: "shopstream_handler_duration_seconds",
      help: "Time from handler start to ack/nak/term.",
      labelNames: ["consumer", "type", "outcome"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.published = new CellCounter({
      name: "shopstream_messages_published_total",
      help: "Events published and acknowledged by JetStream (duplicates included).",
      labelNames: ["stream", "type"],
      registers,
    });
    this.publishDuration = new CellHistogram({
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
    const inFlightOf = this.#inFlightOf;
    this.inFlight = new Gauge({
      name: "shopstream_consumer_in_flight",
      help: "Messages being handled right now.",
      labelNames: ["consumer"],
      registers,
      collect() {
        for (const [consumer, read] of inFlightOf) this.set({ consumer }, read());
      },
    });
  }

  /** Registers an async refresh run at each scrape (e.g. consumer info from the server). */
  onCollect(fn: () => Promise<void>): void {
    this.#collectors.push(fn);
  }

  /** The handler outcome counts of `consumer`, to record into from the message path. */
  handlerTally(consumer: string): HandlerTally {
    return new HandlerTally(this, consumer);
  }

  /** `shopstream_consumer_in_flight{consumer}` is read from `read` at each scrape. */
  trackInFlight(consumer: string, read: () => number): void {
    this.#inFlightOf.set(consumer, read);
  }
}
