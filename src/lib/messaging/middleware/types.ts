/**
 * The message pipeline of the consumer runner, after Watermill's router: a handler takes a {@link Delivery} and
 * resolves with its {@link Outcome}; middleware wraps a handler into another one (retry, dead-letter, park,
 * tracing, ...). The runner only pulls, keeps the messages alive and settles each outcome on the server (ack, nak,
 * term). Every piece runs without a broker: a delivery wraps anything shaped like a {@link Message}.
 */
import type { JsMsg } from "@nats-io/jetstream";
import type { Delivery } from "./delivery.js";

/**
 * What the pipeline needs of a delivered message: a JetStream message, or a test's fake. `header(name)`, when
 * there, reads one header without decoding them all (pull.ts).
 */
export type Message = Pick<
  JsMsg,
  "subject" | "seq" | "data" | "headers" | "info" | "ack" | "nak" | "term" | "working"
> & { header?(name: string): string };

/**
 * How handling a message ended, as the runner settles it:
 * - `ack` / `skip`: acknowledged (`skip`: a type this consumer does not handle);
 * - `redeliver`: nak'd with `delayMs`, not a failure (a durable timer);
 * - `retry`: a failed attempt, nak'd with `delayMs` (backoff);
 * - `dead-lettered`: copied to the DLQ, then terminated;
 * - `hand-back`: the runner is stopping; given back for another runner.
 *
 * Inside the pipeline, before a middleware resolves them: `failed` (the handler threw), `defer` (run again in place
 * later), `hold` (a timer: run again in place at `untilMs`, see hold.ts), `dead-letter` (to be copied to the DLQ).
 */
export type Outcome =
  | { readonly outcome: "ack" }
  | { readonly outcome: "skip" }
  | { readonly outcome: "redeliver"; readonly delayMs: number }
  | {
      readonly outcome: "retry";
      readonly delayMs: number;
      readonly error: unknown;
      readonly logged?: boolean;
    }
  | { readonly outcome: "dead-lettered"; readonly code: string; readonly error: unknown }
  | { readonly outcome: "hand-back" }
  | { readonly outcome: "failed"; readonly error: unknown }
  | { readonly outcome: "defer"; readonly retryAfterMs: number }
  | { readonly outcome: "hold"; readonly untilMs: number }
  | { readonly outcome: "dead-letter"; readonly error: unknown };

/** A step of the pipeline: resolves with the outcome of one delivery. Never rejects. */
export type Handle = (d: Delivery) => Promise<Outcome>;

/** Wraps a handler into another (Watermill's `HandlerMiddleware`). */
export type Middleware = (next: Handle) => Handle;

/** What middleware may ask of the runner it runs in. */
export interface RunnerControl {
  /** Paused (by a breaker): nothing new is pulled, failures park instead of using attempts. */
  readonly paused: boolean;
  /** stop() was called: messages not finished are handed back. */
  readonly stopping: boolean;
  /** Resolves once resumed or stopping. */
  untilResumed(): Promise<void>;
  /** Resolves after `ms`, or at once when the runner stops. */
  delay(ms: number): Promise<void>;
  /**
   * Holds `d` as a timer until `untilMs` (epoch ms, `Date.now()`'s clock) outside the runner's concurrency slots:
   * resolves true once it is due and has a slot again (the message then goes on in the pipeline), false when the
   * runner stops first (the message is then handed back). See hold.ts.
   */
  hold(d: Delivery, untilMs: number): Promise<boolean>;
}

export const ACK: Outcome = Object.freeze({ outcome: "ack" });
export const SKIP: Outcome = Object.freeze({ outcome: "skip" });
export const HAND_BACK: Outcome = Object.freeze({ outcome: "hand-back" });

/**
 * A middleware that acts before the rest of the pipeline and/or on its outcome, without wrapping the call:
 * `compose` runs the hooks of adjacent ones in one promise reaction, instead of one per middleware (each `.then`
 * is an allocation and a microtask per message).
 */
export interface Hooks {
  /**
   * Before the rest: resolve an outcome to end here (the rest is not run; only the hooks outside see it), or
   * undefined to go on. `again` runs the rest of the pipeline (for a middleware that holds a message and runs it
   * again: park).
   */
  before?: (d: Delivery, again: Handle) => Promise<Outcome> | undefined;
  /** On the outcome of the rest: the outcome to pass on, or a promise of it (when it has I/O to do). */
  after?: (o: Outcome, d: Delivery, again: Handle) => Outcome | Promise<Outcome>;
}

const hooksOf = new WeakMap<Middleware, Hooks>();

/** The middleware of `h`; on its own it is one `.then` around the rest, composed it shares one with its neighbours. */
export function hooks(h: Hooks): Middleware {
  const m: Middleware = (next) => stage([h], next);
  hooksOf.set(m, h);
  return m;
}

/**
 * The hooks `hs` (outermost first) around `next`, as one handler: the `before`s in order, then `next`, then the
 * `after`s in reverse, all in the reaction to `next`'s outcome unless one of them returns a promise.
 */
function stage(hs: readonly Hooks[], next: Handle): Handle {
  // agains[i]: the rest of the pipeline inside hook i, unwound back to hook i + 1 (made once, not per message).
  const agains: Handle[] = hs.map((_, i) => (d: Delivery) => run(i + 1, d));
  const unwind = (i: number, lo: number, o: Outcome, d: Delivery): Outcome | Promise<Outcome> => {
    for (; i >= lo; i--) {
      const after = hs[i]!.after;
      if (!after) continue;
      const r = after(o, d, agains[i]!);
      if (r instanceof Promise) return i === lo ? r : r.then((x) => unwind(i - 1, lo, x, d));
      o = r;
    }
    return o;
  };
  const run = (from: number, d: Delivery): Promise<Outcome> => {
    for (let i = from; i < hs.length; i++) {
      const r = hs[i]!.before?.(d, agains[i]!);
      if (r) return i === from ? r : r.then((o) => unwind(i - 1, from, o, d));
    }
    return next(d).then((o) => unwind(hs.length - 1, from, o, d));
  };
  return (d) => run(0, d);
}

/** `handle` wrapped in `middleware`, the first outermost; adjacent {@link hooks} middleware run as one stage. */
export function compose(middleware: readonly Middleware[], handle: Handle): Handle {
  const layers: ((next: Handle) => Handle)[] = [];
  let run: Hooks[] = [];
  const flush = () => {
    if (run.length === 0) return;
    const hs = run;
    layers.push((next) => stage(hs, next));
    run = [];
  };
  for (const m of middleware) {
    const h = hooksOf.get(m);
    if (h) {
      run.push(h);
      continue;
    }
    flush();
    layers.push(m);
  }
  flush();
  return layers.reduceRight((next, layer) => layer(next), handle);
}
