/**
 * The system under test, as production runs it: `node dist/stack/main.js` with `STACK_MODE=production`, so
 * nats-server (file storage), both simulators and every service are separate processes running compiled
 * JavaScript. Free ports (never 4222), a fresh temporary `DATA_DIR`, `DATABASE_URL` passed through when set (the
 * audit log then goes to a fresh `AUDIT_SCHEMA`, dropped afterwards).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, openSync, closeSync, readFileSync, readdirSync, statSync } from "node:fs";
import { mkdtemp, rm, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { PortTakenError, onFreshPorts, takenPortIn } from "../src/stack/fresh-ports.js";
import {
  NatsServerError,
  type NatsServer,
  type PortPicker,
  freePort,
  portsInUse,
  startNatsServer,
} from "../src/stack/nats-server.js";
import { READY_MESSAGE } from "../src/stack/supervisor.js";
import { childEnv, processNamed, stackProcesses } from "../src/stack/processes.js";
import { ensureNatsSecrets, type NatsSecrets } from "../src/stack/nats-auth.js";
import { isServiceUser, type NatsUser } from "../src/lib/messaging/permissions.js";
import { authOptions } from "../src/lib/messaging/connection.js";
import type { ProcessName } from "../src/lib/ports.js";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/**
 * The checkout whose `dist/` is run (default: this one). Point `BENCH_SYSTEM_ROOT` at another built checkout (e.g.
 * `git archive HEAD | tar -x -C /tmp/base`, node_modules linked, `tsc -p tsconfig.build.json`) to measure a
 * "before" with the same bench.
 */
export const SYSTEM_ROOT = process.env.BENCH_SYSTEM_ROOT ? resolve(process.env.BENCH_SYSTEM_ROOT) : ROOT;

/** A running stack. */
export interface Stack {
  /** pid of `node dist/stack/main.js` (the front process). */
  pid: number;
  natsUrl: string;
  /**
   * Whether nats-server runs with authentication (one user per service, as `npm start`): then the bench's own
   * connections pick a user with {@link natsConnectOptions} — `admin` for the ceiling's stream and the harness's
   * watcher (it subscribes to `orders.*`), `operator` for the checker, as `npm run check` does.
   */
  natsAuth: boolean;
  /** Connection options for `user` on this stack's NATS (empty without authentication). */
  natsConnectOptions(user: NatsUser): ReturnType<typeof authOptions>;
  /** nats-server's HTTP monitoring base URL (varz, connz, jsz). */
  monitorUrl: string | undefined;
  /** Go pprof base URL of nats-server when started with {@link StackOptions.natsPprof}. */
  natsPprofUrl: string | undefined;
  urls: Record<(typeof stackProcesses)[number]["name"], string>;
  dataDir: string;
  logFile: string;
  auditSchema: string | undefined;
  /** Every process of the stack by name (front, supervisor, nats-server, services, simulators). */
  processes(): Map<string, number>;
  stop(): Promise<void>;
}

/** Newest mtime of the files under `dir` (recursively) whose name ends with `ext`. */
function newest(dir: string, ext: string): number {
  let max = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) max = Math.max(max, newest(p, ext));
    else if (e.name.endsWith(ext)) max = Math.max(max, statSync(p).mtimeMs);
  }
  return max;
}

/** Runs `npm run build` unless dist/ is newer than every source file. */
export function ensureBuilt(log: (s: string) => void): void {
  if (SYSTEM_ROOT !== ROOT) {
    if (!existsSync(join(SYSTEM_ROOT, "dist/stack/main.js"))) throw new Error(`${SYSTEM_ROOT} is not built`);
    log(`running the system from ${SYSTEM_ROOT} (BENCH_SYSTEM_ROOT)`);
    return;
  }
  const src = newest(join(ROOT, "src"), ".ts");
  const dist = existsSync(join(ROOT, "dist")) ? newest(join(ROOT, "dist"), ".js") : 0;
  if (dist > src && existsSync(join(ROOT, "dist/stack/main.js"))) {
    log("dist/ is up to date");
    return;
  }
  log("building (npm run build) ...");
  const r = spawnSync("npm", ["run", "build"], { cwd: ROOT, stdio: "inherit" });
  if (r.status !== 0) throw new Error("npm run build failed");
}

/** Options of {@link startStack}. */
export interface StackOptions {
  /** Extra environment for every process (service settings such as CONSUMER_CONCURRENCY). */
  env?: Record<string, string>;
  /** NODE_OPTIONS for the children, e.g. `--cpu-prof --cpu-prof-dir=...`. */
  nodeOptions?: string;
  readyTimeoutMs?: number;
  label: string;
  /**
   * Extra replicas to run beside the stack's one process per service, e.g. `{ inventory: 1 }` (two inventory
   * processes in all, sharing its durable consumers). Audit replicas need DATABASE_URL (PGlite is one process).
   */
  extraReplicas?: Partial<Record<ProcessName, number>>;
  /**
   * Start nats-server here (not through the stack) with Go's pprof on a free port (`--profile`, see
   * {@link Stack.natsPprofUrl}), so its CPU profile can be taken during the load; the stack then uses it through
   * NATS_URL.
   */
  natsPprof?: boolean;
}

/**
 * Whether the bench's stack runs NATS with authentication: yes, as `npm start` does, unless the caller says
 * `STACK_NATS_AUTH=false` — or asks for nats-server's profiler ({@link StackOptions.natsPprof}): that server is
 * started here and reached through NATS_URL, and the stack provisions and hands out credentials only for a
 * nats-server of its own.
 */
export function benchNatsAuth(o: Pick<StackOptions, "natsPprof" | "env">, env = process.env): boolean {
  if (o.natsPprof) return false;
  const v = (o.env?.["STACK_NATS_AUTH"] ?? env["STACK_NATS_AUTH"] ?? "").trim().toLowerCase();
  return !["false", "0", "no", "off"].includes(v);
}

/** Runs SQL on DATABASE_URL with psql-free `pg`. */
async function sql(url: string, text: string): Promise<void> {
  const pg = (await import("pg")).default;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
}

/**
 * Starts the production stack and resolves once it printed {@link READY_MESSAGE}.
 *
 * Every port is a picked free one, and a free port is free only until someone binds it: when the stack, nats-server's
 * profiler or an extra replica exits because one was taken in between, it is started again on fresh ports
 * ({@link onFreshPorts}, at most PORT_ATTEMPTS times).
 */
export async function startStack(o: StackOptions): Promise<Stack> {
  const dataDir = await mkdtemp(join(tmpdir(), `shopstream-bench-${o.label}-`));
  const used = new Set<number>([4222]);
  /** A free port, never 4222 and never one handed out before to this stack. */
  const pick: PortPicker = async (host) => {
    for (;;) {
      const p = await freePort(host);
      if (!used.has(p)) {
        used.add(p);
        return p;
      }
    }
  };
  const databaseUrl = process.env.DATABASE_URL;
  const auditSchema = databaseUrl
    ? `bench_${Date.now().toString(36)}_${o.label.replace(/\W/g, "_")}`
    : undefined;
  const natsAuth = benchNatsAuth(o);
  const baseEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...o.env,
    STACK_NATS_AUTH: String(natsAuth),
    STACK_MODE: "production",
    STACK_LOG_FORMAT: "raw",
    NO_COLOR: "1",
    DATA_DIR: dataDir,
    STACK_READY_TIMEOUT_MS: String(o.readyTimeoutMs ?? 120_000),
    ...(auditSchema ? { AUDIT_SCHEMA: auditSchema } : {}),
    ...(o.nodeOptions ? { NODE_OPTIONS: o.nodeOptions } : {}),
  };
  delete baseEnv.NATS_URL;
  let ownNats: NatsServer | undefined;
  let natsPprofUrl: string | undefined;
  if (o.natsPprof) {
    // startNatsServer handles its own ports; the profiler's port is an extra argument, so it is retried here.
    ownNats = await onFreshPorts(
      1,
      async ([pprofPort]) => {
        try {
          const server = await startNatsServer({
            storeDir: join(dataDir, "nats"),
            serverName: "shopstream",
            extraArgs: ["--profile", String(pprofPort)],
            pickPort: pick,
          });
          natsPprofUrl = `http://127.0.0.1:${pprofPort}`;
          return server;
        } catch (err) {
          if (err instanceof NatsServerError && portsInUse(err.output).includes(pprofPort!)) {
            throw new PortTakenError(pprofPort!, err.message);
          }
          throw err;
        }
      },
      { pickPort: pick },
    );
  }
  const logFile = join(dataDir, "stack.log");
  // NATS_PORT (unless nats-server runs here) and <NAME>_PORT for every process.
  const portNames = [...(ownNats ? [] : ["NATS_PORT"]), ...stackProcesses.map((p) => p.portEnv)];
  const run = await onFreshPorts(
    portNames.length,
    async (picked) => {
      const ports = Object.fromEntries(portNames.map((n, i) => [n, String(picked[i])]));
      const env: NodeJS.ProcessEnv = { ...baseEnv, ...ports };
      if (ownNats) {
        env.NATS_URL = ownNats.url;
        delete env.NATS_PORT;
      }
      const fd = openSync(logFile, "w");
      const child: ChildProcess = spawn(process.execPath, [join(SYSTEM_ROOT, "dist/stack/main.js")], {
        cwd: SYSTEM_ROOT,
        env,
        stdio: ["ignore", fd, fd],
      });
      closeSync(fd);
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      let dead = false;
      void exited.then(() => (dead = true));
      const deadline = Date.now() + (o.readyTimeoutMs ?? 120_000) + 10_000;
      for (;;) {
        const text = await readFile(logFile, "utf8").catch(() => "");
        if (text.includes(READY_MESSAGE)) break;
        if (dead || Date.now() > deadline) {
          child.kill("SIGKILL");
          await exited;
          const tail = text.split("\n").slice(-30).join("\n");
          const taken = dead ? takenPortIn(text, picked) : undefined;
          if (taken !== undefined) throw new PortTakenError(taken, tail);
          throw new Error(`the stack did not start; its output (${logFile}):\n${tail}`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      return { child, exited, ports, env, isDead: () => dead };
    },
    { pickPort: pick },
  );
  const { child, exited, ports, env } = run;
  const natsPort = ownNats ? ownNats.port : Number(ports.NATS_PORT);
  const monitorOverride = ownNats?.monitorUrl;
  const urls = Object.fromEntries(
    stackProcesses.map((p) => [p.name, `http://127.0.0.1:${ports[p.portEnv]}`]),
  ) as Stack["urls"];
  const pid = child.pid!;
  const log = await readFile(logFile, "utf8").catch(() => "");
  const monitorUrl = monitorOverride ?? /(http:\/\/[\d.]+:\d+)\/varz/.exec(log)?.[1];
  // Extra replicas: the same compiled entry point with the environment the supervisor gives its own child, on a
  // port of their own; they join the service's durable consumers.
  // The stack created the NATS credentials under its DATA_DIR (kept on a second read).
  const secrets: NatsSecrets | undefined = natsAuth ? await ensureNatsSecrets(dataDir) : undefined;
  const extras: { name: string; child: ChildProcess; exited: Promise<void> }[] = [];
  for (const [name, count] of Object.entries(o.extraReplicas ?? {}) as [ProcessName, number][]) {
    const proc = processNamed(name);
    for (let r = 1; r <= count; r++) {
      const extra = await onFreshPorts(
        1,
        async ([port]) => {
          const cenv = childEnv({
            parent: env,
            name,
            port: port!,
            natsUrl: `nats://127.0.0.1:${natsPort}`,
            logLevel: env.LOG_LEVEL ?? "info",
            dataDir,
            paymentGatewayUrl: urls["payment-gateway"],
            mailProviderUrl: urls["mail-provider"],
            ...(secrets && isServiceUser(name) ? { nats: secrets.env(name) } : {}),
          });
          // Each replica keeps its own local files (PGlite cannot be shared; KV state lives in NATS anyway).
          cenv.DATA_DIR = join(dataDir, `${name}-replica${r}`);
          const replicaLog = join(dataDir, `${name}-replica${r}.log`);
          const efd = openSync(replicaLog, "w");
          const c = spawn(process.execPath, ["--enable-source-maps", join(SYSTEM_ROOT, proc.compiled)], {
            cwd: SYSTEM_ROOT,
            env: cenv,
            stdio: ["ignore", efd, efd],
          });
          closeSync(efd);
          const e = {
            name: `${name}#${r + 1}`,
            child: c,
            exited: new Promise<void>((res) => c.once("exit", () => res())),
          };
          let gone = false;
          void e.exited.then(() => (gone = true));
          const readyBy = Date.now() + 60_000;
          for (;;) {
            const ok = await fetch(`http://127.0.0.1:${port}${proc.readyPath}`).then(
              (x) => x.ok,
              () => false,
            );
            if (ok) return e;
            if (gone || Date.now() > readyBy) {
              c.kill("SIGKILL");
              await e.exited;
              const text = await readFile(replicaLog, "utf8").catch(() => "");
              const taken = gone ? takenPortIn(text, [port!]) : undefined;
              if (taken !== undefined) throw new PortTakenError(taken, text.slice(-500));
              throw new Error(
                `replica ${r + 1} of ${name} did not become ready; its output (${replicaLog}):\n${text.slice(-2000)}`,
              );
            }
            await new Promise((res) => setTimeout(res, 200));
          }
        },
        { pickPort: pick },
      );
      extras.push(extra);
    }
  }
  const stack: Stack = {
    pid,
    natsUrl: `nats://127.0.0.1:${natsPort}`,
    natsAuth,
    natsConnectOptions: (user) => authOptions(secrets?.auth(user)),
    monitorUrl,
    natsPprofUrl,
    urls,
    dataDir,
    logFile,
    auditSchema,
    processes: () => {
      const m = processTree(pid);
      for (const e of extras)
        if (e.child.pid !== undefined && e.child.exitCode === null) m.set(e.name, e.child.pid);
      if (ownNats?.pid !== undefined && ownNats.running) m.set("nats-server", ownNats.pid);
      return m;
    },
    async stop() {
      for (const e of extras) e.child.kill("SIGTERM");
      await Promise.all(extras.map((e) => e.exited));
      if (!run.isDead()) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 60_000);
        await exited;
        clearTimeout(t);
      }
      if (ownNats) {
        await ownNats.stop();
        await ownNats.cleanup();
      }
      if (databaseUrl && auditSchema) {
        await sql(databaseUrl, `DROP SCHEMA IF EXISTS "${auditSchema}" CASCADE`).catch(() => undefined);
      }
      if (!process.env.BENCH_KEEP_DATA) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return stack;
}

/** Children of every process: pid → parent pid, read from /proc. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.set(Number(d), Number(rest[1]));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** A readable name of a process of the stack, from its command line. */
function nameOf(pid: number, rootPid: number): string {
  let cmd = "";
  try {
    cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return `pid-${pid}`;
  }
  if (pid === rootPid) return "stack-front";
  if (cmd.includes("--supervisor")) return "stack-supervisor";
  if (cmd.includes("nats-server")) return "nats-server";
  const m = /dist\/(?:services|simulators)\/([\w-]+)\/main\.js/.exec(cmd);
  if (m) return m[1]!;
  if (cmd.includes("postgres")) return "postgres";
  return cmd.split(" ")[0]?.split("/").pop() ?? `pid-${pid}`;
}

/** Every descendant of `root` (and `root`), by name. */
export function processTree(root: number): Map<string, number> {
  const pp = parents();
  const kids = new Map<number, number[]>();
  for (const [pid, ppid] of pp) {
    const list = kids.get(ppid) ?? [];
    list.push(pid);
    kids.set(ppid, list);
  }
  const out = new Map<string, number>();
  const walk = (pid: number) => {
    let name = nameOf(pid, root);
    while (out.has(name)) name += "'";
    out.set(name, pid);
    for (const k of kids.get(pid) ?? []) walk(k);
  };
  if (pp.has(root)) walk(root);
  return out;
}
