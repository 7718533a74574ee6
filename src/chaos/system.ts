/**
 * The chaos harness's system controller: the whole ShopStream system as separate OS processes — a real
 * `nats-server` (one node with a store dir, or a 3-node JetStream cluster with R3 streams), the two simulators
 * and the five services, with R replicas per service — and the operations a chaos scenario needs: kill -9 a
 * process and start it again, freeze it (SIGSTOP/SIGCONT), roll a service by SIGTERM one replica at a time,
 * kill -9 everything and start it again from the same data, kill and restart the NATS stream leader, and set
 * the simulators' faults.
 *
 * Processes are started exactly as `npm start` starts them ({@link stackProcesses}, {@link childEnv},
 * {@link StackChild}); each replica has its own port. Every child's output goes to a log file of its own.
 */
import { DevTokens, devSecretPath } from "../lib/http/dev-token.js";
import { createWriteStream, type WriteStream } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { ProcessName } from "../lib/ports.js";
import { DEFAULT_CATALOG } from "../services/inventory/catalog.js";
import { authOptions } from "../lib/messaging/connection.js";
import { isServiceUser, type NatsUser } from "../lib/messaging/permissions.js";
import { provisionAll } from "../tools/provisioning.js";
import { StackChild, describeExit } from "../stack/child.js";
import { ensureNatsSecrets, type NatsSecrets } from "../stack/nats-auth.js";
import {
  type NatsCluster,
  type NatsServer,
  PORT_ATTEMPTS,
  type PortPicker,
  freePort,
  startNatsCluster,
  startNatsServer,
} from "../stack/nats-server.js";
import { Printer } from "../stack/output.js";
import {
  type StackMode,
  type StackProcess,
  childEnv,
  nodeArgs,
  processNamed,
  resolveEntryPoint,
} from "../stack/processes.js";

/** The five services (the simulators are not replicated). */
export const SERVICES = ["inventory", "payments", "notifications", "audit", "orders"] as const;
export type ServiceName = (typeof SERVICES)[number];

/** The repository root: this file is `src/chaos/system.ts` or `dist/chaos/system.js`. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** A SKU with little stock, so that load runs sell it out and exercise rejections and releases. */
export const SCARCE_SKU = "SKU-SCARCE";

/** Options of {@link ChaosSystem}. */
export interface ChaosSystemOptions {
  /** Directory for all state (NATS store, ledger, mail log, PGlite, catalog file). */
  dataDir: string;
  /** Directory for one log file per process. */
  logDir: string;
  /** A 3-node JetStream cluster with `STREAM_REPLICAS=3` instead of one node. */
  cluster?: boolean;
  /**
   * Start only these processes (default: both simulators and all five services), e.g. for a test of the harness
   * itself; the others get no instance.
   */
  only?: readonly ProcessName[];
  /** Replicas per service (default 1 each). */
  replicas?: Partial<Record<ServiceName, number>>;
  /** PostgreSQL for the audit log; PGlite under `dataDir` when absent. */
  databaseUrl?: string | undefined;
  /** Schema of the audit table in PostgreSQL (a fresh one per run). */
  auditSchema?: string;
  /** Stock of {@link SCARCE_SKU}. */
  scarceStock?: number;
  /** Extra environment of every service. */
  env?: Record<string, string>;
  /** `LOG_LEVEL` of every process (default `warn`). */
  logLevel?: string;
  /** `dev` (tsx) or `production` (`dist/`, built first). */
  mode?: StackMode;
  /** How long a process may take to become ready (default 60 s). */
  readyTimeoutMs?: number;
  /** Progress messages. */
  log?: (msg: string) => void;
  /**
   * NATS authentication (default true; `CHAOS_NATS_AUTH=false` in the CLI): nats-server (every node) runs with the
   * `authorization` block of src/lib/messaging/permissions.ts, the credentials generated as `npm start` does under
   * `<dataDir>/secrets` ({@link ensureNatsSecrets}); streams, consumers and buckets are provisioned as `admin`
   * before any service starts; each service runs as its own user; the harness connects as `admin` (its watcher
   * subscribes to `orders.*`, the poison scenarios publish onto streams) and reads facts for the checker as
   * `operator`. False: no authentication, services provision themselves.
   */
  natsAuth?: boolean;
  /**
   * How free ports are picked for nats-server and for every instance; default {@link freePort}. A test can take a
   * picked port before the process binds it, to check that start-up survives it.
   */
  pickPort?: PortPicker;
}

/** A process the system started that exited without being asked to. */
export interface Crash {
  id: string;
  at: number;
  exit: string;
  lastLines: string[];
}

/** One running (or stopped) replica of a simulator or service. */
export class Instance {
  child: StackChild | undefined;
  /** Set while the harness expects it to be down (killed, stopping). */
  expectDown = false;
  /** Set once the current process answered its readiness probe. */
  ready = false;
  /**
   * Set once any of its processes was ready. Until then its port may still change (when the picked port was taken
   * before the process could listen on it); afterwards others may know its URL, so it keeps its port.
   */
  wasReady = false;
  /** Environment of this replica on top of the system's (a rollout's settings: see {@link ChaosSystem.rollingRestart}). */
  env: Record<string, string> = {};

  constructor(
    readonly proc: StackProcess,
    readonly replica: number,
    /** Its HTTP port; fixed once it was ready (see {@link wasReady}). */
    public port: number,
  ) {}

  /** `orders-1`, `payment-gateway-1`, … */
  get id(): string {
    return `${this.proc.name}-${this.replica}`;
  }
  get name(): ProcessName {
    return this.proc.name;
  }
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get running(): boolean {
    return this.child?.running ?? false;
  }
  get pid(): number | undefined {
    return this.child?.pid;
  }
}

const noCancel = new Promise<void>(() => undefined);

/** Whether a process's last output says it could not listen on `port` because something else had it. */
export function lostPort(lines: readonly string[], port: number): boolean {
  const named = new RegExp(`(?<![\\d.])${port}(?!\\d)`);
  return lines.some((l) => /EADDRINUSE|address already in use/.test(l) && named.test(l));
}

/** Every child of every system, SIGKILLed if the harness exits without stopping them. */
const liveChildren = new Set<StackChild>();
let exitHook = false;
function track(child: StackChild): void {
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const c of liveChildren) c.kill("SIGKILL");
    });
  }
  liveChildren.add(child);
  void child.exited.then(() => liveChildren.delete(child));
}

/**
 * The whole system as separate processes; see the module comment. Create it, {@link start} it, drive it,
 * {@link stop} it. Methods are not meant to run concurrently unless they name different processes.
 */
export class ChaosSystem {
  readonly opts: ChaosSystemOptions;
  readonly cluster: boolean;
  nats: NatsServer | undefined;
  natsCluster: NatsCluster | undefined;
  /** Instances by process name, in start order. */
  readonly instances = new Map<ProcessName, Instance[]>();
  /** Unexpected exits of ready processes seen so far (each one restarted, as Kubernetes would). */
  readonly crashes: Crash[] = [];
  /** Processes that exited during start-up and were started again. */
  readonly startupRestarts: Crash[] = [];
  #nc: NatsConnection | undefined;
  #operatorNc: NatsConnection | undefined;
  /** The NATS credentials when authentication is on. */
  natsSecrets: NatsSecrets | undefined;
  #jsm: JetStreamManager | undefined;
  #nextReplica = new Map<ProcessName, number>();
  #logs = new Map<string, WriteStream>();
  #stopped = false;
  #catalogFile: string | undefined;

  constructor(opts: ChaosSystemOptions) {
    this.opts = opts;
    this.cluster = opts.cluster ?? false;
  }

  #log(msg: string): void {
    this.opts.log?.(msg);
  }

  /** Client URL(s) of NATS, comma-separated for the cluster. */
  get natsUrl(): string {
    if (this.natsCluster) return this.natsCluster.urls.join(",");
    if (this.nats) return this.nats.url;
    throw new Error("NATS is not started");
  }

  /** The URL of the first running replica of `name` (or of its first replica when none runs). */
  url(name: ProcessName): string {
    const list = this.instances.get(name) ?? [];
    const inst = list.find((i) => i.running) ?? list[0];
    if (!inst) throw new Error(`no ${name} instance`);
    return inst.url;
  }

  /** URLs of the orders replicas that are running now (the load balancer's backends). */
  ordersUrls(): string[] {
    return (this.instances.get("orders") ?? []).filter((i) => i.running).map((i) => i.url);
  }

  /** Every instance, in start order. */
  all(): Instance[] {
    return [...this.instances.values()].flat();
  }

  /** The instance `id` (e.g. `payments-2`). */
  instance(id: string): Instance {
    const inst = this.all().find((i) => i.id === id);
    if (!inst) throw new Error(`no instance ${id}`);
    return inst;
  }

  /** Replicas of `name` that run now. */
  running(name: ProcessName): Instance[] {
    return (this.instances.get(name) ?? []).filter((i) => i.running);
  }

  /** Whether NATS runs with authentication (see {@link ChaosSystemOptions.natsAuth}). */
  get natsAuth(): boolean {
    return this.opts.natsAuth ?? true;
  }

  async #connect(name: string, user: NatsUser): Promise<NatsConnection> {
    return connect({
      servers: this.natsUrl.split(","),
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      waitOnFirstConnect: true,
      pingInterval: 5_000,
      ...authOptions(this.natsSecrets?.auth(user)),
    });
  }

  /**
   * The harness's own NATS connection (reconnects forever): as `admin` with authentication — it subscribes to
   * `orders.*` (the order watch), publishes poison messages onto streams and asks for stream leaders.
   */
  async connection(): Promise<NatsConnection> {
    this.#nc ??= await this.#connect("chaos-harness", "admin");
    return this.#nc;
  }

  /** A read-only connection for the checker's facts: as `operator` with authentication (the same as `npm run check`). */
  async operatorConnection(): Promise<NatsConnection> {
    this.#operatorNc ??= await this.#connect("chaos-checker", "operator");
    return this.#operatorNc;
  }

  async jsm(): Promise<JetStreamManager> {
    this.#jsm ??= await jetstreamManager(await this.connection(), { timeout: 10_000 });
    return this.#jsm;
  }

  // -------------------------------------------------------------------------------------------------
  // start / stop
  // -------------------------------------------------------------------------------------------------

  /** Starts NATS, the simulators, inventory/payments/notifications/audit, then orders; resolves when all are ready. */
  async start(): Promise<void> {
    const t0 = Date.now();
    await mkdir(this.opts.dataDir, { recursive: true });
    // The development token secret every process verifies with (childEnv points them at it), as `npm start` does.
    this.#tokens = await DevTokens.open(devSecretPath(this.opts.dataDir));
    await mkdir(this.opts.logDir, { recursive: true });
    this.#catalogFile = join(this.opts.dataDir, "catalog.json");
    await writeFile(
      this.#catalogFile,
      JSON.stringify({
        items: [
          ...DEFAULT_CATALOG,
          {
            sku: SCARCE_SKU,
            name: "Chaos scarce item",
            price: 999,
            currency: "EUR",
            stock: this.opts.scarceStock ?? 50,
          },
        ],
      }),
    );
    const natsLog = createWriteStream(join(this.opts.logDir, "nats.log"), { flags: "a" });
    // The stack's credentials and server configuration (npm start does the same), or none.
    this.natsSecrets = this.natsAuth ? await ensureNatsSecrets(this.opts.dataDir) : undefined;
    const configFile = this.natsSecrets ? { configFile: this.natsSecrets.configFile } : {};
    if (this.cluster) {
      this.natsCluster = await startNatsCluster({
        ...configFile,
        baseDir: join(this.opts.dataDir, "nats"),
        name: "chaos",
        onOutput: (i, line) => natsLog.write(`n${i + 1} | ${line}\n`),
        readyTimeoutMs: 30_000,
        pickPort: this.opts.pickPort,
      });
      await this.natsCluster.waitForJetStream(30_000);
    } else {
      this.nats = await startNatsServer({
        ...configFile,
        storeDir: join(this.opts.dataDir, "nats"),
        removeStoreDir: false,
        onOutput: (line) => natsLog.write(`${line}\n`),
        readyTimeoutMs: 30_000,
        pickPort: this.opts.pickPort,
      });
    }
    // Ports are chosen once: a process started again gets its old port back (see #spawnAndWait for the exception).
    for (const name of ["payment-gateway", "mail-provider", ...SERVICES] as const) {
      if (this.opts.only !== undefined && !this.opts.only.includes(name)) continue;
      const n =
        name === "payment-gateway" || name === "mail-provider" ? 1 : (this.opts.replicas?.[name] ?? 1);
      const list: Instance[] = [];
      this.instances.set(name, list);
      for (let r = 1; r <= n; r++) list.push(new Instance(processNamed(name), r, await this.#pickPort()));
      this.#nextReplica.set(name, n + 1);
    }
    if (this.natsSecrets) await this.#provision(this.natsSecrets);
    await this.#startTiers();
    this.#log(`system up in ${((Date.now() - t0) / 1000).toFixed(1)} s (${this.describe()})`);
  }

  /** `npm run provision` in-process as `admin`, with the settings the services get (as the local stack does). */
  async #provision(secrets: NatsSecrets): Promise<void> {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      STREAM_REPLICAS: this.cluster ? "3" : "1",
      ...(this.opts.env ?? {}),
    };
    const nc = await connect({
      servers: this.natsUrl.split(","),
      name: "chaos-provision",
      timeout: 10_000,
      ...authOptions(secrets.auth("admin")),
    });
    try {
      const report = await provisionAll(nc, env);
      this.#log(`provisioned as admin: ${report.length} streams, consumers and buckets`);
    } finally {
      await nc.close();
    }
  }

  /** e.g. `single node, orders×1 inventory×1 …, audit in PostgreSQL, NATS with authentication`. */
  describe(): string {
    const reps = SERVICES.map((s) => `${s}×${this.instances.get(s)?.length ?? 0}`).join(" ");
    return `${this.cluster ? "3-node cluster, R3" : "single node"}, ${reps}, audit in ${this.opts.databaseUrl ? "PostgreSQL" : "PGlite"}, NATS ${this.natsAuth ? "with" : "without"} authentication`;
  }

  async #startTiers(): Promise<void> {
    const tiers: ProcessName[][] = [
      ["payment-gateway", "mail-provider"],
      ["inventory", "payments", "notifications", "audit"],
      ["orders"],
    ];
    for (const tier of tiers) {
      const insts = tier.flatMap((n) => this.instances.get(n) ?? []).filter((i) => !i.running);
      await Promise.all(insts.map((i) => this.#spawnAndWait(i)));
    }
  }

  #env(inst: Instance): NodeJS.ProcessEnv {
    const parent: NodeJS.ProcessEnv = { ...process.env };
    delete parent["NODE_TEST_CONTEXT"];
    delete parent["DATABASE_URL"];
    // NATS credentials come from the harness only (a service's own user, or none with CHAOS_NATS_AUTH=false).
    delete parent["NATS_USER"];
    delete parent["NATS_PASSWORD"];
    delete parent["NATS_PASSWORD_FILE"];
    const gw = this.instances.get("payment-gateway")?.[0];
    const mail = this.instances.get("mail-provider")?.[0];
    const env = childEnv({
      parent,
      name: inst.name,
      port: inst.port,
      natsUrl: this.natsUrl,
      logLevel: this.opts.logLevel ?? "warn",
      dataDir: this.opts.dataDir,
      paymentGatewayUrl: gw?.url ?? "",
      mailProviderUrl: mail?.url ?? "",
    });
    env["HOST"] = "127.0.0.1";
    env["STREAM_REPLICAS"] = this.cluster ? "3" : "1";
    if (this.#catalogFile) env["CATALOG_FILE"] = this.#catalogFile;
    if (this.natsSecrets && isServiceUser(inst.name)) Object.assign(env, this.natsSecrets.env(inst.name));
    if (this.opts.databaseUrl) env["DATABASE_URL"] = this.opts.databaseUrl;
    if (this.opts.auditSchema) env["AUDIT_SCHEMA"] = this.opts.auditSchema;
    Object.assign(env, this.opts.env ?? {}, inst.env);
    return env;
  }

  #logStream(id: string): WriteStream {
    let s = this.#logs.get(id);
    if (!s) {
      s = createWriteStream(join(this.opts.logDir, `${id}.log`), { flags: "a" });
      this.#logs.set(id, s);
    }
    return s;
  }

  #spawn(inst: Instance): StackChild {
    const entry = resolveEntryPoint(inst.proc, ROOT, this.opts.mode ?? "dev");
    if (entry.status !== "ok") throw new Error(`${inst.name} cannot start: ${entry.reason}`);
    const log = this.#logStream(inst.id);
    const printer = new Printer({
      width: 0,
      color: false,
      pretty: false,
      out: (t) => log.write(t),
      err: (t) => log.write(t),
    });
    log.write(`--- ${new Date().toISOString()} starting ${inst.id} on port ${inst.port}\n`);
    const child = StackChild.spawn(inst.proc, {
      url: inst.url,
      args: nodeArgs(entry.file, () => import.meta.resolve("tsx")),
      env: this.#env(inst),
      cwd: ROOT,
      printer,
    });
    inst.child = child;
    inst.expectDown = false;
    track(child);
    void child.exited.then((exit) => {
      // An exit before it was ready is start-up's business (see #spawnAndWait).
      if (!inst.ready || inst.child !== child || inst.expectDown || child.stopping || this.#stopped) return;
      // Nobody asked it to stop: a crash. Record it and start it again, as Kubernetes would.
      const crash: Crash = {
        id: inst.id,
        at: Date.now(),
        exit: describeExit(exit),
        lastLines: [...child.lastLines],
      };
      this.crashes.push(crash);
      this.#log(`CRASH: ${inst.id} exited (${crash.exit}); restarting it`);
      void this.#spawnAndWait(inst).catch((err: unknown) =>
        this.#log(`restart of ${inst.id} failed: ${String(err)}`),
      );
    });
    return child;
  }

  /** A port from the picker that no instance has. */
  async #pickPort(): Promise<number> {
    const pick = this.opts.pickPort ?? freePort;
    for (let i = 0; ; i++) {
      const port = await pick("127.0.0.1");
      if (!this.all().some((inst) => inst.port === port)) return port;
      if (i >= 20) throw new Error(`the port picker keeps returning ports the system already uses (${port})`);
    }
  }

  /**
   * Starts `inst` and waits until it is ready. A process that exits during start-up (e.g. NATS still electing
   * leaders answers its provisioning with timeouts) is started again, up to 4 times, as Kubernetes restarts a
   * crashing container; each such restart is recorded in {@link startupRestarts}.
   *
   * A free port is only free until someone binds it: when the first start of an instance fails because its picked
   * port was taken in the meantime (`EADDRINUSE`), it is started again on a fresh port, up to
   * {@link PORT_ATTEMPTS} times in all (not counted as a start-up restart). An instance that was ready before keeps
   * its port, since the others know its URL.
   */
  async #spawnAndWait(inst: Instance): Promise<void> {
    inst.ready = false;
    let portAttempts = 1;
    for (let attempt = 1; ; attempt++) {
      const child = this.#spawn(inst);
      const ready = await child.waitReady(this.opts.readyTimeoutMs ?? 60_000, noCancel);
      if (ready.ok) {
        inst.ready = true;
        inst.wasReady = true;
        return;
      }
      child.kill("SIGKILL");
      await child.exited;
      const why = `${ready.reason}\n--- last output of ${inst.id} ---\n${child.lastLines.slice(-10).join("\n")}`;
      if (!ready.timedOut && !inst.wasReady && lostPort(child.lastLines, inst.port)) {
        if (portAttempts >= PORT_ATTEMPTS) {
          throw new Error(
            `${inst.id} could not start after ${PORT_ATTEMPTS} attempts: each time the port picked for it (last: ${inst.port}) was taken before it could listen on it\n${why}`,
          );
        }
        portAttempts++;
        attempt--;
        const old = inst.port;
        inst.port = await this.#pickPort();
        this.#log(
          `${inst.id}: port ${old} was taken before it could listen on it; starting it on ${inst.port}`,
        );
        continue;
      }
      if (ready.timedOut || attempt >= 5) throw new Error(why);
      this.startupRestarts.push({
        id: inst.id,
        at: Date.now(),
        exit: ready.reason,
        lastLines: [...child.lastLines].slice(-5),
      });
      this.#log(`${inst.id} exited during start-up (${ready.reason}); starting it again`);
      await new Promise((r) => setTimeout(r, 500 * attempt));
    }
  }

  /** Stops everything gracefully (orders first, NATS last) and closes the harness connection. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#nc?.close().catch(() => undefined);
    this.#nc = undefined;
    await this.#operatorNc?.close().catch(() => undefined);
    this.#operatorNc = undefined;
    this.#jsm = undefined;
    for (const tier of [
      ["orders"],
      ["inventory", "payments", "notifications", "audit"],
      ["payment-gateway", "mail-provider"],
    ]) {
      const insts = tier.flatMap((n) => this.instances.get(n as ProcessName) ?? []);
      await Promise.all(insts.map(async (i) => i.child?.stop(30_000)));
    }
    await this.natsCluster?.stop();
    await this.nats?.stop();
    for (const s of this.#logs.values()) s.end();
  }

  // -------------------------------------------------------------------------------------------------
  // faults
  // -------------------------------------------------------------------------------------------------

  /** kill -9 of one instance; resolves once it has exited. */
  async kill(id: string): Promise<void> {
    const inst = this.instance(id);
    inst.expectDown = true;
    inst.child?.kill("SIGKILL");
    await inst.child?.exited;
    this.#log(`killed -9 ${id}`);
  }

  /** Starts a stopped instance again on its port; resolves once it is ready. */
  async restart(id: string): Promise<void> {
    const inst = this.instance(id);
    if (inst.running) throw new Error(`${id} is still running`);
    await this.#spawnAndWait(inst);
    this.#log(`${id} is back and ready`);
  }

  /** SIGSTOP (freeze) or SIGCONT (thaw) one instance. */
  signal(id: string, sig: "SIGSTOP" | "SIGCONT"): void {
    this.instance(id).child?.kill(sig);
    this.#log(`${sig} ${id}`);
  }

  /** Starts replicas of `name` until it has `n` (each on a port of its own); resolves once they are ready. */
  async scale(name: ServiceName, n: number): Promise<void> {
    const list = this.instances.get(name) ?? [];
    const added: Instance[] = [];
    while (list.length < n) {
      const r = this.#nextReplica.get(name) ?? list.length + 1;
      this.#nextReplica.set(name, r + 1);
      const inst = new Instance(processNamed(name), r, await this.#pickPort());
      list.push(inst);
      added.push(inst);
    }
    this.instances.set(name, list);
    await Promise.all(added.map((i) => this.#spawnAndWait(i)));
    if (added.length > 0) this.#log(`scaled ${name} to ${n}`);
  }

  /**
   * A deploy of `name`: each replica in turn is replaced. With `surge` a new replica is started first and, once
   * it is ready, the old one gets SIGTERM (like a Kubernetes rolling update with maxSurge 1, maxUnavailable 0);
   * without it the old one is stopped first. Resolves when every old replica has exited and every new one is ready.
   * `env`: the new replicas' environment on top of the system's (a new release's settings, e.g. `EVENT_VERSIONS`);
   * without it they get none, whatever the old ones had.
   */
  async rollingRestart(
    name: ServiceName,
    opts: { surge: boolean; stopTimeoutMs?: number; env?: Record<string, string> },
  ): Promise<void> {
    const olds = [...(this.instances.get(name) ?? [])];
    for (const old of olds) {
      const r = this.#nextReplica.get(name) ?? olds.length + 1;
      this.#nextReplica.set(name, r + 1);
      const fresh = new Instance(processNamed(name), r, await this.#pickPort());
      if (opts.env) fresh.env = { ...opts.env };
      const list = this.instances.get(name)!;
      if (opts.surge) {
        list.push(fresh);
        await this.#spawnAndWait(fresh);
        await this.#terminate(old, opts.stopTimeoutMs);
      } else {
        await this.#terminate(old, opts.stopTimeoutMs);
        list.push(fresh);
        await this.#spawnAndWait(fresh);
      }
      this.instances.set(
        name,
        this.instances.get(name)!.filter((i) => i !== old),
      );
      this.#log(`rolled ${old.id} → ${fresh.id}`);
    }
  }

  async #terminate(inst: Instance, timeoutMs = 30_000): Promise<void> {
    inst.expectDown = true;
    const r = await inst.child?.stop(timeoutMs);
    if (r?.forced) this.#log(`WARNING: ${inst.id} did not stop within ${timeoutMs} ms after SIGTERM; killed`);
    if (r && !r.forced && r.code !== 0 && r.signal === null)
      this.#log(`WARNING: ${inst.id} exited with code ${r.code} after SIGTERM`);
  }

  /** kill -9 of every process, NATS included, at once. */
  async killAll(): Promise<void> {
    const insts = this.all();
    for (const i of insts) i.expectDown = true;
    await Promise.all([
      ...insts.map(async (i) => {
        i.child?.kill("SIGKILL");
        await i.child?.exited;
      }),
      this.nats?.kill(),
      ...(this.natsCluster?.servers.map((s) => s.kill()) ?? []),
    ]);
    this.#log("killed -9 every process, NATS included");
  }

  /** Starts everything that is not running again, from the same data (NATS store, ledger, mail log, audit). */
  async startAll(): Promise<void> {
    const t0 = Date.now();
    if (this.nats && !this.nats.running) await this.nats.start();
    if (this.natsCluster) {
      await Promise.all(this.natsCluster.servers.filter((s) => !s.running).map((s) => s.start()));
      await this.natsCluster.waitForJetStream(60_000);
    }
    await this.#startTiers();
    this.#log(`everything restarted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }

  /** kill -9 of the single nats-server. */
  async killNats(): Promise<void> {
    if (!this.nats) throw new Error("killNats needs a single-node system");
    await this.nats.kill();
    this.#log("killed -9 nats-server");
  }

  /** Starts the single nats-server again on its ports and store dir. */
  async restartNats(): Promise<void> {
    if (!this.nats) throw new Error("restartNats needs a single-node system");
    await this.nats.start();
    this.#log("nats-server is back");
  }

  /** The index in the cluster of the server leading `stream` (asked of the running members). */
  async streamLeader(stream: string): Promise<{ index: number; name: string }> {
    if (!this.natsCluster) throw new Error("streamLeader needs a cluster");
    const jsm = await this.jsm();
    const info = await jsm.streams.info(stream);
    const name = info.cluster?.leader ?? "";
    const index = this.natsCluster.servers.findIndex((s) => s.serverName === name);
    if (index < 0) throw new Error(`stream ${stream} has no known leader (${JSON.stringify(info.cluster)})`);
    return { index, name };
  }

  /** kill -9 of cluster member `i`. */
  async killNode(i: number): Promise<void> {
    await this.natsCluster!.kill(i);
    this.#log(`killed -9 NATS node ${this.natsCluster!.server(i).serverName}`);
  }

  /** Starts cluster member `i` again and waits until the cluster agrees on a meta leader. */
  async restartNode(i: number): Promise<void> {
    await this.natsCluster!.server(i).start();
    await this.natsCluster!.waitForJetStream(60_000);
    this.#log(`NATS node ${this.natsCluster!.server(i).serverName} is back`);
  }

  #tokens: DevTokens | undefined;
  /** Tokens signed with this system's development secret (after {@link start}). */
  get tokens(): DevTokens {
    if (!this.#tokens) throw new Error("ChaosSystem: start() first");
    return this.#tokens;
  }

  /** `PUT /admin/faults` on a simulator. */
  async setFaults(
    sim: "payment-gateway" | "mail-provider",
    faults: { outage?: boolean; failureRate?: number; latencyMs?: number; latencyJitterMs?: number },
  ): Promise<void> {
    const res = await fetch(`${this.url(sim)}/admin/faults`, {
      method: "PUT",
      headers: { "content-type": "application/json", ...(await this.tokens.operator()) },
      body: JSON.stringify(faults),
    });
    if (!res.ok) throw new Error(`PUT ${sim} /admin/faults: ${res.status} ${await res.text()}`);
    this.#log(`${sim} faults: ${JSON.stringify(faults)}`);
  }

  /** Last lines of an instance's output (for messages). */
  lastLines(id: string): readonly string[] {
    return this.instance(id).child?.lastLines ?? [];
  }
}
