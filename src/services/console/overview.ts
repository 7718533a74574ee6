/**
 * The overview's numbers, sampled once a second: orders placed/confirmed/cancelled per second and the POST → terminal
 * latency (read live from the ORDERS stream with an ordered consumer, so every replica of orders is counted), each
 * durable consumer's lag (pending + ack pending) with an estimated time to clear, the DLQ depth, the stream sizes
 * (JetStream info) and each external dependency's breaker state (the owning service's `/metrics`).
 */
import { nuid } from "@nats-io/nats-core";
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Streams } from "../../lib/events/catalog.js";
import { Hdr } from "../../lib/messaging/headers.js";
import { DISCARD_SUBJECT_PREFIX } from "../../lib/messaging/dlq.js";
import { ALL_STREAMS } from "../../lib/messaging/permissions.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import type { BreakerRow, ConsumerRow, OverviewSample } from "./api-types.js";

export type { BreakerRow, ConsumerRow, OverviewSample };

const TERMINAL = new Set(["OrderConfirmed", "OrderCancelled"]);

/** Counts ORDERS events per second and matches terminals to their OrderPlaced. */
export class OrderFlow {
  readonly #placedAt = new Map<string, number>();
  readonly #counts = { placed: 0, confirmed: 0, cancelled: 0 };
  readonly #latencies: { at: number; ms: number }[] = [];
  #stopped = false;
  #stop: (() => void) | undefined;

  constructor(
    private readonly js: JetStreamClient,
    private readonly logger: Logger,
  ) {}

  /** Reads from now on until {@link stop}; a lost consumer is recreated after a second. */
  start(): void {
    void this.#loop();
  }

  async #loop(): Promise<void> {
    while (!this.#stopped) {
      try {
        // Headers only: the type is a header, the order id the subject's last token, the time the stream's.
        const consumer = await this.js.consumers.get(Streams.ORDERS, {
          deliver_policy: DeliverPolicy.New,
          name_prefix: `console_orders_${nuid.next()}`,
          headers_only: true,
        });
        const messages = await consumer.consume({ max_messages: 512, expires: 10_000 });
        this.#stop = () => messages.stop();
        if (this.#stopped) messages.stop();
        try {
          for await (const m of messages)
            this.#see(m.headers?.get(Hdr.Type) ?? "", m.subject, m.info.timestampNanos);
        } finally {
          await consumer.delete().catch(() => undefined);
        }
      } catch (err) {
        if (!this.#stopped) this.logger.warn({ err }, "console: ORDERS reader failed; starting again");
      }
      if (!this.#stopped) await new Promise((r) => setTimeout(r, 1_000).unref());
    }
  }

  /** Counts an ORDERS message (`orders.<orderId>`, stored at `timestampNanos`) of event type `type`. */
  #see(type: string, subject: string, timestampNanos: number): void {
    const orderId = subject.slice(subject.indexOf(".") + 1) || undefined;
    const at = Math.floor(timestampNanos / 1e6);
    if (type === "OrderPlaced") {
      this.#counts.placed++;
      if (orderId) {
        if (this.#placedAt.size >= 200_000) this.#placedAt.clear();
        this.#placedAt.set(orderId, at);
      }
    } else if (TERMINAL.has(type)) {
      if (type === "OrderConfirmed") this.#counts.confirmed++;
      else this.#counts.cancelled++;
      const placed = orderId ? this.#placedAt.get(orderId) : undefined;
      if (placed !== undefined && orderId) {
        this.#placedAt.delete(orderId);
        this.#latencies.push({ at: Date.now(), ms: Math.max(0, at - placed) });
      }
    }
  }

  /** The counts since the last call (and resets them), and the latency percentiles of the last minute. */
  take(): {
    counts: { placed: number; confirmed: number; cancelled: number };
    latency: OverviewSample["latency"];
  } {
    const counts = { ...this.#counts };
    this.#counts.placed = this.#counts.confirmed = this.#counts.cancelled = 0;
    const horizon = Date.now() - 60_000;
    while (this.#latencies.length > 0 && this.#latencies[0]!.at < horizon) this.#latencies.shift();
    const sorted = this.#latencies.map((l) => l.ms).sort((a, b) => a - b);
    const pct = (p: number) =>
      sorted.length === 0
        ? null
        : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
    return { counts, latency: { p50: pct(50), p99: pct(99), count: sorted.length } };
  }

  stop(): void {
    this.#stopped = true;
    this.#stop?.();
  }
}

/** The breaker gauges the console reads, and which service exports each. */
export const BREAKERS = [
  { dependency: "payment-gateway", service: "payments", metric: "payment_gateway_breaker_state" },
  { dependency: "mail-provider", service: "notifications", metric: "mail_provider_breaker_state" },
] as const;

const BREAKER_STATES = ["closed", "open", "half-open"] as const;

/** The value of an unlabelled gauge `name` in Prometheus text, or undefined. */
export function gaugeValue(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Samples everything the overview shows. */
export class OverviewSampler {
  readonly #acked = new Map<string, { at: number; floor: number; rate: number }>();

  constructor(
    private readonly jsm: JetStreamManager,
    private readonly flow: OrderFlow,
    private readonly metricsUrls: Record<string, string>,
    private readonly pausedOf: (durable: string) => { by: string; at: string } | undefined = () => undefined,
  ) {}

  async consumers(): Promise<ConsumerRow[]> {
    const rows: ConsumerRow[] = [];
    for (const stream of ALL_STREAMS) {
      const infos = await this.jsm.consumers
        .list(stream)
        .next()
        .catch(() => []);
      for (const info of infos) {
        const durable = info.config.durable_name;
        if (!durable) continue;
        const key = `${stream}/${durable}`;
        const now = Date.now();
        const floor = info.ack_floor.stream_seq;
        const prev = this.#acked.get(key);
        let rate = prev?.rate ?? 0;
        if (prev && now - prev.at >= 500) {
          const instant = (Math.max(0, floor - prev.floor) * 1000) / (now - prev.at);
          rate = prev.rate === 0 ? instant : 0.5 * instant + 0.5 * prev.rate;
        }
        if (!prev || now - prev.at >= 500) this.#acked.set(key, { at: now, floor, rate });
        const lag = info.num_pending + info.num_ack_pending;
        rows.push({
          stream,
          durable,
          pending: info.num_pending,
          ackPending: info.num_ack_pending,
          lag,
          redelivered: info.num_redelivered,
          ackRate: Math.round(rate * 10) / 10,
          etaSeconds: lag === 0 ? 0 : rate > 0.05 ? Math.round(lag / rate) : null,
          paused: this.pausedOf(durable) ?? null,
        });
      }
    }
    return rows.sort((a, b) => a.durable.localeCompare(b.durable));
  }

  async breakers(): Promise<BreakerRow[]> {
    return Promise.all(
      BREAKERS.map(async (b) => {
        const base = this.metricsUrls[b.service];
        let state: BreakerRow["state"] = "unknown";
        try {
          const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(2_000) });
          const v = gaugeValue(await res.text(), b.metric);
          if (v !== undefined) state = BREAKER_STATES[v] ?? "unknown";
        } catch {
          /* unknown */
        }
        return { dependency: b.dependency, service: b.service, state };
      }),
    );
  }

  async streams(): Promise<{ streams: OverviewSample["streams"]; dlqDepth: number }> {
    const streams: OverviewSample["streams"] = [];
    let dlqDepth = 0;
    for (const name of ALL_STREAMS) {
      try {
        if (name === Streams.DLQ) {
          const info = await this.jsm.streams.info(name, { subjects_filter: ">" });
          for (const [subject, n] of Object.entries(info.state.subjects ?? {}))
            if (!subject.startsWith(`${DISCARD_SUBJECT_PREFIX}.`)) dlqDepth += n;
          streams.push({ name, messages: info.state.messages, bytes: info.state.bytes });
        } else {
          const info = await this.jsm.streams.info(name);
          streams.push({ name, messages: info.state.messages, bytes: info.state.bytes });
        }
      } catch {
        streams.push({ name, messages: -1, bytes: -1 });
      }
    }
    return { streams, dlqDepth };
  }

  async sample(intervalMs: number): Promise<OverviewSample> {
    const [consumers, breakers, s] = await Promise.all([this.consumers(), this.breakers(), this.streams()]);
    const { counts, latency } = this.flow.take();
    const per = (n: number) => Math.round((n * 1000 * 10) / intervalMs) / 10;
    return {
      at: new Date().toISOString(),
      rates: {
        placed: per(counts.placed),
        confirmed: per(counts.confirmed),
        cancelled: per(counts.cancelled),
      },
      latency,
      consumers,
      breakers,
      dlqDepth: s.dlqDepth,
      streams: s.streams,
    };
  }
}
