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
 * (docs/benchmarks.{md,json} are updated by full runs, not by --quick unless asked), --label=NAME.
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
import { checkInvariants, formatReport, type CheckReport } from "../src/checker/checker.js";
import { measureCeiling, type Ceiling } from "./ceiling.js";
import { chartSvg, type ChartPanel } from "./chart.js";
import { formatSummaries, summariseDir, type ProfileSummary } from "./profile.js";
import { Sampler, connTraffic, streamCounts, type ProcessUsage, type Sample } from "./sampler.js";
import { ROOT, SYSTEM_ROOT, ensureBuilt, startStack, type Stack } from "./stack.js";
import type { ProcessName } from "../src/lib/ports.js";

const EVENT_STREAMS = ["ORDERS", "INVENTORY", "PAYMENTS", "NOTIFICATIONS"];
const CONSUMER_STREAMS = [...EVENT_STREAMS, "DLQ"];
/** Consumers whose ack-pending backlog is a timer, not work. */
const TIMER_CONSUMERS = ["ORDERS/orders-timeouts"];
/** The original design's claim: 10,000 orders/minute. */
const DESIGN_ORDERS_PER_S = 10_000 / 60;
/** An accepted order without a terminal event this long after the load is counted late (as the peer does). */
const GRACE_MS = 10_000;

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
const updateDocs = flag("no-docs") !== undefined ? false : flag("update-docs") !== undefined || !quick;
const label = flag("label") ?? process.env.BENCH_LABEL ?? "";
const drainTimeoutMs = Number(process.env.BENCH_DRAIN_TIMEOUT_S ?? 300) * 1000;
/**
 * A scenario stops sending once this many accepted orders are still open (no terminal event yet): the system is
 * saturated, and a backlog that large would take longer to drain than the run itself. Recorded as `saturated_at_s`.
 */
const maxOpen = Number(process.env.BENCH_MAX_OPEN ?? 5_000);
if (!(durationS > 0) || rates.some((r) => !Number.isFinite(r)) || !(concurrency >= 0)) {
  process.stderr.write("bench: invalid --duration, --rates or --concurrency\n");
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
  offered_per_s: number | null;
  concurrency: number | null;
  duration_s: number;
  /** When the load was stopped because too many orders were open (the system could not keep up), else null. */
  saturated_at_s: number | null;
  sent: number;
  accepted: number;
  failed: number;
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
  cpu_ms_per_order: Record<string, number>;
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

async function waitQuiet(nc: NatsConnection, timeoutMs: number): Promise<boolean> {
  const jsm = await jetstreamManager(nc);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    let busy = 0;
    for (const stream of CONSUMER_STREAMS) {
      for await (const c of jsm.consumers.list(stream)) {
        if (TIMER_CONSUMERS.includes(`${stream}/${c.name}`)) {
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

async function runScenario(name: string, mode: LoadMode, reportDir: string): Promise<ScenarioResult> {
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
    say(`   up: ${[...pidNames.values()].join(", ")} (data ${stack.dataDir})`);
    const ceiling = await measureCeiling(stack.natsUrl);
    say(
      `   JetStream ceiling: publish ${ceiling.publish_msgs_per_s} msg/s (window ${ceiling.window}), one-at-a-time ${ceiling.sync_publish_msgs_per_s} msg/s, consume+ack ${ceiling.consume_ack_msgs_per_s} msg/s (${ceiling.message_bytes} B)`,
    );
    const nc = await connect({ servers: stack.natsUrl, name: "bench" });
    const jsm = await jetstreamManager(nc);
    const tracker = new TerminalTracker(nc);
    await tracker.start();
    const ordersUrl = stack.urls.orders;

    // Warm-up: JIT, connections, buckets. Its orders are checked too.
    const warm = await runLoad({ ordersUrl, mode: { kind: "open", ratePerSec: 100, durationMs: 2_000 } });
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
      signal: abort.signal,
      maxSockets: mode.kind === "closed" ? mode.concurrency : 512,
      onTick: (s) => {
        const done = tracker.terminals.size - warmIds.length;
        progress(name, s.elapsedMs / 1000, durationS, s, done);
        // Open = sent and not failed, minus terminal: an order still waiting for its HTTP answer is open too.
        if (s.sent - s.failed - done > maxOpen && !abort.signal.aborted) {
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
    const quiet = await waitQuiet(nc, Math.max(60_000, drainTimeoutMs - (Date.now() - loadEnd)));
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
    const natsPerOrder: Record<string, { sent: number; received: number }> = {};
    for (const [n, t] of Object.entries(trafficAfter)) {
      const b = trafficBefore[n] ?? { in_msgs: 0, out_msgs: 0, in_bytes: 0, out_bytes: 0 };
      natsPerOrder[n] = {
        sent: Math.round(((t.in_msgs - b.in_msgs) / completedAll) * 100) / 100,
        received: Math.round(((t.out_msgs - b.out_msgs) / completedAll) * 100) / 100,
      };
    }

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
      nc,
      inventoryUrl: stack.urls.inventory,
      auditUrl: stack.urls.audit,
      gatewayUrl: stack.urls["payment-gateway"],
      mailUrl: stack.urls["mail-provider"],
      acceptedOrderIds: [...warmIds, ...ids],
      timerConsumers: ["orders-timeouts"],
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

    const sent = records.length;
    const result: ScenarioResult = {
      name,
      mode: mode.kind,
      offered_per_s: mode.kind === "open" ? mode.ratePerSec : null,
      concurrency: mode.kind === "closed" ? mode.concurrency : null,
      duration_s: Math.round(loadSecs * 10) / 10,
      saturated_at_s: saturatedAt,
      sent,
      accepted: accepted.length,
      failed: sent - accepted.length,
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
      nats_msgs_per_order: natsPerOrder,
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
    say(
      `   ${name}: completed ${result.completed_orders_per_s}/s in window (${result.completed_incl_drain_per_s}/s incl. drain), e2e p50 ${result.e2e.p50_ms} ms p99 ${result.e2e.p99_ms} ms max ${result.e2e.max_ms} ms, lost ${result.lost_orders}, late ${late}, events ${result.events_per_s}/s (${result.events_to_ceiling_pct}% of ceiling), machine ${result.machine_busy_pct}% busy, stack CPU ${result.stack_cpu_ms_per_order} ms/order`,
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
// report

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

/** The headline: the highest open-loop rate sustained (≥ 97 % completed in the window, nothing lost). */
function headline(results: ScenarioResult[]): ScenarioResult | undefined {
  const open = results.filter((r) => r.mode === "open");
  const sustained = open.filter(
    (r) =>
      r.saturated_at_s === null &&
      r.lost_orders === 0 &&
      r.completed_orders_per_s >= 0.97 * (r.offered_per_s ?? 0),
  );
  const pool = sustained.length > 0 ? sustained : open;
  return [...pool].sort((a, b) => b.completed_orders_per_s - a.completed_orders_per_s)[0] ?? results[0];
}

async function updateDocsFiles(
  stamp: string,
  results: ScenarioResult[],
  meta: Record<string, unknown>,
): Promise<void> {
  const h = headline(results);
  if (!h) return;
  const at1000 = results.find((r) => r.offered_per_s === 1000);
  const m = meta["machine"] as ReturnType<typeof machine>;
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
    })),
  };
  await writeFile(join(ROOT, "docs/benchmarks.json"), JSON.stringify(json, null, 2) + "\n");

  const section = [
    "<!-- bench:results:start (written by `npm run bench`; edit outside these markers) -->",
    `### Latest run: ${String(meta["date"])} (${durationS} s per scenario)`,
    "",
    `Machine: ${json.machine}. Load average (1 / 5 / 15 min) at start: ${(meta["load_avg_at_start"] as number[]).join(" / ")}; 1-min average during each scenario: ${results.map((r) => `${r.name} ${r.load_avg_1m_during}`).join(", ")}. Raw data and chart: \`reports/bench/${stamp}/\` (not committed).`,
    "",
    resultsTable(results),
    "",
    "CPU (% of one core, averaged over the load window) and peak RSS per process:",
    "",
    cpuTable(results),
    "",
    `Headline (${h.name}): **${fmt(h.completed_orders_per_s)} completed orders/s**, p50 ${fmt(Math.round(h.e2e.p50_ms))} ms, p99 ${fmt(Math.round(h.e2e.p99_ms))} ms, ${json.lost_orders} lost; ${fmt(h.events_per_s)} events/s = ${h.events_to_ceiling_pct}% of the ${fmt(h.ceiling.publish_msgs_per_s)} msg/s publish ceiling measured on the same server; ${json.times_design_claim}× the original design's 167 orders/s.`,
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
    };
    const savedStamp = from.split("/").slice(-2, -1)[0] ?? "saved";
    await updateDocsFiles(savedStamp, saved.results, saved);
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
  const scenarios: { name: string; mode: LoadMode }[] = [
    ...rates.map((r) => ({
      name: `open-${r}`,
      mode: { kind: "open" as const, ratePerSec: r, durationMs: durationS * 1000 },
    })),
    ...(concurrency > 0
      ? [
          {
            name: `closed-c${concurrency}`,
            mode: { kind: "closed", concurrency, durationMs: durationS * 1000 } as LoadMode,
          },
        ]
      : []),
  ];
  const results: ScenarioResult[] = [];
  // Ctrl-C / SIGTERM: stop the running stack (gracefully, by its pid) before exiting.
  let stopping = false;
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    process.on(sig, () => {
      if (stopping) process.exit(130);
      stopping = true;
      say(`\n${sig}: stopping the stack ...`);
      void (currentStack?.stop() ?? Promise.resolve()).finally(() => process.exit(130));
    });
  for (const s of scenarios) results.push(await runScenario(s.name, s.mode, reportDir));
  const meta = {
    date,
    system_root: SYSTEM_ROOT,
    replicas: flag("replicas") ?? process.env.BENCH_REPLICAS ?? "",
    machine: machine(),
    load_avg_at_start: loadAtStart,
    load_avg_at_end: loadavg().map((x) => Math.round(x * 100) / 100),
    duration_s: durationS,
    env: pickEnv(),
  };
  await writeFile(join(reportDir, "result.json"), JSON.stringify({ ...meta, results }, null, 1) + "\n");
  await writeFile(join(reportDir, "chart.svg"), chart(results));
  const md = [`# ShopStream benchmark ${date}`, "", resultsTable(results), "", cpuTable(results), ""].join(
    "\n",
  );
  await writeFile(join(reportDir, "summary.md"), md);
  say(`\n${md}`);
  if (updateDocs) {
    await updateDocsFiles(stamp, results, meta);
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
