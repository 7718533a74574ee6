/**
 * The Go peer (`../shared/peers/seed-go`, the original design built from the blog post), run by `npm run bench --
 * --peer` beside ShopStream at the same offered rates, so both are measured in the same session on the same machine.
 *
 * The peer's code is only read: it is built offline in GOPATH mode (Debian's Go and nats.go packages) into
 * `reports/peer-bin/seed`, and its processes are started here the way its `run.sh` starts them — a fresh
 * `nats-server -js -sd <tmp>` on free ports (never 4222), then `seed order|inventory|payment|notification|audit` as
 * separate processes with their logs and the audit file in the same temporary directory, each waited for on
 * `/ready`; then `seed driver` for the load, whose JSON line goes to the bench's report directory. Nothing is written
 * into the peer's folder (run.sh would write `bin/` and `results/` there). Stopping is by pid only: the services with
 * SIGTERM (they drain), then nats-server, each SIGKILLed after 10 s.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, openSync, closeSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { findNatsServerBinary, freePort } from "../src/stack/nats-server.js";

/** The Debian packages the peer builds with (its README). */
export const PEER_GO_PACKAGES =
  "golang-go golang-github-nats-io-go-nats-dev golang-github-rs-zerolog-dev golang-github-prometheus-client-golang-dev";
/** What to run when Go or the peer's Go packages are missing. */
export const PEER_INSTALL_HINT = `apt-get update && apt-get install -y ${PEER_GO_PACKAGES}`;

/** The peer's services, in the order run.sh starts them; each names its NATS connection after itself. */
export const PEER_SERVICES = ["order", "inventory", "payment", "notification", "audit"] as const;
/** The peer's streams (consumer lag and "quiet" are checked on these). */
export const PEER_STREAMS = ["ORDERS", "INVENTORY", "PAYMENTS", "NOTIFICATIONS", "DEADLETTER"];
/** The peer's event streams (events per order). */
export const PEER_EVENT_STREAMS = ["ORDERS", "INVENTORY", "PAYMENTS", "NOTIFICATIONS"];

/** The peer's folder: `BENCH_PEER_DIR`, else `../shared/peers/seed-go` next to this checkout. */
export function peerDir(root: string): string {
  return resolve(process.env.BENCH_PEER_DIR ?? join(root, "../shared/peers/seed-go"));
}

/** The built peer, or why it could not be built (with what to do). */
export type PeerBuild = { ok: true; bin: string; go: string } | { ok: false; reason: string };

/**
 * Builds the peer into `<outDir>/seed` (`GO111MODULE=off GOPATH=/usr/share/gocode go build`, offline, as its README
 * says); Go's build cache makes a rebuild of unchanged sources take a second.
 */
export function buildPeer(root: string, outDir: string): PeerBuild {
  const dir = peerDir(root);
  if (!existsSync(join(dir, "main.go")))
    return { ok: false, reason: `no Go peer at ${dir} (BENCH_PEER_DIR)` };
  const version = spawnSync("go", ["version"], { encoding: "utf8" });
  if (version.error || version.status !== 0)
    return { ok: false, reason: `Go is not installed; to build the peer: ${PEER_INSTALL_HINT}` };
  mkdirSync(outDir, { recursive: true });
  const bin = join(outDir, "seed");
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    GO111MODULE: "off",
    GOPATH: process.env.BENCH_PEER_GOPATH ?? "/usr/share/gocode",
    GOFLAGS: "",
  };
  // Go needs a build cache; without a HOME it has no default one.
  if (!env.GOCACHE && !env.HOME) env.GOCACHE = join(tmpdir(), "shopstream-bench-gocache");
  const r = spawnSync("go", ["build", "-o", bin, "."], { cwd: dir, env, encoding: "utf8" });
  if (r.status !== 0) {
    const missing = /cannot find package/.test(r.stderr)
      ? ` (missing Go packages? ${PEER_INSTALL_HINT})`
      : "";
    return {
      ok: false,
      reason: `go build of the peer failed${missing}:\n${(r.stderr || r.error?.message || "").trim()}`,
    };
  }
  return { ok: true, bin, go: version.stdout.trim() };
}

/** A running peer: its nats-server and five services. */
export interface PeerStack {
  natsUrl: string;
  monitorUrl: string;
  orderUrl: string;
  dir: string;
  /** nats-server and the services by name (and `driver` while a driver runs). */
  processes(): Map<string, number>;
  /**
   * Runs `seed driver` (open loop at `rate` orders/s for `durationS`), waits for it and returns its JSON result;
   * its text output goes to `textFile`, its JSON line to `jsonFile`.
   */
  drive(o: DriveOptions): Promise<PeerDriverResult>;
  /** First warning/error lines of the services' logs (as run.sh prints them). */
  logProblems(): Promise<string[]>;
  stop(): Promise<void>;
}

export interface DriveOptions {
  rate: number;
  durationS: number;
  label: string;
  /** Seconds after the load before an accepted order without a terminal event counts as late (`-grace`). */
  graceS: number;
  /** Further seconds the driver waits to tell late orders from lost ones (`-settle`). */
  settleS: number;
  jsonFile: string;
  textFile: string;
}

/** The JSON line `seed driver -json` writes (driver.go). */
export interface PeerDriverResult {
  label: string;
  mode: string;
  duration_s: number;
  accepted: number;
  http_failed: number;
  driver_dropped: number;
  accepted_per_s: number;
  completed_in_window: number;
  completed_per_s: number;
  completed_total: number;
  confirmed: number;
  cancelled: number;
  drain_after_load_s: number;
  /** Accepted, no terminal event `grace` after the load. */
  lost: number;
  /** Accepted, no terminal event `grace + settle` after the load. */
  never_completed: number;
  completed_incl_drain_per_s: number;
  e2e_p50_ms: number;
  e2e_p90_ms: number;
  e2e_p99_ms: number;
  e2e_max_ms: number;
  post_p50_ms: number;
  post_p99_ms: number;
  driver_cpu_s: number;
}

interface Proc {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
  gone: boolean;
}

function launch(name: string, cmd: string, args: string[], logFile: string): Proc {
  const fd = openSync(logFile, "a");
  const child = spawn(cmd, args, { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const p: Proc = { name, child, exited: Promise.resolve(), gone: false };
  p.exited = new Promise<void>((r) => {
    child.once("exit", () => {
      p.gone = true;
      r();
    });
    child.once("error", () => {
      p.gone = true;
      r();
    });
  });
  return p;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once it exited. */
async function terminate(p: Proc, graceMs = 10_000): Promise<void> {
  if (p.gone) return;
  p.child.kill("SIGTERM");
  const t = setTimeout(() => p.child.kill("SIGKILL"), graceMs);
  await p.exited;
  clearTimeout(t);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `url` until it answers 2xx, the process died, or `timeoutMs` passed. */
async function answers(url: string, procs: Proc[], timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (procs.some((p) => p.gone)) return false;
    const ok = await fetch(url, { signal: AbortSignal.timeout(1_000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return true;
    await sleep(100);
  }
  return false;
}

/** A free port other than 4222 and those in `used`. */
async function pick(used: Set<number>): Promise<number> {
  for (;;) {
    const p = await freePort();
    if (p !== 4222 && !used.has(p)) {
      used.add(p);
      return p;
    }
  }
}

/**
 * Starts the peer's nats-server and services on fresh ports in a fresh temporary directory and waits until every
 * service is ready. A port taken between picking and binding (or any failed start) is retried on new ports.
 */
export async function startPeer(
  bin: string,
  o: { label: string; workers?: number; batch?: number; attempts?: number },
): Promise<PeerStack> {
  const natsBin = findNatsServerBinary(process.env.NATS_SERVER_BIN);
  const attempts = o.attempts ?? 3;
  let lastError = "";
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const dir = await mkdtemp(join(tmpdir(), `shopstream-bench-peer-${o.label}-`));
    const used = new Set<number>();
    const procs: Proc[] = [];
    let driver: Proc | undefined;
    const stop = async () => {
      if (driver) await terminate(driver);
      // Services first (each drains), nats-server last.
      await Promise.all(procs.filter((p) => p.name !== "nats-server").map((p) => terminate(p)));
      for (const p of procs.filter((x) => x.name === "nats-server")) await terminate(p);
      await rm(dir, { recursive: true, force: true });
    };
    try {
      const natsPort = await pick(used);
      const monitorPort = await pick(used);
      const nats = launch(
        "nats-server",
        natsBin,
        [
          "-a",
          "127.0.0.1",
          "-p",
          String(natsPort),
          "-m",
          String(monitorPort),
          "-js",
          "-sd",
          join(dir, "js"),
          "-l",
          join(dir, "nats.log"),
        ],
        join(dir, "nats-server.out"),
      );
      procs.push(nats);
      const monitorUrl = `http://127.0.0.1:${monitorPort}`;
      if (!(await answers(`${monitorUrl}/healthz`, procs, 10_000)))
        throw new Error(
          `nats-server did not start: ${(await readFile(join(dir, "nats.log"), "utf8").catch(() => "")).slice(-600)}`,
        );
      const natsUrl = `nats://127.0.0.1:${natsPort}`;
      const ready: Record<string, string> = {};
      let orderUrl = "";
      for (const svc of PEER_SERVICES) {
        const port = await pick(used);
        procs.push(
          launch(
            svc,
            bin,
            [
              svc,
              "-nats",
              natsUrl,
              "-http",
              `127.0.0.1:${port}`,
              "-workers",
              String(o.workers ?? 10),
              "-batch",
              String(o.batch ?? 50),
              "-audit-file",
              join(dir, "audit-events.jsonl"),
            ],
            join(dir, `${svc}.log`),
          ),
        );
        ready[svc] = `http://127.0.0.1:${port}/ready`;
        if (svc === "order") orderUrl = `http://127.0.0.1:${port}/orders`;
      }
      for (const svc of PEER_SERVICES) {
        if (!(await answers(ready[svc]!, procs, 10_000))) {
          const log = await readFile(join(dir, `${svc}.log`), "utf8").catch(() => "");
          throw new Error(`peer ${svc} not ready: ${log.slice(-600)}`);
        }
      }
      const stack: PeerStack = {
        natsUrl,
        monitorUrl,
        orderUrl,
        dir,
        processes: () => {
          const m = new Map<string, number>();
          for (const p of [...procs, ...(driver ? [driver] : [])])
            if (!p.gone && p.child.pid !== undefined) m.set(p.name, p.child.pid);
          return m;
        },
        async drive(d) {
          driver = launch(
            "driver",
            bin,
            [
              "driver",
              "-url",
              orderUrl,
              "-nats",
              natsUrl,
              "-rate",
              String(d.rate),
              "-d",
              `${d.durationS}s`,
              "-grace",
              `${d.graceS}s`,
              "-settle",
              `${d.settleS}s`,
              "-decline",
              "0",
              "-label",
              d.label,
              "-json",
              d.jsonFile,
            ],
            d.textFile,
          );
          const code = await new Promise<number | null>((r) => {
            if (driver!.gone) r(driver!.child.exitCode);
            else driver!.child.once("exit", (c) => r(c));
          });
          driver = undefined;
          const lines = (await readFile(d.jsonFile, "utf8").catch(() => "")).trim().split("\n");
          const mine = lines
            .filter(Boolean)
            .map((l) => JSON.parse(l) as PeerDriverResult)
            .filter((x) => x.label === d.label)
            .pop();
          if (code !== 0 || !mine)
            throw new Error(
              `peer driver exited ${code} without a result: ${(await readFile(d.textFile, "utf8").catch(() => "")).slice(-600)}`,
            );
          return mine;
        },
        async logProblems() {
          const out: string[] = [];
          for (const svc of PEER_SERVICES) {
            const text = await readFile(join(dir, `${svc}.log`), "utf8").catch(() => "");
            for (const l of text.split("\n"))
              if (/"level":"(error|warn|fatal)"/.test(l) && out.length < 3) out.push(`${svc}: ${l}`);
          }
          return out;
        },
        stop,
      };
      return stack;
    } catch (err) {
      await stop();
      lastError = err instanceof Error ? err.message : String(err);
    }
  }
  throw new Error(`the peer did not start (${attempts} attempts): ${lastError}`);
}
