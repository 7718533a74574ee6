/**
 * The audit as a projector whose position lives in its database.
 *
 * One reader per stream (the four event streams and the DLQ) reads with an ordered consumer — ephemeral,
 * AckNone, no acknowledgements — from the stream's committed position + 1. Every message becomes a row
 * (`entryFromMessage`), handed to the writer with its stream sequence; the writer's transaction records the
 * rows and moves the stream's position to the highest sequence of the batch. On any failure (database,
 * consumer, connection) the reader's session dies, and after a backoff the reader starts again from the
 * committed position: nothing read is lost, and what is read again is deduplicated by event id.
 *
 * One replica projects at a time: with PostgreSQL, replicas elect the active one with a session advisory lock
 * held on a dedicated connection; the others stand by and try again every `standbyRetryMs`. Losing the
 * connection (or its ping failing) stops the readers. With PGlite (one process) the projector is always active.
 */
import { nuid } from "@nats-io/nats-core";
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { Gauge, type Registry } from "prom-client";
import { describeError } from "../../lib/errors.js";
import { backoffDelay, defaultBackoff, type BackoffOptions } from "../../lib/messaging/backoff.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { Hdr } from "../../lib/messaging/headers.js";
import {
  SpanKind,
  SpanStatusCode,
  contextFromTraceId,
  extractTraceContext,
  isTracingExported,
  tracer,
  type Span,
} from "../../lib/telemetry/tracing.js";
import type { AuditEntry } from "./audit.js";
import { LEGACY_AUDIT_DURABLES, PROJECTED_STREAMS, entryFromMessage } from "./handlers.js";
import type { AuditStore } from "./store.js";
import type { LockSession } from "./store-sql.js";
import { ReaderSession, type AuditWriter } from "./writer.js";

/** Where a projector stands: electing (not decided yet), active (reading) or standby (another replica reads). */
export type ProjectorRole = "electing" | "active" | "standby";

/** Position, stream head and lag of one stream. */
export interface StreamPosition {
  /** Last stream sequence recorded (0: nothing yet). */
  position: number;
  /** The stream's last sequence. */
  lastSeq: number;
  /** `lastSeq − position` (0 when caught up). */
  lag: number;
}

/** Options for {@link Projector}. */
export interface ProjectorOptions {
  js: JetStreamClient;
  jsm: JetStreamManager;
  store: AuditStore;
  writer: AuditWriter;
  logger: Logger;
  registry?: Registry;
  /** Streams to read (default: the four event streams and the DLQ). */
  streams?: readonly string[];
  /** Entries of one reader waiting for their batch at most (fills batches; default 256). */
  inFlight?: number;
  /** Messages the ordered consumer asks the server for at once (default 512). */
  readBatch?: number;
  /** How often a standby tries to become active, and the active one checks its lock connection (default 3 s). */
  standbyRetryMs?: number;
  /** Restart delays of a failed reader (default {@link defaultBackoff}). */
  backoff?: BackoffOptions;
  /**
   * A reader that has received nothing for this long while its stream has messages beyond what it read is stalled
   * (its ordered consumer lost, e.g. with a NATS node, and not recreated): it restarts from the committed position
   * (default 15 s).
   */
  stallMs?: number;
}

type Resolved = ProjectorOptions &
  Required<Pick<ProjectorOptions, "inFlight" | "readBatch" | "backoff" | "stallMs">>;

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });

/**
 * The audit's hop of an order's trace, when spans are exported: a CONSUMER span `record <stream>` per message, a child
 * of the publish span that sent it (its `traceparent` header; else the entry's trace id), from the message's arrival
 * until its row is committed.
 */
function recordSpan(stream: string, m: JsMsg, entry: AuditEntry): Span | undefined {
  if (!isTracingExported()) return undefined;
  const parent = m.headers?.get(Hdr.TraceParent)
    ? extractTraceContext(m.headers)
    : entry.traceId
      ? contextFromTraceId(entry.traceId)
      : undefined;
  return tracer().startSpan(
    `record ${stream}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": m.subject,
        "messaging.nats.stream.sequence": m.seq,
        "messaging.message.id": entry.eventId,
        "shopstream.event.type": entry.eventType,
        ...(entry.orderId ? { "shopstream.order.id": entry.orderId } : {}),
      },
    },
    parent,
  );
}

/** Reads one stream into the log, from the committed position, restarting from it after any failure. */
class StreamReader {
  /** `reading` once its consumer is up; `restarting` while it waits after a failure. */
  state: "starting" | "reading" | "restarting" | "stopped" = "starting";
  lastError: string | undefined;
  /** Restarts since the last entry recorded. */
  failures = 0;
  #messages: ConsumerMessages | undefined;

  constructor(
    readonly stream: string,
    readonly o: Resolved,
    readonly onSession: () => void,
  ) {}

  async run(signal: AbortSignal): Promise<void> {
    const stop = () => this.#messages?.stop();
    signal.addEventListener("abort", stop, { once: true });
    try {
      while (!signal.aborted) {
        const session = new ReaderSession(this.stream);
        try {
          await this.#session(session, signal);
        } catch (err) {
          session.kill(err);
        }
        if (signal.aborted) break;
        this.failures++;
        this.state = "restarting";
        this.lastError = describeError(session.failure ?? new Error("consumer ended"));
        const delay = backoffDelay(this.failures, this.o.backoff);
        this.o.logger.warn(
          { stream: this.stream, err: this.lastError, attempt: this.failures, retry_in_ms: delay },
          "audit reader stopped; restarting from the committed position",
        );
        await sleep(delay, signal);
      }
    } finally {
      signal.removeEventListener("abort", stop);
      this.state = "stopped";
    }
  }

  async #session(session: ReaderSession, signal: AbortSignal): Promise<void> {
    const { js, jsm, store, writer, logger } = this.o;
    let position = await store.position(this.stream);
    const lastSeq = (await jsm.streams.info(this.stream)).state.last_seq;
    if (position > lastSeq) {
      // The stream ends before the position: it was recreated (or restored from an older backup). Reading from
      // the position would skip everything until the stream passes it.
      logger.error(
        { stream: this.stream, position, last_seq: lastSeq },
        "the stream ends before the audit's position (recreated?): reading it again from its first sequence",
      );
      await store.resetPosition(this.stream);
      position = 0;
    }
    const consumer = await js.consumers.get(this.stream, {
      opt_start_seq: position + 1,
      name_prefix: `audit_${this.stream.toLowerCase()}_${nuid.next()}`,
    });
    // Pull requests expire after 10 s, so the server's idle heartbeats come every 5 s: a lost consumer is noticed.
    const messages = await consumer.consume({ max_messages: this.o.readBatch, expires: 10_000 });
    this.#messages = messages;
    this.onSession();
    // Any failure of an entry ends the session: stop reading (the for-await below returns).
    const fail = (err: unknown) => {
      session.kill(err);
      messages.stop();
    };
    if (signal.aborted) messages.stop();
    void this.#logStatus(messages);
    // The watchdog: nothing received for stallMs, no entry waiting for the database (a slow database is not a
    // stalled consumer), and the stream has more than was read → restart.
    let readTo = position;
    let receivedAt = Date.now();
    let writing = 0;
    let checking = false;
    const watchdog = setInterval(
      () => {
        if (checking || writing > 0 || Date.now() - receivedAt < this.o.stallMs) return;
        checking = true;
        jsm.streams
          .info(this.stream)
          .then((info) => {
            if (info.state.last_seq > readTo && writing === 0 && Date.now() - receivedAt >= this.o.stallMs)
              fail(
                new Error(
                  `stalled: nothing received for ${this.o.stallMs} ms, the stream is at ${info.state.last_seq} and the reader at ${readTo}`,
                ),
              );
          })
          .catch(
            () => undefined /* NATS not answering: the ordered consumer's own recovery, or the next check */,
          )
          .finally(() => (checking = false));
      },
      Math.max(100, Math.floor(this.o.stallMs / 2)),
    );
    const inFlight: Promise<unknown>[] = [];
    this.state = "reading";
    logger.info({ stream: this.stream, from_seq: position + 1 }, "audit reader started");
    try {
      for await (const m of messages) {
        if (session.dead) break;
        receivedAt = Date.now();
        readTo = m.seq;
        writing++;
        const entry = entryFromMessage(this.stream, m);
        const span = recordSpan(this.stream, m, entry);
        const p = writer
          .append(entry, { seq: m.seq, session })
          .then(
            () => {
              this.failures = 0;
              span?.end();
            },
            (err: unknown) => {
              span?.setStatus({ code: SpanStatusCode.ERROR, message: describeError(err) });
              span?.end();
              fail(err);
            },
          )
          .finally(() => {
            writing--;
            receivedAt = Date.now();
          });
        inFlight.push(p);
        if (inFlight.length >= this.o.inFlight) await inFlight.shift();
      }
    } finally {
      clearInterval(watchdog);
      messages.stop();
      await Promise.all(inFlight);
      this.#messages = undefined;
      // The ephemeral consumer would linger on the server for its inactive threshold (5 min).
      await consumer.delete().catch(() => undefined);
    }
    if (session.dead) throw session.failure;
    if (!signal.aborted) throw new Error("the ordered consumer stopped (connection closed or consumer lost)");
  }

  /** Logs what the ordered consumer reports about itself (lost heartbeats, consumer recreated, …). */
  async #logStatus(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const s of messages.status()) {
        // Routine: pulls, heartbeats, expired pulls.
        if (["next", "debug", "heartbeat", "discard"].includes(s.type)) continue;
        this.o.logger.warn({ stream: this.stream, status: s }, "audit reader: ordered consumer status");
      }
    } catch {
      /* the iterator ended */
    }
  }
}

/** See the module comment. */
export class Projector {
  readonly #o: Resolved;
  readonly #streams: readonly string[];
  readonly #lockSession: (() => Promise<LockSession>) | undefined;
  readonly #stop = new AbortController();
  #readers: StreamReader[] = [];
  #running: Promise<void> | undefined;
  #role: ProjectorRole = "electing";
  #electionError: string | undefined;
  #sessions = 0;
  readonly #activeGauge: Gauge | undefined;

  constructor(o: ProjectorOptions) {
    this.#o = { inFlight: 256, readBatch: 512, backoff: defaultBackoff, stallMs: 15_000, ...o };
    this.#streams = o.streams ?? PROJECTED_STREAMS;
    this.#lockSession = o.store.db.lockSession?.bind(o.store.db);
    if (o.registry) {
      const registers = [o.registry];
      this.#activeGauge = new Gauge({
        name: "shopstream_audit_projector_active",
        help: "1 when this audit replica is the active projector, 0 when it stands by (or is electing).",
        registers,
      });
      this.#activeGauge.set(0);
      const lag = new Gauge({
        name: "shopstream_audit_lag_messages",
        help: "Messages of the stream not yet recorded by the audit: stream last sequence − audit position.",
        labelNames: ["stream"],
        registers,
        collect: async () => {
          try {
            for (const [stream, p] of Object.entries(await this.positions())) lag.set({ stream }, p.lag);
          } catch {
            /* database or NATS not answering: keep the last values */
          }
        },
      });
    }
  }

  get role(): ProjectorRole {
    return this.#role;
  }

  /** Readers of the streams (tests: sessions started, state). */
  get readers(): readonly Pick<StreamReader, "stream" | "state" | "lastError">[] {
    return this.#readers;
  }

  /** Reader sessions started since this projector was made (each starts from the committed position). */
  get sessionsStarted(): number {
    return this.#sessions;
  }

  /** Readiness: ready when active and every reader reads, or when standing by. */
  readiness(): { ready: boolean; detail: string } {
    if (this.#role === "standby") return { ready: true, detail: "standby" };
    if (this.#role === "electing")
      return { ready: false, detail: `electing${this.#electionError ? `: ${this.#electionError}` : ""}` };
    const behind = this.#readers.filter((r) => r.state !== "reading");
    if (behind.length === 0) return { ready: true, detail: "active" };
    return {
      ready: false,
      detail: `active, not reading: ${behind.map((r) => `${r.stream} ${r.state}${r.lastError ? ` (${r.lastError})` : ""}`).join("; ")}`,
    };
  }

  /** Position, last sequence and lag of every projected stream. */
  async positions(): Promise<Record<string, StreamPosition>> {
    const stored = await this.#o.store.positions();
    const out: Record<string, StreamPosition> = {};
    for (const stream of this.#streams) {
      const lastSeq = (await this.#o.jsm.streams.info(stream)).state.last_seq;
      const position = stored.get(stream) ?? 0;
      out[stream] = { position, lastSeq, lag: Math.max(0, lastSeq - position) };
    }
    return out;
  }

  /** Deletes the durables of the audit before it became a projector, and starts electing (returns at once). */
  async start(): Promise<void> {
    await this.#deleteLegacyDurables();
    this.#running = this.#elect(this.#stop.signal);
  }

  /** Stops reading, waits for the readers' entries to be written or failed, releases the lock. */
  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#running;
  }

  async #deleteLegacyDurables(): Promise<void> {
    for (const { stream, durable } of LEGACY_AUDIT_DURABLES) {
      if (!this.#streams.includes(stream)) continue;
      try {
        await this.#o.jsm.consumers.delete(stream, durable);
        this.#o.logger.warn(
          { stream, consumer: durable },
          "deleted the audit's former durable consumer: the audit now reads with ordered consumers from its stored position",
        );
      } catch (err) {
        if (!/not found/i.test(describeError(err)))
          this.#o.logger.warn(
            { stream, consumer: durable, err: describeError(err) },
            "could not delete a former audit durable",
          );
      }
    }
  }

  async #elect(signal: AbortSignal): Promise<void> {
    if (!this.#lockSession) {
      // PGlite: one process, always active.
      this.#setRole("active");
      await this.#project(signal);
      return;
    }
    const retryMs = this.#o.standbyRetryMs ?? 3_000;
    while (!signal.aborted) {
      let session: LockSession | undefined;
      try {
        session = await this.#lockSession();
        if (!(await session.tryLock(this.#o.store.projectorLockKey))) {
          await session.close();
          session = undefined;
          if (this.#role !== "standby")
            this.#o.logger.info("audit projector standing by: another replica is active");
          this.#electionError = undefined;
          this.#setRole("standby");
          await sleep(retryMs, signal);
          continue;
        }
      } catch (err) {
        await session?.close();
        this.#electionError = describeError(err);
        this.#setRole("electing");
        this.#o.logger.warn(
          { err: this.#electionError, retry_in_ms: retryMs },
          "audit projector election failed",
        );
        await sleep(retryMs, signal);
        continue;
      }
      this.#electionError = undefined;
      this.#setRole("active");
      this.#o.logger.info("audit projector active: holds the projector lock");
      const held = new AbortController();
      const onStop = () => held.abort();
      signal.addEventListener("abort", onStop, { once: true });
      void session.lost.then((err) => {
        if (!held.signal.aborted)
          this.#o.logger.error(
            { err: describeError(err) },
            "audit projector lost its lock connection; readers stop",
          );
        held.abort();
      });
      const pinger = setInterval(() => {
        session.ping().catch((err: unknown) => {
          if (!held.signal.aborted)
            this.#o.logger.error(
              { err: describeError(err) },
              "audit projector lock connection not answering; readers stop",
            );
          held.abort();
        });
      }, retryMs);
      try {
        await this.#project(held.signal);
      } finally {
        clearInterval(pinger);
        signal.removeEventListener("abort", onStop);
        await session.close();
        this.#setRole("electing");
      }
    }
  }

  /** Runs a reader per stream until `signal` aborts. */
  async #project(signal: AbortSignal): Promise<void> {
    this.#readers = this.#streams.map((s) => new StreamReader(s, this.#o, () => this.#sessions++));
    await Promise.all(this.#readers.map((r) => r.run(signal)));
  }

  #setRole(role: ProjectorRole): void {
    this.#role = role;
    this.#activeGauge?.set(role === "active" ? 1 : 0);
  }
}
