/**
 * The audit log's storage: {@link openDb} chooses one of the two adapters of the small SQL interface of
 * `store-sql.ts` ({@link SqlDb}) — PostgreSQL through `pg` (`DATABASE_URL`) or embedded PGlite under the data
 * directory — and the {@link AuditStore} runs the same SQL on either.
 */
import { createHash } from "node:crypto";
import type { Logger } from "../../lib/telemetry/logger.js";
import {
  ChainVerifier,
  GENESIS_HASH,
  chainEntries,
  normalizeTimestamp,
  type AuditEntry,
  type AuditRow,
  type VerifyResult,
} from "./audit.js";
import type { SqlDb, SqlExecutor } from "./store-sql.js";

/** Re-exported for the store's users (the definitions are in `store-sql.ts`, which the adapters import). */
export type { SqlDb, SqlExecutor };

/** Where the audit log lives. */
export interface OpenDbOptions {
  /** PostgreSQL URL; when absent, PGlite under `dataDir`. */
  databaseUrl?: string | undefined;
  /** PGlite data directory (used only without `databaseUrl`). */
  dataDir: string;
  /** PostgreSQL pool size. */
  poolMax?: number;
  logger?: Logger;
}

/** Opens PostgreSQL when a URL is given, else PGlite in `dataDir` (each adapter loaded only when used). */
export async function openDb(opts: OpenDbOptions): Promise<SqlDb> {
  if (opts.databaseUrl) {
    const { openPostgres } = await import("./store-postgres.js");
    return openPostgres({ url: opts.databaseUrl, poolMax: opts.poolMax, logger: opts.logger });
  }
  const { openPglite } = await import("./store-pglite.js");
  return openPglite({ dataDir: opts.dataDir });
}

/** A schema or table name: a plain lower-case SQL identifier (no quoting surprises). */
export const IDENTIFIER = /^[a-z_][a-z0-9_]{0,39}$/;

/** Where in the database the log lives. */
export interface AuditStoreOptions {
  schema?: string;
  table?: string;
}

/** Per-entry outcome of an append. */
export interface AppendResult {
  /** `inserted`: a new row; `duplicate`: the event id was already in the log (or earlier in the batch). */
  status: "inserted" | "duplicate";
  /** The row holding the event id. */
  position: number;
  /**
   * A duplicate whose content differs from the stored row's (same id, other payload: a redo that
   * re-stamped its event after JetStream's duplicate window, or a forgery). The stored row stays.
   */
  conflict: boolean;
}

/** One row of an order's timeline. */
export interface TimelineRow {
  position: number;
  eventId: string;
  eventType: string;
  source: string | null;
  traceId: string | null;
  causationId: string | null;
  occurredAt: string | null;
  recordedAt: string;
}

/** One row as listed by {@link AuditStore.page}. */
export interface EventListRow {
  position: number;
  eventId: string;
  eventType: string;
  orderId: string | null;
  stream: string;
  streamSeq: number | null;
  subject: string | null;
  source: string | null;
  occurredAt: string | null;
}

const COLUMNS = [
  "position",
  "event_id",
  "stream",
  "stream_seq",
  "subject",
  "event_type",
  "order_id",
  "source",
  "trace_id",
  "causation_id",
  "occurred_at",
  "recorded_at",
  "payload",
  "prev_hash",
  "hash",
] as const;

type Raw = Record<string, unknown>;

function num(v: unknown): number {
  // pg returns int8 as a string, PGlite as a number.
  return typeof v === "number" ? v : Number(v);
}
function numOrNull(v: unknown): number | null {
  return v === null || v === undefined ? null : num(v);
}
function strOrNull(v: unknown): string | null {
  return v === null || v === undefined ? null : typeof v === "string" ? v : JSON.stringify(v);
}
function ts(v: unknown): string | null {
  return normalizeTimestamp(v);
}

function toRow(r: Raw): AuditRow {
  return {
    position: num(r["position"]),
    eventId: String(r["event_id"]),
    stream: String(r["stream"]),
    streamSeq: numOrNull(r["stream_seq"]),
    subject: strOrNull(r["subject"]),
    eventType: String(r["event_type"]),
    orderId: strOrNull(r["order_id"]),
    source: strOrNull(r["source"]),
    traceId: strOrNull(r["trace_id"]),
    causationId: strOrNull(r["causation_id"]),
    occurredAt: ts(r["occurred_at"]),
    recordedAt: ts(r["recorded_at"]) ?? "",
    payload: String(r["payload"]),
    prevHash: String(r["prev_hash"]),
    hash: String(r["hash"]),
  };
}

/**
 * The append-only, hash-chained audit log in one table.
 *
 * Appends are serialised across every process writing the table by a transaction-scoped advisory lock
 * (derived from the table's name) taken before the last row is read, so the chain never forks. They are
 * idempotent on `event_id`: entries whose id is already stored are skipped inside the locked
 * transaction and never consume a position. A trigger rejects UPDATE, DELETE and TRUNCATE; the chain
 * shows any change made around it.
 */
export class AuditStore {
  readonly db: SqlDb;
  readonly schema: string;
  readonly table: string;
  /** `"schema"."table"`. */
  readonly qualified: string;
  /**
   * `"schema"."<table>_positions"`: the projector's position per stream (the last stream sequence recorded),
   * updated in the transaction that records the rows.
   */
  readonly positionsTable: string;
  readonly #lockKey: string;
  /** Key of the session advisory lock the projector replicas elect their active one with. */
  readonly projectorLockKey: string;

  constructor(db: SqlDb, opts: AuditStoreOptions = {}) {
    const schema = opts.schema ?? "public";
    const table = opts.table ?? "audit_log";
    for (const [what, v] of [
      ["schema", schema],
      ["table", table],
    ] as const) {
      if (!IDENTIFIER.test(v))
        throw new TypeError(`audit ${what} name ${JSON.stringify(v)} must match ${IDENTIFIER}`);
    }
    this.db = db;
    this.schema = schema;
    this.table = table;
    this.qualified = `"${schema}"."${table}"`;
    this.positionsTable = `"${schema}"."${table}_positions"`;
    const key = (what: string) =>
      createHash("sha256").update(`${what}:${schema}.${table}`).digest().readBigInt64BE(0).toString();
    this.#lockKey = key("shopstream-audit");
    this.projectorLockKey = key("shopstream-audit-projector");
  }

  /**
   * Creates the schema, table, indexes and append-only trigger when absent (under the append lock, so
   * replicas starting together do not race), then checks that the table has every column.
   */
  async ensureSchema(): Promise<void> {
    const t = this.qualified;
    await this.db.transaction(async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock($1::bigint)", [this.#lockKey]);
      const ns = await tx.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [this.schema]);
      if (ns.length === 0) await tx.query(`CREATE SCHEMA IF NOT EXISTS "${this.schema}"`);
      await tx.query(`CREATE TABLE IF NOT EXISTS ${t} (
        position     bigint      PRIMARY KEY,
        event_id     text        NOT NULL UNIQUE,
        stream       text        NOT NULL,
        stream_seq   bigint,
        subject      text,
        event_type   text        NOT NULL,
        order_id     text,
        source       text,
        trace_id     text,
        causation_id text,
        occurred_at  timestamptz,
        recorded_at  timestamptz NOT NULL,
        payload      text        NOT NULL,
        prev_hash    text        NOT NULL,
        hash         text        NOT NULL
      )`);
      await tx.query(`CREATE INDEX IF NOT EXISTS "${this.table}_order_idx" ON ${t} (order_id, position)`);
      await tx.query(`CREATE TABLE IF NOT EXISTS ${this.positionsTable} (
        stream text   PRIMARY KEY,
        seq    bigint NOT NULL
      )`);
      const fn = `"${this.schema}"."${this.table}_append_only"`;
      const triggers = await tx.query<{ tgname: string }>(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass",
        [t],
      );
      const have = new Set(triggers.map((r) => r.tgname));
      const rowTrigger = `${this.table}_no_change`;
      const truncateTrigger = `${this.table}_no_truncate`;
      if (!have.has(rowTrigger) || !have.has(truncateTrigger)) {
        await tx.query(`CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN RAISE EXCEPTION 'the audit log %.% is append-only (% refused)', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP; END $$`);
      }
      if (!have.has(rowTrigger))
        await tx.query(
          `CREATE TRIGGER "${rowTrigger}" BEFORE UPDATE OR DELETE ON ${t} FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
        );
      if (!have.has(truncateTrigger))
        await tx.query(
          `CREATE TRIGGER "${truncateTrigger}" BEFORE TRUNCATE ON ${t} FOR EACH STATEMENT EXECUTE FUNCTION ${fn}()`,
        );
    });
    // An existing table of another shape fails here, at start-up, not at the first append.
    await this.db.query(`SELECT ${COLUMNS.join(", ")} FROM ${this.qualified} LIMIT 0`);
    await this.db.query(`SELECT stream, seq FROM ${this.positionsTable} LIMIT 0`);
  }

  /**
   * Appends entries in one transaction, in order, skipping event ids already stored (or repeated in the
   * batch). `advance` maps a stream to the highest stream sequence the batch records of it: in the same
   * transaction, that stream's position becomes `GREATEST(position, seq)` (it never goes back). Resolves
   * once committed, with one result per entry.
   */
  async append(
    entries: readonly AuditEntry[],
    now: () => Date = () => new Date(),
    advance?: ReadonlyMap<string, number>,
  ): Promise<AppendResult[]> {
    if (entries.length === 0) return [];
    return this.db.transaction(async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock($1::bigint)", [this.#lockKey]);
      const ids = [...new Set(entries.map((e) => e.eventId))];
      // One round trip for both: the entries already stored, and the head of the chain (event_id NULL).
      const found = await tx.query<Raw>(
        `(SELECT event_id, position, payload, NULL::text AS hash FROM ${this.qualified}
           WHERE event_id IN (${ids.map((_, i) => `$${i + 1}`).join(",")}))
         UNION ALL
         (SELECT NULL::text, position, NULL::text, hash FROM ${this.qualified} ORDER BY position DESC LIMIT 1)`,
        ids,
      );
      const headRow = found.find((r) => r["event_id"] === null || r["event_id"] === undefined);
      const stored = found.filter((r) => r !== headRow);
      const positions = new Map(stored.map((r) => [String(r["event_id"]), num(r["position"])]));
      const payloads = new Map(stored.map((r) => [String(r["event_id"]), String(r["payload"])]));
      const firstIndex = new Map<string, number>();
      const fresh: AuditEntry[] = [];
      entries.forEach((e, i) => {
        if (positions.has(e.eventId) || firstIndex.has(e.eventId)) return;
        firstIndex.set(e.eventId, i);
        payloads.set(e.eventId, e.payload);
        fresh.push(e);
      });
      if (fresh.length > 0) {
        const head = headRow
          ? { position: num(headRow["position"]), hash: String(headRow["hash"]) }
          : { position: 0, hash: GENESIS_HASH };
        const rows = chainEntries(fresh, head, now().toISOString());
        await this.#insert(tx, rows);
        for (const r of rows) positions.set(r.eventId, r.position);
      }
      if (advance && advance.size > 0) await this.#advance(tx, advance);
      return entries.map((e, i): AppendResult => {
        const inserted = firstIndex.get(e.eventId) === i;
        return {
          status: inserted ? "inserted" : "duplicate",
          position: positions.get(e.eventId)!,
          conflict: !inserted && payloads.get(e.eventId) !== e.payload,
        };
      });
    });
  }

  async #advance(tx: SqlExecutor, advance: ReadonlyMap<string, number>): Promise<void> {
    const params: unknown[] = [];
    const tuples = [...advance].map(([stream, seq]) => {
      params.push(stream, seq);
      return `($${params.length - 1}, $${params.length}::bigint)`;
    });
    await tx.query(
      `INSERT INTO ${this.positionsTable} AS p (stream, seq) VALUES ${tuples.join(",")}
         ON CONFLICT (stream) DO UPDATE SET seq = GREATEST(p.seq, EXCLUDED.seq)`,
      params,
    );
  }

  /** The projector's position of every stream it has recorded something of: the last stream sequence recorded. */
  async positions(): Promise<Map<string, number>> {
    const rows = await this.db.query<Raw>(`SELECT stream, seq FROM ${this.positionsTable}`);
    return new Map(rows.map((r) => [String(r["stream"]), num(r["seq"])]));
  }

  /** Forgets the position of `stream`: it is read again from its first sequence (event ids dedupe what is stored). */
  async resetPosition(stream: string): Promise<void> {
    await this.db.query(`DELETE FROM ${this.positionsTable} WHERE stream = $1`, [stream]);
  }

  /** The position of one stream (0: nothing recorded yet, read it from its first sequence). */
  async position(stream: string): Promise<number> {
    const rows = await this.db.query<Raw>(`SELECT seq FROM ${this.positionsTable} WHERE stream = $1`, [
      stream,
    ]);
    return rows.length === 0 ? 0 : num(rows[0]!["seq"]);
  }

  async #insert(tx: SqlExecutor, rows: readonly AuditRow[]): Promise<void> {
    const params: unknown[] = [];
    const tuples = rows.map((r) => {
      const values = [
        r.position,
        r.eventId,
        r.stream,
        r.streamSeq,
        r.subject,
        r.eventType,
        r.orderId,
        r.source,
        r.traceId,
        r.causationId,
        r.occurredAt,
        r.recordedAt,
        r.payload,
        r.prevHash,
        r.hash,
      ];
      const base = params.length;
      params.push(...values);
      return `(${values.map((_, i) => `$${base + i + 1}`).join(",")})`;
    });
    await tx.query(
      `INSERT INTO ${this.qualified} (${COLUMNS.join(", ")}) VALUES ${tuples.join(",")}`,
      params,
    );
  }

  /** Every row of one order, by position. */
  async timeline(orderId: string): Promise<TimelineRow[]> {
    const rows = await this.db.query<Raw>(
      `SELECT position, event_id, event_type, source, trace_id, causation_id, occurred_at, recorded_at
         FROM ${this.qualified} WHERE order_id = $1 ORDER BY position`,
      [orderId],
    );
    return rows.map((r) => ({
      position: num(r["position"]),
      eventId: String(r["event_id"]),
      eventType: String(r["event_type"]),
      source: strOrNull(r["source"]),
      traceId: strOrNull(r["trace_id"]),
      causationId: strOrNull(r["causation_id"]),
      occurredAt: ts(r["occurred_at"]),
      recordedAt: ts(r["recorded_at"]) ?? "",
    }));
  }

  /** Up to `limit` rows after position `after`, in position order (keyset paging). */
  async page(after: number, limit: number): Promise<EventListRow[]> {
    const rows = await this.db.query<Raw>(
      `SELECT position, event_id, event_type, order_id, stream, stream_seq, subject, source, occurred_at
         FROM ${this.qualified} WHERE position > $1 ORDER BY position LIMIT $2`,
      [after, limit],
    );
    return rows.map((r) => ({
      position: num(r["position"]),
      eventId: String(r["event_id"]),
      eventType: String(r["event_type"]),
      orderId: strOrNull(r["order_id"]),
      stream: String(r["stream"]),
      streamSeq: numOrNull(r["stream_seq"]),
      subject: strOrNull(r["subject"]),
      source: strOrNull(r["source"]),
      occurredAt: ts(r["occurred_at"]),
    }));
  }

  /** Full rows after position `after` (for verification and export). */
  async rows(after: number, limit: number): Promise<AuditRow[]> {
    const rows = await this.db.query<Raw>(
      `SELECT ${COLUMNS.join(", ")} FROM ${this.qualified} WHERE position > $1 ORDER BY position LIMIT $2`,
      [after, limit],
    );
    return rows.map(toRow);
  }

  /**
   * Recomputes the whole chain, reading `pageSize` rows at a time (memory stays bounded however large
   * the log). Rows appended while it runs are verified too, up to the moment the last page is read.
   */
  async verify(pageSize = 1000): Promise<VerifyResult> {
    const v = new ChainVerifier();
    let after = 0;
    for (;;) {
      const page = await this.rows(after, pageSize);
      for (const r of page) v.push(r);
      if (page.length < pageSize) break;
      after = page[page.length - 1]!.position;
    }
    return v.result();
  }

  /** Number of rows. */
  async count(): Promise<number> {
    const r = await this.db.query<{ n: unknown }>(`SELECT count(*) AS n FROM ${this.qualified}`);
    return num(r[0]?.n ?? 0);
  }

  /** Throws unless the database answers (readiness). */
  async ping(): Promise<void> {
    await this.db.query("SELECT 1");
  }
}
