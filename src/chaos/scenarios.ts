/**
 * The chaos scenarios, by name (the names `npm run chaos` takes). Each injects one kind of fault under steady
 * load and heals it; the runner reconciles every accepted order afterwards.
 */
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { jetstream, type JetStreamManager, type StoredMsg } from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import { Streams } from "../lib/events/catalog.js";
import { makeEvent } from "../lib/events/envelope.js";
import { listDeadLetters } from "../lib/messaging/dlq.js";
import { Hdr } from "../lib/messaging/headers.js";
import type { FaultContext, Scenario, ScenarioCheck } from "./scenario.js";
import { SERVICES, type ServiceName } from "./system.js";

/** The consumers' ack wait (ConsumerSpec default): a message held by a dead or frozen process comes back after it. */
export const ACK_WAIT_MS = 30_000;
/** The payments service's default gateway timeout (GATEWAY_TIMEOUT_MS). */
const GATEWAY_TIMEOUT_MS = 2_000;

function killService(name: ServiceName): Scenario {
  return {
    name: `kill-${name}`,
    summary: `kill -9 of ${name} under load, then started again`,
    description:
      `kill -9 of the ${name} process in the middle of the load (no graceful shutdown: handlers cut off mid-way, ` +
      `messages delivered but not acknowledged, HTTP requests in flight), down for 1 s (CI) / 5 s (full), then a ` +
      `new ${name} process on the same port; the fault window ends when it answers /ready. Messages the dead ` +
      `process held come back after the consumers' 30 s ack wait.`,
    rate: { ci: 30, full: 50 },
    async fault(ctx) {
      const victim = ctx.sys.running(name)[0];
      if (!victim) throw new Error(`no running ${name}`);
      ctx.faultStart(`kill -9 ${victim.id}`);
      await ctx.sys.kill(victim.id);
      await ctx.sleep(ctx.dur(1_000, 5_000));
      ctx.note(`starting ${victim.id} again`);
      await ctx.sys.restart(victim.id);
      ctx.healed(`${victim.id} ready`);
    },
  };
}

const rollingRestart: Scenario = {
  name: "rolling-restart",
  summary: "a deploy: every service, 2 replicas each, replaced one replica at a time (SIGTERM)",
  description:
    "Two replicas of every service (audit: two with PostgreSQL, one with PGlite, which one process at a time may " +
    "open). Service by service (inventory, payments, notifications, audit, orders), each replica in turn is " +
    "replaced like a Kubernetes rolling update with maxSurge 1: a new replica is started, and once its /ready " +
    "answers 200 the old one gets SIGTERM and drains (readiness false, stop pulling, hand back, finish in-flight, " +
    "close). The load balancer sends only to ready orders replicas. The fault window is the whole deploy.",
  replicas: { inventory: 2, payments: 2, notifications: 2, audit: 2, orders: 2 },
  rate: { ci: 8, full: 50 },
  async fault(ctx) {
    ctx.faultStart("deploy begins");
    for (const name of SERVICES) {
      const surge = !(name === "audit" && !ctx.sys.opts.databaseUrl);
      ctx.note(`rolling ${name}${surge ? "" : " (PGlite: stop, then start)"}`);
      await ctx.sys.rollingRestart(name, { surge });
    }
    ctx.healed("deploy done");
  },
};

/** `EVENT_VERSIONS` of a producer pinned to StockReserved version 1 (the first step of a rollout, or of a rollback). */
const WRITE_V1 = { EVENT_VERSIONS: "StockReserved=1" };
/** A replica of the release before StockReserved version 2: it reads version 1 only. */
const RELEASE_BEFORE = { EVENT_READ_VERSIONS: "StockReserved=1" };

/** StockReserved events on INVENTORY from stream sequence `from` on, by schema version as published. */
async function stockReservedVersions(jsm: JetStreamManager, from: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let seq = from; ;) {
    const m = await jsm.direct
      .getMessage(Streams.INVENTORY, { seq, next_by_subj: "inventory.*.StockReserved" })
      .catch(() => null);
    if (!m) break;
    const version = String(m.json<{ version?: unknown }>().version);
    counts[version] = (counts[version] ?? 0) + 1;
    seq = m.seq + 1;
  }
  return counts;
}

/** Lines of the instance logs of `name` (every replica this run started) that contain `text`. */
async function logLinesWith(logDir: string, name: string, text: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(logDir).catch(() => [] as string[])) {
    if (!f.startsWith(`${name}-`) || !f.endsWith(".log")) continue;
    for (const line of (await readFile(join(logDir, f), "utf8")).split("\n")) if (line.includes(text)) n++;
  }
  return n;
}

const rollingUpgrade: Scenario = {
  name: "rolling-upgrade",
  summary:
    "an event that changes in a rolling deploy: v1 producers beside v2 consumers, then v2 producers beside v1 consumers",
  description:
    "StockReserved gained a field in version 2 (`expiresAt`, which payments uses). Inventory (its producer) and " +
    "two replicas of payments (its consumer) are replaced one replica at a time like a Kubernetes rolling update " +
    "(maxSurge 1), under load, in four rollouts: (1) inventory pinned to write version 1 (`EVENT_VERSIONS`): " +
    "version 1 producers beside version 2 consumers, which upcast; (2) payments back to the release before " +
    "(`EVENT_READ_VERSIONS=StockReserved=1`): version 1 consumers; (3) inventory unpinned, writing version 2 beside " +
    "those version 1 consumers, which keep what they cannot read (no attempt used, nothing dead-lettered); (4) " +
    "payments to the current release, the old replicas handing back what they kept on their way out. Checked " +
    "besides the reconciliation: both versions were written, the version 1 consumers met version 2 events, and the " +
    "DLQ is empty.",
  replicas: { inventory: 1, payments: 2 },
  // The CI scale's 400 orders must outlast four rollouts on a loaded machine.
  rate: { ci: 4, full: 40 },
  async fault(ctx) {
    const jsm = await ctx.sys.jsm();
    const from = (await jsm.streams.info(Streams.INVENTORY)).state.last_seq + 1;
    const logDir = ctx.sys.opts.logDir;
    const aheadBefore = await logLinesWith(logDir, "payments", "newer than this release reads");
    ctx.faultStart("rollout begins");
    ctx.note("1: inventory writes StockReserved version 1 (v1 producers beside v2 consumers)");
    await ctx.sys.rollingRestart("inventory", { surge: true, env: WRITE_V1 });
    await ctx.sleep(ctx.dur(1_000, 10_000));
    ctx.note("2: payments back to the release before version 2 (reads version 1 only)");
    await ctx.sys.rollingRestart("payments", { surge: true, env: RELEASE_BEFORE });
    await ctx.sleep(ctx.dur(1_000, 10_000));
    ctx.note("3: inventory writes version 2 beside version 1 consumers");
    await ctx.sys.rollingRestart("inventory", { surge: true });
    // Until the version 1 consumers have met version 2 (bounded: the check below reports it if they never did).
    const until = Date.now() + 30_000;
    while (
      Date.now() < until &&
      (await logLinesWith(logDir, "payments", "newer than this release reads")) <= aheadBefore
    )
      await ctx.sleep(500);
    await ctx.sleep(ctx.dur(2_000, 10_000));
    ctx.note("4: payments to the current release; the old replicas hand back what they kept");
    await ctx.sys.rollingRestart("payments", { surge: true });
    ctx.healed("rollout done");
    ctx.verifyLater(async () => {
      const versions = await stockReservedVersions(await ctx.sys.jsm(), from);
      const kept = (await logLinesWith(logDir, "payments", "newer than this release reads")) - aheadBefore;
      const dead = await listDeadLetters(await ctx.sys.jsm(), { limit: 1_000_000 });
      ctx.extra["stock_reserved_versions"] = versions;
      ctx.extra["version_2_kept_by_version_1_consumers"] = kept;
      return [
        {
          name: "StockReserved written at version 1 and at version 2",
          ok: (versions["1"] ?? 0) > 0 && (versions["2"] ?? 0) > 0,
          detail: JSON.stringify(versions),
        },
        {
          name: "version 1 consumers met version 2 events and kept them",
          ok: kept > 0,
          detail: `${kept} kept (log lines of payments replicas)`,
        },
        {
          name: "nothing dead-lettered",
          ok: dead.length === 0,
          detail: dead.length === 0 ? "DLQ empty" : dead.map((d) => `${d.consumer}: ${d.code}`).join(", "),
        },
      ];
    });
  },
};

function outage(sim: "payment-gateway" | "mail-provider", name: string, what: string): Scenario {
  return {
    name,
    summary: `the ${what} answers 503 to everything for 5 s (CI) / 30 s (full)`,
    description:
      `The ${what} simulator is switched into a full outage (every call answered 503 at once) for 5 s (CI) / ` +
      `30 s (full), then back. The client's retries fail, its circuit breaker opens and pauses the consumers that ` +
      `call it, so messages wait in the stream without using up delivery attempts; a half-open probe after 5 s ` +
      `resumes them once the outage is over.`,
    rate: { ci: 30, full: 50 },
    async fault(ctx) {
      ctx.faultStart(`${sim} outage`);
      await ctx.sys.setFaults(sim, { outage: true });
      await ctx.sleep(ctx.dur(5_000, 30_000));
      await ctx.sys.setFaults(sim, { outage: false });
      ctx.healed(`${sim} back`);
    },
  };
}

const gatewaySlow: Scenario = {
  name: "gateway-slow",
  summary: `payment gateway answers after ${GATEWAY_TIMEOUT_MS + 1_000} ms, above the client's ${GATEWAY_TIMEOUT_MS} ms timeout`,
  description:
    `The payment gateway records every charge but answers ${GATEWAY_TIMEOUT_MS + 1_000} ms late, above the ` +
    `payments client's ${GATEWAY_TIMEOUT_MS} ms timeout, for 6 s (CI) / 20 s (full): every charge attempt times ` +
    `out although the money moved. Retries with the same idempotency key replay the recorded charge; the breaker ` +
    `opens on the timeouts. Afterwards each order must have exactly one capture.`,
  rate: { ci: 30, full: 50 },
  async fault(ctx) {
    ctx.faultStart("gateway slow");
    await ctx.sys.setFaults("payment-gateway", { latencyMs: GATEWAY_TIMEOUT_MS + 1_000 });
    await ctx.sleep(ctx.dur(6_000, 20_000));
    await ctx.sys.setFaults("payment-gateway", { latencyMs: 0 });
    ctx.healed("gateway fast again");
  },
};

const natsKill: Scenario = {
  name: "nats-kill",
  summary: "kill -9 of the single nats-server, restarted on the same store dir",
  description:
    "kill -9 of the only nats-server (JetStream file store) under load: every service and the harness lose their " +
    "connection, publishes and KV writes in flight fail or time out, POST /orders answers 5xx (the client retries " +
    "with its idempotency key). After 2 s (CI) / 10 s (full) the server is started again on the same ports and " +
    "store dir; the fault window ends when it is healthy. Everything acknowledged before the crash must be there.",
  rate: { ci: 30, full: 50 },
  async fault(ctx) {
    ctx.faultStart("kill -9 nats-server");
    await ctx.sys.killNats();
    await ctx.sleep(ctx.dur(2_000, 10_000));
    await ctx.sys.restartNats();
    ctx.healed("nats-server healthy");
  },
};

const clusterLeaderLoss: Scenario = {
  name: "cluster-leader-loss",
  summary: "3-node cluster, R3 streams: kill -9 the stream leader under load, bring it back",
  description:
    "A 3-node JetStream cluster, every stream and KV bucket with 3 replicas. Under load, the server leading the " +
    "ORDERS stream (found with `streams.info(…).cluster.leader`; it leads other streams and consumers too) is " +
    "killed with -9, kept down for 5 s (CI) / 10 s (full) while the remaining two elect new leaders, then started " +
    "again on its store dir and waited for until the cluster is healthy. The full run does this twice (the second " +
    "time to the new leader of PAYMENTS).",
  cluster: true,
  rate: { ci: 20, full: 40 },
  async fault(ctx) {
    const rounds = ctx.scale === "ci" ? [Streams.ORDERS] : [Streams.ORDERS, Streams.PAYMENTS];
    const leaders: string[] = [];
    ctx.extra["leaders"] = leaders;
    for (const [n, stream] of rounds.entries()) {
      const leader = await ctx.sys.streamLeader(stream);
      ctx.faultStart(`kill -9 ${leader.name} (leader of ${stream})`);
      ctx.note(`kill -9 ${leader.name}, leader of ${stream}`);
      await ctx.sys.killNode(leader.index);
      await ctx.sleep(ctx.dur(5_000, 10_000));
      const after = await ctx.sys.streamLeader(stream).catch(() => undefined);
      ctx.note(`${stream} is led by ${after?.name ?? "nobody"} while ${leader.name} is down`);
      leaders.push(`${stream}: ${leader.name} → ${after?.name ?? "none"}`);
      await ctx.sys.restartNode(leader.index);
      ctx.healed(`${leader.name} back`);
      if (n < rounds.length - 1) await ctx.sleep(5_000);
    }
  },
};

const killAll: Scenario = {
  name: "kill-all",
  summary: "kill -9 of every process (NATS, services, simulators) mid-load, restarted from the same data",
  description:
    "kill -9 of the whole system at once — nats-server, the five services and the two simulators — in the " +
    "middle of the load, then, after 1 s (CI) / 5 s (full), everything started again from the same data: the " +
    "JetStream store, the simulators' ledger and sent-mail files, the audit database. The fault window ends when " +
    "every process answers /ready again. Clients retry their orders with their idempotency key meanwhile.",
  rate: { ci: 15, full: 50 },
  async fault(ctx) {
    ctx.faultStart("kill -9 everything");
    await ctx.sys.killAll();
    await ctx.sleep(ctx.dur(1_000, 5_000));
    await ctx.sys.startAll();
    ctx.healed("everything ready");
  },
};

/** One message of the poison scenario, and where it landed. */
interface Poison {
  kind: string;
  stream: string;
  subject: string;
  seq: number;
  /** The DLQ entry must be stored without its body (too large to copy with the DLQ headers). */
  huge?: boolean;
  /** No durable consumer reads its stream (NOTIFICATIONS: only the audit does): nothing dead-letters it. */
  unconsumed?: boolean;
  /** A valid event (of an order that does not exist): audited as an event, not as a raw row. */
  valid?: boolean;
}

const poison: Scenario = {
  name: "poison",
  summary: "poison published straight to the streams, duplicates of real events, forced redeliveries",
  description:
    "Published straight to the streams, bypassing every service: malformed JSON, a known type with a wrong " +
    "schema, an unknown type, a ~1 MiB payload (too large to copy to the DLQ with its headers), a malformed " +
    "StockReserved, a schema-invalid PaymentCaptured, an unknown NOTIFICATIONS type, and a valid PaymentCaptured " +
    "of an order that does not exist. Then every event of some of this scenario's orders, in all four streams, is " +
    "published again with a new message id (a redo after the 2-minute duplicate window, or a replay by a tool), so " +
    "every consumer sees each of those events twice. Then one inventory and one payments replica (of two each) are frozen with SIGSTOP for the ack " +
    "wait plus 3 s, so the server redelivers what they hold to the other replica, and thawed with SIGCONT so both " +
    "copies run. Checked besides the reconciliation: every poison message is in the DLQ, the huge one without its " +
    "body, and every DLQ entry is in the audit log.",
  replicas: { inventory: 2, payments: 2 },
  rate: { ci: 8, full: 50 },
  async fault(ctx) {
    const nc = await ctx.sys.connection();
    const js = jetstream(nc);
    const jsm = await ctx.sys.jsm();
    const tag = Date.now().toString(36);
    const poisons: Poison[] = [];
    const put = async (p: Omit<Poison, "seq" | "stream">, body: string | Uint8Array, type?: string) => {
      const h = natsHeaders();
      if (type) h.set(Hdr.Type, type);
      const ack = await js.publish(p.subject, body, {
        msgID: `chaos-poison:${tag}:${poisons.length}`,
        headers: h,
      });
      poisons.push({ ...p, stream: ack.stream, seq: ack.seq });
    };
    ctx.faultStart("poison published");
    const envelope = (type: string, data: unknown, id: string) =>
      JSON.stringify({
        id: `${id}:${type}`,
        type,
        version: 1,
        aggregate_id: id,
        data,
        timestamp: new Date().toISOString(),
        trace_id: "0".repeat(31) + "1",
        causation_id: null,
        source: "chaos",
      });
    await put(
      { kind: "malformed JSON on ORDERS", subject: `orders.poison-malformed-${tag}` },
      '{"id": "oops", "type": ',
    );
    await put(
      { kind: "wrong schema on ORDERS (OrderPlaced)", subject: `orders.poison-schema-${tag}` },
      envelope(
        "OrderPlaced",
        { orderId: `poison-schema-${tag}`, total: "lots", items: [] },
        `poison-schema-${tag}`,
      ),
      "OrderPlaced",
    );
    await put(
      { kind: "unknown type on ORDERS", subject: `orders.poison-unknown-${tag}` },
      envelope("OrderTeleported", { orderId: `poison-unknown-${tag}` }, `poison-unknown-${tag}`),
      "OrderTeleported",
    );
    const hugeId = `poison-huge-${tag}`;
    const skeleton = envelope("OrderPlaced", { orderId: hugeId, customerId: "", note: "" }, hugeId);
    // Just under the 1 MiB limit with its own headers: too large to copy with the DLQ's headers added.
    const filler = "x".repeat(1024 * 1024 - 96 - skeleton.length);
    await put(
      { kind: "~1 MiB payload on ORDERS", subject: `orders.${hugeId}`, huge: true },
      envelope("OrderPlaced", { orderId: hugeId, customerId: "", note: filler }, hugeId),
    );
    await put(
      { kind: "malformed StockReserved on INVENTORY", subject: `inventory.poison-${tag}.StockReserved` },
      new Uint8Array([0xff, 0xfe, 0x00, 0x7b]),
      "StockReserved",
    );
    await put(
      {
        kind: "wrong schema on PAYMENTS (PaymentCaptured)",
        subject: `payments.poison-${tag}.PaymentCaptured`,
      },
      envelope(
        "PaymentCaptured",
        { orderId: `poison-${tag}`, paymentId: "", amount: -5, currency: "euro" },
        `poison-${tag}`,
      ),
      "PaymentCaptured",
    );
    await put(
      {
        kind: "unknown type on NOTIFICATIONS",
        subject: `notifications.poison-${tag}.Gossip`,
        unconsumed: true,
      },
      envelope("Gossip", { orderId: `poison-${tag}` }, `poison-${tag}`),
      "Gossip",
    );
    const orphan = `ord_chaos_orphan_${tag}`;
    const orphanEvent = makeEvent(
      "PaymentCaptured",
      { orderId: orphan, paymentId: `ch_${tag}`, amount: 100, currency: "EUR" },
      { aggregateId: orphan, source: "chaos" },
    );
    await put(
      {
        kind: "valid PaymentCaptured of an order that does not exist",
        subject: `payments.${orphan}.PaymentCaptured`,
        valid: true,
      },
      JSON.stringify(orphanEvent),
      "PaymentCaptured",
    );
    ctx.note(`${poisons.length} poison messages published`);

    const dups = await publishDuplicates(ctx, jsm, ctx.acceptedIds().slice(0, ctx.scale === "ci" ? 30 : 300));
    ctx.note(`${dups} copies of real events published with new message ids`);
    ctx.extra["poison_messages"] = poisons.length;
    ctx.extra["duplicates_published"] = dups;

    const frozen = [ctx.sys.running("inventory")[0], ctx.sys.running("payments")[0]].flatMap((i) =>
      i ? [i.id] : [],
    );
    for (const id of frozen) ctx.sys.signal(id, "SIGSTOP");
    ctx.note(`frozen ${frozen.join(", ")} for ${(ACK_WAIT_MS + 3_000) / 1000} s`);
    await ctx.sleep(ACK_WAIT_MS + 3_000);
    for (const id of frozen) ctx.sys.signal(id, "SIGCONT");
    ctx.healed(`thawed ${frozen.join(", ")}`);

    ctx.verifyLater(async (facts) => {
      const dead = await listDeadLetters(await ctx.sys.jsm(), { limit: 1_000_000 });
      const checks: ScenarioCheck[] = [];
      for (const p of poisons) {
        const entries = dead.filter((d) => d.stream === p.stream && d.sequence === p.seq);
        const consumers = entries.map((e) => `${e.consumer} (${e.code})`).join(", ");
        if (!p.valid) {
          const rows = facts.audited.get(`raw:${p.stream}:${p.seq}`) ?? 0;
          checks.push({ name: `audited raw: ${p.kind}`, ok: rows === 1, detail: `${rows} raw audit row(s)` });
        }
        if (p.unconsumed) {
          checks.push({
            name: `not dead-lettered (no durable consumer): ${p.kind}`,
            ok: entries.length === 0,
            detail: entries.length === 0 ? "not in the DLQ" : `by ${consumers}`,
          });
          continue;
        }
        checks.push({
          name: `dead-lettered: ${p.kind}`,
          ok: entries.length > 0 && (!p.huge || entries.every((e) => e.bodyOmitted)),
          detail:
            entries.length > 0
              ? `by ${consumers}${p.huge ? `; body omitted: ${entries.every((e) => e.bodyOmitted)}` : ""}`
              : "not in the DLQ",
        });
        const unaudited = entries.filter((e) => facts.audited.get(`dlq:${e.dlqSequence}`) !== 1);
        if (entries.length > 0)
          checks.push({
            name: `audited: DLQ entries of ${p.kind}`,
            ok: unaudited.length === 0,
            detail:
              unaudited.length === 0
                ? `${entries.length} audit rows`
                : `DLQ ${unaudited.map((e) => e.dlqSequence).join(", ")} not audited`,
          });
      }
      checks.push({
        name: "orphan PaymentCaptured audited once",
        ok: facts.audited.get(orphanEvent.id) === 1,
        detail: `audit rows: ${facts.audited.get(orphanEvent.id) ?? 0}`,
      });
      return checks;
    });
  },
};

/** Publishes again, with new message ids, every event of the orders `ids` (all four streams). */
async function publishDuplicates(ctx: FaultContext, jsm: JetStreamManager, ids: string[]): Promise<number> {
  const js = jetstream(await ctx.sys.connection());
  const subjects = (id: string) => [
    [Streams.INVENTORY, `inventory.${id}.StockReserved`],
    [Streams.INVENTORY, `inventory.${id}.StockRejected`],
    [Streams.INVENTORY, `inventory.${id}.StockCommitted`],
    [Streams.INVENTORY, `inventory.${id}.StockReleased`],
    [Streams.PAYMENTS, `payments.${id}.PaymentCaptured`],
    [Streams.PAYMENTS, `payments.${id}.PaymentDeclined`],
    [Streams.NOTIFICATIONS, `notifications.${id}.NotificationSent`],
  ];
  let n = 0;
  const copy = async (stream: string, m: StoredMsg) => {
    const h: MsgHdrs = natsHeaders();
    for (const k of m.header.keys())
      if (!k.startsWith("Nats-")) for (const v of m.header.values(k)) h.append(k, v);
    await js.publish(m.subject, m.data, { msgID: `chaos-dup:${stream}:${m.seq}`, headers: h });
    n++;
  };
  for (const id of ids) {
    // Every event of the order on ORDERS (one subject per order)…
    const history: StoredMsg[] = [];
    for (let seq = 1; ;) {
      const m = await jsm.direct
        .getMessage(Streams.ORDERS, { seq, next_by_subj: `orders.${id}` })
        .catch(() => null);
      if (!m) break;
      history.push(m);
      seq = m.seq + 1;
    }
    for (const m of history) await copy(Streams.ORDERS, m);
    // …and its outcomes on the other streams.
    for (const [stream, subject] of subjects(id)) {
      const m = await jsm.direct.getMessage(stream!, { last_by_subj: subject! }).catch(() => null);
      if (m) await copy(stream!, m);
    }
  }
  return n;
}

/** Every scenario, in the order a full run runs them. */
export const scenarios: Scenario[] = [
  ...SERVICES.map(killService).sort((a, b) => order(a.name) - order(b.name)),
  rollingRestart,
  rollingUpgrade,
  outage("payment-gateway", "gateway-outage", "payment gateway"),
  outage("mail-provider", "mail-outage", "mail provider"),
  gatewaySlow,
  natsKill,
  clusterLeaderLoss,
  killAll,
  poison,
];

function order(name: string): number {
  return ["kill-orders", "kill-inventory", "kill-payments", "kill-notifications", "kill-audit"].indexOf(name);
}

/** The scenario named `name`. */
export function scenarioNamed(name: string): Scenario | undefined {
  return scenarios.find((s) => s.name === name);
}
