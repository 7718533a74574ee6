import { Type, type Static, type TObject } from "@sinclair/typebox";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { FastifyInstance } from "fastify";
import { Env, parseConfig } from "./config.js";
import { Streams } from "./events/catalog.js";
import { AuthConfig, TokenVerifier } from "./http/auth.js";
import { createOpsServer, type OpsServer, type ReadinessCheck } from "./http/ops-server.js";
import { runShutdown, onTerminationSignal } from "./lifecycle.js";
import { connectNats, natsAuthFromEnv, natsUnavailable } from "./messaging/connection.js";
import { streamsUsedBy, isServiceUser } from "./messaging/permissions.js";
import { PROVISION_COMMAND, setProvisioningMode, type ProvisioningMode } from "./messaging/provisioning.js";
import { ConsumerRunner, type HandlerMap, type RawHandler } from "./messaging/consumer.js";
import { CONSUMER_CONTROL_BUCKET, followConsumerControl } from "./messaging/consumer-control.js";
import { openBucket } from "./kv.js";
import { dlqStreamSpec } from "./messaging/dlq.js";
import { Publisher } from "./messaging/publisher.js";
import { EventVersions } from "./events/versions.js";
import { ensureConsumer, ensureStream, type ConsumerSpec, type StreamSpec } from "./messaging/topology.js";
import type { BackoffOptions } from "./messaging/backoff.js";
import { createLogger, type Logger } from "./telemetry/logger.js";
import { Metrics } from "./telemetry/metrics.js";
import { initTracing, type Tracing } from "./telemetry/tracing.js";

/** Environment variables every service reads (each service adds its own). */
export const CommonConfig = Type.Composite([
  AuthConfig,
  Type.Object({
    NATS_URL: Type.String({
      default: "nats://127.0.0.1:4222",
      description: "NATS server URL(s), comma-separated",
    }),
    NATS_USER: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          "NATS user of this service (with authentication: streams, consumers and buckets are then verified, not created — see docs/security-nats.md)",
      }),
    ),
    NATS_PASSWORD: Type.Optional(Type.String({ description: "password of NATS_USER" })),
    NATS_PASSWORD_FILE: Type.Optional(
      Type.String({
        minLength: 1,
        description: "file holding the password of NATS_USER (instead of NATS_PASSWORD)",
      }),
    ),
    HOST: Type.String({ default: "127.0.0.1", description: "interface the HTTP server listens on" }),
    LOG_LEVEL: Env.logLevel(),
    OTEL_EXPORTER_OTLP_ENDPOINT: Type.Optional(
      Type.String({ format: "uri", description: "OTLP/HTTP endpoint" }),
    ),
    DRAIN_TIMEOUT_MS: Env.ms(20_000, "bound of the graceful shutdown"),
    STREAM_REPLICAS: Type.Integer({
      minimum: 1,
      maximum: 5,
      default: 1,
      description: "replicas of every stream",
    }),
    CONSUMER_CONCURRENCY: Type.Integer({
      minimum: 1,
      maximum: 1024,
      default: 128,
      description: "handlers at once per consumer",
    }),
    MAX_ATTEMPTS: Type.Integer({
      minimum: 1,
      maximum: 100,
      default: 5,
      description: "failed attempts before the DLQ",
    }),
    RETRY_INITIAL_MS: Env.ms(250, "first redelivery delay"),
    RETRY_MAX_MS: Env.ms(30_000, "longest redelivery delay"),
    EVENT_VERSIONS: Type.Optional(
      Type.String({
        description:
          'schema version each event type is written at, "Type=version,…" (e.g. StockReserved=1 while a rollout puts in the release that reads version 2); unnamed types: the current version (docs/events.md#versions)',
      }),
    ),
    EVENT_READ_VERSIONS: Type.Optional(
      Type.String({
        description:
          'newest schema version read per event type, "Type=version,…"; a newer one is kept and handed back like a release that predates it would (rollout rehearsals); unnamed types: the current version',
      }),
    ),
    FUTURE_VERSION_WAIT_MS: Env.ms(
      600_000,
      "how long after its publication an event of a version newer than this process reads is kept (and handed back on stop) before it is dead-lettered as EVENT_VERSION_AHEAD",
    ),
    CONSUMER_RECREATE_MS: Env.ms(
      10_000,
      "a durable consumer deleted on the server is provisioned again from its declaration after this long (/ready is 503 meanwhile)",
    ),
  }),
]);
export type CommonConfig = Static<typeof CommonConfig>;

/** The streams of ShopStream, one per owning context, plus the DLQ. */
export const streamSpecs: StreamSpec[] = [
  {
    name: Streams.ORDERS,
    subjects: ["orders.*"],
    description: "Order aggregate events, one subject per order",
  },
  { name: Streams.INVENTORY, subjects: ["inventory.*.*"], description: "Stock outcomes per order" },
  { name: Streams.PAYMENTS, subjects: ["payments.*.*"], description: "Payment outcomes per order" },
  { name: Streams.NOTIFICATIONS, subjects: ["notifications.*.*"], description: "E-mails sent per order" },
  dlqStreamSpec,
];

/** The description of the consumer-control bucket (one place, for the services and provisioning). */
export const CONSUMER_CONTROL_DESCRIPTION = "Durable consumers paused by hand: durable → {paused, by, at}";

/** A consumer of a service: its declared spec and handlers. */
export interface ConsumerDefinition {
  spec: ConsumerSpec;
  handlers: HandlerMap;
  /** Undecoded handler (replaces `handlers`), e.g. for the DLQ stream. */
  raw?: RawHandler;
  concurrency?: number;
  maxAttempts?: number;
  backoff?: Partial<BackoffOptions>;
}

/** Everything a service's composition root gets to wire its domain. */
export interface ServiceContext<C extends CommonConfig = CommonConfig> {
  name: string;
  config: C;
  logger: Logger;
  metrics: Metrics;
  tracing: Tracing;
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  publisher: Publisher;
  /** The service's HTTP server (ops routes already on it); add API routes here. */
  app: FastifyInstance;
  /** Runners by durable name, filled once consumers start. */
  runners: Map<string, ConsumerRunner>;
}

/** What a service declares; {@link runService} does the rest. */
export interface ServiceDefinition<S extends TObject> {
  name: string;
  /** The service's own config schema (merged with {@link CommonConfig}); must define PORT. */
  config: S;
  /** Extra readiness checks. */
  readiness?: (ctx: ServiceContext<Static<S> & CommonConfig>) => Record<string, ReadinessCheck>;
  /** Creates state (KV buckets, clients) and HTTP routes; runs before consumers start. */
  setup?: (ctx: ServiceContext<Static<S> & CommonConfig>) => Promise<ServiceHooks | void>;
  consumers?: (ctx: ServiceContext<Static<S> & CommonConfig>) => ConsumerDefinition[];
  /** HTTP body limit (default 1 MiB). */
  bodyLimit?: number;
}

/** Hooks a service's setup may return. */
export interface ServiceHooks {
  /** Runs after consumers stop and HTTP closes, before NATS drains (e.g. close a DB pool). */
  close?: () => Promise<void>;
  /** Runs once consumers are started. */
  started?: () => Promise<void> | void;
}

/** A running service: `stop()` runs the shutdown order. */
export interface RunningService<C extends CommonConfig> {
  ctx: ServiceContext<C>;
  url: string;
  stop(): Promise<boolean>;
}

/**
 * Starts a service in order: config (validated; a bad value stops the process with a message naming
 * it) → telemetry → NATS → streams and consumers provisioned idempotently → service setup → HTTP →
 * consumers. Stops in the shutdown order of ARCHITECTURE.md: readiness false → stop pulling and hand
 * back unstarted messages → in-flight handlers finish and ack → close HTTP → service close → drain
 * NATS → flush traces and logs; the whole bounded by DRAIN_TIMEOUT_MS.
 */
export async function startService<S extends TObject>(
  def: ServiceDefinition<S>,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RunningService<Static<S> & CommonConfig>> {
  type C = Static<S> & CommonConfig;
  const schema = Type.Composite([CommonConfig, def.config]);
  const config = parseConfig(schema, env) as unknown as C;
  const versions = EventVersions.parse(config.EVENT_VERSIONS, config.EVENT_READ_VERSIONS);
  const verifier = await TokenVerifier.fromConfig(config);
  const logger = createLogger({ service: def.name, level: config.LOG_LEVEL as never });
  const tracing = initTracing({ service: def.name, otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT });
  const metrics = new Metrics(def.name);
  logger.info({ source: verifier.source }, "bearer tokens verified");
  if (!versions.isCurrent)
    logger.warn(versions.describe(), "event versions pinned (EVENT_VERSIONS / EVENT_READ_VERSIONS)");
  const auth = natsAuthFromEnv(config);
  // A restricted user may not administer JetStream: it verifies what provisioning created (docs/security-nats.md).
  const mode: ProvisioningMode = auth ? "verify" : "create";
  const nc = await connectNats({ servers: config.NATS_URL, name: def.name, logger, auth });
  setProvisioningMode(nc, mode);
  warnIfConditionalWritesUnsafe(nc.info?.version, config.STREAM_REPLICAS, logger);
  // Everything after the connection is undone if start-up fails, so a failed start leaks nothing.
  let ops: OpsServer | undefined;
  let hooks: ServiceHooks = {};
  const runners = new Map<string, ConsumerRunner>();
  const reprovisions: Reprovisioner[] = [];
  let unfollowControl: (() => void) | undefined;
  let address: string;
  let ctx: ServiceContext<C>;
  try {
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    // Verifying, a service looks only at the streams it uses (it may read nothing else).
    const used =
      mode === "verify" && isServiceUser(def.name) ? new Set<string>(streamsUsedBy(def.name)) : undefined;
    for (const s of streamSpecs)
      if (!used || used.has(s.name))
        await ensureStream(jsm, s, { replicas: config.STREAM_REPLICAS, mode }, logger);
    const publisher = new Publisher(js, { metrics, versions });
    const readiness: Record<string, ReadinessCheck> = { nats: () => natsUnavailable(nc) ?? true };
    ops = createOpsServer({
      service: def.name,
      metrics,
      logger,
      readiness,
      auth: verifier,
      ...(def.bodyLimit ? { bodyLimit: def.bodyLimit } : {}),
    });
    ctx = {
      name: def.name,
      config,
      logger,
      metrics,
      tracing,
      nc,
      js,
      jsm,
      publisher,
      app: ops.app,
      runners,
    };
    hooks = (await def.setup?.(ctx)) ?? {};
    Object.assign(readiness, def.readiness?.(ctx) ?? {});
    const consumers = def.consumers?.(ctx) ?? [];
    for (const c of consumers) {
      await ensureConsumer(jsm, c.spec, logger, mode);
      const reprovision = reprovisioner(jsm, c.spec, () => runners.get(c.spec.durable), config, logger, mode);
      reprovisions.push(reprovision);
      runners.set(
        c.spec.durable,
        new ConsumerRunner({
          js,
          spec: c.spec,
          handlers: c.handlers,
          raw: c.raw,
          publisher,
          logger,
          metrics,
          concurrency: c.concurrency ?? config.CONSUMER_CONCURRENCY,
          maxAttempts: c.maxAttempts ?? config.MAX_ATTEMPTS,
          backoff: { initialMs: config.RETRY_INITIAL_MS, maxMs: config.RETRY_MAX_MS, ...c.backoff },
          onConsumerMissing: reprovision.schedule,
          versions,
          futureVersionWaitMs: config.FUTURE_VERSION_WAIT_MS,
        }),
      );
    }
    readiness["consumers"] = () => {
      const reasons = [...runners.values()].flatMap((r) => r.notReadyReason ?? []);
      return reasons.length === 0 ? true : reasons.join("; ");
    };
    collectConsumerGauges(
      metrics,
      jsm,
      consumers.map((c) => c.spec),
    );
    // Manual pauses (docs/console.md): applied before the runners pull, followed while they run.
    if (runners.size > 0) {
      const control = await openBucket(nc, CONSUMER_CONTROL_BUCKET, {
        replicas: config.STREAM_REPLICAS,
        description: CONSUMER_CONTROL_DESCRIPTION,
      });
      unfollowControl = await followConsumerControl(control, runners, logger);
    }
    const port = (config as unknown as { PORT: number }).PORT;
    address = await ops.app.listen({ host: config.HOST, port });
    for (const r of runners.values()) await r.start();
    await hooks.started?.();
    logger.info({ url: address, consumers: [...runners.keys()] }, `${def.name} started`);
  } catch (err) {
    unfollowControl?.();
    for (const r of reprovisions) r.cancel();
    await Promise.all([...runners.values()].map((r) => r.stop(0))).catch(() => undefined);
    await ops?.app.close().catch(() => undefined);
    await hooks.close?.().catch(() => undefined);
    await nc.close().catch(() => undefined);
    await tracing.shutdown().catch(() => undefined);
    throw err;
  }
  const app = ops;

  let stopping: Promise<boolean> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      logger.info("shutting down");
      const t0 = Date.now();
      const ok = await runShutdown(
        [
          {
            name: "readiness false",
            run: () => {
              app.setDraining();
              unfollowControl?.();
              for (const r of reprovisions) r.cancel();
            },
          },
          {
            name: "stop consumers",
            run: () =>
              Promise.all(
                [...runners.values()].map((r) => r.stop(Math.max(0, config.DRAIN_TIMEOUT_MS - 2_000))),
              ),
          },
          { name: "close http", run: () => app.app.close() },
          { name: "service close", run: () => hooks.close?.() },
          { name: "drain nats", run: () => nc.drain() },
          { name: "flush traces", run: () => tracing.shutdown() },
        ],
        logger,
        config.DRAIN_TIMEOUT_MS,
      );
      logger.info({ ms: Date.now() - t0, clean: ok }, "stopped");
      logger.flush();
      return ok;
    })());
  return { ctx, url: address, stop };
}

/**
 * Warns when the server's clustered streams do not serialize conditional writes: before nats-server 2.9.21 two
 * concurrent appends expecting the same last subject sequence (or compare-and-sets of one KV key) can both be
 * accepted on a replicated stream (nats-io/nats-server#4320). Each process sends its own one at a time, but two
 * replicas of a service could still fork an order or both win a compare-and-set: run 2.9.21 or newer.
 */
function warnIfConditionalWritesUnsafe(version: string | undefined, replicas: number, logger: Logger): void {
  const [major = 0, minor = 0, patch = 0] = (version ?? "").split(/[.-]/).map(Number);
  const old = major < 2 || (major === 2 && (minor < 9 || (minor === 9 && patch < 21)));
  if (replicas > 1 && version !== undefined && old)
    logger.warn(
      { server_version: version, issue: "https://github.com/nats-io/nats-server/issues/4320" },
      "nats-server before 2.9.21 does not serialize concurrent conditional writes on replicated streams: run one replica per service, or upgrade",
    );
}

/** Provisions one deleted consumer again, {@link CommonConfig.CONSUMER_RECREATE_MS} after its runner found it missing. */
interface Reprovisioner {
  /** Called by the runner on each pull that finds the consumer missing; the first schedules the recreation. */
  schedule: () => void;
  /** No recreation any more (the service is stopping). */
  cancel: () => void;
}

/**
 * A consumer deleted underneath a running service (by hand, or by a tool) is provisioned again from its declaration,
 * as a restart of the service would, so the service heals without one. Not at once: for `CONSUMER_RECREATE_MS` the
 * runner stays unready (`/ready` names the consumer) and an operator may recreate it first, e.g. on purpose with other
 * settings (then `ensureConsumer` finds it and, if it differs from the declaration, logs the TopologyError and changes
 * nothing). A recreated consumer starts from the beginning of its stream (the declared deliver policy): the service's
 * handlers are idempotent, so that costs time, not correctness.
 */
function reprovisioner(
  jsm: JetStreamManager,
  spec: ConsumerSpec,
  runner: () => ConsumerRunner | undefined,
  config: CommonConfig,
  logger: Logger,
  mode: ProvisioningMode = "create",
): Reprovisioner {
  let timer: NodeJS.Timeout | undefined;
  let cancelled = false;
  if (mode === "verify") {
    // A restricted user may not create it: say what to run (again every CONSUMER_RECREATE_MS while it is missing);
    // the runner is ready again once it is back.
    return {
      schedule: () => {
        if (cancelled || timer) return;
        timer = setTimeout(() => (timer = undefined), config.CONSUMER_RECREATE_MS);
        timer.unref();
        logger.error(
          { stream: spec.stream, consumer: spec.durable },
          `durable consumer not found on the server and this service's NATS user may not create it: run ${PROVISION_COMMAND}; not ready until it is back`,
        );
      },
      cancel: () => {
        cancelled = true;
        clearTimeout(timer);
      },
    };
  }
  const recreate = async () => {
    timer = undefined;
    if (cancelled || runner()?.ready !== false) return;
    try {
      const outcome = await ensureConsumer(jsm, spec, logger);
      logger.warn(
        { stream: spec.stream, consumer: spec.durable, outcome },
        outcome === "created"
          ? "durable consumer was deleted on the server: provisioned again from its declaration"
          : "durable consumer found again on the server",
      );
    } catch (err) {
      // Retried when the runner next finds it missing.
      logger.error(
        { stream: spec.stream, consumer: spec.durable, err },
        "could not provision the deleted consumer",
      );
    }
  };
  return {
    schedule: () => {
      if (cancelled || timer) return;
      logger.warn(
        { stream: spec.stream, consumer: spec.durable, recreate_in_ms: config.CONSUMER_RECREATE_MS },
        "durable consumer not found on the server: not ready until it is back",
      );
      timer = setTimeout(() => void recreate(), config.CONSUMER_RECREATE_MS);
      timer.unref();
    },
    cancel: () => {
      cancelled = true;
      clearTimeout(timer);
      timer = undefined;
    },
  };
}

/** Keeps consumer pending counts fresh for `/metrics`: read from the server at scrape time. */
function collectConsumerGauges(metrics: Metrics, jsm: JetStreamManager, specs: ConsumerSpec[]): void {
  const update = async () => {
    await Promise.all(
      specs.map(async (s) => {
        try {
          const info = await jsm.consumers.info(s.stream, s.durable);
          metrics.consumerPending.set({ stream: s.stream, consumer: s.durable }, info.num_pending);
          metrics.consumerAckPending.set({ stream: s.stream, consumer: s.durable }, info.num_ack_pending);
        } catch {
          /* a scrape during a reconnect keeps the last values */
        }
      }),
    );
  };
  metrics.onCollect(update);
}

/**
 * Runs a service as a process: starts it, stops it gracefully on SIGTERM/SIGINT, and exits non-zero
 * with a clear message when configuration is invalid or start-up fails.
 */
export function runService<S extends TObject>(def: ServiceDefinition<S>): void {
  startService(def)
    .then((svc) => {
      onTerminationSignal(() => {
        void svc.stop().then((ok) => process.exit(ok ? 0 : 1));
      });
    })
    .catch((err: unknown) => {
      const msg = err instanceof Error ? err.message : String(err);
      process.stderr.write(`${def.name}: failed to start: ${msg}\n`);
      process.exit(1);
    });
}
