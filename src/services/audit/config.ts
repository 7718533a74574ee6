import { Type } from "@sinclair/typebox";
import { Env } from "../../lib/config.js";
import { defaultPorts } from "../../lib/ports.js";

const identifier = "^[a-z_][a-z0-9_]{0,39}$";

/** Environment variables of the audit service (beside the common ones). */
export const AuditConfig = Type.Object({
  PORT: Env.port(defaultPorts.audit, "audit HTTP port"),
  DATABASE_URL: Type.Optional(
    Type.String({
      format: "uri",
      description: "PostgreSQL URL of the audit log (e.g. postgres://user@host:5432/db); PGlite when unset",
    }),
  ),
  DATA_DIR: Type.String({
    minLength: 1,
    default: "./.data/audit",
    description: "directory of the embedded PGlite database (used when DATABASE_URL is unset)",
  }),
  AUDIT_SCHEMA: Type.String({
    pattern: identifier,
    default: "public",
    description: "schema of the audit table",
  }),
  AUDIT_TABLE: Type.String({
    pattern: identifier,
    default: "audit_log",
    description: "name of the audit table",
  }),
  AUDIT_BATCH_MAX: Type.Integer({
    minimum: 1,
    maximum: 1000,
    default: 200,
    description: "rows appended per transaction at most",
  }),
  AUDIT_BATCH_DELAY_MS: Env.ms(5, "longest an event waits for others before its batch is written"),
  AUDIT_CONCURRENCY: Type.Integer({
    minimum: 1,
    maximum: 4096,
    default: 256,
    description: "entries of one stream reader waiting for their batch at once (fills batches)",
  }),
  AUDIT_READ_BATCH: Type.Integer({
    minimum: 1,
    maximum: 10_000,
    default: 512,
    description: "messages each stream reader's ordered consumer asks the server for at once",
  }),
  AUDIT_STALL_MS: Env.ms(
    15_000,
    "an audit stream reader that received nothing for this long while its stream has more restarts from its position",
  ),
  AUDIT_STANDBY_RETRY_MS: Env.ms(
    3_000,
    "how often a standby audit replica tries to take the projector lock, and the active one checks its lock connection",
  ),
  AUDIT_VERIFY_INTERVAL_MS: Env.ms(
    900_000,
    "how often each audit replica verifies the whole hash chain (metrics shopstream_audit_chain_*; the first 30 s after start, or after the interval if shorter); 0: never",
  ),
  DATABASE_POOL_MAX: Type.Integer({
    minimum: 1,
    maximum: 100,
    default: 4,
    description: "PostgreSQL connections per audit process",
  }),
  DATABASE_CONNECT_TIMEOUT_MS: Env.ms(30_000, "how long start-up waits for the database"),
});
