/**
 * Errors with a stable identity. Callers check `code` (or use the `is*` helpers), never message text.
 *
 * One error object says both whether a message that caused it may be retried (`retryable`) and which
 * HTTP status it maps to (`status`), so the consumer runner and the HTTP layer agree on its meaning.
 */
export class ShopStreamError extends Error {
  override readonly name: string = "ShopStreamError";
  /** Stable machine-readable code, e.g. `EVENT_SCHEMA_INVALID`. */
  readonly code: string;
  /** May the operation that failed be retried later with a chance of success? */
  readonly retryable: boolean;
  /** HTTP status this error maps to when it reaches an API boundary. */
  readonly status: number;

  constructor(code: string, message: string, opts: { retryable: boolean; status?: number; cause?: unknown }) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.retryable = opts.retryable;
    this.status = opts.status ?? (opts.retryable ? 503 : 400);
  }
}

/** A failure that will not go away by retrying (bad input, schema violation, unknown event type). */
export class NonRetryableError extends ShopStreamError {
  override readonly name: string = "NonRetryableError";
  constructor(code: string, message: string, opts: { status?: number; cause?: unknown } = {}) {
    super(code, message, { ...opts, retryable: false });
  }
}

/** A transient failure: a dependency is down, a compare-and-set lost a race, a timeout. */
export class RetryableError extends ShopStreamError {
  override readonly name: string = "RetryableError";
  constructor(code: string, message: string, opts: { status?: number; cause?: unknown } = {}) {
    super(code, message, { ...opts, retryable: true });
  }
}

/** Invalid configuration: the process must not start. */
export class ConfigError extends NonRetryableError {
  override readonly name: string = "ConfigError";
  constructor(message: string) {
    super("CONFIG_INVALID", message, { status: 500 });
  }
}

/** True when `err` is a ShopStream error that must not be retried. */
export function isNonRetryable(err: unknown): boolean {
  return err instanceof ShopStreamError && !err.retryable;
}

/** Short, loggable description of any thrown value. */
export function describeError(err: unknown): string {
  if (err instanceof ShopStreamError) return `${err.code}: ${err.message}`;
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}
