/**
 * `npm run bench`: the end-to-end benchmark of ShopStream on this machine.
 *
 * For every scenario (open loop at each rate of BENCH_RATES, then closed loop at BENCH_CONCURRENCY) it starts the
 * system in production mode as separate processes on a fresh data directory (bench/stack.ts), measures the raw
 * JetStream ceiling on that same nats-server (bench/ceiling.ts), drives orders through `POST /orders`
 * (src/load/generator.ts), follows every accepted order to its terminal event, samples CPU/RSS per process and
 * consumer lag every second, waits for the system to go quiet, runs the invariant checker with the run's accepted
 * order ids, and stops the stack. A lost order, or any violated invariant, fails the run (exit code 1).
 *
 *   npm run bench                         # 60 s per scenario: 250, 400, 1000, 2000, 3000 orders/s, then closed loop c=64
 *   npm run bench -- --quick              # 10 s per scenario
 *   BENCH_RATES=1000,2000 BENCH_DURATION_S=30 npm run bench -- --no-closed
 *   npm run bench -- --rates=2000 --profile   # CPU profile of every process (node --cpu-prof), summarised
 *
 * Options (flags win over variables): --quick, --duration=S (BENCH_DURATION_S), --rates=a,b (BENCH_RATES),
 * --concurrency=N (BENCH_CONCURRENCY, 0 = no closed loop), --no-closed, --profile, --update-docs / --no-docs
 * (docs/benchmarks.{md,json} are updated by full runs — 60 s or more per scenario, not --quick — unless asked),
 * --label=NAME; --peer (BENCH_PEER=1): the Go peer (bench/peer.ts) at the same open-loop rates in the same run, and
 * the ratios; --peer-rates=a,b (BENCH_PEER_RATES) to run it at other rates; --overload=R (BENCH_OVERLOAD) / --no-overload:
 * the overload scenario's rate (default 2 × the sustained rate found by this run).
 *
 * Definitions (docs/benchmarks.md, "Definitions"): an open-loop rate is *sustained* when its run went the whole
 * duration, every order sent was accepted, every accepted order reached its terminal event no later than GRACE after
 * the load (nothing lost, nothing late) and the p99 POST → terminal is at most SUSTAINED_P99_MS; CPU ms per order are
 * those of the services + nats-server (simulators, supervisor and load generator apart), load window and drain,
 * per completed order; NATS messages per order are the services' connections' in + out messages (/connz).
 * Service settings pass through the environment (e.g. CONSUMER_CONCURRENCY=64 npm run bench); DATABASE_URL puts
 * the audit log in PostgreSQL (a fresh schema per scenario).
 */
import { cpus, loadavg, totalmem } from "node:os";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import * as hdr from "hdr-histogram-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { runLoad, TerminalTracker, type OrderRecord, type LoadMode } from "../src/load/generator.js";
import { auditBacklogs, checkInvariants, formatReport, type CheckReport } from "../src/checker/checker.js";
import { measureCeiling, type Ceiling } from "./ceiling.js";
import { chartSvg, type ChartPanel } from "./chart.js";
import { formatSummaries, summariseDir, type ProfileSummary } from "./profile.js";
import {
  Sampler,
  connTraffic,
  streamCounts,
  type ConnTraffic,
  type ProcessUsage,
  type Sample,
} from "./sampler.js";
import { ROOT, SYSTEM_ROOT, ensureBuilt, startStack, type Stack } from "./stack.js";
import {
  PEER_EVENT_STREAMS,
  PEER_SERVICES,
  PEER_STREAMS,
  buildPeer,
  startPeer,
  type PeerDriverResult,
  type PeerStack,
} from "./peer.js";
import { stackProcesses } from "../src/stack/processes.js";
import { DevTokens, devSecretPath } from "../src/lib/http/dev-token.js";
import type { ProcessName } from "../src/lib/ports.js";

const EVENT_STREAMS = ["ORDERS", "INVENTORY", "PAYMENTS", "NOTIFICATIONS"];
const CONSUMER_STREAMS = [...EVENT_STREAMS, "DLQ"];
/** Consumers whose ack-pending backlog is a timer, not work. */
const TIMER_CONSUMERS = ["ORDERS/orders-timeouts"];
/** The original design's claim: 10,000 orders/minute. */
const DESIGN_ORDERS_PER_S = 10_000 / 60;
/** An accepted order without a terminal event this long after the load is counted late (as the peer does). */
const GRACE_MS = 10_000;
/** The highest p99 POST → terminal a sustained rate may have. */
const SUSTAINED_P99_MS = 1_000;
/** ShopStream's services: their NATS connections are named after them (connectNats `name`, src/lib/service.ts). */
const SERVICES = new Set<string>(stackProcesses.filter((p) => p.kind === "service").map((p) => p.name));
const SIMULATORS = new Set<string>(stackProcesses.filter((p) => p.kind === "simulator").map((p) => p.name));

// ---------------------------------------------------------------------------------------------------------------
// options

function flag(name: string): string | undefined {
  const a = process.argv.find((x) => x === `--${name}` || x.startsWith(`--${name}=`));
  if (a === undefined) return undefined;
  return a.includes("=") ? a.slice(a.indexOf("=") + 1) : "";
}
const quick = flag("quick") !== undefined;
const durationS = Number(flag("duration") ?? process.env.BENCH_DURATION_S ?? (quick ? 10 : 60));
const rates = (flag("rates") ?? process.env.BENCH_RATES ?? "250,400,1000,2000,3000")
  .split(",")
  .map((s) => Number(s.trim()))
  .filter((n) => n > 0);
/** NODE_OPTIONS of the stack's processes (`BENCH_NODE_OPTIONS`; default: the manifests' heap cap). */
const nodeOptions = process.env.BENCH_NODE_OPTIONS ?? "--max-old-space-size=160 --max-semi-space-size=16";
const concurrency =
  flag("no-closed") !== undefined ? 0 : Number(flag("concurrency") ?? process.env.BENCH_CONCURRENCY ?? 64);
const profile = flag("profile") !== undefined;
/** Only full runs (60 s or more per scenario) rewrite the recorded figures in docs/, unless --update-docs. */
const updateDocs =
  flag("no-docs") !== undefined ? false : flag("update-docs") !== undefined || (!quick && durationS >= 60);
const peer = flag("peer") !== undefined || /^(1|true|yes)$/i.test(process.env.BENCH_PEER ?? "");
/** The peer's open-loop rates (default: ShopStream's). */
const peerRates = (flag("peer-rates") ?? process.env.BENCH_PEER_RATES ?? rates.join(","))
  .split(",")
  .map((s) => Number(s.trim()))
  .filter((n) => n > 0);
/** The overload scenario's rate: explicit, 0 = none, undefined = 2 × the sustained rate of this run. */
const overloadRate =
  flag("no-overload") !== undefined
    ? 0
    : flag("overload") !== undefined || process.env.BENCH_OVERLOAD !== undefined
      ? Number(flag("overload") ?? process.env.BENCH_OVERLOAD)
      : undefined;
const label = flag("label") ?? process.env.BENCH_LABEL ?? "";
const drainTimeoutMs = Number(process.env.BENCH_DRAIN_TIMEOUT_S ?? 300) * 1000;
/**
 * A scenario stops sending once this many accepted orders are still open (no terminal event yet): the system is
 * saturated, and a backlog that large would take longer to drain than the run itself. Recorded as `saturated_at_s`.
 */
const maxOpen = Number(process.env.BENCH_MAX_OPEN ?? 5_000);
if (
  !(durationS > 0) ||
  rates.some((r) => !Number.isFinite(r)) ||
  peerRates.some((r) => !Number.isFinite(r)) ||
  !(concurrency >= 0) ||
  (overloadRate !== undefined && !(overloadRate >= 0))
) {
  process.stderr.write("bench: invalid --duration, --rates, --peer-rates, --concurrency or --overload\n");
  process.exit(2);
}

/** `BENCH_REPLICAS=inventory=2,payments=2`: run that many processes of those services (1 is the stack's own). */
function extraReplicas(): Partial<Record<ProcessName, number>> {
  const out: Partial<Record<ProcessName, number>> = {};
  for (const part of (flag("replicas") ?? process.env.BENCH_REPLICAS ?? "").split(",").filter(Boolean)) {
    const [name, n] = part.split("=");
    if (name && Number(n) > 1) out[name as ProcessName] = Number(n) - 1;
  }
  return out;
}

const tty = process.stdout.isTTY;
/** The stack of the scenario running now (stopped on SIGINT/SIGTERM). */
let currentStack: Stack | undefined;
/** The peer's stack running now (stopped on SIGINT/SIGTERM). */
let currentPeer: PeerStack | undefined;
const say = (s: string) => process.stdout.write(`${tty ? "\r\x1b[K" : ""}${s}\n`);

// ---------------------------------------------------------------------------------------------------------------
// measurement

/** An HDR histogram in microseconds (1 µs .. 1 h, 3 significant digits). */
function histogram() {
  return hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000_000,
    numberOfSignificantValueDigits: 3,
    bitBucketSize: 64,
    useWebAssembly: false,
  });
}
type Histogram = ReturnType<typeof histogram>;

interface Quantiles {
  count: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  p999_ms: number;
  max_ms: number;
  mean_ms: number;
}
function quantiles(h: Histogram): Quantiles {
  const ms = (us: number) => Math.round(us / 10) / 100;
  return {
    count: h.totalCount,
    p50_ms: ms(h.getValueAtPercentile(50)),
    p90_ms: ms(h.getValueAtPercentile(90)),
    p99_ms: ms(h.getValueAtPercentile(99)),
    p999_ms: ms(h.getValueAtPercentile(99.9)),
    max_ms: ms(h.maxValue),
    mean_ms: ms(h.mean),
  };
}

interface SecondRow {
  t: number;
  sent: number;
  accepted: number;
  completed: number;
  p99_ms: number | null;
  machine_busy_pct?: number;
  lag_total?: number;
}

export interface ScenarioResult {
  name: string;
  mode: "open" | "closed";
  /** An open-loop rate of the run, the closed loop, or the overload scenario (2 × the sustained rate). */
  role?: "rate" | "closed" | "overload";
  offered_per_s: number | null;
  concurrency: number | null;
  duration_s: number;
  /** When the load was stopped because too many orders were open (the system could not keep up), else null. */
  saturated_at_s: number | null;
  sent: number;
  accepted: number;
  /** Sent and not accepted (shed requests included). */
  failed: number;
  /** Requests the orders service shed (HTTP 503 with Retry-After), and per second of load. */
  shed?: number;
  shed_per_s?: number;
  http_errors: Record<string, number>;
  accepted_per_s: number;
  /** Accepted orders whose terminal event came within the load window, per second of load. */
  completed_orders_per_s: number;
  /** Every accepted order that reached a terminal state, per second from the start to the last terminal event. */
  completed_incl_drain_per_s: number;
  drain_s: number;
  confirmed: number;
  cancelled: number;
  /** Accepted but no terminal event within GRACE after the load (the peer's "lost (10 s)"). */
  late_after_grace: number;
  /** Accepted and never terminal by the end of the drain, or missing from the ORDERS stream (checker). */
  lost_orders: number;
  e2e: Quantiles;
  http: Quantiles;
  http_service: Quantiles;
  /** Events appended to the four event streams per second of load (and including the drain). */
  events_per_s: number;
  events_incl_drain_per_s: number;
  events_per_order: number;
  /** Every message stored on the server (events + KV writes + DLQ) per second of load. */
  bus_msgs_per_s: number;
  stream_deltas: Record<string, number>;
  ceiling: Ceiling;
  events_to_ceiling_pct: number;
  bus_to_ceiling_pct: number;
  processes: Record<string, ProcessUsage>;
  machine_busy_pct: number;
  /** CPU ms the whole stack spent per completed order, load and drain included (not the bench process). */
  stack_cpu_ms_per_order: number;
  /** NATS messages each connection sent to / received from the server per completed order (load + drain). */
  nats_msgs_per_order: Record<string, { sent: number; received: number }>;
  /** In + out messages of each service's connections per completed order, and their sum over the services. */
  nats_msgs_per_order_by_service?: Record<string, number>;
  nats_msgs_per_order_total?: number;
  /** CPU ms per completed order of each process (load + drain; the load generator over the load window). */
  cpu_ms_per_order: Record<string, number>;
  /** CPU ms per completed order of the services + nats-server: ShopStream's own processes (load + drain). */
  own_cpu_ms_per_order?: number;
  /** Reported apart: the two simulators, the stack's supervisor processes, the bench process (load generator). */
  simulators_cpu_ms_per_order?: number;
  supervisor_cpu_ms_per_order?: number;
  load_generator_cpu_ms_per_order?: number;
  /** Whether this open-loop rate is sustained (see {@link sustainedFailures}), and if not, why. */
  sustained?: boolean;
  not_sustained_because?: string[];
  load_avg_1m_during: number;
  max_lag: Record<string, number>;
  timeline: SecondRow[];
  lag: { t: number; pending: Record<string, number>; ack_pending: Record<string, number> }[];
  checker: { ok: boolean; summary: string; orders: CheckReport["orders"]; failed: string[] };
  profiles?: ProfileSummary[];
}

function progress(
  mode: string,
  elapsed: number,
  total: number,
  s: { sent: number; accepted: number; failed: number },
  done: number,
) {
  const width = 30;
  const f = Math.min(1, elapsed / total);
  const bar = "#".repeat(Math.round(f * width)).padEnd(width, ".");
  const line = `${mode} [${bar}] ${Math.round(elapsed)}/${total} s  sent ${s.sent}  accepted ${s.accepted}  failed ${s.failed}  completed ${done}`;
  if (tty) process.stdout.write(`\r\x1b[K${line}`);
  else if (Math.round(elapsed) % 10 === 0) process.stdout.write(`${line}\n`);
}

/** Waits until every durable consumer of `streams` is empty (timer consumers: nothing undelivered). */
async function waitQuiet(
  nc: NatsConnection,
  timeoutMs: number,
  streams = CONSUMER_STREAMS,
  timers = TIMER_CONSUMERS,
  auditUrl?: string,
  auditAuthorization?: string,
): Promise<boolean> {
  const jsm = await jetstreamManager(nc);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    // ShopStream's audit has no durable: its lag is stream last sequence − the position in its database.
    let busy = auditUrl
      ? (await auditBacklogs(auditUrl, auditAuthorization).catch(() => [{ pending: 1 }])).reduce(
          (n, b) => n + b.pending,
          0,
        )
      : 0;
    for (const stream of streams) {
      for await (const c of jsm.consumers.list(stream)) {
        if (timers.includes(`${stream}/${c.name}`)) {
          busy += c.num_pending;
          continue;
        }
        busy += c.num_pending + c.num_ack_pending;
      }
    }
    if (busy === 0) return true;
    await new Promise((r) => setTimeout(r, 500));
  }
  return false;
}

const round2 = (x: number) => Math.round(x * 100) / 100;
const round3 = (x: number) => Math.round(x * 1000) / 1000;

/**
 * NATS messages per completed order from two /connz snapshots: per connection (sent = the server's in_msgs,
 * received = its out_msgs), and in + out of each service's connections (by connection name) and their sum.
 */
function natsPerOrderOf(
  before: Record<string, ConnTraffic>,
  after: Record<string, ConnTraffic>,
  completed: number,
  services: ReadonlySet<string>,
): {
  perConnection: Record<string, { sent: number; received: number }>;
  byService: Record<string, number>;
  total: number;
} {
  const perConnection: Record<string, { sent: number; received: number }> = {};
  const byService: Record<string, number> = {};
  let total = 0;
  for (const [n, t] of Object.entries(after)) {
    const b = before[n] ?? { in_msgs: 0, out_msgs: 0, in_bytes: 0, out_bytes: 0 };
    const sent = (t.in_msgs - b.in_msgs) / completed;
    const received = (t.out_msgs - b.out_msgs) / completed;
    perConnection[n] = { sent: round2(sent), received: round2(received) };
    if (services.has(n)) {
      byService[n] = round2(sent + received);
      total += sent + received;
    }
  }
  return { perConnection, byService, total: round2(total) };
}

/**
 * Requests the orders service shed (HTTP 503 with Retry-After). The load generator's records carry the status; a
 * `shed` flag on a record, once the generator sets one, counts as well.
 */
function shedCount(records: OrderRecord[]): number {
  return records.filter((r) => (r as { shed?: boolean }).shed === true || r.httpStatus === 503).length;
}

type ProcessClass = "own" | "simulator" | "supervisor" | "load generator" | "other";

/** ShopStream's processes: services (replicas too) and nats-server are its own; the rest is reported apart. */
function classifyShopStream(name: string): ProcessClass {
  if (name.startsWith("bench")) return "load generator";
  const base = name.replace(/'+$/, "").replace(/#\d+$/, "");
  if (base === "nats-server" || SERVICES.has(base)) return "own";
  if (SIMULATORS.has(base)) return "simulator";
  if (base === "stack-front" || base === "stack-supervisor") return "supervisor";
  return "other";
}

/** The peer's processes: its services and nats-server are its own; its driver is the load generator. */
function classifyPeer(name: string): ProcessClass {
  return name === "driver" ? "load generator" : "own";
}

/** CPU ms per completed order summed by class of process. */
function cpuSplit(
  cpuSByProcess: Record<string, number>,
  completed: number,
  classify: (name: string) => ProcessClass,
): Record<ProcessClass, number> {
  const out: Record<ProcessClass, number> = {
    own: 0,
    simulator: 0,
    supervisor: 0,
    "load generator": 0,
    other: 0,
  };
  for (const [n, cpuS] of Object.entries(cpuSByProcess)) out[classify(n)] += (1000 * cpuS) / completed;
  for (const k of Object.keys(out) as ProcessClass[]) out[k] = round2(out[k]);
  return out;
}

/**
 * Why an open-loop run does not count as sustained (empty when it does): it must have run the whole duration, had
 * every request accepted (none failed, none shed), every accepted order terminal no later than GRACE after the load
 * (none lost, none late), a p99 POST → terminal of at most SUSTAINED_P99_MS, and the invariants holding.
 */
function sustainedFailures(x: {
  saturated: boolean;
  failed: number;
  shed: number;
  lost: number;
  late: number;
  p99Ms: number;
  checkerOk: boolean;
}): string[] {
  const why: string[] = [];
  if (x.saturated) why.push("saturated (load stopped early)");
  if (x.shed > 0) why.push(`${x.shed} shed`);
  if (x.failed - x.shed > 0) why.push(`${x.failed - x.shed} requests failed`);
  if (x.lost > 0) why.push(`${x.lost} lost`);
  if (x.late > 0) why.push(`${x.late} late (no terminal ${GRACE_MS / 1000} s after the load)`);
  if (!(x.p99Ms <= SUSTAINED_P99_MS)) why.push(`p99 ${x.p99Ms} ms > ${SUSTAINED_P99_MS} ms`);
  if (!x.checkerOk) why.push("invariants violated");
  return why;
}

async function runScenario(
  name: string,
  mode: LoadMode,
  reportDir: string,
  role: NonNullable<ScenarioResult["role"]> = mode.kind === "open" ? "rate" : "closed",
): Promise<ScenarioResult> {
  say(`\n== ${name}: starting the stack (production mode, separate processes)`);
  const profDir = join(reportDir, "profiles", name);
  if (profile) await mkdir(profDir, { recursive: true });
  const stack: Stack = await startStack({
    label: name,
    extraReplicas: extraReplicas(),
    ...(profile ? { natsPprof: true } : {}),
    // The services' heap as the Kubernetes manifests set it (deploy/k8s/base).
    nodeOptions: [
      nodeOptions,
      ...(profile ? [`--import=${join(ROOT, "bench/cpu-profile-preload.mjs")}`] : []),
    ]
      .filter(Boolean)
      .join(" "),
    ...(profile ? { env: { BENCH_CPU_PROF_DIR: profDir } } : {}),
  });
  currentStack = stack;
  const pidNames = new Map<number, string>();
  try {
    for (const [n, pid] of stack.processes()) pidNames.set(pid, n);
    say(
      `   up: ${[...pidNames.values()].join(", ")} (data ${stack.dataDir}; NATS ${stack.natsAuth ? "with authentication, one user per service" : "without authentication"})`,
    );
    const ceiling = await measureCeiling(stack.natsUrl, stack.natsConnectOptions("admin"));
    say(
      `   JetStream ceiling: publish ${ceiling.publish_msgs_per_s} msg/s (window ${ceiling.window}), one-at-a-time ${ceiling.sync_publish_msgs_per_s} msg/s, consume+ack ${ceiling.consume_ack_msgs_per_s} msg/s (${ceiling.message_bytes} B)`,
    );
    // The harness's watcher as admin (it subscribes to `orders.*`), the checker as operator (as `npm run check`).
    const nc = await connect({ servers: stack.natsUrl, name: "bench", ...stack.natsConnectOptions("admin") });
    const checkerNc = await connect({
      servers: stack.natsUrl,
      name: "bench-checker",
      ...stack.natsConnectOptions("operator"),
    });
    const jsm = await jetstreamManager(nc);
    const tracker = new TerminalTracker(nc);
    await tracker.start();
    const ordersUrl = stack.urls.orders;
    // Customers' tokens, signed with the stack's development secret (created by the stack under its DATA_DIR).
    const tokens = await DevTokens.open(
      process.env["AUTH_HS256_SECRET_FILE"] ?? devSecretPath(stack.dataDir),
    );
    const token = (customerId: string) => tokens.token(customerId);

    // Warm-up: JIT, connections, buckets. Its orders are checked too.
    const warm = await runLoad({
      ordersUrl,
      mode: { kind: "open", ratePerSec: 100, durationMs: 2_000 },
      token,
    });
    const warmIds = warm.flatMap((r) => (r.orderId ? [r.orderId] : []));
    await tracker.waitAll(warmIds, 30_000);
    await waitQuiet(nc, 30_000);

    const before = await streamCounts(jsm);
    const trafficBefore = await connTraffic(stack.monitorUrl);
    const sampler = new Sampler(() => stack.processes(), jsm, CONSUMER_STREAMS);
    sampler.start();
    const benchCpu0 = process.cpuUsage();
    const t0 = Date.now();
    const abort = new AbortController();
    let saturatedAt = null as number | null;
    // nats-server is Go: its CPU profile comes from pprof over HTTP, taken while the load runs.
    const natsProfile =
      profile && stack.natsPprofUrl
        ? fetch(
            `${stack.natsPprofUrl}/debug/pprof/profile?seconds=${Math.max(5, Math.floor(durationS * 0.8))}`,
          )
            .then(async (r) => Buffer.from(await r.arrayBuffer()))
            .catch(() => undefined)
        : undefined;
    const records: OrderRecord[] = await runLoad({
      ordersUrl,
      mode,
      token,
      signal: abort.signal,
      maxSockets: mode.kind === "closed" ? mode.concurrency : 512,
      onTick: (s) => {
        const done = tracker.terminals.size - warmIds.length;
        progress(name, s.elapsedMs / 1000, durationS, s, done);
        // Open = sent and not failed (nor shed, when the generator counts shed requests apart), minus terminal: an
        // order still waiting for its HTTP answer is open too.
        const shedSoFar = (s as { shed?: number }).shed ?? 0;
        if (s.sent - s.failed - shedSoFar - done > maxOpen && !abort.signal.aborted) {
          saturatedAt = Math.round(s.elapsedMs / 100) / 10;
          abort.abort();
        }
      },
    });
    const loadEnd = Date.now();
    const usage = sampler.stop();
    const natsPprof = await natsProfile;
    if (natsPprof) await writeFile(join(profDir, "nats-server.pprof"), natsPprof);
    const benchCpu = process.cpuUsage(benchCpu0);
    usage.processes["bench (load generator)"] = {
      cpuPctAvg: Math.round((benchCpu.user + benchCpu.system) / (loadEnd - t0) / 1) / 10,
      rssMbMax: Math.round(process.memoryUsage().rss / 2 ** 20),
      cpuS: Math.round((benchCpu.user + benchCpu.system) / 10_000) / 100,
    };
    const atLoadEnd = await streamCounts(jsm);
    // Keep sampling lag through the drain.
    const drainSampler = new Sampler(() => stack.processes(), jsm, CONSUMER_STREAMS);
    drainSampler.start();
    const accepted = records.filter((r) => r.orderId !== undefined);
    const ids = accepted.map((r) => r.orderId!);
    if (tty) process.stdout.write("\n");
    if (saturatedAt !== null)
      say(`   SATURATED: more than ${maxOpen} accepted orders open at ${saturatedAt} s; load stopped there`);
    say(`   load done: ${records.length} sent, ${accepted.length} accepted; draining ...`);
    const open = await tracker.waitAll(ids, drainTimeoutMs);
    const drainEnd = Date.now();
    // Terminal events can come before the last effects (StockCommitted, e-mails, audit rows): wait for every
    // consumer to be empty too, within what is left of the drain budget (at least a minute).
    const quiet = await waitQuiet(
      nc,
      Math.max(60_000, drainTimeoutMs - (Date.now() - loadEnd)),
      CONSUMER_STREAMS,
      TIMER_CONSUMERS,
      stack.urls.audit,
      (await tokens.operator()).authorization,
    );
    const drainUsage = drainSampler.stop();
    // CPU seconds of the stack (nats-server, services, simulators; not the bench) from the start of the load until
    // quiet, per order completed: robust to other load on the machine, unlike orders/s.
    const stackCpuS = [usage, drainUsage].reduce(
      (a, u) =>
        a +
        Object.entries(u.processes)
          .filter(([n]) => !n.startsWith("bench"))
          .reduce((b, [, p]) => b + (p.cpuS ?? 0), 0),
      0,
    );
    const cpuByProcess: Record<string, number> = {};
    for (const u of [usage, drainUsage])
      for (const [n, p] of Object.entries(u.processes))
        cpuByProcess[n] = (cpuByProcess[n] ?? 0) + (p.cpuS ?? 0);
    const after = await streamCounts(jsm);
    const trafficAfter = await connTraffic(stack.monitorUrl);
    const completedAll = Math.max(1, tracker.terminals.size - warmIds.length);
    const nats = natsPerOrderOf(trafficBefore, trafficAfter, completedAll, SERVICES);

    // Latencies.
    const e2e = histogram();
    const http = histogram();
    const service = histogram();
    const errors: Record<string, number> = {};
    let confirmed = 0;
    let cancelled = 0;
    let completedInWindow = 0;
    let late = 0;
    let lastTerminal = t0;
    for (const r of records) {
      if (r.answeredAt !== undefined) {
        http.recordValue(Math.max(1, (r.answeredAt - r.scheduledAt) * 1000));
        service.recordValue(Math.max(1, (r.answeredAt - (r.sentAt ?? r.scheduledAt)) * 1000));
      }
      if (r.orderId === undefined) {
        const k = r.error ?? `HTTP ${r.httpStatus}`;
        errors[k] = (errors[k] ?? 0) + 1;
        continue;
      }
      const term = tracker.terminals.get(r.orderId);
      if (!term) continue;
      r.terminal = term.status;
      r.terminalAt = term.at;
      if (term.status === "CONFIRMED") confirmed++;
      else cancelled++;
      e2e.recordValue(Math.max(1, (term.at - r.scheduledAt) * 1000));
      if (term.at <= loadEnd) completedInWindow++;
      if (term.at > loadEnd + GRACE_MS) late++;
      lastTerminal = Math.max(lastTerminal, term.at);
    }
    late += open.length;
    const loadSecs = (loadEnd - t0) / 1000;

    // Per-second timeline.
    const secs = Math.ceil((Math.max(lastTerminal, loadEnd) - t0) / 1000);
    const rows: SecondRow[] = Array.from({ length: secs + 1 }, (_, t) => ({
      t,
      sent: 0,
      accepted: 0,
      completed: 0,
      p99_ms: null,
    }));
    const perSecond = rows.map(() => histogram());
    for (const r of records) {
      const s = Math.floor((r.scheduledAt - t0) / 1000);
      if (rows[s]) rows[s].sent++;
      if (r.orderId && r.answeredAt) {
        const a = Math.floor((r.answeredAt - t0) / 1000);
        if (rows[a]) rows[a].accepted++;
      }
      if (r.terminalAt !== undefined) {
        const c = Math.floor((r.terminalAt - t0) / 1000);
        if (rows[c]) {
          rows[c].completed++;
          perSecond[c]!.recordValue(Math.max(1, (r.terminalAt - r.scheduledAt) * 1000));
        }
      }
    }
    const allSamples: Sample[] = [
      ...sampler.samples,
      ...drainSampler.samples.map((s) => ({ ...s, t: s.t + (loadEnd - t0) })),
    ];
    rows.forEach((row, i) => {
      const h = perSecond[i]!;
      row.p99_ms = h.totalCount > 0 ? Math.round(h.getValueAtPercentile(99) / 10) / 100 : null;
      const s = allSamples.find((x) => Math.floor(x.t / 1000) === i);
      if (s) {
        row.machine_busy_pct = s.machineBusyPct;
        row.lag_total = Object.entries(s.pending).reduce(
          (a, [k, v]) => a + (TIMER_CONSUMERS.includes(k) ? 0 : v),
          0,
        );
      }
    });
    const maxLag: Record<string, number> = {};
    for (const s of allSamples)
      for (const [k, v] of Object.entries(s.pending)) maxLag[k] = Math.max(maxLag[k] ?? 0, v);

    // Bus traffic.
    const deltas: Record<string, number> = {};
    for (const [k, v] of Object.entries(atLoadEnd)) deltas[k] = v - (before[k] ?? 0);
    const eventsInWindow = EVENT_STREAMS.reduce((a, s) => a + (deltas[s] ?? 0), 0);
    const eventsTotal = EVENT_STREAMS.reduce((a, s) => a + ((after[s] ?? 0) - (before[s] ?? 0)), 0);
    const busInWindow = Object.values(deltas).reduce((a, b) => a + b, 0);
    const eventsPerS = eventsInWindow / loadSecs;

    // The invariant checker, with this run's accepted order ids (warm-up included).
    say(`   ${quiet ? "quiet" : "NOT quiet after 60 s"}; running the invariant checker ...`);
    const report = await checkInvariants({
      nc: checkerNc,
      inventoryUrl: stack.urls.inventory,
      auditUrl: stack.urls.audit,
      gatewayUrl: stack.urls["payment-gateway"],
      mailUrl: stack.urls["mail-provider"],
      acceptedOrderIds: [...warmIds, ...ids],
      timerConsumers: ["orders-timeouts"],
      authorization: (await tokens.operator()).authorization,
    });
    const summary = formatReport(report, 5);
    say(
      summary
        .split("\n")
        .map((l) => `   ${l}`)
        .join("\n"),
    );
    tracker.stop();
    await nc.close();
    await checkerNc.close();

    const sent = records.length;
    const shed = shedCount(records);
    const completedCount = Math.max(1, confirmed + cancelled);
    const split = cpuSplit(cpuByProcess, completedCount, classifyShopStream);
    const result: ScenarioResult = {
      name,
      mode: mode.kind,
      role,
      offered_per_s: mode.kind === "open" ? mode.ratePerSec : null,
      concurrency: mode.kind === "closed" ? mode.concurrency : null,
      duration_s: Math.round(loadSecs * 10) / 10,
      saturated_at_s: saturatedAt,
      sent,
      accepted: accepted.length,
      failed: sent - accepted.length,
      shed,
      shed_per_s: Math.round((shed / loadSecs) * 10) / 10,
      http_errors: errors,
      accepted_per_s: Math.round(accepted.length / loadSecs),
      completed_orders_per_s: Math.round(completedInWindow / loadSecs),
      completed_incl_drain_per_s: Math.round((confirmed + cancelled) / ((lastTerminal - t0) / 1000)),
      drain_s: Math.round((drainEnd - loadEnd) / 100) / 10,
      confirmed,
      cancelled,
      late_after_grace: late,
      lost_orders: Math.max(open.length, report.orders.lost),
      e2e: quantiles(e2e),
      http: quantiles(http),
      http_service: quantiles(service),
      events_per_s: Math.round(eventsPerS),
      events_incl_drain_per_s: Math.round(eventsTotal / ((lastTerminal - t0) / 1000)),
      events_per_order: Math.round((eventsTotal / Math.max(1, accepted.length)) * 100) / 100,
      bus_msgs_per_s: Math.round(busInWindow / loadSecs),
      stream_deltas: deltas,
      ceiling,
      events_to_ceiling_pct: Math.round((1000 * eventsPerS) / ceiling.publish_msgs_per_s) / 10,
      bus_to_ceiling_pct: Math.round((1000 * busInWindow) / loadSecs / ceiling.publish_msgs_per_s) / 10,
      processes: usage.processes,
      machine_busy_pct: usage.machineBusyPct,
      nats_msgs_per_order: nats.perConnection,
      nats_msgs_per_order_by_service: nats.byService,
      nats_msgs_per_order_total: nats.total,
      own_cpu_ms_per_order: split.own,
      simulators_cpu_ms_per_order: split.simulator,
      supervisor_cpu_ms_per_order: split.supervisor,
      load_generator_cpu_ms_per_order: split["load generator"],
      stack_cpu_ms_per_order:
        Math.round(((1000 * stackCpuS) / Math.max(1, confirmed + cancelled)) * 100) / 100,
      cpu_ms_per_order: Object.fromEntries(
        Object.entries(cpuByProcess).map(([n, c]) => [
          n,
          Math.round(((1000 * c) / Math.max(1, confirmed + cancelled)) * 1000) / 1000,
        ]),
      ),
      load_avg_1m_during:
        Math.round(
          (sampler.samples.reduce((a, s) => a + s.load1, 0) / Math.max(1, sampler.samples.length)) * 100,
        ) / 100,
      max_lag: maxLag,
      timeline: rows,
      lag: allSamples.map((s) => ({
        t: Math.round(s.t / 100) / 10,
        pending: s.pending,
        ack_pending: s.ackPending,
      })),
      checker: {
        ok: report.ok,
        summary: summary.split("\n")[0]!,
        orders: report.orders,
        failed: report.invariants
          .filter((i) => !i.ok)
          .map((i) => `${i.id}: ${i.violations.length} violations, e.g. ${i.violations[0]?.detail}`),
      },
    };
    if (mode.kind === "open") {
      const why = sustainedFailures({
        saturated: saturatedAt !== null,
        failed: result.failed,
        shed,
        lost: result.lost_orders,
        late,
        p99Ms: result.e2e.p99_ms,
        checkerOk: report.ok,
      });
      result.sustained = why.length === 0;
      result.not_sustained_because = why;
    }
    say(
      `   ${name}: completed ${result.completed_orders_per_s}/s in window (${result.completed_incl_drain_per_s}/s incl. drain), e2e p50 ${result.e2e.p50_ms} ms p99 ${result.e2e.p99_ms} ms max ${result.e2e.max_ms} ms, lost ${result.lost_orders}, late ${late}, shed ${shed} (${result.shed_per_s}/s), events ${result.events_per_s}/s (${result.events_to_ceiling_pct}% of ceiling), machine ${result.machine_busy_pct}% busy, stack CPU ${result.stack_cpu_ms_per_order} ms/order (services + nats-server ${split.own}), NATS msgs/order (services, in + out) ${nats.total}${result.sustained === undefined ? "" : result.sustained ? "; SUSTAINED" : `; not sustained: ${result.not_sustained_because!.join(", ")}`}`,
    );
    say(
      `   CPU % of a core / max RSS MB: ${Object.entries(result.processes)
        .sort((a, b) => b[1].cpuPctAvg - a[1].cpuPctAvg)
        .map(([n, u]) => `${n} ${u.cpuPctAvg}%/${u.rssMbMax}`)
        .join(", ")}`,
    );
    say(
      `   per completed order: CPU ms ${Object.entries(result.cpu_ms_per_order)
        .filter(([, v]) => v >= 0.01)
        .sort((a, b) => b[1] - a[1])
        .map(([n, v]) => `${n} ${v}`)
        .join(", ")}; NATS msgs sent/received ${Object.entries(result.nats_msgs_per_order)
        .filter(([, v]) => v.sent + v.received >= 0.1)
        .map(([n, v]) => `${n} ${v.sent}/${v.received}`)
        .join(", ")}`,
    );
    await stack.stop();
    if (profile) {
      const profiles = await summariseDir(profDir, pidNames);
      result.profiles = profiles;
      let text = formatSummaries(profiles);
      if (natsPprof) {
        const top = spawnSync(
          "go",
          ["tool", "pprof", "-top", "-nodecount=30", join(profDir, "nats-server.pprof")],
          {
            encoding: "utf8",
          },
        );
        text += `\n## nats-server (Go pprof, ${Math.max(5, Math.floor(durationS * 0.8))} s of the load)\n${top.status === 0 ? top.stdout : `(go tool pprof unavailable: ${top.stderr || top.error?.message})`}`;
      }
      await writeFile(join(reportDir, `profile-${name}.txt`), text + "\n");
      say(text);
    }
    return result;
  } catch (err) {
    say(`   the stack's log: ${stack.logFile}`);
    await stack.stop().catch(() => undefined);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// the Go peer

/** One open-loop run of the Go peer (`seed driver`), measured the way ShopStream's scenarios are. */
export interface PeerScenarioResult {
  name: string;
  offered_per_s: number;
  duration_s: number;
  sent: number;
  accepted: number;
  /** HTTP failures plus orders the driver dropped (its in-flight cap). */
  failed: number;
  accepted_per_s: number;
  completed_orders_per_s: number;
  completed_incl_drain_per_s: number;
  drain_s: number;
  /** Accepted, no terminal event GRACE after the load (the driver's "lost"). */
  late_after_grace: number;
  /** Accepted and never terminal by the end of the drain (the driver's "never_completed"). */
  lost_orders: number;
  e2e: { p50_ms: number; p90_ms: number; p99_ms: number; max_ms: number };
  http_p99_ms: number;
  processes: Record<string, ProcessUsage>;
  machine_busy_pct: number;
  load_avg_1m_during: number;
  /** CPU ms per completed order of each process (services + nats-server over load + drain; driver: its own count). */
  cpu_ms_per_order: Record<string, number>;
  own_cpu_ms_per_order: number;
  load_generator_cpu_ms_per_order: number;
  nats_msgs_per_order: Record<string, { sent: number; received: number }>;
  nats_msgs_per_order_by_service: Record<string, number>;
  nats_msgs_per_order_total: number;
  events_per_order: number;
  stream_deltas: Record<string, number>;
  sustained: boolean;
  not_sustained_because: string[];
  log_problems: string[];
  /** The driver's own JSON line. */
  driver: PeerDriverResult;
}

/** The peer at `rate` orders/s for durationS: a fresh peer stack, a 2 s warm-up at 100/s, the load, the drain. */
async function runPeerScenario(bin: string, rate: number, reportDir: string): Promise<PeerScenarioResult> {
  const name = `peer-open-${rate}`;
  say(`\n== ${name}: starting the Go peer (nats-server and its five services, as its run.sh does)`);
  const dir = join(reportDir, "peer");
  await mkdir(dir, { recursive: true });
  const jsonFile = join(dir, "results.jsonl");
  const peerStack = await startPeer(bin, {
    label: name,
    workers: Number(process.env.BENCH_PEER_WORKERS ?? 10),
    batch: Number(process.env.BENCH_PEER_BATCH ?? 50),
  });
  currentPeer = peerStack;
  try {
    say(`   up: ${[...peerStack.processes().keys()].join(", ")} (data ${peerStack.dir})`);
    const nc = await connect({ servers: peerStack.natsUrl, name: "bench" });
    try {
      const jsm = await jetstreamManager(nc);
      await peerStack.drive({
        rate: 100,
        durationS: 2,
        label: `${name}-warmup`,
        graceS: 30,
        settleS: 0,
        jsonFile,
        textFile: join(dir, `${name}-warmup.txt`),
      });
      await waitQuiet(nc, 30_000, PEER_STREAMS, []);
      const before = await streamCounts(jsm);
      const trafficBefore = await connTraffic(peerStack.monitorUrl);
      const sampler = new Sampler(() => peerStack.processes(), jsm, PEER_STREAMS);
      sampler.start();
      say(`   load: open loop ${rate}/s for ${durationS} s (seed driver) ...`);
      const d = await peerStack.drive({
        rate,
        durationS,
        label: name,
        graceS: GRACE_MS / 1000,
        settleS: Math.max(0, Math.round((drainTimeoutMs - GRACE_MS) / 1000)),
        jsonFile,
        textFile: join(dir, `${name}.txt`),
      });
      // As for ShopStream: the drain lasts until every consumer is empty (audit and notifications included).
      const quiet = await waitQuiet(nc, 60_000, PEER_STREAMS, []);
      const usage = sampler.stop();
      const after = await streamCounts(jsm);
      const trafficAfter = await connTraffic(peerStack.monitorUrl);
      const completed = Math.max(1, d.completed_total);
      // The driver is gone by now: its CPU is its own rusage count (load and waits), its RSS the sampled peak.
      usage.processes.driver = {
        cpuS: d.driver_cpu_s,
        cpuPctAvg: Math.round((1000 * d.driver_cpu_s) / Math.max(1, usage.seconds)) / 10,
        rssMbMax: Math.round(Math.max(0, ...sampler.samples.map((s) => s.rssMb.driver ?? 0))),
      };
      const cpuS = Object.fromEntries(Object.entries(usage.processes).map(([n, u]) => [n, u.cpuS ?? 0]));
      const split = cpuSplit(cpuS, completed, classifyPeer);
      const nats = natsPerOrderOf(trafficBefore, trafficAfter, completed, new Set<string>(PEER_SERVICES));
      const deltas: Record<string, number> = {};
      for (const [k, v] of Object.entries(after)) deltas[k] = v - (before[k] ?? 0);
      const events = PEER_EVENT_STREAMS.reduce((a, s) => a + (deltas[s] ?? 0), 0);
      const failed = d.http_failed + d.driver_dropped;
      const why = sustainedFailures({
        saturated: false,
        failed,
        shed: 0,
        lost: d.never_completed,
        late: d.lost,
        p99Ms: d.e2e_p99_ms,
        checkerOk: true,
      });
      const result: PeerScenarioResult = {
        name,
        offered_per_s: rate,
        duration_s: d.duration_s,
        sent: d.accepted + failed,
        accepted: d.accepted,
        failed,
        accepted_per_s: d.accepted_per_s,
        completed_orders_per_s: d.completed_per_s,
        completed_incl_drain_per_s: d.completed_incl_drain_per_s,
        drain_s: d.drain_after_load_s,
        late_after_grace: d.lost,
        lost_orders: d.never_completed,
        e2e: { p50_ms: d.e2e_p50_ms, p90_ms: d.e2e_p90_ms, p99_ms: d.e2e_p99_ms, max_ms: d.e2e_max_ms },
        http_p99_ms: d.post_p99_ms,
        processes: usage.processes,
        machine_busy_pct: usage.machineBusyPct,
        load_avg_1m_during: round2(
          sampler.samples.reduce((a, s) => a + s.load1, 0) / Math.max(1, sampler.samples.length),
        ),
        cpu_ms_per_order: Object.fromEntries(
          Object.entries(cpuS).map(([n, c]) => [n, round3((1000 * c) / completed)]),
        ),
        own_cpu_ms_per_order: split.own,
        load_generator_cpu_ms_per_order: split["load generator"],
        nats_msgs_per_order: nats.perConnection,
        nats_msgs_per_order_by_service: nats.byService,
        nats_msgs_per_order_total: nats.total,
        events_per_order: round2(events / Math.max(1, d.accepted)),
        stream_deltas: deltas,
        sustained: why.length === 0,
        not_sustained_because: why,
        log_problems: await peerStack.logProblems(),
        driver: d,
      };
      say(
        `   ${name}: completed ${result.completed_orders_per_s}/s in window (${result.completed_incl_drain_per_s}/s incl. drain), e2e p50 ${result.e2e.p50_ms} ms p99 ${result.e2e.p99_ms} ms max ${result.e2e.max_ms} ms, lost ${result.lost_orders}, late ${result.late_after_grace}, failed ${failed}; ${quiet ? "quiet" : "NOT quiet after 60 s"}; machine ${result.machine_busy_pct}% busy; CPU ms/order services + nats-server ${result.own_cpu_ms_per_order} (driver ${result.load_generator_cpu_ms_per_order}); NATS msgs/order (services, in + out) ${result.nats_msgs_per_order_total}; events/order ${result.events_per_order}${result.sustained ? "; SUSTAINED" : `; not sustained: ${why.join(", ")}`}`,
      );
      say(
        `   per completed order: CPU ms ${Object.entries(result.cpu_ms_per_order)
          .sort((a, b) => b[1] - a[1])
          .map(([n, v]) => `${n} ${v}`)
          .join(", ")}; NATS msgs in + out ${Object.entries(result.nats_msgs_per_order_by_service)
          .map(([n, v]) => `${n} ${v}`)
          .join(", ")}`,
      );
      for (const l of result.log_problems) say(`   peer log: ${l}`);
      return result;
    } finally {
      await nc.close().catch(() => undefined);
    }
  } finally {
    await peerStack.stop();
    currentPeer = undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// report

type Machine = ReturnType<typeof machine> & { go?: string };

function machine() {
  const c = cpus();
  return {
    cpus: c.length,
    cpu_model: c[0]?.model ?? "unknown",
    mem_gb: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    nats_server: spawnSync("nats-server", ["--version"], {
      encoding: "utf8",
      env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin` },
    }).stdout.trim(),
    audit_db: process.env.DATABASE_URL ? "postgresql" : "pglite",
  };
}

function chart(results: ScenarioResult[]): string {
  const rows: ChartPanel[][] = results.map((r) => [
    {
      title: `${r.name}: orders per second`,
      yLabel: "orders/s",
      series: [
        { label: "sent", color: "#999999", points: r.timeline.map((x) => [x.t, x.sent]) },
        { label: "accepted (202)", color: "#1f77b4", points: r.timeline.map((x) => [x.t, x.accepted]) },
        { label: "completed", color: "#2ca02c", points: r.timeline.map((x) => [x.t, x.completed]) },
      ],
    },
    {
      title: `${r.name}: POST → terminal p99 per second`,
      yLabel: "latency (log)",
      log: true,
      series: [
        {
          label: "p99",
          color: "#d62728",
          points: r.timeline.flatMap((x) => (x.p99_ms === null ? [] : [[x.t, x.p99_ms] as [number, number]])),
        },
      ],
    },
  ]);
  return chartSvg(`ShopStream benchmark, ${new Date().toISOString().slice(0, 16)}Z`, rows);
}

function fmt(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  return n >= 1000 ? Math.round(n).toLocaleString("en-US") : String(n);
}

function resultsTable(results: ScenarioResult[]): string {
  const lines = [
    "| scenario | load s | accepted/s | completed/s (load window) | completed/s incl. drain | p50 | p90 | p99 | max | HTTP p99 | lost | late (>10 s) | events/s | % of publish ceiling | publish ceiling msg/s | stack CPU ms/order | machine busy | load avg |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of results) {
    lines.push(
      `| ${r.name} | ${r.duration_s}${r.saturated_at_s !== null ? " (saturated)" : ""} | ${fmt(r.accepted_per_s)} | **${fmt(r.completed_orders_per_s)}** | ${fmt(r.completed_incl_drain_per_s)} | ${fmt(r.e2e.p50_ms)} ms | ${fmt(r.e2e.p90_ms)} ms | ${fmt(r.e2e.p99_ms)} ms | ${fmt(r.e2e.max_ms)} ms | ${fmt(r.http.p99_ms)} ms | ${r.lost_orders} | ${r.late_after_grace} | ${fmt(r.events_per_s)} | ${r.events_to_ceiling_pct}% | ${fmt(r.ceiling.publish_msgs_per_s)} | ${r.stack_cpu_ms_per_order} | ${r.machine_busy_pct}% | ${r.load_avg_1m_during} |`,
    );
  }
  return lines.join("\n");
}

function cpuTable(results: ScenarioResult[]): string {
  const names = [...new Set(results.flatMap((r) => Object.keys(r.processes)))].filter(
    (n) => !n.includes("'"),
  );
  const lines = [`| scenario | ${names.join(" | ")} |`, `|---|${names.map(() => "---").join("|")}|`];
  for (const r of results) {
    lines.push(
      `| ${r.name} | ${names.map((n) => (r.processes[n] ? `${r.processes[n].cpuPctAvg}% / ${r.processes[n].rssMbMax} MB` : "–")).join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

/** Whether an open-loop run is sustained ({@link sustainedFailures}; also for saved runs without the field). */
function isSustained(r: ScenarioResult): boolean {
  if (r.mode !== "open") return false;
  if (r.sustained !== undefined) return r.sustained;
  return (
    sustainedFailures({
      saturated: r.saturated_at_s !== null,
      failed: r.failed,
      shed: r.shed ?? 0,
      lost: r.lost_orders,
      late: r.late_after_grace,
      p99Ms: r.e2e.p99_ms,
      checkerOk: r.checker.ok,
    }).length === 0
  );
}

/** The open-loop rates of the run (not the overload scenario). */
const rateRuns = (results: ScenarioResult[]) =>
  results.filter((r) => r.mode === "open" && (r.role ?? "rate") === "rate");

/** The highest sustained open-loop run, if any. */
function sustainedRun(results: ScenarioResult[]): ScenarioResult | undefined {
  return rateRuns(results)
    .filter(isSustained)
    .sort((a, b) => (b.offered_per_s ?? 0) - (a.offered_per_s ?? 0))[0];
}

/** The peer's highest sustained run, if any. */
function peerSustainedRun(peerResults: PeerScenarioResult[]): PeerScenarioResult | undefined {
  return peerResults.filter((r) => r.sustained).sort((a, b) => b.offered_per_s - a.offered_per_s)[0];
}

/** The headline: the highest sustained open-loop rate; when none is, the open-loop run that completed the most. */
function headline(results: ScenarioResult[]): ScenarioResult | undefined {
  const open = rateRuns(results);
  return (
    sustainedRun(results) ??
    [...open].sort((a, b) => b.completed_orders_per_s - a.completed_orders_per_s)[0] ??
    results[0]
  );
}

/** What `summary` in result.json and docs/benchmarks.json says (see docs/benchmarks.md, "Definitions"). */
export interface BenchSummary {
  date: string;
  machine: {
    cpu_model: string;
    cores: number;
    memory_gib: number;
    node: string;
    nats_server: string;
    go: string | null;
    audit_db: string;
  };
  duration_s: number;
  sustained_definition: string;
  /** Highest open-loop rate sustained, of those run (null: none). */
  sustained_orders_per_s: number | null;
  sustained_p99_ms: number | null;
  peer_sustained_orders_per_s: number | null;
  peer_sustained_p99_ms: number | null;
  /** The peer sustained the highest rate it was run at: its real figure is at least this. */
  peer_sustained_is_lower_bound: boolean;
  /** ShopStream's sustained rate / the peer's. */
  sustained_ratio: number | null;
  /** The offered rate the per-order figures below are taken at: ShopStream's sustained rate (else its lowest). */
  per_order_at_offered_per_s: number | null;
  /** Services + nats-server, load + drain, per completed order. */
  cpu_ms_per_order: number | null;
  cpu_ms_per_order_by_process: Record<string, number>;
  simulators_cpu_ms_per_order: number | null;
  load_generator_cpu_ms_per_order: number | null;
  /** The peer's services + nats-server at the same offered rate. */
  peer_cpu_ms_per_order: number | null;
  peer_cpu_ms_per_order_by_process: Record<string, number>;
  peer_load_generator_cpu_ms_per_order: number | null;
  /** The peer's CPU ms per order at its own sustained rate. */
  peer_cpu_ms_per_order_at_peer_sustained: number | null;
  /** ShopStream's CPU ms per order / the peer's, same offered rate. */
  cpu_ratio: number | null;
  /** The services' client messages in + out per completed order (/connz), in all and per service. */
  nats_msgs_per_order: number | null;
  nats_msgs_per_order_by_service: Record<string, number>;
  peer_nats_msgs_per_order: number | null;
  peer_nats_msgs_per_order_by_service: Record<string, number>;
  nats_msgs_ratio: number | null;
  overload_offered_per_s: number | null;
  overload_accepted_per_s: number | null;
  /** p99 POST → terminal of the accepted orders in the overload scenario. */
  overload_p99_ms: number | null;
  /** Requests shed (HTTP 503 with Retry-After) per second of the overload scenario. */
  overload_shed_per_s: number | null;
  overload_saturated_at_s: number | null;
  overload_lost_orders: number | null;
  /** Lost orders over every ShopStream scenario, and over the peer's runs. */
  lost_orders: number;
  peer_lost_orders: number | null;
  /** Both systems side by side at each offered rate both ran. */
  by_rate: {
    offered_per_s: number;
    sustained: boolean | null;
    peer_sustained: boolean | null;
    p99_ms: number | null;
    peer_p99_ms: number | null;
    cpu_ms_per_order: number | null;
    peer_cpu_ms_per_order: number | null;
    cpu_ratio: number | null;
    nats_msgs_per_order: number | null;
    peer_nats_msgs_per_order: number | null;
  }[];
}

const ratio = (a: number | null | undefined, b: number | null | undefined): number | null =>
  a === null || a === undefined || b === null || b === undefined || b === 0 ? null : round2(a / b);

/** Own-process CPU per order of a saved run without the field: services + nats-server from the per-process figures. */
function ownCpu(r: ScenarioResult): number {
  return (
    r.own_cpu_ms_per_order ??
    round2(
      Object.entries(r.cpu_ms_per_order)
        .filter(([n]) => classifyShopStream(n) === "own")
        .reduce((a, [, v]) => a + v, 0),
    )
  );
}

function natsTotal(r: ScenarioResult): number {
  return (
    r.nats_msgs_per_order_total ??
    round2(
      Object.entries(r.nats_msgs_per_order)
        .filter(([n]) => SERVICES.has(n))
        .reduce((a, [, v]) => a + v.sent + v.received, 0),
    )
  );
}

function summarise(
  results: ScenarioResult[],
  peerResults: PeerScenarioResult[],
  meta: { date: string; machine: Machine; duration_s: number },
): BenchSummary {
  const ours = sustainedRun(results);
  const theirs = peerSustainedRun(peerResults);
  const at =
    ours ?? [...rateRuns(results)].sort((a, b) => (a.offered_per_s ?? 0) - (b.offered_per_s ?? 0))[0];
  const peerAt = at ? peerResults.find((p) => p.offered_per_s === at.offered_per_s) : undefined;
  const overload = results.find((r) => r.role === "overload");
  const m = meta.machine;
  const peerRan = peerResults.length > 0;
  const peerMax = Math.max(0, ...peerResults.map((p) => p.offered_per_s));
  return {
    date: meta.date,
    machine: {
      cpu_model: m.cpu_model,
      cores: m.cpus,
      memory_gib: m.mem_gb,
      node: m.node,
      nats_server: m.nats_server,
      go: m.go ?? null,
      audit_db: m.audit_db,
    },
    duration_s: meta.duration_s,
    sustained_definition: `open loop for the whole duration; every request accepted (none failed or shed); every accepted order terminal no later than ${GRACE_MS / 1000} s after the load (none lost or late); p99 POST -> terminal <= ${SUSTAINED_P99_MS} ms; invariants hold`,
    sustained_orders_per_s: ours?.offered_per_s ?? null,
    sustained_p99_ms: ours?.e2e.p99_ms ?? null,
    peer_sustained_orders_per_s: theirs?.offered_per_s ?? null,
    peer_sustained_p99_ms: theirs?.e2e.p99_ms ?? null,
    peer_sustained_is_lower_bound: theirs !== undefined && theirs.offered_per_s === peerMax,
    sustained_ratio: ratio(ours?.offered_per_s, theirs?.offered_per_s),
    per_order_at_offered_per_s: at?.offered_per_s ?? null,
    cpu_ms_per_order: at ? ownCpu(at) : null,
    cpu_ms_per_order_by_process: at
      ? Object.fromEntries(
          Object.entries(at.cpu_ms_per_order).filter(([n]) => classifyShopStream(n) === "own"),
        )
      : {},
    simulators_cpu_ms_per_order: at?.simulators_cpu_ms_per_order ?? null,
    load_generator_cpu_ms_per_order: at?.load_generator_cpu_ms_per_order ?? null,
    peer_cpu_ms_per_order: peerAt?.own_cpu_ms_per_order ?? null,
    peer_cpu_ms_per_order_by_process: peerAt
      ? Object.fromEntries(Object.entries(peerAt.cpu_ms_per_order).filter(([n]) => classifyPeer(n) === "own"))
      : {},
    peer_load_generator_cpu_ms_per_order: peerAt?.load_generator_cpu_ms_per_order ?? null,
    peer_cpu_ms_per_order_at_peer_sustained: theirs?.own_cpu_ms_per_order ?? null,
    cpu_ratio: ratio(at ? ownCpu(at) : null, peerAt?.own_cpu_ms_per_order),
    nats_msgs_per_order: at ? natsTotal(at) : null,
    nats_msgs_per_order_by_service: at
      ? (at.nats_msgs_per_order_by_service ??
        Object.fromEntries(
          Object.entries(at.nats_msgs_per_order)
            .filter(([n]) => SERVICES.has(n))
            .map(([n, v]) => [n, round2(v.sent + v.received)]),
        ))
      : {},
    peer_nats_msgs_per_order: peerAt?.nats_msgs_per_order_total ?? null,
    peer_nats_msgs_per_order_by_service: peerAt?.nats_msgs_per_order_by_service ?? {},
    nats_msgs_ratio: ratio(at ? natsTotal(at) : null, peerAt?.nats_msgs_per_order_total),
    overload_offered_per_s: overload?.offered_per_s ?? null,
    overload_accepted_per_s: overload?.accepted_per_s ?? null,
    overload_p99_ms: overload?.e2e.p99_ms ?? null,
    overload_shed_per_s: overload ? (overload.shed_per_s ?? 0) : null,
    overload_saturated_at_s: overload?.saturated_at_s ?? null,
    overload_lost_orders: overload?.lost_orders ?? null,
    lost_orders: results.reduce((a, r) => a + r.lost_orders, 0),
    peer_lost_orders: peerRan ? peerResults.reduce((a, r) => a + r.lost_orders, 0) : null,
    by_rate: rateRuns(results).map((r) => {
      const p = peerResults.find((x) => x.offered_per_s === r.offered_per_s);
      return {
        offered_per_s: r.offered_per_s ?? 0,
        sustained: isSustained(r),
        peer_sustained: p ? p.sustained : null,
        p99_ms: r.e2e.p99_ms,
        peer_p99_ms: p?.e2e.p99_ms ?? null,
        cpu_ms_per_order: ownCpu(r),
        peer_cpu_ms_per_order: p?.own_cpu_ms_per_order ?? null,
        cpu_ratio: ratio(ownCpu(r), p?.own_cpu_ms_per_order),
        nats_msgs_per_order: natsTotal(r),
        peer_nats_msgs_per_order: p?.nats_msgs_per_order_total ?? null,
      };
    }),
  };
}

/** The peer's runs as a table. */
function peerTable(peerResults: PeerScenarioResult[]): string {
  const lines = [
    "| peer scenario | accepted/s | completed/s (load window) | completed/s incl. drain | p50 | p99 | max | lost | late (>10 s) | failed | CPU ms/order (services + nats-server; driver) | NATS msgs/order (services, in + out) | events/order | machine busy | sustained |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of peerResults)
    lines.push(
      `| ${r.name} | ${fmt(r.accepted_per_s)} | **${fmt(r.completed_orders_per_s)}** | ${fmt(r.completed_incl_drain_per_s)} | ${fmt(r.e2e.p50_ms)} ms | ${fmt(r.e2e.p99_ms)} ms | ${fmt(r.e2e.max_ms)} ms | ${r.lost_orders} | ${r.late_after_grace} | ${r.failed} | ${r.own_cpu_ms_per_order}; ${r.load_generator_cpu_ms_per_order} | ${r.nats_msgs_per_order_total} | ${r.events_per_order} | ${r.machine_busy_pct}% | ${r.sustained ? "yes" : `no (${r.not_sustained_because.join(", ")})`} |`,
    );
  return lines.join("\n");
}

/** The summary's comparison: sustained rates, per-order figures and overload, ours against the peer's. */
function ratiosTable(s: BenchSummary): string {
  const v = (x: number | null, unit = "") => (x === null ? "–" : `${fmt(x)}${unit}`);
  const lines = [
    "| | ShopStream | peer | ShopStream / peer |",
    "|---|---|---|---|",
    `| sustained orders/s (p99 ≤ ${SUSTAINED_P99_MS / 1000} s, nothing lost or late) | ${v(s.sustained_orders_per_s)} (p99 ${v(s.sustained_p99_ms, " ms")}) | ${v(s.peer_sustained_orders_per_s)}${s.peer_sustained_is_lower_bound ? " or more (its highest rate run)" : ""} (p99 ${v(s.peer_sustained_p99_ms, " ms")}) | **${v(s.sustained_ratio)}** |`,
    `| CPU ms per completed order, services + nats-server, at ${v(s.per_order_at_offered_per_s)}/s offered | ${v(s.cpu_ms_per_order)} | ${v(s.peer_cpu_ms_per_order)} | **${v(s.cpu_ratio)}** |`,
    `| NATS messages per completed order, services' connections in + out | ${v(s.nats_msgs_per_order)} | ${v(s.peer_nats_msgs_per_order)} | ${v(s.nats_msgs_ratio)} |`,
    `| NATS messages per order by service | ${Object.entries(s.nats_msgs_per_order_by_service)
      .map(([n, x]) => `${n} ${x}`)
      .join(", ")} | ${Object.entries(s.peer_nats_msgs_per_order_by_service)
      .map(([n, x]) => `${n} ${x}`)
      .join(", ")} | |`,
    `| reported apart: simulators; load generator (CPU ms/order) | ${v(s.simulators_cpu_ms_per_order)}; ${v(s.load_generator_cpu_ms_per_order)} | –; ${v(s.peer_load_generator_cpu_ms_per_order)} | |`,
    `| overload at ${v(s.overload_offered_per_s)}/s: accepted/s, p99 of accepted, shed/s | ${v(s.overload_accepted_per_s)}, ${v(s.overload_p99_ms, " ms")}, ${v(s.overload_shed_per_s)}${s.overload_saturated_at_s !== null ? ` (saturated at ${s.overload_saturated_at_s} s)` : ""} | | |`,
    `| lost orders, all scenarios | ${s.lost_orders} | ${v(s.peer_lost_orders)} | |`,
  ];
  const both = s.by_rate.filter((r) => r.peer_sustained !== null);
  if (both.length > 0) {
    lines.push(
      "",
      "| offered/s | p99 ShopStream | p99 peer | CPU ms/order ShopStream | CPU ms/order peer | CPU ratio | NATS msgs/order ShopStream | NATS msgs/order peer | sustained (ShopStream / peer) |",
      "|---|---|---|---|---|---|---|---|---|",
      ...both.map(
        (r) =>
          `| ${fmt(r.offered_per_s)} | ${v(r.p99_ms, " ms")} | ${v(r.peer_p99_ms, " ms")} | ${v(r.cpu_ms_per_order)} | ${v(r.peer_cpu_ms_per_order)} | ${v(r.cpu_ratio)} | ${v(r.nats_msgs_per_order)} | ${v(r.peer_nats_msgs_per_order)} | ${r.sustained ? "yes" : "no"} / ${r.peer_sustained ? "yes" : "no"} |`,
      ),
    );
  }
  return lines.join("\n");
}

async function updateDocsFiles(
  stamp: string,
  results: ScenarioResult[],
  meta: Record<string, unknown>,
  peerResults: PeerScenarioResult[] = [],
): Promise<void> {
  const h = headline(results);
  if (!h) return;
  const at1000 = results.find((r) => r.offered_per_s === 1000);
  const m = meta["machine"] as Machine;
  const runDurationS = Number(meta["duration_s"] ?? durationS);
  const summary = summarise(results, peerResults, {
    date: String(meta["date"]),
    machine: m,
    duration_s: runDurationS,
  });
  const maxRss = Math.max(
    0,
    ...results.flatMap((r) =>
      Object.entries(r.processes)
        .filter(
          ([n]) => !["nats-server", "stack-front", "stack-supervisor"].includes(n) && !n.startsWith("bench"),
        )
        .map(([, u]) => u.rssMbMax),
    ),
  );
  const json = {
    date: meta["date"],
    summary,
    machine: `${m.cpus} cores (${m.cpu_model}), ${m.mem_gb} GiB, Node ${m.node}, ${m.nats_server}, audit ${m.audit_db}`,
    load_avg_1m_at_start: meta["load_avg_at_start"],
    report: `reports/bench/${stamp}/`,
    headline_scenario: h.name,
    completed_orders_per_s: h.completed_orders_per_s,
    p50_ms: h.e2e.p50_ms,
    p99_ms: h.e2e.p99_ms,
    lost_orders: results.reduce((a, r) => a + r.lost_orders, 0),
    events_per_s: h.events_per_s,
    ceiling_publish_msgs_per_s: h.ceiling.publish_msgs_per_s,
    events_to_ceiling_pct: h.events_to_ceiling_pct,
    p99_ms_at_1000_per_s: at1000?.e2e.p99_ms ?? null,
    max_service_rss_mb: maxRss,
    times_design_claim: Math.round((h.completed_orders_per_s / DESIGN_ORDERS_PER_S) * 10) / 10,
    duration_s: durationS,
    scenarios: results.map((r) => ({
      name: r.name,
      offered_per_s: r.offered_per_s,
      concurrency: r.concurrency,
      accepted_per_s: r.accepted_per_s,
      completed_orders_per_s: r.completed_orders_per_s,
      completed_incl_drain_per_s: r.completed_incl_drain_per_s,
      p50_ms: r.e2e.p50_ms,
      p90_ms: r.e2e.p90_ms,
      p99_ms: r.e2e.p99_ms,
      max_ms: r.e2e.max_ms,
      http_p99_ms: r.http.p99_ms,
      lost_orders: r.lost_orders,
      late_after_grace: r.late_after_grace,
      duration_s: r.duration_s,
      saturated_at_s: r.saturated_at_s,
      stack_cpu_ms_per_order: r.stack_cpu_ms_per_order,
      cpu_ms_per_order: r.cpu_ms_per_order,
      nats_msgs_per_order: r.nats_msgs_per_order,
      events_per_s: r.events_per_s,
      bus_msgs_per_s: r.bus_msgs_per_s,
      ceiling_publish_msgs_per_s: r.ceiling.publish_msgs_per_s,
      ceiling_sync_publish_msgs_per_s: r.ceiling.sync_publish_msgs_per_s,
      ceiling_consume_ack_msgs_per_s: r.ceiling.consume_ack_msgs_per_s,
      events_to_ceiling_pct: r.events_to_ceiling_pct,
      machine_busy_pct: r.machine_busy_pct,
      load_avg_1m_during: r.load_avg_1m_during,
      cpu_pct: Object.fromEntries(Object.entries(r.processes).map(([n, u]) => [n, u.cpuPctAvg])),
      rss_mb: Object.fromEntries(Object.entries(r.processes).map(([n, u]) => [n, u.rssMbMax])),
      checker_ok: r.checker.ok,
      role: r.role ?? (r.mode === "open" ? "rate" : "closed"),
      sustained: r.mode === "open" ? isSustained(r) : null,
      shed_per_s: r.shed_per_s ?? 0,
      own_cpu_ms_per_order: ownCpu(r),
      nats_msgs_per_order_total: natsTotal(r),
    })),
    peer_scenarios: peerResults.map((r) => ({
      name: r.name,
      offered_per_s: r.offered_per_s,
      accepted_per_s: r.accepted_per_s,
      completed_orders_per_s: r.completed_orders_per_s,
      completed_incl_drain_per_s: r.completed_incl_drain_per_s,
      p50_ms: r.e2e.p50_ms,
      p99_ms: r.e2e.p99_ms,
      max_ms: r.e2e.max_ms,
      lost_orders: r.lost_orders,
      late_after_grace: r.late_after_grace,
      failed: r.failed,
      sustained: r.sustained,
      own_cpu_ms_per_order: r.own_cpu_ms_per_order,
      cpu_ms_per_order: r.cpu_ms_per_order,
      nats_msgs_per_order_total: r.nats_msgs_per_order_total,
      nats_msgs_per_order_by_service: r.nats_msgs_per_order_by_service,
      events_per_order: r.events_per_order,
      machine_busy_pct: r.machine_busy_pct,
      cpu_pct: Object.fromEntries(Object.entries(r.processes).map(([n, u]) => [n, u.cpuPctAvg])),
      rss_mb: Object.fromEntries(Object.entries(r.processes).map(([n, u]) => [n, u.rssMbMax])),
    })),
  };
  await writeFile(join(ROOT, "docs/benchmarks.json"), JSON.stringify(json, null, 2) + "\n");

  const section = [
    "<!-- bench:results:start (written by `npm run bench`; edit outside these markers) -->",
    `### Latest run: ${String(meta["date"])} (${runDurationS} s per scenario)`,
    "",
    `Machine: ${json.machine}. Load average (1 / 5 / 15 min) at start: ${(meta["load_avg_at_start"] as number[]).join(" / ")}; 1-min average during each scenario: ${results.map((r) => `${r.name} ${r.load_avg_1m_during}`).join(", ")}. Raw data and chart: \`reports/bench/${stamp}/\` (not committed).`,
    "",
    resultsTable(results),
    "",
    "CPU (% of one core, averaged over the load window) and peak RSS per process:",
    "",
    cpuTable(results),
    "",
    `Headline (${h.name}${isSustained(h) ? ", the highest rate sustained" : ", no rate sustained"}): **${fmt(h.completed_orders_per_s)} completed orders/s**, p50 ${fmt(Math.round(h.e2e.p50_ms))} ms, p99 ${fmt(Math.round(h.e2e.p99_ms))} ms, ${json.lost_orders} lost; ${fmt(h.events_per_s)} events/s = ${h.events_to_ceiling_pct}% of the ${fmt(h.ceiling.publish_msgs_per_s)} msg/s publish ceiling measured on the same server; ${json.times_design_claim}× the original design's 167 orders/s.`,
    "",
    peerResults.length > 0
      ? "Against the Go peer, run at the same offered rates in the same session (definitions above):"
      : "Summary (definitions above; the Go peer was not run: `--peer`):",
    "",
    ratiosTable(summary),
    ...(peerResults.length > 0 ? ["", "The peer's runs:", "", peerTable(peerResults)] : []),
    "<!-- bench:results:end -->",
  ].join("\n");
  const mdPath = join(ROOT, "docs/benchmarks.md");
  let md = await readFile(mdPath, "utf8").catch(() => "# Benchmarks\n\n## Results\n\n");
  const re = /<!-- bench:results:start[\s\S]*?<!-- bench:results:end -->/;
  md = re.test(md) ? md.replace(re, section) : `${md.trimEnd()}\n\n${section}\n`;
  await writeFile(mdPath, md);
  // Keep `npm run lint` (prettier --check) green: format what was generated.
  spawnSync(
    join(ROOT, "node_modules/.bin/prettier"),
    ["--write", mdPath, join(ROOT, "docs/benchmarks.json")],
    {
      stdio: "ignore",
    },
  );
}

async function main(): Promise<number> {
  // --from=reports/bench/<stamp>/result.json: rewrite docs/benchmarks.{md,json} from a saved run, without running.
  const from = flag("from");
  if (from) {
    const saved = JSON.parse(await readFile(from, "utf8")) as Record<string, unknown> & {
      results: ScenarioResult[];
      peer_results?: PeerScenarioResult[];
    };
    const savedStamp = from.split("/").slice(-2, -1)[0] ?? "saved";
    await updateDocsFiles(savedStamp, saved.results, saved, saved.peer_results ?? []);
    say(`docs/benchmarks.md and docs/benchmarks.json rewritten from ${from}`);
    return 0;
  }
  const date = new Date().toISOString();
  const stamp = `${date.replace(/[:.]/g, "-").slice(0, 19)}${label ? `-${label}` : ""}`;
  const reportDir = join(ROOT, "reports", "bench", stamp);
  await mkdir(reportDir, { recursive: true });
  const loadAtStart = loadavg().map((x) => Math.round(x * 100) / 100);
  say(
    `bench: ${durationS} s per scenario; open loop at ${rates.join(", ")} orders/s${concurrency > 0 ? `; closed loop c=${concurrency}` : ""}; load average ${loadAtStart.join(" ")}; report ${reportDir}`,
  );
  ensureBuilt(say);
  // The Go peer: built once (into reports/peer-bin, never into its own folder); without Go, ShopStream runs alone.
  let peerBin: string | undefined;
  let goVersion: string | undefined;
  if (peer) {
    const built = buildPeer(ROOT, join(ROOT, "reports", "peer-bin"));
    if (built.ok) {
      peerBin = built.bin;
      goVersion = built.go;
      say(`the Go peer: built ${built.bin} (${built.go}); open loop at ${peerRates.join(", ")} orders/s`);
    } else say(`the Go peer cannot run, so ShopStream runs alone: ${built.reason}`);
  }
  const open = (r: number, name = `open-${r}`) => ({
    name,
    mode: { kind: "open" as const, ratePerSec: r, durationMs: durationS * 1000 },
  });
  const results: ScenarioResult[] = [];
  const peerResults: PeerScenarioResult[] = [];
  // Ctrl-C / SIGTERM: stop the running stack and peer (gracefully, by their pids) before exiting.
  let stopping = false;
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    process.on(sig, () => {
      if (stopping) process.exit(130);
      stopping = true;
      say(`\n${sig}: stopping the stack ...`);
      void Promise.allSettled([currentStack?.stop(), currentPeer?.stop()]).finally(() => process.exit(130));
    });
  // Each rate: ShopStream, then the peer at the same rate, so both meet the same machine; then the peer's own
  // extra rates, the closed loop, and the overload scenario at 2 × the sustained rate found.
  // A failed peer run is reported and recorded, but does not throw away ShopStream's measurements.
  const peerErrors: { rate: number; error: string }[] = [];
  const runPeer = async (bin: string, r: number) => {
    try {
      peerResults.push(await runPeerScenario(bin, r, reportDir));
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      peerErrors.push({ rate: r, error });
      say(`   peer-open-${r} FAILED: ${error}`);
    }
  };
  for (const r of rates) {
    const s = open(r);
    results.push(await runScenario(s.name, s.mode, reportDir, "rate"));
    if (peerBin && peerRates.includes(r)) await runPeer(peerBin, r);
  }
  if (peerBin) for (const r of peerRates.filter((x) => !rates.includes(x))) await runPeer(peerBin, r);
  if (concurrency > 0)
    results.push(
      await runScenario(
        `closed-c${concurrency}`,
        { kind: "closed", concurrency, durationMs: durationS * 1000 },
        reportDir,
        "closed",
      ),
    );
  const sustainedRate = sustainedRun(results)?.offered_per_s ?? undefined;
  const overload = overloadRate ?? (sustainedRate !== undefined ? 2 * sustainedRate : 0);
  if (overload > 0) {
    const s = open(overload, `overload-${overload}`);
    say(
      `\n== overload: ${overload} orders/s (${overloadRate !== undefined ? "--overload" : `2 × the sustained ${sustainedRate}/s`})`,
    );
    results.push(await runScenario(s.name, s.mode, reportDir, "overload"));
  } else if (overloadRate === undefined)
    say(`\nno open-loop rate was sustained: no overload scenario (set one with --overload=R)`);
  const m: Machine = { ...machine(), ...(goVersion ? { go: goVersion } : {}) };
  const meta = {
    date,
    system_root: SYSTEM_ROOT,
    replicas: flag("replicas") ?? process.env.BENCH_REPLICAS ?? "",
    machine: m,
    load_avg_at_start: loadAtStart,
    load_avg_at_end: loadavg().map((x) => Math.round(x * 100) / 100),
    duration_s: durationS,
    env: pickEnv(),
  };
  const summary = summarise(results, peerResults, { date, machine: m, duration_s: durationS });
  await writeFile(
    join(reportDir, "result.json"),
    JSON.stringify(
      { ...meta, summary, results, peer_results: peerResults, peer_errors: peerErrors },
      null,
      1,
    ) + "\n",
  );
  await writeFile(join(reportDir, "chart.svg"), chart(results));
  const md = [
    `# ShopStream benchmark ${date}`,
    "",
    resultsTable(results),
    "",
    cpuTable(results),
    "",
    ratiosTable(summary),
    "",
    ...(peerResults.length > 0 ? [peerTable(peerResults), ""] : []),
    ...peerErrors.map((e) => `The peer's run at ${e.rate}/s failed: ${e.error}\n`),
  ].join("\n");
  await writeFile(join(reportDir, "summary.md"), md);
  say(`\n${md}`);
  if (updateDocs) {
    await updateDocsFiles(stamp, results, meta, peerResults);
    say("docs/benchmarks.md and docs/benchmarks.json updated");
  }
  const lost = results.reduce((a, r) => a + r.lost_orders, 0);
  const bad = results.filter((r) => !r.checker.ok);
  say(`report: ${reportDir} (result.json, chart.svg, summary.md)`);
  if (lost > 0 || bad.length > 0) {
    say(
      `FAILED: ${lost} lost orders; invariants violated in ${bad.map((r) => r.name).join(", ") || "no scenario"}`,
    );
    return 1;
  }
  say("all scenarios: zero lost orders, all invariants hold");
  return 0;
}

/** Settings of the run worth recording. */
function pickEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(process.env).filter(([k]) =>
      /^(CONSUMER_|AUDIT_|LOG_LEVEL|MAX_ATTEMPTS|ORDER_TIMEOUT|BENCH_|DATABASE_POOL)/.test(k),
    ) as [string, string][],
  );
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(2);
  },
);
