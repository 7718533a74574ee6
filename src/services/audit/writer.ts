/**
 * The write path of the audit log: the projector's stream readers hand entries to {@link AuditWriter.append},
 * which batches them into one transaction per batch and resolves each caller after the commit. An entry read
 * from a stream carries its (stream, sequence): the same transaction moves that stream's position, so the
 * position never runs ahead of the rows.
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

/**
 * One run of a stream reader, from a committed position until it stops. Once one of its entries fails, the
 * session is dead: none of its later entries is written (they would move the position past the failed one);
 * the reader starts a new session from the committed position.
 */
export class ReaderSession {
  #failure: unknown;
  #dead = false;
  constructor(readonly stream: string) {}
  get dead(): boolean {
    return this.#dead;
  }
  /** Why it died (the first failure). */
  get failure(): unknown {
    return this.#failure;
  }
  kill(reason: unknown): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#failure = reason;
  }
}

/** Where an entry was read: its stream sequence, for the stream's position. */
export interface ReadAt {
  seq: number;
  session: ReaderSession;
}

interface Item {
  entry: AuditEntry;
  at?: ReadAt | undefined;
}

/** An entry of a dead session, not written. */
export class SessionDeadError extends Error {
  override readonly name = "SessionDeadError";
}

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
 * {@link DeferError} (retry later). When a batch fails because of its data, each entry is retried alone, so
 * one bad row fails only itself, with a {@link RetryableError}. Either way the reader session of every failed
 * entry dies ({@link ReaderSession}): its later entries are rejected unwritten ({@link SessionDeadError}) and
 * the reader starts again from the committed position, so a stream's position never passes an entry that
 * was not recorded.
 */
export class AuditWriter {
  readonly #store: AppendTarget;
  readonly #batcher: Batcher<Item, AppendResult>;
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
    this.#batcher = new Batcher<Item, AppendResult>({
      maxBatch: opts.maxBatch ?? 200,
      maxDelayMs: opts.maxDelayMs ?? 5,
      write: (items) => this.#write(items),
    });
  }

  /**
   * Records one entry; resolves once its batch is committed (or it was already stored). With `at`, the same
   * transaction moves the position of `at.session.stream` to `at.seq` (never back). A session's entries must
   * be added in sequence order; once one fails, the session's later entries are rejected unwritten.
   */
  append(entry: AuditEntry, at?: ReadAt): Promise<AppendResult> {
    return this.#batcher.add({ entry, at });
  }

  /** Writes what is queued and stops accepting entries. */
  close(): Promise<void> {
    return this.#batcher.close();
  }

  async #write(all: Item[]): Promise<PromiseSettledResult<AppendResult>[]> {
    // Entries of a session that already failed are not written: they would move its position past the failure.
    const out: (PromiseSettledResult<AppendResult> | undefined)[] = all.map((i) =>
      i.at?.session.dead ? { status: "rejected", reason: deadSession(i.at.session) } : undefined,
    );
    const live = all.map((item, index) => ({ item, index })).filter((x) => out[x.index] === undefined);
    const items = live.map((x) => x.item);
    if (items.length === 0) return out as PromiseSettledResult<AppendResult>[];
    const settle = (results: PromiseSettledResult<AppendResult>[]) => {
      results.forEach((r, i) => (out[live[i]!.index] = r));
      return out as PromiseSettledResult<AppendResult>[];
    };
    try {
      const results = await this.#appendTimed(items);
      return settle(results.map((value) => ({ status: "fulfilled", value })));
    } catch (err) {
      this.stats.failedBatches++;
      if (!isRowError(err)) {
        this.#entries?.inc({ result: "failed" }, items.length);
        this.#logger?.warn(
          { err: describeError(err), entries: items.length },
          "audit database unavailable; the batch is not written",
        );
        const reason = new DeferError(
          `audit database unavailable: ${describeError(err)}`,
          this.#retryMs,
          err,
        );
        for (const i of items) i.at?.session.kill(reason);
        throw reason;
      }
      if (items.length === 1) {
        this.#entries?.inc({ result: "failed" });
        const reason = rowFailure(items[0]!.entry, err);
        items[0]!.at?.session.kill(reason);
        throw reason;
      }
      this.#logger?.warn(
        { err: describeError(err), entries: items.length },
        "audit batch rejected by its data; retrying entries one by one",
      );
      const results: PromiseSettledResult<AppendResult>[] = [];
      for (const item of items) {
        if (item.at?.session.dead) {
          results.push({ status: "rejected", reason: deadSession(item.at.session) });
          continue;
        }
        try {
          const [value] = await this.#appendTimed([item]);
          results.push({ status: "fulfilled", value: value! });
        } catch (e) {
          this.#entries?.inc({ result: "failed" });
          const reason = isRowError(e)
            ? rowFailure(item.entry, e)
            : new DeferError(`audit database unavailable: ${describeError(e)}`, this.#retryMs, e);
          item.at?.session.kill(reason);
          results.push({ status: "rejected", reason });
        }
      }
      return settle(results);
    }
  }

  async #appendTimed(batch: Item[]): Promise<AppendResult[]> {
    const started = performance.now();
    let outcome = "error";
    const items = batch.map((i) => i.entry);
    const advance = new Map<string, number>();
    for (const { at } of batch)
      if (at) advance.set(at.session.stream, Math.max(advance.get(at.session.stream) ?? 0, at.seq));
    try {
      const results = await this.#store.append(items, undefined, advance);
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

function deadSession(s: ReaderSession): SessionDeadError {
  return new SessionDeadError(`reader of ${s.stream} stopped after an earlier failure: not written`, {
    cause: s.failure,
  });
}

function rowFailure(entry: AuditEntry, err: unknown): RetryableError {
  return new RetryableError(
    "AUDIT_APPEND_FAILED",
    `audit row for ${entry.eventId} rejected: ${describeError(err)}`,
    { cause: err },
  );
}
