import { JetStreamApiCodes, JetStreamApiError, StorageType } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { RetryableError } from "./errors.js";

export type { KV } from "@nats-io/kv";

/**
 * Opens (creating when absent) a JetStream KV bucket with file storage and one revision of history
 * per key. Idempotent: every replica of a service may call it at start-up.
 */
export async function openBucket(
  nc: NatsConnection,
  name: string,
  opts: { replicas?: number; history?: number; description?: string } = {},
): Promise<KV> {
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

/** Returned by a {@link casUpdate} mutator to leave the key unchanged. */
export const Unchanged: unique symbol = Symbol("Unchanged");

/**
 * Compare-and-set update of a JSON value: reads it, applies `mutate`, and writes the result only if
 * nobody wrote in between (create when absent, update at the read revision). On a lost race it reads
 * again and retries, up to `maxRetries` times with jittered backoff, then throws a retryable error.
 * `mutate` must be pure: it may run several times. Returning {@link Unchanged} writes nothing.
 * @returns the value now stored (or the current one when unchanged) and its revision.
 */
export async function casUpdate<T>(
  kv: KV,
  key: string,
  mutate: (current: T | null) => T | typeof Unchanged,
  opts: { maxRetries?: number } = {},
): Promise<Versioned<T> & { changed: boolean }> {
  const maxRetries = opts.maxRetries ?? 50;
  for (let i = 0; ; i++) {
    const cur = await readJson<T>(kv, key);
    const next = mutate(cur.value);
    if (next === Unchanged) return { ...cur, changed: false };
    const bytes = JSON.stringify(next);
    try {
      const revision =
        cur.revision === 0 ? await kv.create(key, bytes) : await kv.update(key, bytes, cur.revision);
      return { value: next, revision, changed: true };
    } catch (err) {
      if (!isRevisionConflict(err)) throw err;
      if (i >= maxRetries)
        throw new RetryableError("CAS_CONFLICT", `too many concurrent writes to ${key}`, { cause: err });
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 + i * 2)));
    }
  }
}
