/**
 * Runs chaos scenarios: starts the system, drives the load, lets each scenario inject and heal its fault, waits
 * until the system is quiet, reconciles every accepted order of each scenario and runs the invariant checker.
 *
 * A run is a list of phases; a phase is one system (started fresh) and the scenarios run on it back to back.
 * The full run gives every scenario a phase of its own, so its measurements are its own. The CI subset shares one
 * single-node system between the single-node scenarios (and one cluster for the cluster scenario), saving the
 * start-ups and the quiet waits; each scenario is still reconciled on its own orders.
 */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import pg from "pg";
import type { ChaosOrder } from "./load.js";
import { OrdersBalancer, runOpenLoad } from "./load.js";
import { OrderWatch, waitQuiet, type QuietResult } from "./quiet.js";
import {
  PROBLEM_COUNTS,
  gatherFacts,
  reconcile,
  timing,
  type Reconciliation,
  type SystemFacts,
  type Timing,
} from "./reconcile.js";
import type { FaultContext, Scale, Scenario, ScenarioCheck } from "./scenario.js";
import { ACK_WAIT_MS } from "./scenarios.js";
import { ChaosSystem, type Crash, SERVICES } from "./system.js";

/** Options of {@link runChaos}. */
export interface RunOptions {
  scenarios: Scenario[];
  scale: Scale;
  /** One system for all single-node scenarios (the CI subset) instead of one per scenario. */
  shared: boolean;
  /** Where logs go (`<dir>/logs/<phase>/`). */
  reportDir: string;
  /** Where the systems keep their data (removed afterwards unless `keepData`). */
  dataDir: string;
  keepData?: boolean;
  /** PostgreSQL for the audit log (a fresh schema per phase, dropped afterwards); PGlite when absent. */
  databaseUrl?: string | undefined;
  /** Overrides every scenario's offered rate (orders/s). */
  rate?: number;
  /** Order timeout of the orders service (ORDER_TIMEOUT_MS; default 60 s). */
  orderTimeoutMs?: number;
  /** `LOG_LEVEL` of the processes (default warn). */
  logLevel?: string;
  /** How long a process may take to become ready (default 60 s; more on a machine shared with other work). */
  readyTimeoutMs?: number;
  /**
   * NATS authentication, one user per service, provisioning as admin (default true; {@link natsAuthFromChaosEnv}
   * reads `CHAOS_NATS_AUTH=false`); see ChaosSystemOptions.natsAuth.
   */
  natsAuth?: boolean;
  log: (msg: string) => void;
}

/** `CHAOS_NATS_AUTH`: authentication unless it says false (or 0/no/off), for a comparison run without it. */
export function natsAuthFromChaosEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = (env["CHAOS_NATS_AUTH"] ?? "").trim().toLowerCase();
  return !["false", "0", "no", "off"].includes(v);
}

/** The reconciliation's counts that a scenario's result carries (see {@link Reconciliation}). */
type ReconciledCounts = Pick<
  Reconciliation,
  | "orders"
  | "ok"
  | "lost"
  | "stuck"
  | "double_charged"
  | "oversold"
  | "audit_missing"
  | "duplicate_emails"
  | "sent"
  | "not_accepted"
  | "confirmed"
  | "cancelled"
>;

/** The result of one scenario: the reconciliation's counts, the timing, and what happened. */
export interface ScenarioResult extends ReconciledCounts {
  scenario: string;
  p50_ms: number | null;
  p99_ms: number | null;
  recovery_s: number | null;
  invariants_ok: boolean;
  /** Checks particular to the scenario (poison) all passed. */
  checks_ok: boolean;
  /** Processes that exited on their own during the scenario (each was restarted). */
  crashes: number;
  /** Everything above is as it must be. */
  passed: boolean;
  summary: string;
  system: string;
  rate: number;
  fault_window_s: number | null;
  fault_orders: number;
  baseline_p50_ms: number | null;
  baseline_p99_ms: number | null;
  quiet: { quiet: boolean; waited_s: number; open: number; backlogs: string[] };
  timeline: { t_s: number; what: string }[];
  /** Per second of load: sent, accepted, p50 of POST → 202 and of POST → terminal. */
  series: Timing["series"];
  checks: ScenarioCheck[];
  violations: string[];
  examples: Record<string, string[]>;
  crash_details: Crash[];
  /** Processes that exited while starting (NATS not answering yet) and were started again, as Kubernetes would. */
  startup_restarts: Crash[];
  extra: Record<string, unknown>;
  error?: string;
}

/** A whole run. */
export interface RunReport {
  started: string;
  finished: string;
  duration_s: number;
  scale: Scale;
  shared: boolean;
  audit_store: "PostgreSQL" | "PGlite";
  /** Whether NATS ran with authentication (absent in reports recorded before it existed: without). */
  nats_auth?: boolean;
  results: ScenarioResult[];
  passed: boolean;
}

/** What one scenario left for the reconciliation. */
interface ScenarioRun {
  scenario: Scenario;
  rate: number;
  system: string;
  orders: ChaosOrder[];
  t0: number;
  faultStart?: number;
  healedAt?: number;
  timeline: { at: number; what: string }[];
  extra: Record<string, unknown>;
  verify: ((facts: SystemFacts) => Promise<ScenarioCheck[]>)[];
  crashes: Crash[];
  startupRestarts: Crash[];
  error?: string;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Runs the scenarios (see the module comment) and returns the report; it never throws for a failed scenario. */
export async function runChaos(o: RunOptions): Promise<RunReport> {
  const started = new Date();
  const stamp = started.toISOString().replace(/[-:]/g, "").replace(/\..*$/, "").toLowerCase();
  const phases: Scenario[][] = [];
  if (o.shared) {
    const single = o.scenarios.filter((s) => !s.cluster);
    if (single.length > 0) phases.push(single);
    for (const s of o.scenarios.filter((x) => x.cluster)) phases.push([s]);
  } else {
    for (const s of o.scenarios) phases.push([s]);
  }
  const results: ScenarioResult[] = [];
  for (const [p, scenarios] of phases.entries()) {
    const name = o.shared ? `phase${p + 1}` : scenarios[0]!.name;
    results.push(...(await runPhase(o, name, `chaos_${stamp}_${p + 1}`, scenarios)));
  }
  // Report in the order asked for.
  results.sort(
    (a, b) =>
      o.scenarios.findIndex((s) => s.name === a.scenario) -
      o.scenarios.findIndex((s) => s.name === b.scenario),
  );
  const finished = new Date();
  return {
    started: started.toISOString(),
    finished: finished.toISOString(),
    duration_s: Math.round((finished.getTime() - started.getTime()) / 1000),
    scale: o.scale,
    shared: o.shared,
    audit_store: o.databaseUrl ? "PostgreSQL" : "PGlite",
    nats_auth: o.natsAuth ?? true,
    results,
    passed: results.every((r) => r.passed),
  };
}

async function runPhase(
  o: RunOptions,
  name: string,
  schema: string,
  scenarios: Scenario[],
): Promise<ScenarioResult[]> {
  const log = (msg: string) => o.log(`[${name}] ${msg}`);
  const sys = new ChaosSystem({
    dataDir: join(o.dataDir, name),
    logDir: join(o.reportDir, "logs", name),
    cluster: scenarios[0]!.cluster ?? false,
    databaseUrl: o.databaseUrl,
    auditSchema: o.databaseUrl ? schema : undefined,
    scarceStock: o.scale === "ci" ? 40 : 400,
    env: { ORDER_TIMEOUT_MS: String(o.orderTimeoutMs ?? 60_000) },
    logLevel: o.logLevel ?? "warn",
    ...(o.readyTimeoutMs ? { readyTimeoutMs: o.readyTimeoutMs } : {}),
    natsAuth: o.natsAuth ?? true,
    log,
  });
  const runs: ScenarioRun[] = [];
  const failAll = (err: unknown): ScenarioResult[] =>
    scenarios.map((s) =>
      failed(s, sys, `system failure: ${err instanceof Error ? err.message : String(err)}`),
    );
  let watch: OrderWatch | undefined;
  let balancer: OrdersBalancer | undefined;
  try {
    try {
      await sys.start();
      watch = new OrderWatch(await sys.connection());
      await watch.start();
      balancer = new OrdersBalancer(
        () => sys.ordersUrls(),
        (customerId) => sys.tokens.token(customerId),
      );
      balancer.start();
    } catch (err) {
      return failAll(err);
    }
    for (const s of scenarios) runs.push(await runScenario(o, sys, balancer, s, log));

    const accepted = runs.flatMap((r) =>
      r.orders.filter((x) => x.status === 202 && x.orderId).map((x) => x.orderId!),
    );
    log(`waiting for quiet (${accepted.length} accepted orders)`);
    const quietTimeout = (o.orderTimeoutMs ?? 60_000) + ACK_WAIT_MS + (o.scale === "ci" ? 30_000 : 60_000);
    const crashesBeforeQuiet = sys.crashes.length;
    const quiet = await waitQuiet(
      watch,
      () => sys.jsm(),
      accepted,
      quietTimeout,
      log,
      sys.url("audit"),
      (await sys.tokens.operator()).authorization,
    );
    // A process that dies while the backlog drains counts against the last scenario.
    runs[runs.length - 1]?.crashes.push(...sys.crashes.slice(crashesBeforeQuiet));
    log(
      quiet.quiet
        ? `quiet after ${(quiet.waitedMs / 1000).toFixed(1)} s`
        : `NOT quiet after ${(quiet.waitedMs / 1000).toFixed(1)} s`,
    );

    let facts: SystemFacts;
    try {
      facts = await gatherFacts(
        {
          nc: await sys.operatorConnection(),
          inventoryUrl: sys.url("inventory"),
          auditUrl: sys.url("audit"),
          gatewayUrl: sys.url("payment-gateway"),
          mailUrl: sys.url("mail-provider"),
          authorization: (await sys.tokens.operator()).authorization,
        },
        accepted,
      );
    } catch (err) {
      return failAll(err);
    }
    const owner = new Map<string, string>();
    for (const r of runs) for (const x of r.orders) if (x.orderId) owner.set(x.orderId, r.scenario.name);
    const results: ScenarioResult[] = [];
    for (const r of runs) {
      const checks: ScenarioCheck[] = [];
      for (const v of r.verify) {
        try {
          checks.push(...(await v(facts)));
        } catch (err) {
          checks.push({ name: "scenario check", ok: false, detail: `could not run: ${String(err)}` });
        }
      }
      results.push(
        result(
          r,
          reconcile(r.orders, facts, owner, r.scenario.name),
          timing(r.orders, facts, r.faultStart, r.healedAt),
          quiet,
          checks,
        ),
      );
    }
    return results;
  } finally {
    watch?.stop();
    balancer?.stop();
    await sys.stop().catch((err: unknown) => log(`stop failed: ${String(err)}`));
    if (o.databaseUrl)
      await dropSchema(o.databaseUrl, schema).catch((err: unknown) => log(`drop schema: ${String(err)}`));
    if (!o.keepData) await rm(join(o.dataDir, name), { recursive: true, force: true });
  }
}

async function runScenario(
  o: RunOptions,
  sys: ChaosSystem,
  balancer: OrdersBalancer,
  s: Scenario,
  phaseLog: (msg: string) => void,
): Promise<ScenarioRun> {
  const log = (msg: string) => phaseLog(`${s.name}: ${msg}`);
  const rate = o.rate ?? s.rate[o.scale];
  const run: ScenarioRun = {
    scenario: s,
    rate,
    system: "",
    orders: [],
    t0: Date.now(),
    timeline: [],
    extra: {},
    verify: [],
    crashes: [],
    startupRestarts: [],
  };
  const note = (what: string) => {
    run.timeline.push({ at: Date.now(), what });
    log(what);
  };
  const crashesBefore = sys.crashes.length;
  const restartsBefore = sys.startupRestarts.length;
  try {
    for (const name of SERVICES) {
      let want = s.replicas?.[name] ?? 1;
      if (name === "audit" && !o.databaseUrl) want = 1; // PGlite: one process per database
      if ((sys.instances.get(name)?.length ?? 0) < want) await sys.scale(name, want);
    }
  } catch (err) {
    run.error = `could not scale the system: ${String(err)}`;
    return run;
  }
  run.system = sys.describe();
  const dur = (ci: number, full: number) => (o.scale === "ci" ? ci : full);
  const accepted: string[] = [];
  const ac = new AbortController();
  note(`load ${rate} orders/s`);
  const load = runOpenLoad({
    balancer,
    ratePerSec: rate,
    signal: ac.signal,
    maxOrders: o.scale === "ci" ? 400 : undefined,
    key: (i) => `chaos-${run.t0.toString(36)}-${s.name}-${i}`,
    retryForMs: dur(30_000, 60_000),
    onSettled: (rec) => {
      if (rec.status === 202 && rec.orderId) accepted.push(rec.orderId);
    },
  });
  const ctx: FaultContext = {
    sys,
    scale: o.scale,
    dur,
    sleep,
    faultStart: (what) => {
      run.faultStart ??= Date.now();
      note(what);
    },
    healed: (what) => {
      run.healedAt = Date.now();
      note(what);
    },
    note,
    acceptedIds: () => [...accepted],
    extra: run.extra,
    verifyLater: (check) => run.verify.push(check),
  };
  try {
    await sleep(dur(2_000, 10_000));
    await s.fault(ctx);
    await sleep(dur(2_000, 10_000));
  } catch (err) {
    run.error = `fault script failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
    log(run.error);
  } finally {
    ac.abort();
    note("load stopped; waiting for the orders in flight");
    run.orders = await load;
  }
  run.crashes = sys.crashes.slice(crashesBefore);
  run.startupRestarts = sys.startupRestarts.slice(restartsBefore);
  const ok = run.orders.filter((x) => x.status === 202).length;
  note(`${run.orders.length} orders sent, ${ok} accepted`);
  return run;
}

function result(
  r: ScenarioRun,
  rec: Reconciliation,
  t: Timing,
  quiet: QuietResult,
  checks: ScenarioCheck[],
): ScenarioResult {
  const invariantsOk = rec.violations.length === 0;
  const checksOk = checks.every((c) => c.ok);
  const counts = PROBLEM_COUNTS.reduce((sum, k) => sum + rec[k], 0);
  return {
    scenario: r.scenario.name,
    orders: rec.orders,
    ok: rec.ok,
    lost: rec.lost,
    stuck: rec.stuck,
    double_charged: rec.double_charged,
    oversold: rec.oversold,
    audit_missing: rec.audit_missing,
    duplicate_emails: rec.duplicate_emails,
    p50_ms: t.p50_ms,
    p99_ms: t.p99_ms,
    recovery_s: t.recovery_s,
    invariants_ok: invariantsOk,
    checks_ok: checksOk,
    crashes: r.crashes.length,
    passed:
      counts === 0 &&
      invariantsOk &&
      checksOk &&
      r.crashes.length === 0 &&
      r.error === undefined &&
      rec.orders > 0,
    summary: r.scenario.summary,
    system: r.system,
    rate: r.rate,
    sent: rec.sent,
    not_accepted: rec.not_accepted,
    confirmed: rec.confirmed,
    cancelled: rec.cancelled,
    fault_window_s:
      r.faultStart !== undefined && r.healedAt !== undefined
        ? Math.round((r.healedAt - r.faultStart) / 100) / 10
        : null,
    fault_orders: t.fault_orders,
    baseline_p50_ms: t.baseline_p50_ms,
    baseline_p99_ms: t.baseline_p99_ms,
    quiet: {
      quiet: quiet.quiet,
      waited_s: Math.round(quiet.waitedMs / 100) / 10,
      open: quiet.open.length,
      backlogs: quiet.backlogs.map((b) => `${b.consumer}: ${b.pending} pending, ${b.ackPending} unacked`),
    },
    timeline: r.timeline.map((e) => ({ t_s: Math.round((e.at - r.t0) / 100) / 10, what: e.what })),
    series: t.series,
    checks,
    violations: rec.violations
      .slice(0, 50)
      .map((v) => `${v.orderId ? `order ${v.orderId}: ` : v.sku ? `sku ${v.sku}: ` : ""}${v.detail}`),
    examples: rec.examples,
    crash_details: r.crashes,
    startup_restarts: r.startupRestarts,
    extra: r.extra,
    ...(r.error !== undefined ? { error: r.error } : {}),
  };
}

function failed(s: Scenario, sys: ChaosSystem, error: string): ScenarioResult {
  return {
    scenario: s.name,
    orders: 0,
    ok: 0,
    lost: 0,
    stuck: 0,
    double_charged: 0,
    oversold: 0,
    audit_missing: 0,
    duplicate_emails: 0,
    p50_ms: null,
    p99_ms: null,
    recovery_s: null,
    invariants_ok: false,
    checks_ok: false,
    crashes: sys.crashes.length,
    passed: false,
    summary: s.summary,
    system: "",
    rate: 0,
    sent: 0,
    not_accepted: 0,
    confirmed: 0,
    cancelled: 0,
    fault_window_s: null,
    fault_orders: 0,
    baseline_p50_ms: null,
    baseline_p99_ms: null,
    quiet: { quiet: false, waited_s: 0, open: 0, backlogs: [] },
    timeline: [],
    series: [],
    checks: [],
    violations: [],
    examples: {},
    crash_details: sys.crashes,
    startup_restarts: sys.startupRestarts,
    extra: {},
    error,
  };
}

async function dropSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}
