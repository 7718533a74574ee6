/**
 * Pausing durable consumers by hand, on nats-server 2.9 (which has no consumer pause API: that came in 2.11). The KV
 * bucket `consumer-control` holds one key per paused durable (`{paused, by, at}`); every service watches it and each
 * of its runners stops pulling while its durable's key says `paused: true` (its messages wait in the stream, no
 * attempt is used up), on every replica at once, and resumes when the key says otherwise or is deleted. The console
 * writes the keys.
 */
import type { KV } from "@nats-io/kv";
import type { Logger } from "../telemetry/logger.js";
import type { ConsumerRunner } from "./consumer.js";

/** The bucket of manual pauses. */
export const CONSUMER_CONTROL_BUCKET = "consumer-control";
/** The pause reason a manual pause holds a runner with (beside a breaker's). */
export const OPERATOR_PAUSE = "operator";

/** A durable's manual pause, as stored under its name. */
export interface ConsumerControl {
  paused: boolean;
  /** Who set it (the operator token's `sub`). */
  by: string;
  at: string;
}

/** Pauses or resumes `durable` on every replica of its service. */
export async function setConsumerPaused(kv: KV, durable: string, paused: boolean, by: string): Promise<void> {
  const value: ConsumerControl = { paused, by, at: new Date().toISOString() };
  await kv.put(durable, JSON.stringify(value));
}

/** The durables paused by hand right now, with who and when. */
export async function pausedConsumers(kv: KV): Promise<Map<string, ConsumerControl>> {
  const out = new Map<string, ConsumerControl>();
  for await (const key of await kv.keys()) {
    const e = await kv.get(key);
    if (!e || e.operation !== "PUT") continue;
    try {
      const v = e.json<ConsumerControl>();
      if (v.paused) out.set(key, v);
    } catch {
      /* not a control value */
    }
  }
  return out;
}

/**
 * Applies the bucket's pauses to `runners` (by durable name) now and on every change until the returned stop is
 * called; resolves once the current values are applied, so a service starts its runners already paused.
 */
export async function followConsumerControl(
  kv: KV,
  runners: ReadonlyMap<string, ConsumerRunner>,
  logger: Logger,
): Promise<() => void> {
  const watch = await kv.watch();
  let initialDone: () => void = () => undefined;
  const initial = new Promise<void>((r) => (initialDone = r));
  void (async () => {
    for await (const e of watch) {
      const runner = runners.get(e.key);
      if (runner) {
        let paused = false;
        if (e.operation === "PUT") {
          try {
            paused = e.json<ConsumerControl>().paused === true;
          } catch {
            logger.error({ consumer: e.key }, "unreadable consumer-control value ignored");
          }
        }
        if (paused) runner.pause(OPERATOR_PAUSE);
        else runner.resume(OPERATOR_PAUSE);
      }
      if (e.delta === 0) initialDone();
    }
  })().catch((err: unknown) => logger.error({ err }, "consumer-control watch ended"));
  if ((await kv.status()).values === 0) initialDone();
  await initial;
  return () => watch.stop();
}
