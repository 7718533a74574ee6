/**
 * The chaos harness's CI subset: every scenario of `npm run chaos` at small scale (a few hundred orders each), the
 * single-node ones back to back on one system and the cluster one on a 3-node cluster, each reconciled on its own
 * orders. Asserts zero lost, stuck, double-charged, oversold, audit-missing and duplicate-e-mail orders, the
 * invariants I1–I6, the scenario's own checks, and no crashed process.
 *
 * The orders service runs with a 10 s order timeout (production: 60 s), shorter than the stalls some faults cause
 * (a killed process's messages come back after the 30 s ack wait): timeouts then race the saga — cancellations
 * during a reservation, captures after a cancellation — and every such race must still reconcile. Two service
 * bugs were found only that way.
 *
 * Progress goes to stderr with CHAOS_VERBOSE=1; logs of every process are kept in a temp dir named in failures.
 * The audit log is in PostgreSQL when DATABASE_URL is set (a fresh schema, dropped afterwards), else PGlite.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { problems, table } from "../../src/chaos/report.js";
import { natsAuthFromChaosEnv, runChaos, type RunReport } from "../../src/chaos/run.js";
import { scenarioNamed } from "../../src/chaos/scenarios.js";

/** Cheap faults first; the ones that restart everything, then the scaled-up ones, last. */
const ORDER = [
  "gateway-outage",
  "mail-outage",
  "gateway-slow",
  "kill-orders",
  "kill-inventory",
  "kill-payments",
  "kill-notifications",
  "kill-audit",
  "nats-kill",
  "kill-all",
  "rolling-restart",
  "poison",
  "cluster-leader-loss",
];

const verbose = process.env["CHAOS_VERBOSE"] === "1";

void describe("chaos (CI subset: every scenario at small scale)", { timeout: 12 * 60_000 }, () => {
  let dir: string;
  let report: RunReport;
  const logLines: string[] = [];

  before(
    async () => {
      dir = await mkdtemp(join(tmpdir(), "shopstream-chaos-test-"));
      const t0 = Date.now();
      report = await runChaos({
        scenarios: ORDER.map((n) => scenarioNamed(n)!),
        scale: "ci",
        shared: true,
        reportDir: dir,
        dataDir: join(dir, "data"),
        databaseUrl: process.env["DATABASE_URL"] || undefined,
        orderTimeoutMs: 10_000,
        // NATS authentication on, as in production; CHAOS_NATS_AUTH=false for a comparison run without it.
        natsAuth: natsAuthFromChaosEnv(),
        log: (msg) => {
          const line = `[chaos +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`;
          logLines.push(line);
          if (verbose) process.stderr.write(`${line}\n`);
        },
      });
      if (verbose) process.stderr.write(`${table(report.results)}\n`);
    },
    { timeout: 11 * 60_000 },
  );

  after(async () => {
    // Logs are kept when something failed, for the failure message's pointer.
    if (report?.passed) await rm(dir, { recursive: true, force: true });
  });

  for (const name of ORDER) {
    void it(name, () => {
      const r = report.results.find((x) => x.scenario === name);
      assert.ok(r, `no result for ${name}`);
      const why = () =>
        `${name} failed:\n  ${problems(r).join("\n  ")}\n${table([r])}\nlogs: ${dir}/logs\n` +
        `harness log (last lines):\n${logLines.slice(-30).join("\n")}`;
      assert.equal(r.error, undefined, why());
      assert.ok(r.orders > 0, why());
      assert.equal(r.lost, 0, why());
      assert.equal(r.stuck, 0, why());
      assert.equal(r.double_charged, 0, why());
      assert.equal(r.oversold, 0, why());
      assert.equal(r.audit_missing, 0, why());
      assert.equal(r.duplicate_emails, 0, why());
      assert.ok(r.invariants_ok, why());
      assert.ok(r.checks_ok, why());
      assert.equal(r.crashes, 0, why());
      assert.ok(r.quiet.quiet, why());
      assert.equal(r.ok, r.orders, why());
    });
  }

  void it("NATS ran with authentication and no permissions violation (unless CHAOS_NATS_AUTH=false)", async (t) => {
    if (!natsAuthFromChaosEnv()) return t.skip("CHAOS_NATS_AUTH=false");
    assert.equal(report.nats_auth, true);
    assert.ok(
      logLines.some((l) => /provisioned as admin/.test(l)),
      `no provisioning as admin in the harness log:\n${logLines.slice(0, 10).join("\n")}`,
    );
    const phases = await readdir(join(dir, "logs"));
    assert.ok(phases.length >= 2, `phases: ${phases.join(", ")}`);
    for (const phase of phases) {
      const log = await readFile(join(dir, "logs", phase, "nats.log"), "utf8");
      const violations = log.split("\n").filter((l) => /Violation/.test(l));
      assert.deepEqual(violations.slice(0, 10), [], `${phase}: logs in ${dir}/logs`);
    }
  });
});
