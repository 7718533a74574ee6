import { readFileSync } from "node:fs";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { ConfigError } from "../errors.js";
import type { Logger } from "../telemetry/logger.js";
import { installNatsTuning } from "./nats-tuning.js";
import { backoffDelay } from "./backoff.js";

/** Options for {@link connectNats}. */
export interface ConnectOptions {
  /** One URL or a comma-separated list / array of cluster URLs. */
  servers: string | string[];
  /** Connection name shown by the server (the service name). */
  name: string;
  logger: Logger;
  /** First reconnect delay; doubles per failed attempt up to `maxReconnectDelayMs`. */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** User and password (nats-server `authorization.users`); none for a server without authentication. */
  auth?: NatsAuth;
}

/** A NATS user, its password, and the inbox prefix its permissions allow it to subscribe to. */
export interface NatsAuth {
  user: string;
  pass: string;
  /** `_INBOX_<user>`: replies and pull deliveries arrive under it (the user may subscribe nowhere else). */
  inboxPrefix: string;
}

/** The NATS credential variables of a process (see docs/security-nats.md). */
export interface NatsAuthEnv {
  NATS_USER?: string | undefined;
  NATS_PASSWORD?: string | undefined;
  NATS_PASSWORD_FILE?: string | undefined;
}

/**
 * The credential of a process from `NATS_USER` and `NATS_PASSWORD` (or `NATS_PASSWORD_FILE`, a file holding it, as
 * Kubernetes mounts a Secret), or undefined without `NATS_USER` (a server without authentication). The password is
 * never part of an error message.
 */
export function natsAuthFromEnv(env: NatsAuthEnv): NatsAuth | undefined {
  const user = env.NATS_USER;
  if (!user) return undefined;
  let pass = env.NATS_PASSWORD;
  if (!pass && env.NATS_PASSWORD_FILE) {
    try {
      pass = readFileSync(env.NATS_PASSWORD_FILE, "utf8").trim();
    } catch (err) {
      throw new ConfigError(
        `invalid configuration:\n  NATS_PASSWORD_FILE: cannot read ${env.NATS_PASSWORD_FILE} (${(err as NodeJS.ErrnoException).code ?? "error"})`,
      );
    }
  }
  if (!pass)
    throw new ConfigError(
      "invalid configuration:\n  NATS_PASSWORD: expected the password of NATS_USER (or NATS_PASSWORD_FILE); it is missing",
    );
  return { user, pass, inboxPrefix: `_INBOX_${user}` };
}

/** nats.js connection options of a credential (none without one). */
export function authOptions(auth: NatsAuth | undefined): {
  user?: string;
  pass?: string;
  inboxPrefix?: string;
} {
  return auth ? { user: auth.user, pass: auth.pass, inboxPrefix: auth.inboxPrefix } : {};
}

/** Why a connection made by {@link connectNats} cannot reach NATS right now; absent while it is connected. */
const unavailable = new WeakMap<NatsConnection, string>();

/**
 * Why `nc` cannot reach NATS right now — closed, or disconnected and reconnecting (since when, to which server) —
 * or undefined while it is connected: what `/ready` reports for NATS. Knows the state changes of connections made
 * by {@link connectNats}; of any other connection, only whether it is closed.
 */
export function natsUnavailable(nc: NatsConnection): string | undefined {
  if (nc.isClosed()) return "NATS connection closed";
  return unavailable.get(nc);
}

/**
 * Connects to NATS with a connection that never gives up: the first connect waits for the server,
 * reconnects go on forever with exponential backoff and jitter, and every state change
 * (disconnect, reconnecting, reconnect, error, lame-duck mode) is logged and kept for {@link natsUnavailable}.
 */
export async function connectNats(opts: ConnectOptions): Promise<NatsConnection> {
  const servers = Array.isArray(opts.servers)
    ? opts.servers
    : opts.servers
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
  const base = opts.reconnectDelayMs ?? 100;
  const cap = opts.maxReconnectDelayMs ?? 5_000;
  let attempt = 0;
  const tuning = installNatsTuning();
  for (const [what, state] of Object.entries(tuning))
    if (state !== true) opts.logger.warn({ tuning: what, reason: state }, "nats.js tuning not installed");
  const nc = await connect({
    servers,
    name: opts.name,
    maxReconnectAttempts: -1,
    waitOnFirstConnect: true,
    // base, 2 x base, … up to cap, each spread ±25 % so that many clients do not reconnect together.
    reconnectDelayHandler: () =>
      backoffDelay(++attempt, { initialMs: base, maxMs: cap, multiplier: 2, jitter: 0.5 }),
    pingInterval: 10_000,
    maxPingOut: 3,
    // Without this the client builds a RequestError and a TimeoutError (each capturing a stack trace) for every
    // request and publish, just in case one fails: ~15 % of a busy service's CPU (docs/benchmarks.md). Errors
    // keep their type and message; only the "where was it started" context is lost.
    noAsyncTraces: true,
    ...authOptions(opts.auth),
  });
  opts.logger.info({ server: nc.getServer(), user: opts.auth?.user }, "nats connected");
  void (async () => {
    for await (const s of nc.status()) {
      switch (s.type) {
        case "disconnect":
          unavailable.set(
            nc,
            `NATS connection lost (${s.server}) at ${new Date().toISOString()}; reconnecting`,
          );
          opts.logger.warn({ server: s.server }, "nats disconnected");
          break;
        case "reconnecting":
          opts.logger.debug("nats reconnecting");
          break;
        case "reconnect":
          unavailable.delete(nc);
          attempt = 0;
          opts.logger.info({ server: s.server }, "nats reconnected");
          break;
        case "error":
          opts.logger.error({ err: s.error }, "nats connection error");
          break;
        case "ldm":
          opts.logger.warn({ server: s.server }, "nats server entering lame-duck mode");
          break;
        case "staleConnection":
          opts.logger.warn("nats connection stale");
          break;
        case "slowConsumer":
          opts.logger.warn({ sub: s.sub.getSubject() }, "nats slow consumer");
          break;
        default:
          break;
      }
    }
  })().catch((err: unknown) => opts.logger.error({ err }, "nats status loop failed"));
  return nc;
}
