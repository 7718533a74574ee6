/**
 * Real `nats-server` child processes for the local stack and the tests: one server or a small cluster, on free
 * ports with temporary store dirs, that can be stopped, killed, signalled and restarted with their data intact.
 *
 * Libraries never read configuration from `process.env`: entry points pass `NATS_SERVER_BIN` etc. explicitly.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { type WriteStream, accessSync, constants as fsConstants, createWriteStream, statSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join, sep } from "node:path";
import type { Readable } from "node:stream";
import { ShopStreamError } from "../lib/errors.js";

/** How many lines of server output each {@link NatsServer} keeps for error messages and {@link NatsServer.output}. */
export const OUTPUT_RING_SIZE = 200;

/** Where {@link findNatsServerBinary} looks after `PATH`, in order. */
export const DEFAULT_NATS_SERVER_LOCATIONS: readonly string[] = [
  "/usr/sbin/nats-server",
  "/usr/local/bin/nats-server",
];

const NOT_FOUND_HINT =
  "nats-server not found: install it (Debian/Ubuntu: `sudo apt-get install nats-server`, macOS: `brew install nats-server`) or set NATS_SERVER_BIN, or point NATS_URL at a running server";

const ERROR_HEAD_LINES = 10;
const ERROR_TAIL_LINES = 30;
const POLL_INTERVAL_MS = 50;
const PROBE_TIMEOUT_MS = 1_000;

/**
 * A failure to find, start or drive a `nats-server` process.
 *
 * `code` is one of `NATS_SERVER_NOT_FOUND`, `NATS_SERVER_START_FAILED` (the process could not be spawned or exited
 * before it was ready), `NATS_SERVER_NOT_READY` (readiness timed out; the process has been killed) or
 * `NATS_SERVER_NOT_RUNNING`. `output` holds the last lines the server printed, also appended to the message.
 */
export class NatsServerError extends ShopStreamError {
  override readonly name: string = "NatsServerError";
  /** What the server printed that explains the failure (its first and last lines), oldest first; may be empty. */
  readonly output: readonly string[];

  constructor(code: string, message: string, opts: { output?: readonly string[]; cause?: unknown } = {}) {
    const output = opts.output ?? [];
    const full = output.length > 0 ? `${message}\n--- nats-server output ---\n${output.join("\n")}` : message;
    super(code, full, { retryable: false, status: 500, cause: opts.cause });
    this.output = output;
  }
}

/**
 * No usable `nats-server` executable was found; the message says how to install one or what to set instead.
 *
 * `searched` lists every path that was tried, in order.
 */
export class NatsServerNotFoundError extends NatsServerError {
  override readonly name: string = "NatsServerNotFoundError";
  /** Every candidate path that was checked. */
  readonly searched: readonly string[];

  constructor(searched: readonly string[]) {
    super("NATS_SERVER_NOT_FOUND", `${NOT_FOUND_HINT} (looked for: ${searched.join(", ") || "nothing"})`);
    this.searched = searched;
  }
}

/** Where {@link findNatsServerBinary} searches; both default to the real environment. */
export interface FindNatsServerOptions {
  /** A `PATH`-style directory list searched for `nats-server`; defaults to `process.env.PATH`. */
  path?: string;
  /** Absolute paths tried after `path`; defaults to {@link DEFAULT_NATS_SERVER_LOCATIONS}. */
  fallbacks?: readonly string[];
}

/**
 * The path of the `nats-server` executable to run.
 *
 * An `explicit` path (e.g. from `NATS_SERVER_BIN`) wins and is never silently replaced: if it is not an executable
 * file this throws. A bare name without a path separator is looked up on `path`. Without `explicit`, the first
 * executable `nats-server` on `path` is used, else the first of `fallbacks`. Throws {@link NatsServerNotFoundError}
 * (whose message says how to install it) when nothing is found.
 */
export function findNatsServerBinary(explicit?: string, opts: FindNatsServerOptions = {}): string {
  const dirs = (opts.path ?? process.env.PATH ?? "").split(delimiter).filter((d) => d !== "");
  let candidates: string[];
  if (explicit !== undefined && explicit !== "") {
    const isPath = explicit.includes("/") || explicit.includes(sep);
    candidates = isPath ? [explicit] : dirs.map((d) => join(d, explicit));
  } else {
    candidates = [
      ...dirs.map((d) => join(d, "nats-server")),
      ...(opts.fallbacks ?? DEFAULT_NATS_SERVER_LOCATIONS),
    ];
  }
  const found = candidates.find(isExecutableFile);
  if (found === undefined) throw new NatsServerNotFoundError(candidates);
  return found;
}

function isExecutableFile(p: string): boolean {
  try {
    accessSync(p, fsConstants.X_OK);
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/**
 * A TCP port that was free on `host` a moment ago: the OS picks one for a listener on port 0, which is then closed.
 *
 * Another process (any outgoing connection, too) may take it before it is used: whoever binds it later must handle
 * "address already in use". {@link startNatsServer} and {@link startNatsCluster} do, by starting again on fresh ports
 * (at most {@link PORT_ATTEMPTS} times) when a port they picked themselves was taken.
 */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

/**
 * Chooses a port for a server to listen on, given the bind address; {@link freePort} by default. The launchers take
 * one as `pickPort`, so a test can take a chosen port before nats-server binds it, as a stray connection might.
 */
export type PortPicker = (host: string) => Promise<number>;

/**
 * How many times {@link startNatsServer} and {@link startNatsCluster} start with freshly picked ports when one they
 * picked was taken between its choice and nats-server's bind.
 */
export const PORT_ATTEMPTS = 5;

/**
 * The ports nats-server said it could not listen on because they were in use (client, monitor, route or profiler
 * port: each fatal message names `listen tcp <host>:<port>: bind: address already in use`), in `output` order.
 */
export function portsInUse(output: readonly string[]): number[] {
  const ports: number[] = [];
  for (const line of output) {
    const m = /listen tcp \S*:(\d+): bind: address already in use/.exec(line);
    if (m !== null) ports.push(Number(m[1]));
  }
  return ports;
}

/**
 * Whether `err` is a start failure caused only by ports that are in `picked` (chosen by the launcher, so fresh ones
 * may be chosen instead). Any other failure, and a taken port the caller asked for, is not.
 */
function failedOnPickedPorts(err: unknown, picked: ReadonlySet<number>): err is NatsServerError {
  if (!(err instanceof NatsServerError) || err.code !== "NATS_SERVER_START_FAILED") return false;
  const taken = portsInUse(err.output);
  return taken.length > 0 && taken.every((p) => picked.has(p));
}

/** The final error after {@link PORT_ATTEMPTS} starts that each lost a picked port. */
function portsExhausted(what: string, last: NatsServerError): NatsServerError {
  return new NatsServerError(
    "NATS_SERVER_START_FAILED",
    `${what} could not start after ${PORT_ATTEMPTS} attempts: each time a port it had picked (last: ${portsInUse(last.output).join(", ")}) was taken before nats-server could bind it`,
    { output: last.output, cause: last },
  );
}

/** A port from `pick` that is not in `taken` (to which it is then added): no two listeners share one. */
async function pickDistinct(pick: PortPicker, host: string, taken: Set<number>): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await pick(host);
    if (!taken.has(port)) {
      taken.add(port);
      return port;
    }
  }
  throw new NatsServerError(
    "NATS_SERVER_START_FAILED",
    `the port picker kept returning ports already in use`,
  );
}

/** Route settings that make a {@link NatsServer} a member of a NATS cluster. */
export interface NatsServerClusterOptions {
  /** Cluster name (`--cluster_name`); identical on every member. */
  name: string;
  /** Port this server listens on for routes (`--cluster nats://host:port`). */
  port: number;
  /** Route URLs of the other members (`--routes`), e.g. `nats://127.0.0.1:6222`. */
  routes: readonly string[];
}

/** Options for {@link startNatsServer}; every field is optional. */
export interface NatsServerOptions {
  /** Executable to run; resolved with {@link findNatsServerBinary} (so an explicit path must exist). */
  binary?: string;
  /** Client port; a free one when absent. Fixed for the life of the handle, including restarts. */
  port?: number;
  /** HTTP monitoring port (needed for readiness); a free one when absent. Fixed across restarts. */
  monitorPort?: number;
  /** Bind address for clients, monitoring and routes; default `127.0.0.1`. */
  host?: string;
  /** JetStream store dir (`-sd`); a new temp dir under `os.tmpdir()` when absent. Kept across restarts. */
  storeDir?: string;
  /** Remove `storeDir` in {@link NatsServer.cleanup}; default: only when the dir was created here. */
  removeStoreDir?: boolean;
  /** Enable JetStream (`-js`); default true. */
  jetstream?: boolean;
  /** `--server_name`; default `nats-<port>` (stable across restarts, as JetStream clustering needs). */
  serverName?: string;
  /** Join a cluster. Readiness then includes contact with a JetStream meta leader, so start peers concurrently. */
  cluster?: NatsServerClusterOptions;
  /**
   * A nats-server configuration file (`-c`), e.g. the `authorization` block written by src/stack/nats-auth.ts; the
   * command-line settings (ports, JetStream, store dir, cluster) override what it says about them.
   */
  configFile?: string;
  /** Further command-line arguments, appended last. */
  extraArgs?: readonly string[];
  /** Also append everything the server prints to this file. */
  logFile?: string;
  /** Called with each line the server prints (stdout and stderr), without the newline. */
  onOutput?: (line: string) => void;
  /** How long {@link NatsServer.start} waits for readiness before killing the process; default 20 s. */
  readyTimeoutMs?: number;
  /** How long {@link NatsServer.stop} waits after SIGTERM before sending SIGKILL; default 10 s. */
  stopTimeoutMs?: number;
  /**
   * How {@link startNatsServer} picks `port` and `monitorPort` when they are absent; default {@link freePort}. Called
   * again for a fresh port after one it picked was taken before nats-server bound it.
   */
  pickPort?: PortPicker;
}

/** Fully resolved settings of a {@link NatsServer}: what {@link startNatsServer} computes from the options. */
export type NatsServerSettings = NatsServerOptions & {
  binary: string;
  port: number;
  monitorPort: number;
  storeDir: string;
};

/** How a server process ended. */
export interface NatsServerExit {
  /** Exit code, or null when killed by a signal. nats-server 2.9 exits with 1 after a graceful SIGTERM. */
  code: number | null;
  /** Signal that ended the process, or null. */
  signal: NodeJS.Signals | null;
  /** True when it had to be ended with SIGKILL ({@link NatsServer.kill} or a {@link NatsServer.stop} timeout). */
  forced: boolean;
}

interface ProcessState {
  child: ChildProcess;
  exited: boolean;
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * A handle on one `nats-server` child process with fixed ports and store dir; create it with {@link startNatsServer}.
 *
 * The same handle can be started again after stop/kill ({@link NatsServer.restart}) on the same ports and store dir,
 * so JetStream data survives. The child never keeps the Node event loop alive on its own, and every server still
 * running when this process exits is SIGKILLed. Methods are not meant to be called concurrently on one handle.
 */
export class NatsServer {
  /** Path of the executable. */
  readonly binary: string;
  /** Bind address. */
  readonly host: string;
  /** Client port. */
  readonly port: number;
  /** HTTP monitoring port. */
  readonly monitorPort: number;
  /** JetStream store dir (JetStream keeps its files in `<storeDir>/jetstream`). */
  readonly storeDir: string;
  /** `--server_name`. */
  readonly serverName: string;
  /** Whether JetStream is enabled. */
  readonly jetstream: boolean;
  /** Client URL, e.g. `nats://127.0.0.1:41234`. */
  readonly url: string;
  /** Monitoring base URL, e.g. `http://127.0.0.1:41235`. */
  readonly monitorUrl: string;
  /** Cluster membership, when a member. */
  readonly cluster: NatsServerClusterOptions | undefined;

  readonly #settings: NatsServerSettings;
  readonly #removeStoreDir: boolean;
  readonly #output: string[] = [];
  /** First lines of the current run (usage errors and config problems are printed first) and its line count. */
  #runHead: string[] = [];
  #runLines = 0;
  #proc: ProcessState | undefined;

  /** Wraps settings without starting anything; call {@link NatsServer.start} next (or use {@link startNatsServer}). */
  constructor(settings: NatsServerSettings) {
    this.#settings = settings;
    this.binary = settings.binary;
    this.host = settings.host ?? "127.0.0.1";
    this.port = settings.port;
    this.monitorPort = settings.monitorPort;
    this.storeDir = settings.storeDir;
    this.serverName = settings.serverName ?? `nats-${settings.port}`;
    this.jetstream = settings.jetstream ?? true;
    this.cluster = settings.cluster;
    this.#removeStoreDir = settings.removeStoreDir ?? false;
    const reach = this.host === "0.0.0.0" || this.host === "::" ? "127.0.0.1" : this.host;
    this.url = `nats://${reach}:${this.port}`;
    this.monitorUrl = `http://${reach}:${this.monitorPort}`;
  }

  /** Process id of the current (or last) child, undefined before the first start. */
  get pid(): number | undefined {
    return this.#proc?.child.pid;
  }

  /** True while the child process has not exited. */
  get running(): boolean {
    return this.#proc !== undefined && !this.#proc.exited;
  }

  /** A copy of the last {@link OUTPUT_RING_SIZE} lines the server printed, across restarts, oldest first. */
  get output(): string[] {
    return [...this.#output];
  }

  /** The command-line arguments the server is started with. */
  get args(): string[] {
    const s = this.#settings;
    const args = s.configFile ? ["-c", s.configFile] : [];
    args.push("-a", this.host, "-p", String(this.port), "-m", String(this.monitorPort));
    args.push("--server_name", this.serverName);
    if (this.jetstream) args.push("-js", "-sd", this.storeDir);
    if (s.cluster) {
      args.push("--cluster", `nats://${this.host}:${s.cluster.port}`, "--cluster_name", s.cluster.name);
      if (s.cluster.routes.length > 0) args.push("--routes", s.cluster.routes.join(","));
    }
    args.push(...(s.extraArgs ?? []));
    return args;
  }

  /**
   * Spawns the server and resolves once it is ready: `/healthz?js-enabled-only=true` answers 200, and with JetStream
   * also `/healthz` (JetStream current, and for a cluster member in contact with a meta leader and caught up).
   *
   * Rejects with a {@link NatsServerError} carrying the server's output if the process exits first
   * (`NATS_SERVER_START_FAILED`) or is not ready within `readyTimeoutMs` (`NATS_SERVER_NOT_READY`; the process is
   * killed first). Throws `NATS_SERVER_START_FAILED` if already running.
   */
  async start(): Promise<void> {
    if (this.running) {
      throw new NatsServerError("NATS_SERVER_START_FAILED", `${this.serverName} is already running`);
    }
    await mkdir(this.storeDir, { recursive: true });
    this.#runHead = [];
    this.#runLines = 0;
    const proc = this.#spawn();
    this.#proc = proc;
    const deadline = Date.now() + (this.#settings.readyTimeoutMs ?? 20_000);
    const checks = this.jetstream ? ["/healthz?js-enabled-only=true", "/healthz"] : ["/healthz"];
    for (const path of checks) {
      let last = "no answer yet";
      for (;;) {
        if (proc.exited) {
          const exit = await proc.closed;
          throw new NatsServerError(
            "NATS_SERVER_START_FAILED",
            `${this.serverName} exited before it was ready (code ${exit.code}, signal ${exit.signal})`,
            { output: this.#runOutput() },
          );
        }
        const probe = await probeHttp(this.monitorUrl + path);
        if (probe.status === 200) break;
        last = probe.status === 0 ? probe.body : `${probe.status} ${probe.body}`;
        if (Date.now() >= deadline) {
          await this.kill();
          throw new NatsServerError(
            "NATS_SERVER_NOT_READY",
            `${this.serverName} was not ready within ${this.#settings.readyTimeoutMs ?? 20_000} ms: ${this.monitorUrl}${path} last said: ${last}`,
            { output: this.#runOutput() },
          );
        }
        await Promise.race([delay(POLL_INTERVAL_MS), proc.closed]);
      }
    }
  }

  /**
   * Stops the server gracefully: SIGTERM, then waits for it to exit; SIGKILL if it has not after `timeoutMs`
   * (default `stopTimeoutMs`, 10 s). Resolves with how it ended (also when it had already exited); null if it was
   * never started.
   */
  async stop(timeoutMs = this.#settings.stopTimeoutMs ?? 10_000): Promise<NatsServerExit | null> {
    const proc = this.#proc;
    if (proc === undefined) return null;
    if (proc.exited) return { ...(await proc.closed), forced: false };
    proc.child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const first = await Promise.race([proc.closed, timedOut]);
    clearTimeout(timer);
    if (first !== "timeout") return { ...first, forced: false };
    proc.child.kill("SIGKILL");
    return { ...(await this.#awaitClosed(proc)), forced: true };
  }

  /** Kills the server with SIGKILL (a crash: no clean JetStream shutdown) and resolves once it has exited. */
  async kill(): Promise<NatsServerExit | null> {
    const proc = this.#proc;
    if (proc === undefined) return null;
    if (proc.exited) return { ...(await proc.closed), forced: false };
    proc.child.kill("SIGKILL");
    return { ...(await this.#awaitClosed(proc)), forced: true };
  }

  /**
   * Starts the server again on the same ports, server name and store dir, so JetStream data survives; stops it
   * gracefully first if it is still running. Same readiness contract as {@link NatsServer.start}.
   */
  async restart(): Promise<void> {
    if (this.running) await this.stop();
    await this.start();
  }

  /**
   * Sends a signal to the running server, e.g. `SIGHUP` (reload) or `SIGUSR2` (lame duck mode); does not wait.
   * Throws `NATS_SERVER_NOT_RUNNING` when there is no running process.
   */
  signal(sig: NodeJS.Signals): void {
    const proc = this.#proc;
    if (proc === undefined || proc.exited) {
      throw new NatsServerError("NATS_SERVER_NOT_RUNNING", `${this.serverName} is not running`);
    }
    proc.child.kill(sig);
  }

  /** Stops the server ({@link NatsServer.stop}) and removes the store dir if this handle created it. Idempotent. */
  async cleanup(): Promise<void> {
    await this.stop();
    if (this.#removeStoreDir) await rm(this.storeDir, { recursive: true, force: true });
  }

  #spawn(): ProcessState {
    const child = spawn(this.binary, this.args, { stdio: ["ignore", "pipe", "pipe"] });
    const log = this.#settings.logFile
      ? createWriteStream(this.#settings.logFile, { flags: "a" })
      : undefined;
    log?.on("error", (err) => this.#pushLine(`[launcher] cannot write log file: ${err.message}`));
    const state: ProcessState = { child, exited: false, closed: undefined as never };
    state.closed = new Promise((resolve) => {
      let spawnError: Error | undefined;
      child.once("error", (err) => {
        // Spawn failures (ENOENT, EACCES) emit "error" and may never emit "exit".
        spawnError = err;
        this.#pushLine(`[launcher] cannot run ${this.binary}: ${err.message}`);
        state.exited = true;
        if (child.pid === undefined) resolve({ code: null, signal: null });
      });
      child.once("exit", () => {
        state.exited = true;
      });
      child.once("close", (code: number | null, signal: NodeJS.Signals | null) => {
        state.exited = true;
        log?.end();
        resolve({ code: code ?? (spawnError ? -1 : null), signal });
      });
    });
    trackChild(child);
    this.#pipeLines(child.stdout, log);
    this.#pipeLines(child.stderr, log);
    // Servers must never keep the parent alive; the exit hook kills whatever is left.
    child.unref();
    return state;
  }

  #pipeLines(stream: Readable | null, log: WriteStream | undefined): void {
    if (stream === null) return;
    // stdio pipes are sockets at runtime; unref them too or they keep the event loop alive.
    (stream as Readable & { unref?: () => void }).unref?.();
    let carry = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      log?.write(chunk);
      const parts = (carry + chunk).split("\n");
      carry = parts.pop() ?? "";
      for (const line of parts) this.#pushLine(line);
    });
    stream.on("end", () => {
      if (carry !== "") this.#pushLine(carry);
      carry = "";
    });
  }

  /** This run's output for an error message: all of it, or its head and tail when long. */
  #runOutput(): string[] {
    const run = this.#runLines === 0 ? [] : this.#output.slice(-this.#runLines);
    if (this.#runLines <= ERROR_HEAD_LINES + ERROR_TAIL_LINES) return run;
    const omitted = this.#runLines - ERROR_HEAD_LINES - ERROR_TAIL_LINES;
    return [...this.#runHead, `[... ${omitted} lines ...]`, ...run.slice(-ERROR_TAIL_LINES)];
  }

  #pushLine(line: string): void {
    if (this.#runLines < ERROR_HEAD_LINES) this.#runHead.push(line);
    this.#runLines++;
    this.#output.push(line);
    if (this.#output.length > OUTPUT_RING_SIZE) this.#output.shift();
    this.#settings.onOutput?.(line);
  }

  async #awaitClosed(proc: ProcessState): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    // A referenced timer keeps the event loop alive while we wait on an unref'd child.
    const keepAlive = setInterval(() => undefined, 1_000);
    try {
      return await proc.closed;
    } finally {
      clearInterval(keepAlive);
    }
  }
}

/**
 * Starts one `nats-server` (JetStream on by default) on free ports with a temp store dir and resolves once ready.
 *
 * See {@link NatsServerOptions} for defaults and {@link NatsServer.start} for the readiness contract. A free port is
 * only free until someone binds it: when nats-server cannot listen on a port this function picked (client or
 * monitor; "address already in use"), it starts again with fresh picks for those, at most {@link PORT_ATTEMPTS} times
 * in all, then throws `NATS_SERVER_START_FAILED` saying so. Any other failure, including a taken port given in
 * `opts`, is thrown at once. On failure nothing is left running and a temp store dir it created is removed.
 */
export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = findNatsServerBinary(opts.binary);
  const host = opts.host ?? "127.0.0.1";
  const pick = opts.pickPort ?? freePort;
  const ownDir = opts.storeDir === undefined;
  const storeDir = opts.storeDir ?? (await mkdtemp(join(tmpdir(), "nats-server-")));
  try {
    for (let attempt = 1; ; attempt++) {
      // Only ports picked here may be replaced by fresh ones; a taken port the caller chose is their error.
      const inUse = new Set([opts.port, opts.monitorPort].filter((p): p is number => p !== undefined));
      const picked = new Set<number>();
      const pickOne = async () => {
        const p = await pickDistinct(pick, host, inUse);
        picked.add(p);
        return p;
      };
      const port = opts.port ?? (await pickOne());
      const monitorPort = opts.monitorPort ?? (await pickOne());
      const server = new NatsServer({
        ...opts,
        binary,
        host,
        port,
        monitorPort,
        storeDir,
        removeStoreDir: opts.removeStoreDir ?? ownDir,
      });
      try {
        await server.start();
        return server;
      } catch (err) {
        await server.kill();
        if (!failedOnPickedPorts(err, picked)) throw err;
        if (attempt >= PORT_ATTEMPTS) throw portsExhausted("nats-server", err);
      }
    }
  } catch (err) {
    if (ownDir) await rm(storeDir, { recursive: true, force: true });
    throw err;
  }
}

/** Options for {@link startNatsCluster}; every field is optional. */
export interface NatsClusterOptions {
  /** Number of servers; default 3 (the smallest size that survives losing one). */
  size?: number;
  /** Parent dir for the per-server store dirs (`<baseDir>/n1`, ...); a new temp dir when absent. */
  baseDir?: string;
  /** Cluster name; default `shopstream`. Server names are `<name>-n1`, `<name>-n2`, ... */
  name?: string;
  /** Executable to run; resolved with {@link findNatsServerBinary}. */
  binary?: string;
  /** Per-server readiness timeout; default 20 s. */
  readyTimeoutMs?: number;
  /** Per-server graceful stop timeout; default 10 s. */
  stopTimeoutMs?: number;
  /** Further arguments for every server. */
  extraArgs?: readonly string[];
  /**
   * A nats-server configuration file (`-c`) every member starts with, e.g. the `authorization` block written by
   * src/stack/nats-auth.ts (client authentication only: routes stay unauthenticated on the members' own ports).
   */
  configFile?: string;
  /** Called with each line any server prints, with that server's index. */
  onOutput?: (index: number, line: string) => void;
  /**
   * How the client, monitor and route ports of every member are picked; default {@link freePort}. Called again for
   * all of them when a start loses one it picked to another process.
   */
  pickPort?: PortPicker;
}

/**
 * A handle on a JetStream-enabled NATS cluster of {@link NatsServer} children; create it with
 * {@link startNatsCluster}.
 *
 * Servers are addressed by 0-based index. Each keeps its ports, name and store dir across kill/restart, so the
 * cluster can lose and regain members as a real deployment would.
 */
export class NatsCluster {
  /** The members, in index order. */
  readonly servers: readonly NatsServer[];
  /** Cluster name. */
  readonly name: string;
  /** Parent dir of the members' store dirs. */
  readonly baseDir: string;
  readonly #removeBaseDir: boolean;

  /** Wraps already-configured servers; use {@link startNatsCluster} rather than calling this. */
  constructor(
    servers: readonly NatsServer[],
    opts: { name: string; baseDir: string; removeBaseDir: boolean },
  ) {
    this.servers = servers;
    this.name = opts.name;
    this.baseDir = opts.baseDir;
    this.#removeBaseDir = opts.removeBaseDir;
  }

  /** Client URLs of all members (running or not), for a client's `servers` option. */
  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  /** The member at `i`; throws a RangeError for an index outside the cluster. */
  server(i: number): NatsServer {
    const s = this.servers[i];
    if (s === undefined) throw new RangeError(`no server ${i} in a cluster of ${this.servers.length}`);
    return s;
  }

  /** SIGKILLs member `i` and resolves once it has exited. */
  async kill(i: number): Promise<NatsServerExit | null> {
    return this.server(i).kill();
  }

  /** Starts member `i` again on its ports and store dir; resolves once it is healthy and caught up. */
  async restart(i: number): Promise<void> {
    await this.server(i).restart();
  }

  /** Stops every member gracefully, concurrently. */
  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
  }

  /** Stops every member and removes the base dir if {@link startNatsCluster} created it. Idempotent. */
  async cleanup(): Promise<void> {
    await this.stop();
    if (this.#removeBaseDir) await rm(this.baseDir, { recursive: true, force: true });
  }

  /**
   * Resolves with the JetStream meta leader's server name once every running member reports the same leader
   * (via `/jsz`), that leader is itself running, and every running member's `/healthz` answers 200.
   *
   * Rejects with `NATS_SERVER_NOT_READY` after `timeoutMs` (default 20 s), e.g. when too few members run for a
   * quorum, and with `NATS_SERVER_NOT_RUNNING` when no member runs.
   */
  async waitForJetStream(timeoutMs = 20_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let last = "no answer yet";
    for (;;) {
      const running = this.servers.filter((s) => s.running);
      if (running.length === 0) {
        throw new NatsServerError("NATS_SERVER_NOT_RUNNING", `no member of cluster ${this.name} is running`);
      }
      const names = new Set(running.map((s) => s.serverName));
      const leaders = await Promise.all(running.map((s) => metaLeader(s)));
      const leader = leaders[0];
      if (leader !== undefined && names.has(leader) && leaders.every((l) => l === leader)) {
        const health = await Promise.all(running.map((s) => probeHttp(`${s.monitorUrl}/healthz`)));
        if (health.every((h) => h.status === 200)) return leader;
        last = `leader ${leader}; healthz: ${health.map((h) => `${h.status} ${h.body}`).join(" | ")}`;
      } else {
        last = `meta leaders reported: ${leaders.map((l) => l ?? "none").join(", ")}`;
      }
      if (Date.now() >= deadline) {
        throw new NatsServerError(
          "NATS_SERVER_NOT_READY",
          `JetStream in cluster ${this.name} had no meta leader within ${timeoutMs} ms (${last})`,
          { output: running.flatMap((s) => s.output.slice(-10).map((l) => `${s.serverName}: ${l}`)) },
        );
      }
      await delay(POLL_INTERVAL_MS);
    }
  }
}

/**
 * Starts a JetStream cluster of `size` (default 3) `nats-server` children on 127.0.0.1, each with its own free
 * client, monitor and route ports, store dir and server name, fully routed to the others.
 *
 * Resolves once every member is healthy, which on nats-server 2.9 includes contact with a JetStream meta leader; call
 * {@link NatsCluster.waitForJetStream} after kills and restarts. As soon as one member fails, the others are killed.
 * When that member could not listen on a port picked for it ("address already in use"), the whole cluster starts
 * again on fresh ports (every member's routes name the others' route ports, so all of them change), at most
 * {@link PORT_ATTEMPTS} times in all, with the same server names and store dirs. Any other failure is thrown at once.
 * On failure nothing is left running and a temp base dir it created is removed.
 */
export async function startNatsCluster(opts: NatsClusterOptions = {}): Promise<NatsCluster> {
  const size = opts.size ?? 3;
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`cluster size must be a positive integer, got ${size}`);
  }
  const binary = findNatsServerBinary(opts.binary);
  const name = opts.name ?? "shopstream";
  const host = "127.0.0.1";
  const pick = opts.pickPort ?? freePort;
  const ownDir = opts.baseDir === undefined;
  const baseDir = opts.baseDir ?? (await mkdtemp(join(tmpdir(), "nats-cluster-")));
  try {
    for (let attempt = 1; ; attempt++) {
      const picked = new Set<number>();
      const ports: { port: number; monitorPort: number; clusterPort: number }[] = [];
      for (let i = 0; i < size; i++) {
        ports.push({
          port: await pickDistinct(pick, host, picked),
          monitorPort: await pickDistinct(pick, host, picked),
          clusterPort: await pickDistinct(pick, host, picked),
        });
      }
      const servers = ports.map(
        (p, i) =>
          new NatsServer({
            binary,
            host,
            port: p.port,
            monitorPort: p.monitorPort,
            storeDir: join(baseDir, `n${i + 1}`),
            removeStoreDir: false,
            serverName: `${name}-n${i + 1}`,
            jetstream: true,
            cluster: {
              name,
              port: p.clusterPort,
              routes: ports.filter((_, j) => j !== i).map((o) => `nats://${host}:${o.clusterPort}`),
            },
            extraArgs: opts.extraArgs,
            ...(opts.configFile !== undefined ? { configFile: opts.configFile } : {}),
            readyTimeoutMs: opts.readyTimeoutMs,
            stopTimeoutMs: opts.stopTimeoutMs,
            onOutput: opts.onOutput ? (line) => opts.onOutput?.(i, line) : undefined,
          }),
      );
      const failed = await startAll(servers);
      if (failed === undefined) return new NatsCluster(servers, { name, baseDir, removeBaseDir: ownDir });
      if (!failedOnPickedPorts(failed.reason, picked)) throw failed.reason;
      if (attempt >= PORT_ATTEMPTS) throw portsExhausted(`cluster ${name}`, failed.reason);
    }
  } catch (err) {
    if (ownDir) await rm(baseDir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Starts `servers` concurrently. Resolves with nothing once all are ready, or, once they have all exited, with the
 * first failure: the others are killed as soon as one fails (their own failures are only its consequence), so a
 * member that dies at once is not hidden behind the others' readiness timeouts.
 */
async function startAll(servers: readonly NatsServer[]): Promise<{ reason: unknown } | undefined> {
  let first: { reason: unknown } | undefined;
  const results = await Promise.allSettled(
    servers.map((s) =>
      s.start().catch(async (err: unknown) => {
        if (first === undefined) {
          first = { reason: err };
          await Promise.all(servers.map((o) => o.kill()));
        }
        throw err;
      }),
    ),
  );
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (rejected === undefined) return undefined;
  await Promise.all(servers.map((s) => s.kill()));
  return first ?? rejected;
}

async function metaLeader(server: NatsServer): Promise<string | undefined> {
  const probe = await probeHttp(`${server.monitorUrl}/jsz`);
  if (probe.status !== 200) return undefined;
  try {
    const jsz = JSON.parse(probe.body) as { meta_cluster?: { leader?: string } };
    const leader = jsz.meta_cluster?.leader;
    return leader === "" ? undefined : leader;
  } catch {
    return undefined;
  }
}

/** GET `url`; status 0 with the error text when there was no HTTP answer. */
async function probeHttp(url: string): Promise<{ status: number; body: string }> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    return { status: res.status, body: (await res.text()).trim() };
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
    return { status: 0, body: `${err instanceof Error ? err.message : String(err)}${cause}` };
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function trackChild(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on("exit", () => {
      for (const c of liveChildren) c.kill("SIGKILL");
    });
  }
  if (child.pid === undefined) return;
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
}
