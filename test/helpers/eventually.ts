/**
 * Waiting for a condition that no event announces (server-side state, metrics, files): a bounded poll.
 *
 * Where an event can be awaited (a status, a handler call, a log line, a promise), await that instead. The interval
 * here is a poll rate, not a guess at how long something takes: the wait ends as soon as the condition holds, and
 * fails after the deadline with what was awaited and the last thing seen.
 *
 * - {@link eventually}: the condition holds when `fn` returns without throwing (assertions inside are fine);
 * - {@link until}: the condition holds when `cond` returns a truthy value (thrown errors count as "not yet").
 */

/** How long and how often to poll. */
export interface EventuallyOptions {
  /** What is awaited, named in the timeout error. Default: the condition's source text. */
  what?: string;
  /** Give up after this long. Default 10 s. */
  timeoutMs?: number;
  /** Poll rate: the condition is re-checked this often. Default 50 ms. */
  intervalMs?: number;
}

/** Thrown when the deadline passes: names what was awaited and the last error or value seen (also as `cause`). */
export class EventuallyTimeoutError extends Error {
  override readonly name = "EventuallyTimeoutError";
  /** How many times the condition was checked. */
  readonly attempts: number;

  constructor(what: string, timeoutMs: number, attempts: number, last: unknown) {
    super(
      `timed out after ${timeoutMs} ms (${attempts} checks) waiting for ${what}; last seen: ${describe(last)}`,
      {
        cause: last instanceof NotYet ? undefined : last,
      },
    );
    this.attempts = attempts;
  }
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_INTERVAL_MS = 50;

/**
 * Calls `fn` until it returns without throwing and resolves with its value; rejects with an
 * {@link EventuallyTimeoutError} carrying `fn`'s last error once `timeoutMs` has passed. `opts` may be a number: the
 * timeout in milliseconds.
 */
export async function eventually<T>(
  fn: () => Promise<T> | T,
  opts: EventuallyOptions | number = {},
): Promise<T> {
  const o = typeof opts === "number" ? { timeoutMs: opts } : opts;
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const intervalMs = o.intervalMs ?? DEFAULT_INTERVAL_MS;
  const deadline = Date.now() + timeoutMs;
  for (let attempts = 1; ; attempts++) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() >= deadline) {
        throw new EventuallyTimeoutError(o.what ?? sourceOf(fn), timeoutMs, attempts, err);
      }
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Polls `cond` until it returns a truthy value and resolves with that value; a thrown error counts as "not yet".
 * Rejects with an {@link EventuallyTimeoutError} naming `what` and the last value (or error) once `timeoutMs`
 * (default 10 s; `opts` may be that number) has passed.
 */
export function until<T>(
  what: string,
  cond: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  opts: Omit<EventuallyOptions, "what"> | number = {},
): Promise<T> {
  const o = typeof opts === "number" ? { timeoutMs: opts } : opts;
  return eventually(
    async () => {
      const v = await cond();
      if (!v) throw new NotYet(v);
      return v;
    },
    { ...o, what },
  );
}

/** A falsy value returned by {@link until}'s condition. */
class NotYet extends Error {
  constructor(readonly value: unknown) {
    super(`the condition returned ${describe(value)}`);
  }
}

function describe(last: unknown): string {
  if (last instanceof NotYet) return last.message;
  if (last instanceof Error) return `${last.name}: ${last.message}`;
  try {
    return JSON.stringify(last) ?? String(last);
  } catch {
    return String(last);
  }
}

function sourceOf(fn: () => unknown): string {
  const text = fn.toString().replace(/\s+/g, " ").trim();
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}
