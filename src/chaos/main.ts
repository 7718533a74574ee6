/**
 * `npm run chaos [scenario…] [--ci] [--rate=N] [--keep]`: runs chaos scenarios against the whole system and
 * reconciles every accepted order (see `docs/reliability.md`).
 *
 * Without scenario names: every scenario at full scale, one fresh system each, and `docs/reliability.md` and
 * `docs/reliability.json` are rewritten from the run. With names: only those (reports under
 * `reports/chaos/<stamp>/` only). `--ci`: the CI subset's small scale on a shared system. `DATABASE_URL`: the
 * audit log in PostgreSQL (a fresh schema per system), else PGlite. Exit code 1 when a scenario fails.
 */
import { readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type Machine, machine, problems, table, writeReliabilityDocs, writeRunReport } from "./report.js";
import { type RunReport, natsAuthFromChaosEnv, runChaos } from "./run.js";
import type { Scale } from "./scenario.js";
import { scenarioNamed, scenarios } from "./scenarios.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

const USAGE = `usage: npm run chaos -- [scenario…] [--ci] [--shared] [--rate=N] [--keep] [--log-level=L]
scenarios: ${scenarios.map((s) => s.name).join(", ")}
  (none)       every scenario at full scale; rewrites docs/reliability.{md,json}
  --ci         small scale on one shared system (what test/chaos runs)
  --shared     run the single-node scenarios on one system
  --rate=N     offered load in orders/s for every scenario
  --order-timeout-ms=N  ORDER_TIMEOUT_MS of the orders service (default 60000): short ones race the saga
  --keep       keep the systems' data directories
  --log-level  LOG_LEVEL of the processes (default warn)
  --render=F   rewrite docs/reliability.{md,json} from F, the report.json of an earlier full run`;

async function main(argv: string[]): Promise<number> {
  const names: string[] = [];
  let scale: Scale = "full";
  let shared = false;
  let rate: number | undefined;
  let keep = false;
  let logLevel: string | undefined;
  let render: string | undefined;
  let orderTimeoutMs: number | undefined;
  for (const a of argv) {
    if (a === "--help" || a === "-h") {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    } else if (a === "--ci") {
      scale = "ci";
      shared = true;
    } else if (a === "--shared") shared = true;
    else if (a === "--keep") keep = true;
    else if (a.startsWith("--rate=")) {
      rate = Number(a.slice("--rate=".length));
      if (!(rate > 0)) return usage(`bad rate: ${a}`);
    } else if (a.startsWith("--log-level=")) logLevel = a.slice("--log-level=".length);
    else if (a.startsWith("--render=")) render = a.slice("--render=".length);
    else if (a.startsWith("--order-timeout-ms=")) {
      orderTimeoutMs = Number(a.slice("--order-timeout-ms=".length));
      if (!Number.isInteger(orderTimeoutMs) || orderTimeoutMs < 1_000)
        return usage(`bad order timeout: ${a}`);
    } else if (a.startsWith("-")) return usage(`unknown option ${a}`);
    else names.push(a);
  }
  if (render !== undefined) return renderDocs(render);
  const unknown = names.filter((n) => !scenarioNamed(n));
  if (unknown.length > 0) return usage(`unknown scenario(s): ${unknown.join(", ")}`);
  const chosen = names.length === 0 ? scenarios : names.map((n) => scenarioNamed(n)!);
  const fullRun =
    names.length === 0 && scale === "full" && rate === undefined && orderTimeoutMs === undefined;
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const reportDir = join(ROOT, "reports", "chaos", stamp);
  const databaseUrl = process.env["DATABASE_URL"] || undefined;
  const natsAuth = natsAuthFromChaosEnv();
  const dataDir = join(tmpdir(), `shopstream-chaos-${stamp}`);
  const command = `npm run chaos${argv.length > 0 ? ` -- ${argv.join(" ")}` : ""}`;
  const t0 = Date.now();
  const log = (msg: string) =>
    process.stderr.write(`[chaos +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
  log(
    `${chosen.length} scenario(s) at ${scale} scale${shared ? " on a shared system" : ""}; audit in ${databaseUrl ? "PostgreSQL" : "PGlite"}; NATS ${natsAuth ? "with" : "without"} authentication; reports in ${reportDir}`,
  );
  const report = await runChaos({
    scenarios: chosen,
    scale,
    shared,
    reportDir,
    dataDir,
    keepData: keep,
    databaseUrl,
    rate,
    orderTimeoutMs,
    logLevel,
    natsAuth,
    log,
  });
  // Each system removed its own data; the run's (now empty) directory goes too.
  if (!keep) await rm(dataDir, { recursive: true, force: true });
  const m = machine();
  await writeRunReport(reportDir, report, m, chosen, command);
  if (fullRun) await writeReliabilityDocs(ROOT, report, m, chosen, command);
  process.stdout.write(`\n${table(report.results)}\n\n`);
  for (const r of report.results) {
    const p = problems(r);
    if (p.length > 0) process.stdout.write(`${r.scenario}:\n${p.map((x) => `  - ${x}`).join("\n")}\n`);
  }
  process.stdout.write(
    `${report.passed ? "every scenario passed" : "SOME SCENARIOS FAILED"} in ${report.duration_s} s; reports: ${reportDir}${fullRun ? "; docs/reliability.md updated" : ""}\n`,
  );
  return report.passed ? 0 : 1;
}

/** Rewrites docs/reliability.{md,json} from the report.json of an earlier full run. */
async function renderDocs(file: string): Promise<number> {
  const saved = JSON.parse(await readFile(file, "utf8")) as RunReport & { machine: Machine; command: string };
  const used = saved.results.map((r) => scenarioNamed(r.scenario)).filter((s) => s !== undefined);
  await writeReliabilityDocs(ROOT, saved, saved.machine, used, saved.command);
  process.stdout.write(`docs/reliability.md and docs/reliability.json rewritten from ${file}\n`);
  return 0;
}

function usage(msg: string): number {
  process.stderr.write(`${msg}\n${USAGE}\n`);
  return 2;
}

let interrupted = false;
process.on("SIGINT", () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  process.stderr.write("interrupted: every process is killed on exit (press Ctrl-C again to exit now)\n");
  process.exit(130);
});

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`chaos: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(2);
  },
);
