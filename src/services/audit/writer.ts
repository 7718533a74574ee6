/**
 * The write path of the audit log: handlers hand entries to {@link AuditWriter.append}, which batches them
 * into one transaction per batch and resolves each caller after the commit, so a message is acked only
 * once its row is durable.
 */
import { Counter, Histogram, type Registry } from "prom-client";
import { RetryableError, describeError } from "../../lib/errors.js";
import { DeferError } from "../../lib/messaging/consumer.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import type { AuditEntry } from "./audit.js";
import { Batcher } from "./batcher.js";
import type { AppendResult, AuditStore } from "./store.js";

/** What the writer needs of a store. */
export type AppendTarget = Pick<AuditStore, "append">;

/** Options for {@link AuditWriter}. */
export interface AuditWriterOptions {
  maxBatch?: number;
  maxDelayMs?: number;
  /** How soon a handler parked by an unavailable database tries again (default 1 s). */
  unavailableRetryMs?: number;
  logger?: Logger;
  /** Registers the writer's metrics here. */
  registry?: Registry;
}

/**
 * SQLSTATE classes that blame the rows of a batch rather than the database: data exceptions (22) and
 * integrity violations (23). Anything else — connection failures, timeouts, a closed or restarting
 * database, lock timeouts, a missing table — means the database cannot take writes right now.
 */
const ROW_ERROR_CLASSES = new Set(["22", "23"]);

/** Does `err` blame the data written (not the database's availability)? */
export function isRowError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) && ROW_ERROR_CLASSES.has(code.slice(0, 2));
}

/**
 * Appends audit entries in batches.
 *
 * Failures: when the database is unavailable every waiter of the batch is rejected with a
 * {@link DeferError} (a RetryableError that parks the message without using up a delivery attempt: the
 * audit must not dead-letter events because its database restarted). When a batch fails because of its
 * data, each entry is retried alone, so one bad row fails only its own message, with a
 * {@link RetryableError} (dead-lettered after the consumer's max attempts, and then recorded as a
 * DeadLetter row).
 */
export class AuditWriter {
  readonly #store: AppendTarget;
  readonly #batcher: Batcher<AuditEntry, AppendResult>;
  readonly #retryMs: number;
  readonly #logger: Logger | undefined;
  readonly #batchSize: Histogram | undefined;
  readonly #batchSeconds: Histogram<"outcome"> | undefined;
  readonly #entries: Counter<"result"> | undefined;
  /** Counts for tests and logs. */
  readonly stats = { batches: 0, inserted: 0, duplicates: 0, failedBatches: 0 };

  constructor(store: AppendTarget, opts: AuditWriterOptions = {}) {
    this.#store = store;
    this.#retryMs = opts.unavailableRetryMs ?? 1_000;
    this.#logger = opts.logger;
    if (opts.registry) {
      const registers = [opts.registry];
      this.#batchSize = new Histogram({
        name: "audit_batch_size",
        help: "Entries per audit append transaction.",
        buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        registers,
      });
      this.#batchSeconds = new Histogram({
        name: "audit_batch_duration_seconds",
        help: "Time of one audit append transaction, lock wait included.",
        labelNames: ["outcome"],
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
        registers,
      });
      this.#entries = new Counter({
        name: "audit_entries_total",
        help: "Entries handed to the audit log, by result (inserted, duplicate, failed; conflict: a duplicate id with other content).",
        labelNames: ["result"],
        registers,
      });
    }
    this.#batcher = new Batcher<AuditEntry, AppendResult>({
      maxBatch: opts.maxBatch ?? 200,
      maxDelayMs: opts.maxDelayMs ?? 5,
      write: (items) => this.#write(items),
    });
  }

  /** Records one entry; resolves once its batch is committed (or it was already stored). */
  append(entry: AuditEntry): Promise<AppendResult> {
    return this.#batcher.add(entry);
  }

  /** Writes what is queued and stops accepting entries. */
  close(): Promise<void> {
    return this.#batcher.close();
  }

  async #write(items: AuditEntry[]): Promise<PromiseSettledResult<AppendResult>[]> {
    try {
      const results = await this.#appendTimed(items);
      return results.map((value) => ({ status: "fulfilled", value }));
    } catch (err) {
      this.stats.failedBatches++;
      if (!isRowError(err)) {
        this.#entries?.inc({ result: "failed" }, items.length);
        this.#logger?.warn(
          { err: describeError(err), entries: items.length },
          "audit database unavailable; handlers parked",
        );
        throw new DeferError(`audit database unavailable: ${describeError(err)}`, this.#retryMs, err);
      }
      if (items.length === 1) {
        this.#entries?.inc({ result: "failed" });
        throw rowFailure(items[0]!, err);
      }
      this.#logger?.warn(
        { err: describeError(err), entries: items.length },
        "audit batch rejected by its data; retrying entries one by one",
      );
      const out: PromiseSettledResult<AppendResult>[] = [];
      for (const item of items) {
        try {
          const [value] = await this.#appendTimed([item]);
          out.push({ status: "fulfilled", value: value! });
        } catch (e) {
          this.#entries?.inc({ result: "failed" });
          out.push({
            status: "rejected",
            reason: isRowError(e)
              ? rowFailure(item, e)
              : new DeferError(`audit database unavailable: ${describeError(e)}`, this.#retryMs, e),
          });
        }
      }
      return out;
    }
  }

  async #appendTimed(items: AuditEntry[]): Promise<AppendResult[]> {
    const started = performance.now();
    let outcome = "error";
    try {
      const results = await this.#store.append(items);
      outcome = "ok";
      const inserted = results.filter((r) => r.status === "inserted").length;
      results.forEach((r, i) => {
        if (!r.conflict) return;
        this.#entries?.inc({ result: "conflict" });
        this.#logger?.warn(
          { event_id: items[i]!.eventId, order_id: items[i]!.orderId, position: r.position },
          "event id already audited with other content; the first version stays",
        );
      });
      this.stats.batches++;
      this.stats.inserted += inserted;
      this.stats.duplicates += results.length - inserted;
      this.#batchSize?.observe(items.length);
      this.#entries?.inc({ result: "inserted" }, inserted);
      this.#entries?.inc({ result: "duplicate" }, results.length - inserted);
      return results;
    } finally {
      this.#batchSeconds?.observe({ outcome }, (performance.now() - started) / 1000);
    }
  }
}

function rowFailure(entry: AuditEntry, err: unknown): RetryableError {
  return new RetryableError(
    "AUDIT_APPEND_FAILED",
    `audit row for ${entry.eventId} rejected: ${describeError(err)}`,
    { cause: err },
  );
}
