import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiError,
  ReplayPolicy,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { NonRetryableError } from "../errors.js";
import type { Logger } from "../telemetry/logger.js";
import { NotProvisionedError, PROVISION_COMMAND, type ProvisioningMode } from "./provisioning.js";

/** A stream declared in code. */
export interface StreamSpec {
  name: string;
  subjects: string[];
  description?: string;
  /** Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate (default 2 min). */
  duplicateWindowMs?: number;
  /** How long messages are kept (0 = forever, the default: streams are the event store). */
  maxAgeMs?: number;
  /** Largest message accepted (default 1 MiB). */
  maxMsgSize?: number;
}

/** A durable pull consumer declared in code. Every replica of a service shares it. */
export interface ConsumerSpec {
  stream: string;
  durable: string;
  /** Only messages on this subject (pattern) are delivered; NATS 2.9 has one filter per consumer. */
  filterSubject?: string;
  description?: string;
  /** Time a delivered message may stay unacknowledged before redelivery (default 30 s). */
  ackWaitMs?: number;
  /** Cap of delivered-but-unacknowledged messages across all replicas (default 1000). */
  maxAckPending?: number;
  /**
   * Runner policy, not server configuration (the server keeps `max_deliver` unlimited): deliveries, as counted by
   * the server, after which the runner dead-letters a message (`MAX_DELIVERIES`) without running its handler
   * again — poison that kills or hangs the process. Default 2 × the runner's `maxAttempts`; `Infinity` for never.
   * Consumers whose handlers throw `RedeliverLaterError` (timers: each one is a delivery) need a high value.
   * See `ConsumerRunnerOptions.maxDeliveries`, which overrides it.
   */
  maxDeliveries?: number;
  /**
   * Runner policy: longest one handler call may run before the runner abandons it — a failed attempt, nak'd with
   * backoff (dead-lettered as `HANDLER_TIMEOUT` on the last attempt). Default 120 s; `Infinity` for never. See
   * `ConsumerRunnerOptions.handlerTimeoutMs`, which overrides it.
   */
  handlerTimeoutMs?: number;
}

/** Cluster-wide settings applied to every stream. */
export interface TopologyOptions {
  /** 1 on a single node, 3 on a 3-node cluster. */
  replicas?: number;
  storage?: "file" | "memory";
  /** `verify`: never create or change (a restricted NATS user); a missing stream is a {@link NotProvisionedError}. */
  mode?: ProvisioningMode;
}

/** The existing stream or consumer differs from the one declared in code. Never changed silently. */
export class TopologyError extends NonRetryableError {
  override readonly name = "TopologyError";
  constructor(message: string) {
    super("TOPOLOGY_INCOMPATIBLE", message, { status: 500 });
  }
}

/** The full JetStream configuration of a declared stream. */
export function streamConfig(spec: StreamSpec, opts: TopologyOptions = {}): Partial<StreamConfig> {
  return {
    name: spec.name,
    subjects: spec.subjects,
    description: spec.description ?? "",
    retention: RetentionPolicy.Limits,
    storage: opts.storage === "memory" ? StorageType.Memory : StorageType.File,
    num_replicas: opts.replicas ?? 1,
    discard: DiscardPolicy.Old,
    max_age: nanos(spec.maxAgeMs ?? 0),
    duplicate_window: nanos(spec.duplicateWindowMs ?? 120_000),
    max_msg_size: spec.maxMsgSize ?? 1024 * 1024,
    allow_direct: true,
  };
}

/** The full JetStream configuration of a declared consumer. */
export function consumerConfig(spec: ConsumerSpec): Partial<ConsumerConfig> {
  const cfg: Partial<ConsumerConfig> = {
    durable_name: spec.durable,
    description: spec.description ?? "",
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    replay_policy: ReplayPolicy.Instant,
    ack_wait: nanos(spec.ackWaitMs ?? 30_000),
    // Unlimited on the server: the runner moves a message to the DLQ after its own max attempts (failures) or
    // max deliveries (the server's delivery count: crashes, hangs), so the server never silently stops
    // delivering one — past max_deliver it would only drop it from delivery, with no DLQ copy.
    max_deliver: -1,
    max_ack_pending: spec.maxAckPending ?? 1000,
  };
  if (spec.filterSubject) cfg.filter_subject = spec.filterSubject;
  return cfg;
}

function differences(want: Record<string, unknown>, have: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(want)) {
    const h = have[k];
    const norm = (x: unknown) =>
      Array.isArray(x) ? JSON.stringify([...(x as unknown[])].sort()) : JSON.stringify(x ?? "");
    if (norm(v) !== norm(h)) out.push(`${k}: declared ${JSON.stringify(v)}, found ${JSON.stringify(h)}`);
  }
  return out;
}

function isNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && (err.code === 10059 || err.code === 10014 || err.status === 404);
}

/**
 * Creates a declared stream, or verifies that the existing one matches it. Idempotent: safe to run at
 * every start-up from every replica.
 * @returns "created" or "unchanged".
 * @throws TopologyError listing every difference when an existing stream's config is incompatible.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  spec: StreamSpec,
  opts: TopologyOptions = {},
  logger?: Logger,
): Promise<"created" | "unchanged"> {
  const want = streamConfig(spec, opts);
  try {
    const info = await jsm.streams.info(spec.name);
    const diff = differences(want, info.config);
    if (diff.length > 0 && opts.mode === "verify") {
      throw new TopologyError(
        `stream ${spec.name} exists with another configuration than declared (not changed; run ${PROVISION_COMMAND} or migrate it by hand):\n  ${diff.join("\n  ")}`,
      );
    }
    if (diff.length > 0) {
      throw new TopologyError(
        `stream ${spec.name} exists with an incompatible configuration (not changed; migrate it by hand):\n  ${diff.join("\n  ")}`,
      );
    }
    return "unchanged";
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (opts.mode === "verify") throw new NotProvisionedError(`stream ${spec.name}`);
  try {
    await jsm.streams.add({ ...want, name: spec.name });
  } catch (err) {
    // Another replica may have created it between our info and add: verify instead.
    if (err instanceof JetStreamApiError && err.code === 10058) return ensureStream(jsm, spec, opts, logger);
    throw err;
  }
  logger?.info({ stream: spec.name, subjects: spec.subjects }, "stream created");
  return "created";
}

/**
 * Consumer settings changed in place when the declaration changes (e.g. orders-timeouts' ack wait follows
 * ORDER_TIMEOUT_MS): the server applies them to messages already pending. Anything else is refused.
 */
const EDITABLE = ["description", "ack_wait", "max_ack_pending"] as const;

/**
 * Creates a declared durable pull consumer, updates its {@link EDITABLE} settings, or verifies that the existing one
 * matches it.
 * @throws TopologyError listing every difference when the existing consumer is incompatible.
 */
export async function ensureConsumer(
  jsm: JetStreamManager,
  spec: ConsumerSpec,
  logger?: Logger,
  mode: ProvisioningMode = "create",
): Promise<"created" | "updated" | "unchanged"> {
  const want = consumerConfig(spec) as Record<string, unknown>;
  try {
    const info = await jsm.consumers.info(spec.stream, spec.durable);
    const have = info.config as unknown as Record<string, unknown>;
    const diff = differences(want, have);
    if (!spec.filterSubject && have["filter_subject"])
      diff.push(`filter_subject: declared none, found ${JSON.stringify(have["filter_subject"])}`);
    const editable = EDITABLE.filter((k) => JSON.stringify(want[k] ?? "") !== JSON.stringify(have[k] ?? ""));
    if (diff.length > 0 && mode === "verify") {
      throw new TopologyError(
        `consumer ${spec.stream}/${spec.durable} exists with another configuration than declared (not changed: run ${PROVISION_COMMAND} with this service's configuration):\n  ${diff.join("\n  ")}`,
      );
    }
    if (diff.length > 0 && diff.length === editable.length) {
      // Only settings the server changes in place (no redelivery, no lost position): updated, not refused.
      await jsm.consumers.update(
        spec.stream,
        spec.durable,
        Object.fromEntries(editable.map((k) => [k, want[k]])),
      );
      logger?.info({ stream: spec.stream, consumer: spec.durable, changed: diff }, "consumer updated");
      return "updated";
    }
    if (diff.length > 0) {
      throw new TopologyError(
        `consumer ${spec.stream}/${spec.durable} exists with an incompatible configuration (not changed):\n  ${diff.join("\n  ")}`,
      );
    }
    return "unchanged";
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (mode === "verify") throw new NotProvisionedError(`consumer ${spec.stream}/${spec.durable}`);
  await jsm.consumers.add(spec.stream, want);
  logger?.info(
    { stream: spec.stream, consumer: spec.durable, filter: spec.filterSubject },
    "consumer created",
  );
  return "created";
}
