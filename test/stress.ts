/**
 * Stress run of the messaging conformance suite (`npm run test:stress`, not part of CI): runs the suite `STRESS_RUNS`
 * times (default 4) in parallel, each as its own `node --import tsx --test` process with its own servers, and reports
 * every failed test per run. Exits 1 if any run failed.
 *
 *   STRESS_RUNS=8 npm run test:stress
 *   npm run test:stress -- test/conformance/lifecycle.test.ts     # only some files
 *
 * Full output of each run goes to a log file under the OS temp dir, printed at the end.
 */
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdtemp, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

interface RunResult {
  run: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  ms: number;
  failed: string[];
  summary: string;
  log: string;
}

function parseRuns(value: string | undefined): number {
  if (value === undefined || value === "") return 4;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) {
    throw new Error(`STRESS_RUNS must be an integer from 1 to 64, got ${JSON.stringify(value)}`);
  }
  return n;
}

async function suiteFiles(args: string[]): Promise<string[]> {
  if (args.length > 0) return args;
  const dir = join(root, "test", "conformance");
  const files = (await readdir(dir)).filter((f) => f.endsWith(".test.ts")).sort();
  return files.map((f) => relative(root, join(dir, f)));
}

/** One run of the suite: its files one after the other (like `npm run test:conformance`), TAP output to a log. */
function runSuite(run: number, files: string[], logDir: string): Promise<RunResult> {
  const log = join(logDir, `run-${run}.tap`);
  const out = createWriteStream(log);
  const started = Date.now();
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "--test", "--test-concurrency=1", "--test-reporter=tap", ...files],
    { cwd: root, stdio: ["ignore", "pipe", "pipe"], env: process.env },
  );
  let text = "";
  child.stdout.on("data", (chunk: Buffer) => {
    text += chunk.toString("utf8");
    out.write(chunk);
  });
  child.stderr.on("data", (chunk: Buffer) => out.write(chunk));
  return new Promise((resolvePromise, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => {
      out.end();
      // Failed leaf tests: "not ok" lines whose test has no subtests (suites fail because of their leaves).
      const lines = text.split("\n");
      const failed: string[] = [];
      for (const [i, line] of lines.entries()) {
        const m = /^(\s*)not ok \d+ - (.*)$/.exec(line);
        if (!m) continue;
        const isSuite = lines.slice(i + 1, i + 6).some((l) => /^\s*type: 'suite'/.test(l));
        if (!isSuite) failed.push(m[2]!);
      }
      const summary = ["tests", "pass", "fail", "cancelled"]
        .map((k) => new RegExp(`^# ${k} (\\d+)$`, "m").exec(text)?.[1])
        .map((v, i) => `${["tests", "pass", "fail", "cancelled"][i]} ${v ?? "?"}`)
        .join(", ");
      resolvePromise({ run, code, signal, ms: Date.now() - started, failed, summary, log });
    });
  });
}

async function main(): Promise<number> {
  const runs = parseRuns(process.env.STRESS_RUNS);
  const files = await suiteFiles(process.argv.slice(2));
  const logDir = await mkdtemp(join(tmpdir(), "shopstream-stress-"));
  process.stdout.write(`stress: ${runs} parallel runs of ${files.join(", ")}\nlogs: ${logDir}\n`);
  const started = Date.now();
  const results = await Promise.all(
    Array.from({ length: runs }, async (_, i) => {
      const r = await runSuite(i + 1, files, logDir);
      const status = r.code === 0 && r.failed.length === 0 ? "ok" : "FAILED";
      process.stdout.write(`run ${r.run}: ${status} in ${(r.ms / 1000).toFixed(1)} s (${r.summary})\n`);
      return r;
    }),
  );
  const bad = results.filter((r) => r.code !== 0 || r.failed.length > 0);
  process.stdout.write(
    `\n${runs - bad.length}/${runs} runs passed in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
  );
  for (const r of bad) {
    const how = r.signal ? `signal ${r.signal}` : `exit code ${r.code}`;
    process.stdout.write(`\nrun ${r.run} failed (${how}), log ${r.log}:\n`);
    for (const name of r.failed) process.stdout.write(`  not ok - ${name}\n`);
    if (r.failed.length === 0) process.stdout.write("  (no failed test reported: see the log)\n");
  }
  return bad.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`stress: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  },
);
