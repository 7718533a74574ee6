/** The PostgreSQL adapter of {@link SqlDb}: a `pg` pool. */
import pg from "pg";
import type { Logger } from "../../lib/telemetry/logger.js";
import type { LockSession, SqlDb, SqlExecutor } from "./store-sql.js";

/** Options for {@link openPostgres}. */
export interface PostgresOptions {
  url: string;
  /** Connections in the pool (default 4: one appending, the rest for reads and readiness). */
  poolMax?: number | undefined;
  logger?: Logger | undefined;
  /** Longest a statement may run, lock waits included (default 30 s). */
  statementTimeoutMs?: number;
}

/**
 * Opens a pool on `url` and checks that the server answers. Idle connections that die (a server restart)
 * are logged and replaced; a statement on a dead connection fails and the caller retries.
 */
export async function openPostgres(opts: PostgresOptions): Promise<SqlDb> {
  const pool = new pg.Pool({
    connectionString: opts.url,
    max: opts.poolMax ?? 4,
    application_name: "shopstream-audit",
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    statement_timeout: opts.statementTimeoutMs ?? 30_000,
    query_timeout: (opts.statementTimeoutMs ?? 30_000) + 5_000,
    keepAlive: true,
  });
  pool.on("error", (err) => opts.logger?.warn({ err: err.message }, "idle PostgreSQL connection failed"));
  const run = async <R extends object>(c: pg.Pool | pg.PoolClient, text: string, params?: unknown[]) =>
    (await c.query<R & pg.QueryResultRow>(text, params)).rows as R[];
  try {
    await run(pool, "SELECT 1");
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }
  return {
    kind: "postgres",
    query: (text, params) => run(pool, text, params),
    async transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      let broken: Error | undefined;
      // A checked-out client whose connection drops between statements emits "error"; unheard, that
      // would crash the process. Note it, fail the transaction, and discard the client.
      const onError = (err: Error) => {
        broken = err;
        opts.logger?.warn({ err: err.message }, "PostgreSQL connection lost during an audit transaction");
      };
      client.on("error", onError);
      try {
        await client.query("BEGIN");
        const result = await fn({ query: (text, params) => run(client, text, params) });
        await client.query("COMMIT");
        return result;
      } catch (err) {
        try {
          await client.query("ROLLBACK");
        } catch (rollbackErr) {
          // The connection is unusable: drop it from the pool instead of reusing it.
          broken = rollbackErr instanceof Error ? rollbackErr : new Error(String(rollbackErr));
        }
        throw err;
      } finally {
        client.off("error", onError);
        client.release(broken ?? false);
      }
    },
    lockSession: () => openLockSession(opts),
    close: () => pool.end(),
  };
}

/** A dedicated `pg` client (not from the pool) for session advisory locks. */
async function openLockSession(opts: PostgresOptions): Promise<LockSession> {
  const client = new pg.Client({
    connectionString: opts.url,
    application_name: "shopstream-audit-election",
    connectionTimeoutMillis: 5_000,
    statement_timeout: 5_000,
    query_timeout: 10_000,
    keepAlive: true,
  });
  let onLost!: (err: Error) => void;
  const lost = new Promise<Error>((resolve) => (onLost = resolve));
  client.on("error", (err) => onLost(err));
  client.on("end", () => onLost(new Error("PostgreSQL election connection closed")));
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return {
    async tryLock(key) {
      const r = await client.query<{ locked: boolean }>("SELECT pg_try_advisory_lock($1::bigint) AS locked", [
        key,
      ]);
      return r.rows[0]?.locked === true;
    },
    async ping() {
      await client.query("SELECT 1");
    },
    lost,
    close: () => client.end().catch(() => undefined),
  };
}
