/**
 * The PGlite adapter of {@link SqlDb}: PostgreSQL compiled to WebAssembly, in this process, with its files
 * in a directory. One process at a time may open a directory (a lock file guards it), so audit replicas
 * sharing a log need PostgreSQL.
 */
import { mkdir, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import type { SqlDb, SqlExecutor } from "./store-sql.js";

/** Options for {@link openPglite}. */
export interface PgliteOptions {
  /** Directory of the database files (created when absent). */
  dataDir: string;
}

const LOCK_FILE = "shopstream-audit.lock";

/** Opens (creating on first use) the PGlite database in `dataDir`. */
export async function openPglite(opts: PgliteOptions): Promise<SqlDb> {
  await mkdir(opts.dataDir, { recursive: true });
  const release = await lockDir(opts.dataDir);
  let db: PGlite;
  try {
    db = new PGlite(join(opts.dataDir, "pgdata"));
    await db.waitReady;
  } catch (err) {
    await release();
    throw err;
  }
  const exec = (q: Pick<PGlite, "query">): SqlExecutor => ({
    query: async <R extends object>(text: string, params?: unknown[]) =>
      (await q.query<R>(text, params)).rows,
  });
  let closed: Promise<void> | undefined;
  return {
    kind: "pglite",
    query: (text, params) => exec(db).query(text, params),
    transaction: <T>(fn: (tx: SqlExecutor) => Promise<T>) => db.transaction((tx) => fn(exec(tx))),
    close: () =>
      (closed ??= (async () => {
        try {
          await db.close();
        } finally {
          await release();
        }
      })()),
  };
}

/**
 * Takes the directory's lock file (holding our pid). A lock left by a process that no longer runs is taken
 * over; one held by a live process — this one included — is an error: two PGlite instances on one
 * directory corrupt it.
 */
async function lockDir(dir: string): Promise<() => Promise<void>> {
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => rm(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const pid = Number((await readFile(path, "utf8").catch(() => "")).trim());
    if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
      throw new Error(
        `audit data directory ${dir} is in use by process ${pid} (PGlite allows one process; use DATABASE_URL for replicas)`,
      );
    }
    await rm(path, { force: true });
  }
  throw new Error(`cannot lock audit data directory ${dir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
