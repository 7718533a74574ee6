/**
 * The small SQL interface the audit log is written against ({@link SqlDb}), implemented by the PostgreSQL
 * adapter (`store-postgres.ts`) and the PGlite one (`store-pglite.ts`). The adapters and `store.ts` (which
 * chooses one and runs the log's SQL on it) all import it, so none of them imports another's module for a
 * type.
 */

/** Runs one statement (with `$1`-style parameters) and returns its rows. */
export interface SqlExecutor {
  query<R extends object = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>;
}

/**
 * A dedicated connection holding session advisory locks (the audit projector's election). Its locks live as
 * long as the connection: `lost` resolves when it fails or closes.
 */
export interface LockSession {
  /** `pg_try_advisory_lock(key)`: true when this session now holds the lock. */
  tryLock(key: string): Promise<boolean>;
  /** Throws unless the connection answers. */
  ping(): Promise<void>;
  /** Resolves (with the reason) when the connection is lost or closed. */
  readonly lost: Promise<Error>;
  /** Closes the connection (its locks are released). */
  close(): Promise<void>;
}

/** A database: statements, transactions, close. Implemented for PostgreSQL and PGlite. */
export interface SqlDb extends SqlExecutor {
  readonly kind: "postgres" | "pglite";
  /**
   * Opens a dedicated connection for session advisory locks (PostgreSQL only: PGlite is one process, the
   * only one there can be).
   */
  lockSession?(): Promise<LockSession>;
  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
