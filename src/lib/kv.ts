import { JetStreamApiCodes, JetStreamApiError, StorageType, jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { RetryableError } from "./errors.js";
import { KeyedQueue } from "./keyed-queue.js";
import { NotProvisionedError, provisioningMode } from "./messaging/provisioning.js";

export type { KV } from "@nats-io/kv";

/**
 * Opens (creating when absent) a JetStream KV bucket with file storage and one revision of history
 * per key. Idempotent: every replica of a service may call it at start-up. On a connection in `verify` provisioning
 * mode (a restricted NATS user) a missing bucket is a {@link NotProvisionedError} instead.
 */
export async function openBucket(
  nc: NatsConnection,
  name: string,
  opts: { replicas?: number; history?: number; description?: string } = {},
): Promise<KV> {
  if (provisioningMode(nc) === "verify") {
    const jsm = await jetstreamManager(nc);
    try {
      await jsm.streams.info(`KV_${name}`);
    } catch (err) {
      if (err instanceof JetStreamApiError && (err.code === 10059 || err.status === 404))
        throw new NotProvisionedError(`KV bucket ${name}`);
      throw err;
    }
  }
  return new Kvm(nc).create(name, {
    history: opts.history ?? 1,
    replicas: opts.replicas ?? 1,
    storage: StorageType.File,
    ...(opts.description ? { description: opts.description } : {}),
  });
}

/** True when a KV write lost a compare-and-set race (the key's revision moved on). */
export function isRevisionConflict(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence;
}

/** A value with the revision it was read at (0 = absent). */
export interface Versioned<T> {
  value: T | null;
  revision: number;
}

/** Reads a JSON value and its revision (revision 0 and `null` when the key is absent or deleted). */
export async function readJson<T>(kv: KV, key: string): Promise<Versioned<T>> {
  const e = await kv.get(key);
  if (!e || e.operation !== "PUT") return { value: null, revision: e?.revision ?? 0 };
  return { value: e.json<T>(), revision: e.revision };
}

const queues = new WeakMap<KV, KeyedQueue>();

/**
 * Runs `work` once every earlier call for the same bucket and key in this process has settled: this process's
 * conditional writes of one key reach the server one at a time (see {@link KeyedQueue} for why: concurrent
 * compare-and-sets of one key can both succeed on clustered nats-server before 2.9.21).
 */
export function oneAtATime<R>(kv: KV, key: string, work: () => Promise<R>): Promise<R> {
  let q = queues.get(kv);
  if (!q) queues.set(kv, (q = new KeyedQueue()));
  return q.run(key, work);
}

/** Returned by a {@link casUpdate} mutator to leave the key unchanged. */
export const Unchanged: unique symbol = Symbol("Unchanged");

/**
 * Compare-and-set update of a JSON value: reads it, applies `mutate`, and writes the result only if
 * nobody wrote in between (create when absent, update at the read revision). On a lost race it reads
 * again and retries, up to `maxRetries` times with jittered backoff, then throws a retryable error.
 * `mutate` must be pure: it may run several times. Returning {@link Unchanged} writes nothing. Updates of one
 * key from this process run one at a time ({@link oneAtATime}).
 * @returns the value now stored (or the current one when unchanged) and its revision.
 */
export function casUpdate<T>(
  kv: KV,
  key: string,
  mutate: (current: T | null) => T | typeof Unchanged,
  opts: {
    maxRetries?: number;
    /**
     * A value and revision believed current (e.g. what this process last wrote or read): the first attempt
     * starts from it instead of reading, which saves a round trip when it is right. When it is stale the
     * compare-and-set fails and the key is read as usual; a mutator that leaves it {@link Unchanged} is run again
     * on a fresh read, so an unchanged result is never based on a stale value. `{ value: null, revision: 0 }`
     * means "probably absent" (a create is tried first).
     */
    known?: Versioned<T> | undefined;
  } = {},
): Promise<Versioned<T> & { changed: boolean }> {
  return oneAtATime(kv, key, () => casLoop(kv, key, mutate, opts));
}

async function casLoop<T>(
  kv: KV,
  key: string,
  mutate: (current: T | null) => T | typeof Unchanged,
  opts: { maxRetries?: number; known?: Versioned<T> | undefined },
): Promise<Versioned<T> & { changed: boolean }> {
  const maxRetries = opts.maxRetries ?? 50;
  let known = opts.known;
  for (let i = 0; ; i++) {
    const guessed = known !== undefined;
    const cur = known ?? (await readJson<T>(kv, key));
    known = undefined;
    const next = mutate(cur.value);
    if (next === Unchanged) {
      if (guessed) {
        i--; // not a lost race: verify on a fresh read
        continue;
      }
      return { ...cur, changed: false };
    }
    const bytes = JSON.stringify(next);
    try {
      const revision =
        cur.revision === 0 ? await kv.create(key, bytes) : await kv.update(key, bytes, cur.revision);
      return { value: next, revision, changed: true };
    } catch (err) {
      if (!isRevisionConflict(err)) throw err;
      if (guessed) {
        i--; // the guess was stale: read, without counting a lost race or waiting
        continue;
      }
      if (i >= maxRetries)
        throw new RetryableError("CAS_CONFLICT", `too many concurrent writes to ${key}`, { cause: err });
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + i * 2)));
    }
  }
}

/**
 * The last known value and revision of recently used keys, for {@link casUpdate}'s `known`: a store that reads
 * or writes a key through it can update it next time without reading first. Safe however stale an entry is (the
 * compare-and-set decides); an entry is dropped when an update fails. Bounded: when full it starts afresh.
 */
export class VersionCache<T> {
  readonly #entries = new Map<string, Versioned<T>>();

  constructor(readonly maxEntries = 50_000) {}

  get(key: string): Versioned<T> | undefined {
    return this.#entries.get(key);
  }

  set(key: string, v: Versioned<T>): void {
    if (this.#entries.size >= this.maxEntries && !this.#entries.has(key)) this.#entries.clear();
    this.#entries.set(key, v);
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }

  /** {@link readJson}, remembering what it read. */
  async read(kv: KV, key: string): Promise<Versioned<T>> {
    const v = await readJson<T>(kv, key);
    this.set(key, v);
    return v;
  }

  /**
   * {@link casUpdate} starting from the remembered value (or from `ifUnknown`, e.g. "probably absent"),
   * remembering the result. The mutator must not change its argument in place.
   */
  async update(
    kv: KV,
    key: string,
    mutate: (current: T | null) => T | typeof Unchanged,
    opts: { maxRetries?: number; ifUnknown?: Versioned<T> } = {},
  ): Promise<Versioned<T> & { changed: boolean }> {
    try {
      const r = await casUpdate<T>(kv, key, mutate, {
        maxRetries: opts.maxRetries,
        known: this.#entries.get(key) ?? opts.ifUnknown,
      });
      this.set(key, { value: r.value, revision: r.revision });
      return r;
    } catch (err) {
      this.#entries.delete(key);
      throw err;
    }
  }
}
