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

/** A database: statements, transactions, close. Implemented for PostgreSQL and PGlite. */
export interface SqlDb extends SqlExecutor {
  readonly kind: "postgres" | "pglite";
  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: SqlExecutor) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
