/**
 * Reports of a chaos run: the table printed on stdout, `report.json` and `report.md` in the run's report
 * directory, and — after a full run — `docs/reliability.md` and `docs/reliability.json`.
 */
import { execFileSync } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { findNatsServerBinary } from "../stack/nats-server.js";
import { PROBLEM_COUNTS } from "./reconcile.js";
import type { RunReport, ScenarioResult } from "./run.js";
import type { Scenario } from "./scenario.js";

/** The machine a run ran on. */
export interface Machine {
  cpus: number;
  cpu_model: string;
  memory_gib: number;
  os: string;
  node: string;
  nats_server: string;
  /** 1-minute load average when the report was written (other work on the machine skews latencies). */
  load_average: number;
}

export function machine(): Machine {
  let nats = "unknown";
  try {
    nats = execFileSync(findNatsServerBinary(process.env["NATS_SERVER_BIN"]), ["--version"])
      .toString()
      .trim();
  } catch {
    /* not found: reported as unknown */
  }
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpu_model: cpus[0]?.model.trim() ?? "unknown",
    memory_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    nats_server: nats,
    load_average: Math.round((os.loadavg()[0] ?? 0) * 10) / 10,
  };
}

const COLUMNS = [
  "scenario",
  "orders",
  "ok",
  ...PROBLEM_COUNTS,
  "p50_ms",
  "p99_ms",
  "recovery_s",
  "invariants_ok",
] as const;

const cell = (r: ScenarioResult, c: (typeof COLUMNS)[number]): string => {
  const v = r[c];
  if (v === null || v === undefined) return "–";
  if (typeof v === "boolean") return v ? "yes" : "NO";
  return String(v);
};

/** The results as a plain-text table, one line per scenario, with PASS/FAIL. */
export function table(results: ScenarioResult[]): string {
  const head = [...COLUMNS, "result"];
  const rows = results.map((r) => [...COLUMNS.map((c) => cell(r, c)), r.passed ? "PASS" : "FAIL"]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(head), ...rows.map(line)].join("\n");
}

/** What failed in a scenario, one line each (empty when it passed). */
export function problems(r: ScenarioResult): string[] {
  const out: string[] = [];
  if (r.error) out.push(r.error.split("\n")[0]!);
  for (const k of PROBLEM_COUNTS)
    if (r[k] > 0) out.push(`${r[k]} ${k}${r.examples[k] ? ` (e.g. ${r.examples[k].join(", ")})` : ""}`);
  if (r.orders === 0 && !r.error) out.push("no order was accepted");
  for (const v of r.violations.slice(0, 10)) out.push(`invariant: ${v}`);
  for (const c of r.checks.filter((x) => !x.ok)) out.push(`check failed: ${c.name}: ${c.detail}`);
  for (const c of r.crash_details)
    out.push(`crash: ${c.id} exited (${c.exit}): ${c.lastLines.slice(-3).join(" | ")}`);
  if (!r.quiet.quiet) out.push(`not quiet: ${r.quiet.open} orders open; ${r.quiet.backlogs.join("; ")}`);
  return out;
}

function markdownTable(results: ScenarioResult[]): string {
  const head = `| ${COLUMNS.join(" | ")} |`;
  const sep = `| ${COLUMNS.map((c, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`;
  const rows = results.map(
    (r) => `| ${COLUMNS.map((c) => (c === "scenario" ? `\`${r.scenario}\`` : cell(r, c))).join(" | ")} |`,
  );
  return [head, sep, ...rows].join("\n");
}

function machineLine(m: Machine): string {
  return `${m.cpus} × ${m.cpu_model}, ${m.memory_gib} GiB, ${m.os}, Node.js ${m.node}, ${m.nats_server}; load average ${m.load_average} at the end`;
}

/** The Markdown report of a run (also the body of docs/reliability.md). */
export function markdown(report: RunReport, m: Machine, scenarios: Scenario[], command: string): string {
  const lines: string[] = [];
  lines.push(`Run of ${report.started} (${report.duration_s} s), \`${command}\`, ${report.scale} scale.`, "");
  lines.push(
    `Machine: ${machineLine(m)}. Audit log in ${report.audit_store}.${report.nats_auth === undefined ? "" : ` NATS ${report.nats_auth ? "with authentication (one user per service)" : "without authentication (CHAOS_NATS_AUTH=false)"}.`}`,
    "",
  );
  lines.push(markdownTable(report.results), "");
  lines.push(report.passed ? "Every scenario passed." : "**Some scenarios failed** — see below.", "");
  lines.push(
    "| scenario | system | offered | sent / accepted | confirmed / cancelled | fault window | baseline p50 / p99 | quiet after |",
  );
  lines.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of report.results) {
    lines.push(
      `| \`${r.scenario}\` | ${r.system} | ${r.rate}/s | ${r.sent} / ${r.orders} | ${r.confirmed} / ${r.cancelled} | ` +
        `${r.fault_window_s ?? "–"} s (${r.fault_orders} orders) | ${r.baseline_p50_ms ?? "–"} / ${r.baseline_p99_ms ?? "–"} ms | ${r.quiet.waited_s} s |`,
    );
  }
  lines.push("");
  for (const r of report.results) {
    const s = scenarios.find((x) => x.name === r.scenario);
    lines.push(`### \`${r.scenario}\` — ${r.passed ? "pass" : "FAIL"}`, "");
    if (s) lines.push(s.description, "");
    lines.push("Timeline (seconds from the start of its load):", "");
    for (const e of r.timeline) lines.push(`- ${e.t_s} s: ${e.what}`);
    lines.push("");
    if (r.startup_restarts.length > 0) {
      lines.push("Processes that exited while starting and were started again (not counted as crashes):", "");
      for (const c of r.startup_restarts)
        lines.push(`- ${c.id}: ${c.exit}: ${c.lastLines.slice(-2).join(" | ")}`);
      lines.push("");
    }
    if (Object.keys(r.extra).length > 0) lines.push(`Figures: \`${JSON.stringify(r.extra)}\``, "");
    if (r.checks.length > 0) {
      lines.push("Checks:", "");
      for (const c of r.checks) lines.push(`- ${c.ok ? "ok" : "**FAILED**"} — ${c.name}: ${c.detail}`);
      lines.push("");
    }
    const p = problems(r);
    if (p.length > 0) {
      lines.push("Problems:", "");
      for (const x of p) lines.push(`- ${x}`);
      lines.push("");
    }
  }
  return lines.join("\n");
}

/** Writes `report.json` and `report.md` into `dir`. */
export async function writeRunReport(
  dir: string,
  report: RunReport,
  m: Machine,
  scenarios: Scenario[],
  command: string,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, "report.json"),
    `${JSON.stringify({ ...report, machine: m, command }, null, 2)}\n`,
  );
  await writeFile(
    join(dir, "report.md"),
    `# Chaos run ${report.started}\n\n${markdown(report, m, scenarios, command)}\n`,
  );
}

/** The rows of docs/reliability.json: the required fields first, then a few more. */
export function reliabilityJson(report: RunReport, m: Machine): unknown[] {
  return report.results.map((r) => ({
    scenario: r.scenario,
    orders: r.orders,
    ok: r.ok,
    lost: r.lost,
    stuck: r.stuck,
    double_charged: r.double_charged,
    oversold: r.oversold,
    audit_missing: r.audit_missing,
    duplicate_emails: r.duplicate_emails,
    p50_ms: r.p50_ms,
    p99_ms: r.p99_ms,
    recovery_s: r.recovery_s,
    invariants_ok: r.invariants_ok,
    passed: r.passed,
    offered_rate: r.rate,
    sent: r.sent,
    confirmed: r.confirmed,
    cancelled: r.cancelled,
    fault_window_s: r.fault_window_s,
    baseline_p50_ms: r.baseline_p50_ms,
    baseline_p99_ms: r.baseline_p99_ms,
    date: report.started,
    machine: `${m.cpus} × ${m.cpu_model}, ${m.memory_gib} GiB`,
  }));
}

/** Writes docs/reliability.md and docs/reliability.json from a full run. */
export async function writeReliabilityDocs(
  root: string,
  report: RunReport,
  m: Machine,
  scenarios: Scenario[],
  command: string,
): Promise<void> {
  await writeFile(
    join(root, "docs", "reliability.json"),
    `${JSON.stringify(reliabilityJson(report, m), null, 2)}\n`,
  );
  const page = join(root, "docs", "reliability.md");
  await writeFile(page, await formatted(page, reliabilityPage(report, m, scenarios, command)));
}

/** `text` as Prettier formats it with the repository's settings (`npm run lint` checks docs), or as it is. */
async function formatted(file: string, text: string): Promise<string> {
  try {
    const prettier = await import("prettier");
    const options = (await prettier.resolveConfig(file)) ?? {};
    return await prettier.format(text, { ...options, filepath: file });
  } catch {
    return text; // Prettier is a dev dependency: without it the page is still right, only not formatted.
  }
}

function reliabilityPage(report: RunReport, m: Machine, scenarios: Scenario[], command: string): string {
  return `# Reliability

ShopStream promises that no accepted order is ever lost, double-charged or oversold — through crashes, deploys,
broker restarts and payment-gateway outages. This page holds the latest full run of the chaos harness
(\`npm run chaos\`, source in \`src/chaos/\`), which checks that promise the way Jepsen checks databases: it runs
the real system as separate processes, drives a steady order load through the HTTP API, injects a fault, heals
it, waits until the system is quiet, and then reconciles **every order the load generator got a 202 for**.
The machine-readable rows are in [reliability.json](reliability.json). Re-run it with \`npm run chaos\` (all
scenarios, full scale; this page is rewritten) or \`npm run chaos -- kill-payments poison\` (some scenarios,
reports under \`reports/chaos/<stamp>/\` only). The CI subset (\`test/chaos/chaos.test.ts\`, \`npm run test:chaos\`)
runs every scenario at small scale and asserts the same zeros.

## Latest full run

${markdown(report, m, scenarios, command)}

## How a scenario runs

1. **System.** A fresh system per scenario (\`src/chaos/system.ts\`): a real \`nats-server\` with JetStream (one node
   with a file store, or a 3-node cluster with every stream and KV bucket at R3), the payment-gateway and
   mail-provider simulators (their ledger and sent mail persisted to files), and the five services, each its own
   OS process started exactly as \`npm start\` starts it, each replica on its own port. The audit log is in
   PostgreSQL when \`DATABASE_URL\` is set (a fresh schema per system), else in PGlite. Processes log at \`warn\`
   to \`reports/chaos/<stamp>/logs/\`. The catalog is the default one plus \`SKU-SCARCE\`, whose stock runs out
   during the run.
   NATS runs with authentication, as \`npm start\` does (docs/security-nats.md): the stack's generated passwords
   and server configuration under the system's data dir (\`secrets/\`), the same \`authorization\` block on every
   cluster node; streams, consumers and buckets are provisioned as \`admin\` before any service starts, each service
   connects as its own user, the harness as \`admin\` (its order watch subscribes to \`orders.*\`, the poison
   scenarios publish onto streams) and the checker as \`operator\`. \`CHAOS_NATS_AUTH=false\` runs without it.
2. **Load.** An open-loop generator (\`src/chaos/load.ts\`) sends \`POST /orders\` at a fixed rate whatever the
   system does, so latency is counted from each order's *scheduled* time and queueing cannot hide. Mostly one- or
   two-line orders of high-stock SKUs; 1 in 20 from a customer the gateway declines, 1 in 25 with a line of
   \`SKU-SCARCE\`. A tiny load balancer spreads them over the orders replicas whose \`/ready\` answers 200, moves
   on when a connection is refused, and retries an order whose outcome is unknown (reset, timeout, 5xx) with
   the same \`Idempotency-Key\` for up to 60 s. Only a 202 counts as accepted.
   The offered rate (column *offered* above) is what this 2-core machine sustains with headroom while it is
   shared with other work (see [benchmarks.md](benchmarks.md) for where it saturates). Above that the backlog
   grows before any fault and the latencies measure overload, not the fault; \`--rate=N\` offers more.
3. **Fault.** 10 s of steady load, then the scenario's fault, held, then healed; then 10 s more of load.
4. **Quiet.** The harness waits until every accepted order — and every order seen placed on the bus — is
   terminal and every durable consumer (except \`orders-timeouts\`, whose backlog is the order timers) has
   nothing pending or unacknowledged.
5. **Reconciliation** (\`src/chaos/reconcile.ts\`) of every accepted order, from the streams, the gateway ledger,
   the inventory, the audit log and the mail provider's log, plus the invariant checker's I1–I6
   (\`src/checker/checker.ts\`) over the whole system.

## What the columns mean

| column | meaning |
| --- | --- |
| orders | orders answered 202 (accepted) during the scenario |
| ok | accepted orders with nothing wrong: placed, terminal, money right, fully audited, at most one e-mail per kind |
| lost | answered 202, but no OrderPlaced in the ORDERS stream |
| stuck | placed, but never CONFIRMED or CANCELLED |
| double_charged | more than one capture at the gateway, or a net amount that is not the total (CONFIRMED) or zero (CANCELLED) |
| oversold | SKUs with an I3 violation (\`initial = available + reserved + committed\`, \`available ≥ 0\`, \`committed\` = units of CONFIRMED orders) or more units confirmed than they had |
| audit_missing | orders with an event (in any stream) that is not in the audit log exactly once |
| duplicate_emails | orders with more than one e-mail of one kind at the mail provider |
| p50_ms, p99_ms | POST → terminal event, from the order's scheduled send time, of the accepted orders scheduled during the fault window (fault injected → healed) |
| recovery_s | seconds from the heal until the saga was back to normal: every order accepted and scheduled before the heal had completed — terminal event **and** customer e-mail sent — and so had the first order scheduled after the heal. Audit lag is not in it (the audit log is checked at the end) |
| invariants_ok | the checker found no violation of I1–I6 |

Scenarios fail (and \`npm run chaos\` exits 1) on any non-zero lost, stuck, double_charged, oversold,
audit_missing or duplicate_emails, an invariant violation, a failed scenario check, or a process that exited on
its own (it is restarted, as Kubernetes would, but reported).

Why some recoveries take about 30 s: a process killed with -9 takes the messages it was handling with it; the
server redelivers them only after the consumers' ack wait (30 s). Nothing is lost, but those orders wait.

## What the harness found

Each of these failed a scenario first; the fix is in the service or library, with a regression test.

1. **An election dead-lettered business events** (\`cluster-leader-loss\`). While a KV bucket or stream had no
   leader, handlers' KV and JetStream calls failed with "jetstream is not enabled", 503 or timeouts; the consumer
   runner counted each as a failed attempt, and the five attempts (about 4 s of backoff) ran out before the
   election was over. The messages went to the DLQ: a confirmed order's stock was never committed, a captured
   charge was never recorded — and so never refunded when its order timed out. Now a failure of NATS itself uses
   up no attempt: the message is kept and retried in place until NATS answers
   (\`src/lib/messaging/consumer.ts\`; test \`test/chaos/nats-unavailable.test.ts\`).
2. **A cancellation during a reservation leaked stock** (\`kill-inventory\` with orders timing out). A killed
   inventory leaves the order's reservation \`reserving\`; its OrderPlaced comes back only after the 30 s ack
   wait. An OrderCancelled arriving meanwhile (the order's timeout) was retried until dead-lettered, and the
   reservation, completed later, was never released: units reserved for good (I3). Now a cancellation releases a
   reservation still under way at once, and the reserve, when it goes on, gives back what it held
   (\`src/services/inventory/inventory.ts\`; tests in \`test/unit/inventory.test.ts\` and
   \`test/integration/inventory.test.ts\`).
3. **An order was both CONFIRMED and CANCELLED** (\`cluster-leader-loss\` with orders timing out). On the
   nats-server 2.9.10 of these machines, a replicated stream checks \`Nats-Expected-Last-Subject-Sequence\` only
   against what its leader has applied, so two concurrent appends expecting the same sequence are both accepted
   (nats-io/nats-server#4320, fixed in 2.9.21: 295 of 300 concurrent pairs forked in a direct test here). A
   capture and a timeout of one order, decided concurrently in one orders process, forked the order: refunded
   although confirmed, two e-mails. Now a process sends its conditional appends of one subject, its
   compare-and-sets of one KV key and its Idempotency-Key claims one at a time (\`src/lib/keyed-queue.ts\`,
   \`src/lib/messaging/publisher.ts\`, \`src/lib/kv.ts\`, \`src/services/orders/store.ts\`; test
   \`test/chaos/conditional-writes.test.ts\`), and services warn at start-up when they run replicated streams
   on a server older than 2.9.21, where two replicas of a service would still be exposed (the Kubernetes
   manifests run nats-server 2.10).

The CI subset runs with a 10 s order timeout, so that timeouts race the faults' stalls; the last two were found
only that way. The full run above uses the production default of 60 s.
`;
}
