/**
 * The local stack's supervisor: starts nats-server (unless `NATS_URL` is given) and every process of
 * {@link stackProcesses} as its own child process, tier by tier, waits until each is ready, prints the URLs, and on
 * SIGTERM/SIGINT stops them in reverse tiers (orders first, simulators last), then nats-server.
 *
 * {@link runStack} is called by `main.ts` in a process of its own session, so a Ctrl-C in the terminal reaches
 * only `main.ts`, which forwards it here once: the children never see the terminal's SIGINT and stop in order.
 */
import { devSecretFromEnv, devSecretPath, ensureDevSecret, signDevToken } from "../lib/http/dev-token.js";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type Static, type TInteger, Type } from "@sinclair/typebox";
import { Env, parseConfig } from "../lib/config.js";
import { ConfigError } from "../lib/errors.js";
import { StackChild, describeExit } from "./child.js";
import { type NatsServer, NatsServerError, findNatsServerBinary, startNatsServer } from "./nats-server.js";
import { connect } from "@nats-io/transport-node";
import { authOptions } from "../lib/messaging/connection.js";
import { isServiceUser } from "../lib/messaging/permissions.js";
import { provisionAll, type ProvisionReport } from "../tools/provisioning.js";
import { ensureNatsSecrets, type NatsSecrets } from "./nats-auth.js";
import { Printer, paint } from "./output.js";
import {
  type StackProcess,
  childEnv,
  duplicatePorts,
  nodeArgs,
  processNamed,
  resolveEntryPoint,
  stackProcesses,
} from "./processes.js";

/** The line that tells a person (and the stack's test) that everything is up. */
export const READY_MESSAGE = "ShopStream is ready";

/** The default NATS client port, used when free and `NATS_PORT` is not set. */
const DEFAULT_NATS_PORT = 4222;

const StackVars = {
  NATS_URL: Type.Optional(
    Type.String({
      minLength: 1,
      description: "use this NATS (comma-separated URLs) instead of starting one",
    }),
  ),
  NATS_SERVER_BIN: Type.Optional(Type.String({ minLength: 1, description: "nats-server executable to run" })),
  NATS_PORT: Type.Optional(
    Type.Integer({
      minimum: 1,
      maximum: 65535,
      description:
        "client port of the nats-server the stack starts (default: 4222 if free, else any free port)",
    }),
  ),
  DATA_DIR: Type.String({ minLength: 1, default: "./.data", description: "where all local state is kept" }),
  STACK_NATS_AUTH: Type.Boolean({
    default: true,
    description:
      "run nats-server with authentication (one user per service, credentials under DATA_DIR/secrets) and provision as admin; false = no authentication, services provision themselves",
  }),
  LOG_LEVEL: Env.logLevel(),
  HOST: Type.String({ minLength: 1, default: "127.0.0.1", description: "interface the processes listen on" }),
  STACK_MODE: Type.Union([Type.Literal("dev"), Type.Literal("production")], {
    default: "dev",
    description: "dev runs src/**/*.ts through tsx, production runs dist/**/*.js (npm run build)",
  }),
  STACK_ONLY: Type.Optional(
    Type.String({
      minLength: 1,
      description: "comma-separated names of the processes to start (default: all)",
    }),
  ),
  STACK_READY_TIMEOUT_MS: Env.ms(60_000, "how long a process may take to become ready"),
  STACK_STOP_TIMEOUT_MS: Env.ms(30_000, "how long a process may take to stop after SIGTERM before SIGKILL"),
  STACK_LOG_FORMAT: Type.Union([Type.Literal("auto"), Type.Literal("pretty"), Type.Literal("raw")], {
    default: "auto",
    description: "pretty shortens pino JSON lines; auto = pretty when stdout is a terminal",
  }),
};
const PortVars: Record<string, TInteger> = Object.fromEntries(
  stackProcesses.map((p) => [
    p.portEnv,
    Type.Integer({ minimum: 1, maximum: 65535, default: p.defaultPort, description: `${p.name} HTTP port` }),
  ]),
);

/** The stack's configuration: its own variables plus `<NAME>_PORT` for every process. */
export const StackConfig = Type.Object({ ...StackVars, ...PortVars });
type StackConfig = Static<typeof StackConfig>;

/** A process the stack will start, with its port and entry point. */
interface Planned {
  proc: StackProcess;
  port: number;
  url: string;
  entry: string;
}

/** `npm run provision` in-process: every stream, consumer and bucket, as the `admin` user. */
async function provisionAsAdmin(
  url: string,
  secrets: NatsSecrets,
  env: NodeJS.ProcessEnv,
): Promise<ProvisionReport> {
  const nc = await connect({
    servers: url,
    name: "shopstream-stack-provision",
    timeout: 5_000,
    ...authOptions(secrets.auth("admin")),
  });
  try {
    return await provisionAll(nc, env);
  } finally {
    await nc.close();
  }
}

/** The repository root: this file is `src/stack/supervisor.ts` or `dist/stack/supervisor.js`. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/**
 * Runs the whole local system until SIGTERM/SIGINT (or the front process going away) and resolves with the exit
 * code: 0 after a requested stop, 1 when something could not start (with a message saying what and why), 130 when
 * a second signal forced everything down.
 */
export async function runStack(env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const startedAt = Date.now();
  const color = wantColor(env, process.stdout.isTTY);
  // A closed terminal or `npm start | head` must not crash the stack: it keeps running and stops cleanly.
  process.stdout.on("error", () => undefined);
  process.stderr.on("error", () => undefined);
  const width = Math.max("nats-server".length, ...stackProcesses.map((p) => p.name.length));
  let printer = new Printer({ width, color, pretty: false, out: writeOut, err: writeErr });
  const fail = (msg: string): number => {
    printer.line("stack", paint(msg, 31, color), "err");
    return 1;
  };

  // 1. Configuration, validated up front.
  let config: StackConfig;
  try {
    config = parseConfig(StackConfig, env);
  } catch (err) {
    if (err instanceof ConfigError) return fail(err.message);
    throw err;
  }
  const pretty =
    config.STACK_LOG_FORMAT === "pretty" || (config.STACK_LOG_FORMAT === "auto" && process.stdout.isTTY);
  printer = new Printer({ width, color, pretty, out: writeOut, err: writeErr });
  const say = (msg: string) => printer.line("stack", msg);
  const warn = (msg: string) => printer.line("stack", paint(`warning: ${msg}`, 33, color), "err");

  const dataDir = resolve(config.DATA_DIR);
  const host = config.HOST;
  const reach = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;

  // 2. Which processes, on which ports, from which files.
  let selected = stackProcesses;
  if (config.STACK_ONLY !== undefined) {
    const names = config.STACK_ONLY.split(",").map((n) => n.trim());
    const unknown = names.filter((n) => !stackProcesses.some((p) => p.name === n));
    if (unknown.length > 0) {
      return fail(
        `STACK_ONLY names unknown processes: ${unknown.join(", ")} (known: ${stackProcesses.map((p) => p.name).join(", ")})`,
      );
    }
    selected = stackProcesses.filter((p) => names.includes(p.name));
  }
  const ports = config as unknown as Record<string, number>; // the <NAME>_PORT variables, validated above
  const urlOf = (proc: StackProcess) => `http://${reach}:${ports[proc.portEnv] ?? proc.defaultPort}`;
  const planned: Planned[] = [];
  const noEntry: string[] = [];
  for (const proc of selected) {
    const entry = resolveEntryPoint(proc, ROOT, config.STACK_MODE);
    if (entry.status === "not-built") {
      noEntry.push(`${proc.name} cannot start: ${entry.reason}`);
      continue;
    }
    if (entry.status === "missing") {
      noEntry.push(
        `${proc.name} cannot start: ${entry.reason} (every process of the stack needs its entry point: ` +
          `restore the file, or name the processes to start in STACK_ONLY)`,
      );
      continue;
    }
    planned.push({
      proc,
      port: ports[proc.portEnv] ?? proc.defaultPort,
      url: urlOf(proc),
      entry: entry.file,
    });
  }
  // Every entry point is needed (a missing one is an error, not a skip): all of them reported at once.
  if (noEntry.length > 0) return fail(noEntry.join("\n"));

  // 3. nats-server: found before anything starts, so a missing one fails at once with how to install it.
  let natsBinary: string | undefined;
  if (config.NATS_URL === undefined) {
    try {
      natsBinary = findNatsServerBinary(config.NATS_SERVER_BIN);
    } catch (err) {
      if (err instanceof NatsServerError) return fail(err.message);
      throw err;
    }
  }

  // 4. Ports: all free, none twice; every conflict reported at once, naming the variable that moves it.
  const portClaims: { name: string; portEnv: string; port: number }[] = planned.map((p) => ({
    name: p.proc.name,
    portEnv: p.proc.portEnv,
    port: p.port,
  }));
  if (natsBinary !== undefined && config.NATS_PORT !== undefined) {
    portClaims.unshift({ name: "nats-server", portEnv: "NATS_PORT", port: config.NATS_PORT });
  }
  const conflicts = duplicatePorts(portClaims).map(
    ([a, b, port]) => `${a} and ${b} are both set to port ${port}: give one of them another port`,
  );
  for (const c of portClaims) {
    const problem = await portProblem(host, c.port);
    if (problem !== undefined) {
      conflicts.push(
        `${c.name} cannot start: port ${c.port} on ${host} ${problem}; stop what uses it, or set ${c.portEnv} to another port`,
      );
    }
  }
  if (conflicts.length > 0) return fail(conflicts.join("\n"));

  // 5. One stack per data directory.
  const lockProblem = await lockDataDir(dataDir);
  if (lockProblem !== undefined) return fail(lockProblem);

  // From here on something runs: stop requests and crashes go through one path.
  const children: StackChild[] = [];
  let nats: NatsServer | undefined;
  let secrets: NatsSecrets | undefined;
  let phase: "starting" | "running" | "stopping" = "starting";
  const isStopping = () => phase === "stopping";
  let forced = false;
  let requestStop: (why: string) => void = () => undefined;
  const stopRequested = new Promise<void>((res) => {
    requestStop = (why) => {
      if (phase === "stopping" && why.startsWith("SIG")) {
        if (!forced) {
          forced = true;
          warn(`${why} again: killing everything now`);
          for (const c of children) c.kill("SIGKILL");
          void nats?.kill();
        }
        return;
      }
      if (phase !== "stopping") {
        say(`stopping (${why}${why.startsWith("SIG") ? "; send it again to kill everything at once" : ""})`);
      }
      phase = "stopping";
      res();
    };
  });
  const onSignal = (sig: NodeJS.Signals) => requestStop(sig);
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(sig, onSignal);
  // main.ts holds an IPC channel to us: when it goes away (killed, terminal closed), stop too.
  process.channel?.unref();
  process.on("disconnect", () => requestStop("the front process went away"));
  process.on("exit", () => {
    for (const c of children) c.kill("SIGKILL");
  });
  // Child pipes keep the event loop alive, but nats-server's are unref'd and there may be no other child.
  const keepAlive = setInterval(() => undefined, 60_000);

  const code = await (async (): Promise<number> => {
    // 6. nats-server on NATS_PORT, else 4222 if free, else a free port; data kept under DATA_DIR/nats.
    let natsUrl = config.NATS_URL ?? "";
    if (natsBinary !== undefined) {
      let port = config.NATS_PORT;
      if (port === undefined) {
        if ((await portProblem(host, DEFAULT_NATS_PORT)) === undefined) port = DEFAULT_NATS_PORT;
        else say(`port ${DEFAULT_NATS_PORT} is taken (another NATS?): nats-server gets a free port`);
      }
      const showAll = config.LOG_LEVEL === "debug" || config.LOG_LEVEL === "trace";
      if (config.STACK_NATS_AUTH) {
        // Passwords created on the first start and kept; the server configuration rewritten from the permissions.
        secrets = await ensureNatsSecrets(dataDir);
      }
      try {
        nats = await startNatsServer({
          ...(secrets ? { configFile: secrets.configFile } : {}),
          binary: natsBinary,
          host,
          port,
          storeDir: join(dataDir, "nats"),
          removeStoreDir: false,
          serverName: "shopstream",
          onOutput: (line) => {
            if (showAll || /\[(WRN|ERR|FTL)\]/.test(line)) printer.line("nats-server", line, "err");
          },
        });
      } catch (err) {
        if (err instanceof NatsServerError) return fail(`nats-server did not start: ${err.message}`);
        throw err;
      }
      natsUrl = nats.url;
      say(`nats-server ready at ${nats.url} (JetStream data in ${nats.storeDir})`);
      if (secrets) {
        say(
          `NATS authentication on: one user per service, credentials in ${secrets.dir} (docs/security-nats.md)`,
        );
        // Services run with restricted users that may not create streams, consumers or buckets: provision first.
        const failure = await provisionAsAdmin(nats.url, secrets, env).then(
          (report) => {
            const created = report.filter((r) => r.outcome !== "unchanged").length;
            say(`provisioned streams, consumers and KV buckets as admin (${created} created or updated)`);
            return undefined;
          },
          (err: unknown) => (err instanceof Error ? err.message : String(err)),
        );
        if (failure !== undefined) return fail(`provisioning failed: ${failure}`);
      }
    } else {
      say(`using NATS at ${natsUrl} (NATS_URL)`);
    }

    // The development token secret every process verifies bearer tokens with (and `npm run token` signs with),
    // created on the first start (mode 0600). A configured JWKS URL or public key makes the services ignore it.
    if (env["AUTH_HS256_SECRET_FILE"] === undefined) {
      const secretFile = devSecretPath(dataDir);
      await ensureDevSecret(secretFile);
      say(`development token secret in ${secretFile} (npm run token -- <customerId> | --admin)`);
    }

    // 7. Tier by tier, every process as its own child; a tier starts once the previous one is ready.
    const envInput = {
      parent: env,
      natsUrl,
      logLevel: config.LOG_LEVEL,
      dataDir,
      paymentGatewayUrl: urlOf(processNamed("payment-gateway")),
      mailProviderUrl: urlOf(processNamed("mail-provider")),
      serviceUrls: Object.fromEntries(stackProcesses.map((p) => [p.name, urlOf(p)])),
    };
    const tsxLoader = () => import.meta.resolve("tsx");
    for (const tier of [0, 1, 2] as const) {
      const group = planned.filter((p) => p.proc.tier === tier);
      if (group.length === 0) continue;
      const started = group.map((p) => {
        say(`starting ${p.proc.name} on port ${p.port} (${relativeToRoot(p.entry)})`);
        const child = StackChild.spawn(p.proc, {
          url: p.url,
          args: nodeArgs(p.entry, tsxLoader),
          env: childEnv({
            ...envInput,
            name: p.proc.name,
            port: p.port,
            ...(secrets && isServiceUser(p.proc.name) ? { nats: secrets.env(p.proc.name) } : {}),
            // The console has the operator's rights on its own NATS user (docs/security-nats.md).
            ...(secrets && p.proc.name === "console" ? { nats: secrets.env("console") } : {}),
          }),
          cwd: ROOT,
          printer,
        });
        children.push(child);
        return child;
      });
      const results = await Promise.all(
        started.map((c) => c.waitReady(config.STACK_READY_TIMEOUT_MS, stopRequested)),
      );
      if (isStopping()) return 0;
      const failed = started.flatMap((c, i) => {
        const r = results[i];
        if (r === undefined || r.ok) return [];
        const hint = r.timedOut ? " (if it is just slow, raise STACK_READY_TIMEOUT_MS)" : "";
        return [{ child: c, reason: r.reason + hint }];
      });
      if (failed.length > 0) {
        phase = "stopping";
        for (const f of failed) {
          fail(`${f.reason}; its last output:\n${indent(f.child.lastLines.slice(-20))}`);
        }
        return 1;
      }
      for (const c of started) say(`${c.proc.name} ready`);
    }

    // 8. The summary, then run until asked to stop; a child that dies now is reported, the others keep running.
    phase = "running";
    for (const c of children) {
      void c.exited.then((exit) => {
        if (c.stopping || phase === "stopping") return;
        printer.line(
          "stack",
          paint(
            `${c.proc.name} exited unexpectedly (${describeExit(exit)}); the rest keeps running. ` +
              `Restart the stack to bring it back (nothing is lost: its messages wait in JetStream). Last output:\n` +
              indent(c.lastLines.slice(-20)),
            31,
            color,
          ),
          "err",
        );
      });
    }
    printSummary(printer, {
      seconds: (Date.now() - startedAt) / 1000,
      nats,
      natsUrl,
      planned,
      dataDir,
      consoleSignIn: await consoleSignInUrl(planned, env, dataDir),
    });
    await stopRequested;
    return 0;
  })().catch((err: unknown) =>
    fail(`unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`),
  );

  // 9. Stop: orders first (closes the front door), then the other services, then the simulators, then NATS.
  phase = "stopping";
  let clean = true;
  for (const tier of [2, 1, 0] as const) {
    const group = children.filter((c) => c.proc.tier === tier);
    await Promise.all(
      group.map(async (c) => {
        const wasRunning = c.running;
        const t0 = Date.now();
        const exit = await c.stop(config.STACK_STOP_TIMEOUT_MS);
        if (!wasRunning) return;
        if (exit.forced) {
          clean = false;
          warn(`${c.proc.name} did not stop within ${config.STACK_STOP_TIMEOUT_MS} ms: killed`);
        } else {
          say(`${c.proc.name} stopped (${describeExit(exit)}, ${Date.now() - t0} ms)`);
        }
      }),
    );
  }
  if (nats !== undefined) {
    const exit = await nats.stop();
    if (exit?.forced) clean = false;
    say(`nats-server stopped${exit?.forced ? " (killed)" : ""}`);
  }
  await rm(join(dataDir, "stack.pid"), { force: true });
  clearInterval(keepAlive);
  if (forced) return 130;
  if (code === 0) say(clean ? "all stopped" : "all stopped, not all of them cleanly");
  return code;
}

/** Whether to colour output: `FORCE_COLOR` (non-0) wins, `NO_COLOR` forbids, else a terminal decides. */
function wantColor(env: NodeJS.ProcessEnv, isTTY: boolean): boolean {
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== "" && env.FORCE_COLOR !== "0") return true;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== "") return false;
  return isTTY;
}

function writeOut(text: string): void {
  process.stdout.write(text);
}

function writeErr(text: string): void {
  process.stderr.write(text);
}

function indent(lines: readonly string[]): string {
  return lines.length === 0 ? "    (no output)" : lines.map((l) => `    ${l}`).join("\n");
}

function relativeToRoot(file: string): string {
  return file.startsWith(ROOT + "/") ? file.slice(ROOT.length + 1) : file;
}

/** Why nothing can listen on `host:port` right now (e.g. `is already in use`), or undefined when it can. */
export function portProblem(host: string, port: number): Promise<string | undefined> {
  return new Promise((resolvePromise) => {
    const srv = createServer();
    srv.once("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EADDRINUSE") resolvePromise("is already in use");
      else if (err.code === "EACCES") resolvePromise("needs privileges to listen on");
      else resolvePromise(`cannot be listened on (${err.code ?? err.message})`);
    });
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolvePromise(undefined)));
  });
}

/**
 * Claims `dir` for this stack with a pid file, so two stacks never share one JetStream store; a stale file (its
 * process is gone) is taken over. Resolves with the problem, or undefined when claimed.
 */
async function lockDataDir(dir: string): Promise<string | undefined> {
  const file = join(dir, "stack.pid");
  await mkdir(dir, { recursive: true });
  const holder = Number((await readFile(file, "utf8").catch(() => "")).trim());
  if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
    return `another stack (pid ${holder}) is running with DATA_DIR ${dir}: stop it, or set DATA_DIR to another directory (or delete ${file} if no stack runs)`;
  }
  await writeFile(file, `${process.pid}\n`);
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** How long the console link `npm start` prints stays valid. */
export const CONSOLE_LINK_TTL_S = 12 * 3600;

/**
 * The console URL that signs in: a short-lived operator token (12 h) signed with the development secret, in the URL
 * fragment (never sent to a server, removed from the address bar by the page). Undefined without a console, or when
 * tokens come from elsewhere (a JWKS URL or public key: then paste one).
 */
async function consoleSignInUrl(
  planned: readonly Planned[],
  env: NodeJS.ProcessEnv,
  dataDir: string,
): Promise<string | undefined> {
  const consoleProc = planned.find((p) => p.proc.name === "console");
  if (!consoleProc || env["AUTH_JWKS_URL"] || env["AUTH_PUBLIC_KEY"]) return undefined;
  try {
    const secret = await devSecretFromEnv({ ...env, DATA_DIR: dataDir });
    const token = await signDevToken(secret, { sub: "console", operator: true, ttlS: CONSOLE_LINK_TTL_S });
    return `${consoleProc.url}/#token=${token}`;
  } catch {
    return undefined;
  }
}

/** The table printed once everything is ready. */
function printSummary(
  printer: Printer,
  s: {
    seconds: number;
    nats: NatsServer | undefined;
    natsUrl: string;
    planned: readonly Planned[];
    dataDir: string;
    consoleSignIn?: string | undefined;
  },
): void {
  const rows: string[][] = [["process", "url", "health", "metrics"]];
  if (s.nats !== undefined) {
    rows.push(["nats-server", s.nats.url, `${s.nats.monitorUrl}/healthz`, `${s.nats.monitorUrl}/varz`]);
  } else {
    rows.push(["nats (external)", s.natsUrl, "-", "-"]);
  }
  for (const p of [...s.planned].sort((a, b) => b.proc.tier - a.proc.tier)) {
    rows.push([p.proc.name, p.url, `${p.url}/health`, p.proc.metrics ? `${p.url}/metrics` : "-"]);
  }
  const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const table = rows.map(
    (r) => "  " + r.map((cell, i) => (i < 3 ? cell.padEnd(widths[i] ?? 0) : cell)).join("  "),
  );
  printer.line(
    "stack",
    `${READY_MESSAGE}: ${s.planned.length} ${s.planned.length === 1 ? "process" : "processes"} in ${s.seconds.toFixed(1)} s (data in ${s.dataDir})`,
  );
  printer.plain(
    [
      "",
      ...table,
      "",
      "  Services also answer /ready (readiness); the simulators' APIs are in docs/simulators.md.",
      "",
    ].join("\n"),
  );
  const orders = s.planned.find((p) => p.proc.name === "orders");
  if (orders !== undefined) {
    printer.plain(
      [
        "Try (every call carries a bearer token; `npm run token` signs one with this stack's development secret):",
        "  ADA=$(npm run -s token -- cus_1)",
        `  curl -s -X POST ${orders.url}/orders -H "authorization: Bearer $ADA" -H 'content-type: application/json' \\`,
        `    -d '{"email":"ada@example.com","items":[{"sku":"SKU-MUG","quantity":1}]}'`,
        `  curl -s ${orders.url}/orders/<orderId> -H "authorization: Bearer $ADA"`,
        "",
      ].join("\n"),
    );
  }
  if (s.consoleSignIn !== undefined) {
    printer.plain(
      [
        "Operations console (signed in as an operator for 12 hours; docs/console.md):",
        `  ${s.consoleSignIn}`,
        "",
      ].join("\n"),
    );
  }
  printer.plain("Press Ctrl-C to stop.");
}
