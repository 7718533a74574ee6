/**
 * Pieces shared by the external-world simulators (payment gateway, mail provider).
 *
 * The simulators are dev/test tools that run as separate processes and are reached over HTTP only; no
 * service imports this module. It provides:
 *
 * - {@link createSimulatorServer}: a Fastify instance with RFC 9457 problem+json errors, strict
 *   validation and `GET /health`;
 * - {@link Faults}: fault-injection settings (outage, random failure, latency) plus route hooks, and
 *   {@link registerAdminRoutes} for `/admin/faults` and `/admin/reset`;
 * - {@link IdempotencyStore}: per-key locking, body fingerprints and stored-response replay;
 * - {@link JsonFile}: atomic (write-temp-then-rename) JSON persistence;
 * - {@link runSimulator}: the shared entry-point logic for `main.ts`.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { type FileHandle, mkdir, open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import Fastify, {
  LogController,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from "fastify";
import { pino, type Logger } from "pino";
import { type Static, Type } from "@sinclair/typebox";
import { parseConfig, Env } from "../lib/config.js";
import { AuthConfig, TokenVerifier, installAuth } from "../lib/http/auth.js";
import { canonicalJson, fingerprint } from "../lib/canonical.js";
import { ProblemError, installProblemHandlers, problem, sendProblem } from "../lib/http/problem.js";

export { canonicalJson, fingerprint, ProblemError, problem, sendProblem };
export type { ProblemDocument, ProblemFieldError } from "../lib/http/problem.js";

/** Options accepted by every simulator factory. */
export interface SimulatorOptions {
  /** `true` for a default pino logger, `false`/absent for none, or an existing pino logger. */
  logger?: boolean | Logger;
  /** Seed for the fault-injection random number generator (reproducible failure patterns). */
  seed?: number;
  /**
   * Bearer-token verification: `/admin/*` then requires an operator token (the simulated API itself stays open, as
   * the real provider's would be to ShopStream). Without it `/admin/*` is open (in-process unit tests only:
   * `runSimulator` always passes one).
   */
  auth?: TokenVerifier;
}

// ---------------------------------------------------------------------------------------------------
// server skeleton
// ---------------------------------------------------------------------------------------------------

/**
 * A Fastify instance configured the way both simulators need: no type coercion on bodies, all
 * validation errors reported, problem+json for every error (including 404 and malformed JSON), and
 * `GET /health`.
 */
export function createSimulatorServer(name: string, opts: SimulatorOptions = {}): FastifyInstance {
  const ajv = { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: true } } as const;
  const app: FastifyInstance =
    typeof opts.logger === "object"
      ? (Fastify({
          loggerInstance: opts.logger,
          ajv,
          forceCloseConnections: true,
          // Two info lines per request cost more than the request itself under load; errors are still logged.
          logController: new LogController({ disableRequestLogging: true }),
        }) as unknown as FastifyInstance)
      : Fastify({
          logger: opts.logger ?? false,
          ajv,
          forceCloseConnections: true,
          logController: new LogController({ disableRequestLogging: true }),
        });

  installProblemHandlers(app);
  if (opts.auth) installAuth(app, opts.auth, { defaultLevel: "none" });
  app.get("/health", async () => ({ status: "ok", service: name }));
  return app;
}

// ---------------------------------------------------------------------------------------------------
// faults
// ---------------------------------------------------------------------------------------------------

export const FaultSettingsSchema = Type.Object(
  {
    failureRate: Type.Number({
      minimum: 0,
      maximum: 1,
      description: "probability of a 500/503 before any effect",
    }),
    latencyMs: Type.Integer({ minimum: 0, maximum: 600_000, description: "delay added to every response" }),
    latencyJitterMs: Type.Integer({
      minimum: 0,
      maximum: 600_000,
      description: "extra random delay, 0..n ms",
    }),
    outage: Type.Boolean({ description: "when true every faulted request fails with 503 at once" }),
  },
  { additionalProperties: false },
);
export type FaultSettings = Static<typeof FaultSettingsSchema>;
export const FaultPatchSchema = Type.Partial(FaultSettingsSchema, { additionalProperties: false });
export type FaultPatch = Static<typeof FaultPatchSchema>;

const NO_FAULTS: FaultSettings = { failureRate: 0, latencyMs: 0, latencyJitterMs: 0, outage: false };

/** mulberry32: tiny, fast, seedable PRNG returning floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Fault-injection state. Attach {@link Faults.hooks} to the routes that talk to the "outside world":
 * `onRequest` rejects during an outage or on a random failure (before the handler, so nothing is
 * recorded); `onSend` delays the response after the handler has recorded its effect.
 */
export class Faults {
  private settings: FaultSettings = { ...NO_FAULTS };
  private readonly random: () => number;

  constructor(seed?: number) {
    this.random = seed === undefined ? Math.random : seededRandom(seed);
  }

  get(): FaultSettings {
    return { ...this.settings };
  }

  update(patch: FaultPatch): FaultSettings {
    for (const [k, v] of Object.entries(patch)) {
      if (v !== undefined) (this.settings as Record<string, unknown>)[k] = v;
    }
    return this.get();
  }

  reset(): FaultSettings {
    this.settings = { ...NO_FAULTS };
    return this.get();
  }

  /** Throws the fault to inject before any effect, if any. */
  checkBeforeEffect(): void {
    const s = this.settings;
    if (s.outage) {
      throw new ProblemError(503, "outage", "Service Unavailable", "simulated outage (fault injection)", {
        headers: { "retry-after": "1" },
      });
    }
    if (s.failureRate > 0 && this.random() < s.failureRate) {
      const status = this.random() < 0.5 ? 500 : 503;
      throw new ProblemError(
        status,
        "simulated-failure",
        status === 500 ? "Internal Server Error" : "Service Unavailable",
        `simulated random failure (failureRate=${s.failureRate}); nothing was recorded, retry with the same Idempotency-Key`,
      );
    }
  }

  /** Delay to apply to a response right now (latency + random jitter), in ms. */
  delayMs(): number {
    const s = this.settings;
    const jitter = s.latencyJitterMs > 0 ? Math.floor(this.random() * (s.latencyJitterMs + 1)) : 0;
    return s.latencyMs + jitter;
  }

  /** Requests answered by an outage: they fail at once, without the configured latency. */
  private readonly outaged = new WeakSet<FastifyRequest>();

  /**
   * Route-level hooks: spread into a route's options (`{ ...faults.hooks, schema }`). Latency applies to
   * every response of the route (successes, replays, business errors, random failures), except outage
   * responses, which are immediate.
   */
  readonly hooks = {
    onRequest: async (req: FastifyRequest, _reply: FastifyReply): Promise<void> => {
      if (this.settings.outage) this.outaged.add(req);
      this.checkBeforeEffect();
    },
    onSend: async (req: FastifyRequest, _reply: FastifyReply, payload: unknown): Promise<unknown> => {
      if (this.outaged.has(req)) return payload;
      const ms = this.delayMs();
      if (ms > 0) await sleep(ms);
      return payload;
    },
  };
}

/**
 * `GET /admin/faults`, `PUT /admin/faults` (partial update, returns the current settings) and
 * `POST /admin/reset` (faults back to none, then `onReset` clears the simulator's own state).
 */
export function registerAdminRoutes(
  app: FastifyInstance,
  faults: Faults,
  onReset: () => Promise<void>,
): void {
  const operator = { config: { auth: "operator" as const } };
  app.get("/admin/faults", operator, async () => faults.get());
  app.put<{ Body: FaultPatch }>(
    "/admin/faults",
    { ...operator, schema: { body: FaultPatchSchema } },
    async (req) => {
      const next = faults.update(req.body);
      req.log.info({ faults: next }, "fault settings changed");
      return next;
    },
  );
  app.post("/admin/reset", operator, async (req) => {
    const next = faults.reset();
    await onReset();
    req.log.info("simulator reset");
    return { reset: true, faults: next };
  });
}

// ---------------------------------------------------------------------------------------------------
// idempotency
// ---------------------------------------------------------------------------------------------------

export const IdempotencyKeyHeaders = Type.Object({
  "idempotency-key": Type.String({ minLength: 1, maxLength: 255, description: "client-chosen unique key" }),
});
export type IdempotencyKeyHeaders = Static<typeof IdempotencyKeyHeaders>;

/** A stored response for one (scope, idempotency key). */
export interface IdempotencyRecord {
  scope: string;
  key: string;
  fingerprint: string;
  status: number;
  body: unknown;
  at: string;
}

/** What a handler returns to the store: the response to store and send. */
export interface StoredResponse {
  status: number;
  body: unknown;
}

/** A stored response plus whether it was replayed rather than produced now. */
export type IdempotentOutcome = StoredResponse & { replayed: boolean };

/**
 * Remembers the response given for each idempotency key (per scope, e.g. `charges`) and replays it.
 *
 * - The first request for a key runs its effect; the response is stored, then `onCommit` (persistence)
 *   runs while the key is still locked, so a replay is never served before the effect is durable.
 * - Concurrent requests with the same key wait for the in-flight one and then replay its result.
 * - The same key with a different body fingerprint fails with 422 `idempotency-key-reused`.
 * - If the effect throws (e.g. 404/422 business errors), nothing is stored: the key stays unused.
 */
export class IdempotencyStore {
  private readonly records = new Map<string, IdempotencyRecord>();
  private readonly inflight = new Map<string, Promise<unknown>>();

  constructor(
    records: Iterable<IdempotencyRecord> = [],
    private readonly onCommit: (record: IdempotencyRecord) => Promise<void> = async () => {},
  ) {
    for (const r of records) this.records.set(IdempotencyStore.id(r.scope, r.key), r);
  }

  private static id(scope: string, key: string): string {
    return `${scope}\u0000${key}`;
  }

  async execute(
    scope: string,
    key: string,
    bodyFingerprint: string,
    effect: () => StoredResponse | Promise<StoredResponse>,
  ): Promise<IdempotentOutcome> {
    const id = IdempotencyStore.id(scope, key);
    for (;;) {
      const done = this.records.get(id);
      if (done) {
        if (done.fingerprint !== bodyFingerprint) {
          throw new ProblemError(
            422,
            "idempotency-key-reused",
            "Idempotency key reused with a different request",
            `Idempotency-Key ${JSON.stringify(key)} was already used for ${scope} with a different request body`,
          );
        }
        return { status: done.status, body: done.body, replayed: true };
      }
      const pending = this.inflight.get(id);
      if (!pending) break;
      await pending.catch(() => undefined);
    }
    // No await between the checks above and this registration: the key is now locked.
    const run = (async (): Promise<StoredResponse> => {
      const res = await effect();
      const record: IdempotencyRecord = {
        scope,
        key,
        fingerprint: bodyFingerprint,
        status: res.status,
        body: res.body,
        at: new Date().toISOString(),
      };
      this.records.set(id, record);
      await this.onCommit(record);
      return res;
    })();
    this.inflight.set(id, run);
    try {
      const res = await run;
      return { ...res, replayed: false };
    } finally {
      this.inflight.delete(id);
    }
  }

  /** All stored records (for persistence), in insertion order. */
  list(): IdempotencyRecord[] {
    return [...this.records.values()];
  }

  clear(): void {
    this.records.clear();
  }
}

/** Sends an idempotent outcome: fresh → its stored status; replay → 200 with `Idempotent-Replayed: true`. */
export function sendOutcome(reply: FastifyReply, outcome: IdempotentOutcome): FastifyReply {
  if (outcome.replayed) return reply.code(200).header("idempotent-replayed", "true").send(outcome.body);
  return reply.code(outcome.status).send(outcome.body);
}

// ---------------------------------------------------------------------------------------------------
// persistence
// ---------------------------------------------------------------------------------------------------

/**
 * A JSON file written atomically (write a temp file, fsync, rename over the target). Saves are
 * serialized and coalesced: while one write runs, later saves collapse into a single next write of the
 * newest state, and every caller's promise resolves once a write containing its state is on disk.
 */
export class JsonFile<T> {
  private tail: Promise<void> = Promise.resolve();
  private next: { text: string; promise: Promise<void> } | undefined;
  private seq = 0;

  constructor(readonly path: string) {}

  /** Reads the file; `undefined` when it does not exist. A corrupt file throws (never silently reset). */
  loadSync(): T | undefined {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    return JSON.parse(text) as T;
  }

  save(state: T): Promise<void> {
    const text = JSON.stringify(state);
    if (this.next) {
      this.next.text = text;
      return this.next.promise;
    }
    const slot: { text: string; promise: Promise<void> } = { text, promise: Promise.resolve() };
    this.next = slot;
    slot.promise = this.tail
      .catch(() => undefined)
      .then(async () => {
        if (this.next === slot) this.next = undefined;
        await this.writeAtomic(slot.text);
      });
    this.tail = slot.promise;
    return slot.promise;
  }

  /** Resolves when every save issued so far has been written (or failed). */
  async flush(): Promise<void> {
    await this.tail.catch(() => undefined);
  }

  private async writeAtomic(text: string): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true });
    const tmp = `${this.path}.${process.pid}.${++this.seq}.tmp`;
    const fh = await open(tmp, "w");
    try {
      await fh.writeFile(text, "utf8");
      await fh.datasync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, this.path);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }
}

/**
 * An append-only JSON-lines journal kept beside a {@link JsonFile} snapshot, so that recording one change costs
 * O(1) instead of rewriting the whole state: `append` adds one line, and lines appended while a write runs go out
 * together in the next one (one write + fdatasync per batch); each caller's promise resolves once its line is on
 * disk. {@link Journal.loadSync} returns every complete line (a torn last line, from a crash mid-write, is
 * ignored). Replaying must be idempotent: after a crash between a snapshot and {@link Journal.removeSync}, lines
 * already in the snapshot are replayed again.
 */
export class Journal<T> {
  private buffer: string[] = [];
  private tail: Promise<void> = Promise.resolve();
  private next: Promise<void> | undefined;
  private fh: FileHandle | undefined;

  constructor(readonly path: string) {}

  /** Every complete line, parsed; empty when the file does not exist. */
  loadSync(): T[] {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    const lines = text.split("\n");
    lines.pop(); // the part after the last newline: empty, or a torn line
    return lines.filter((l) => l !== "").map((l) => JSON.parse(l) as T);
  }

  append(item: T): Promise<void> {
    this.buffer.push(JSON.stringify(item) + "\n");
    if (this.next) return this.next;
    const batch = this.tail
      .catch(() => undefined)
      .then(async () => {
        if (this.next === batch) this.next = undefined; // appends from now on go into the next batch
        const text = this.buffer.join("");
        this.buffer = [];
        if (text === "") return;
        if (!this.fh) {
          await mkdir(dirname(this.path), { recursive: true });
          this.fh = await open(this.path, "a");
        }
        await this.fh.write(text);
        await this.fh.datasync();
      });
    this.next = batch;
    this.tail = batch;
    return batch;
  }

  /** Resolves when every append issued so far has been written (or failed). */
  async flush(): Promise<void> {
    await this.tail.catch(() => undefined);
  }

  /** Flushes and closes the file (it stays on disk). */
  async close(): Promise<void> {
    await this.flush();
    await this.fh?.close();
    this.fh = undefined;
  }

  /** Deletes the journal (once a snapshot holds everything in it). Only while nothing is being appended. */
  removeSync(): void {
    try {
      unlinkSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
}

/** Writes `text` to `path` atomically and durably (temp file, fsync, rename), synchronously. */
export function writeFileAtomicSync(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.sync.tmp`;
  const fd = openSync(tmp, "w");
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/**
 * A simulator's persistent state: a {@link JsonFile} snapshot plus a {@link Journal} of the changes since
 * (`<file>.journal`). Loading replays the journal onto the snapshot and, when it had lines, writes a new snapshot
 * and removes it; each change then costs one journal line; closing writes the snapshot and removes the journal,
 * so at rest the file is one JSON document.
 */
export class PersistedState<S, Op> {
  readonly snapshot: JsonFile<S>;
  readonly journal: Journal<Op>;

  constructor(
    readonly path: string,
    private readonly replay: (state: S | undefined, ops: Op[]) => S | undefined,
  ) {
    this.snapshot = new JsonFile<S>(path);
    this.journal = new Journal<Op>(`${path}.journal`);
  }

  /** The state at start-up (snapshot + journal), compacted into the snapshot when the journal had lines. */
  loadSync(): S | undefined {
    const base = this.snapshot.loadSync();
    const ops = this.journal.loadSync();
    if (ops.length === 0) return base;
    const state = this.replay(base, ops);
    if (state !== undefined) writeFileAtomicSync(this.path, JSON.stringify(state));
    this.journal.removeSync();
    return state;
  }

  /** Records one change; resolves once it is on disk. */
  record(op: Op): Promise<void> {
    return this.journal.append(op);
  }

  /** Writes the whole state as the snapshot and removes the journal (on close). */
  async compact(state: S): Promise<void> {
    await this.journal.close();
    await this.snapshot.save(state);
    this.journal.removeSync();
  }
}

/**
 * What each simulator keeps: its records (the gateway's ledger entries, the provider's messages), each with an
 * id, and its idempotency records; optionally persisted in `file` as `{ version: 1, <field>: [...],
 * idempotency: [...] }`, with a journal line per change: `{ <field>: [new records] }`, `{ idempotency }` or
 * `{ reset: true }` (see {@link PersistedState}). Replaying the journal is idempotent: a record or key already
 * in the snapshot changes nothing.
 */
export class RecordLog<T extends { id: string }> {
  readonly idempotency: IdempotencyStore;
  readonly #field: string;
  readonly #file: PersistedState<Record<string, unknown>, Record<string, unknown>> | undefined;
  #items: T[];
  /** How many of `#items` are on disk (snapshot or journal). */
  #journaled: number;

  /**
   * @param opts.field the key of the records in the file and the journal (a persistent format)
   * @param opts.label and `opts.kind` name the file in the error when it holds something else:
   * "<label> <file> is not a <kind>"
   */
  constructor(opts: { file?: string | undefined; field: string; label: string; kind: string }) {
    this.#field = opts.field;
    this.#file =
      opts.file === undefined
        ? undefined
        : new PersistedState<Record<string, unknown>, Record<string, unknown>>(opts.file, (base, ops) =>
            this.#replay(base, ops),
          );
    const loaded = this.#file?.loadSync();
    if (
      loaded !== undefined &&
      (!Array.isArray(loaded[opts.field]) || !Array.isArray(loaded["idempotency"]))
    ) {
      throw new Error(`${opts.label} ${opts.file} is not a ${opts.kind}`);
    }
    this.#items = (loaded?.[opts.field] as T[] | undefined) ?? [];
    this.#journaled = this.#items.length;
    this.idempotency = new IdempotencyStore(
      (loaded?.["idempotency"] as IdempotencyRecord[] | undefined) ?? [],
      (record) => this.#persist(record),
    );
  }

  get items(): readonly T[] {
    return this.#items;
  }

  /** Adds a record; it is written with the idempotency record of the request that made it. */
  push(item: T): void {
    this.#items.push(item);
  }

  /** Forgets every record and idempotency key (admin reset). */
  async reset(): Promise<void> {
    this.#items = [];
    this.#journaled = 0;
    this.idempotency.clear();
    await this.#file?.record({ reset: true });
  }

  /** Writes the whole state as the snapshot (on close). */
  async close(): Promise<void> {
    await this.#file?.compact({
      version: 1,
      [this.#field]: this.#items,
      idempotency: this.idempotency.list(),
    });
  }

  /** Each change is one journal line (O(1)); the whole state is written only at start-up and on close. */
  async #persist(record?: IdempotencyRecord): Promise<void> {
    if (!this.#file) return;
    const fresh = this.#items.slice(this.#journaled);
    this.#journaled = this.#items.length;
    const writes: Promise<void>[] = [];
    if (fresh.length > 0) writes.push(this.#file.record({ [this.#field]: fresh }));
    if (record) writes.push(this.#file.record({ idempotency: record }));
    await Promise.all(writes);
  }

  #replay(
    base: Record<string, unknown> | undefined,
    ops: Record<string, unknown>[],
  ): Record<string, unknown> {
    const key = (r: IdempotencyRecord) => `${r.scope}\u0000${r.key}`;
    let items = [...((base?.[this.#field] as T[] | undefined) ?? [])];
    const ids = new Set(items.map((e) => e.id));
    const idem = new Map(
      ((base?.["idempotency"] as IdempotencyRecord[] | undefined) ?? []).map((r) => [key(r), r]),
    );
    for (const op of ops) {
      if ("reset" in op) {
        items = [];
        ids.clear();
        idem.clear();
      } else if ("idempotency" in op) {
        const r = op["idempotency"] as IdempotencyRecord;
        idem.set(key(r), r);
      } else {
        for (const e of (op[this.#field] as T[] | undefined) ?? [])
          if (!ids.has(e.id)) {
            ids.add(e.id);
            items.push(e);
          }
      }
    }
    return { version: 1, [this.#field]: items, idempotency: [...idem.values()] };
  }
}

/** A random, URL-safe identifier such as `ch_3f9a…`. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(12).toString("hex")}`;
}

// ---------------------------------------------------------------------------------------------------
// entry point
// ---------------------------------------------------------------------------------------------------

/** What {@link runSimulator} passes to a simulator's factory. */
export interface SimulatorMainOptions extends SimulatorOptions {
  /** The persistence file named by the simulator's `fileEnv` variable, if set. */
  file?: string;
}

/**
 * Shared `main.ts` logic: reads `PORT`, `HOST`, `LOG_LEVEL`, `SEED` and the simulator's file variable,
 * listens, prints the URL on stdout, and closes gracefully on SIGTERM/SIGINT.
 */
export async function runSimulator(spec: {
  name: string;
  defaultPort: number;
  fileEnv: string;
  build: (opts: SimulatorMainOptions) => FastifyInstance;
}): Promise<void> {
  const schema = Type.Object({
    PORT: Env.port(spec.defaultPort, `${spec.name} listen port`),
    HOST: Type.String({ default: "127.0.0.1", description: "listen address" }),
    LOG_LEVEL: Env.logLevel(),
    SEED: Type.Optional(Type.Integer({ description: "seed for fault-injection randomness" })),
    [spec.fileEnv]: Type.Optional(
      Type.String({ minLength: 1, description: "JSON file to persist state in" }),
    ),
  });
  let config: Static<typeof schema>;
  let auth: TokenVerifier;
  try {
    config = parseConfig(schema);
    auth = await TokenVerifier.fromConfig(parseConfig(AuthConfig));
  } catch (err) {
    process.stderr.write(`${spec.name}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
  const logger = pino({ name: spec.name, level: config.LOG_LEVEL as string });
  const file = config[spec.fileEnv] as string | undefined;
  const app = spec.build({ logger, seed: config.SEED as number | undefined, file, auth });

  let closing = false;
  const shutdown = (signal: string): void => {
    if (closing) return;
    closing = true;
    logger.info({ signal }, "shutting down");
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, "error while closing");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));

  const url = await app.listen({ port: config.PORT as number, host: config.HOST as string });
  logger.info({ url, file }, `${spec.name} listening`);
  process.stdout.write(`${spec.name} listening on ${url}\n`);
}
