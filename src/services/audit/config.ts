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
    maximum: 1024,
    default: 128,
    description: "events handled at once per audit consumer (fills batches)",
  }),
  AUDIT_MAX_ACK_PENDING: Type.Integer({
    minimum: 2,
    maximum: 100_000,
    default: 1024,
    description: "max_ack_pending of each audit consumer; above AUDIT_CONCURRENCY × replicas",
  }),
  DATABASE_POOL_MAX: Type.Integer({
    minimum: 1,
    maximum: 100,
    default: 4,
    description: "PostgreSQL connections per audit process",
  }),
  DATABASE_CONNECT_TIMEOUT_MS: Env.ms(30_000, "how long start-up waits for the database"),
});
