/** Exponential backoff with jitter for redelivery delays. */
export interface BackoffOptions {
  /** Delay after the first failed attempt. */
  initialMs: number;
  /** Upper bound of any delay. */
  maxMs: number;
  /** Growth factor per attempt. */
  multiplier: number;
  /** Fraction of the delay randomised, 0..1 ("equal jitter" around the nominal delay). */
  jitter: number;
}

export const defaultBackoff: BackoffOptions = { initialMs: 250, maxMs: 30_000, multiplier: 2, jitter: 0.2 };

/**
 * The redelivery delay after failed attempt number `attempt` (1-based): `initial * multiplier^(attempt-1)`
 * capped at `max`, then spread by ±`jitter`/2 so that many failing messages do not come back together.
 */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions = defaultBackoff,
  rand = Math.random,
): number {
  const nominal = Math.min(opts.maxMs, opts.initialMs * opts.multiplier ** Math.max(0, attempt - 1));
  const spread = nominal * opts.jitter;
  return Math.max(0, Math.round(nominal - spread / 2 + rand() * spread));
}
