/**
 * A resilient JSON-over-HTTP client for the external systems services call (payment gateway, mail
 * provider), and the wiring between its circuit breaker and the consumer runners that feed it.
 *
 * Every call runs through cockatiel policies composed with `wrap(retry, breaker, timeout)`: each attempt
 * is bounded by a timeout (the request is aborted through its `AbortSignal`), transient failures are
 * retried with exponential backoff and jitter, and every failed attempt counts towards the breaker. HTTP
 * outcomes map to ShopStream errors so that the consumer runner does the right thing with them:
 *
 * | outcome                                   | thrown                                    | runner does         |
 * | ----------------------------------------- | ----------------------------------------- | ------------------- |
 * | 2xx                                       | nothing: `{status, body, replayed}`       | —                   |
 * | 5xx, 429, timeout, connection failure     | {@link UpstreamError}, retryable          | nak with backoff    |
 * | other 4xx                                 | {@link UpstreamError}, non-retryable      | DLQ                 |
 * | breaker open (also while half-open)       | `DeferError`                              | park, no attempt    |
 *
 * Writes carry an `Idempotency-Key`, so a retry, a redelivery or a crash-and-redo of the same call has
 * one effect at the provider. This module is a library: it reads no environment variables.
 */
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  ExponentialBackoff,
  TimeoutStrategy,
  circuitBreaker,
  handleWhen,
  retry,
  timeout,
  wrap,
  type CircuitBreakerPolicy,
  type IPolicy,
} from "cockatiel";
import { Gauge, type Registry } from "prom-client";
import { Pool } from "undici";
import { ShopStreamError } from "./errors.js";
import { DeferError, type ConsumerRunner } from "./messaging/consumer.js";
import type { Logger } from "./telemetry/logger.js";

/** Stable codes of {@link UpstreamError}. */
export const UpstreamErrorCode = {
  /** An attempt took longer than the client timeout; the effect may or may not have happened. */
  Timeout: "UPSTREAM_TIMEOUT",
  /** No HTTP answer (connection refused, reset, DNS). */
  Unreachable: "UPSTREAM_UNREACHABLE",
  /** 5xx or 429: the dependency is unwell. */
  Unavailable: "UPSTREAM_UNAVAILABLE",
  /** A 4xx other than 429: the request itself is wrong; retrying cannot help. */
  Rejected: "UPSTREAM_REJECTED",
  /** A 2xx whose body is not JSON. */
  BadResponse: "UPSTREAM_BAD_RESPONSE",
} as const;
export type UpstreamErrorCode = (typeof UpstreamErrorCode)[keyof typeof UpstreamErrorCode];

/**
 * A call to an external dependency failed. `retryable` is true for timeouts, connection failures, 5xx and
 * 429, false for other 4xx. `status` and `problem` (the RFC 9457 body, when there was one) say why.
 */
export class UpstreamError extends ShopStreamError {
  override readonly name: string = "UpstreamError";
  declare readonly code: UpstreamErrorCode;
  /** The dependency, e.g. `payment-gateway`. */
  readonly dependency: string;
  /** HTTP status of the answer, 0 when there was none. */
  readonly httpStatus: number;
  /** Parsed error body (problem+json), when there was one. */
  readonly problem: unknown;

  constructor(
    dependency: string,
    code: UpstreamErrorCode,
    message: string,
    opts: { httpStatus?: number; problem?: unknown; cause?: unknown } = {},
  ) {
    const retryable = code !== UpstreamErrorCode.Rejected;
    super(code, `${dependency}: ${message}`, { retryable, status: retryable ? 503 : 502, cause: opts.cause });
    this.dependency = dependency;
    this.httpStatus = opts.httpStatus ?? 0;
    this.problem = opts.problem;
  }
}

/** Is `err` an {@link UpstreamError} (optionally with one of `codes`)? */
export function isUpstreamError(err: unknown, ...codes: UpstreamErrorCode[]): err is UpstreamError {
  return err instanceof UpstreamError && (codes.length === 0 || codes.includes(err.code));
}

/** True for failures worth another attempt, which also count against the breaker. */
function isTransient(err: unknown): boolean {
  return err instanceof UpstreamError && err.retryable;
}

/** Breaker state as exported on the gauge: 0 closed, 1 open, 2 half-open. */
export type BreakerState = "closed" | "open" | "half-open";
export const breakerStateValue: Record<BreakerState, number> = { closed: 0, open: 1, "half-open": 2 };

/** Options for {@link HttpDependency}. */
export interface HttpDependencyOptions {
  /** Name of the dependency in errors, logs and metrics, e.g. `payment-gateway`. */
  name: string;
  /** Base URL, e.g. `http://127.0.0.1:9090`. */
  baseUrl: string;
  /** Bound of one attempt, in ms (the request is aborted). */
  timeoutMs: number;
  /** Attempts after the first on a transient failure (default 2). */
  retries?: number;
  /** First retry delay (default 100 ms); grows exponentially with jitter up to `retryMaxDelayMs`. */
  retryInitialDelayMs?: number;
  /** Longest retry delay (default 1 s). */
  retryMaxDelayMs?: number;
  /** Consecutive failed attempts that open the breaker (default 5). */
  breakerThreshold?: number;
  /** Time the breaker stays open before a probe call is let through (default 5 s). */
  halfOpenAfterMs?: number;
  /** `retryAfterMs` of the `DeferError` thrown while the breaker is open (default 250 ms). */
  deferMs?: number;
  logger?: Logger | undefined;
  /** Keep-alive connections to the dependency (default 64): concurrent calls beyond it queue. */
  connections?: number;
}

/** A successful answer. */
export interface HttpResult<T> {
  status: number;
  body: T;
  /** True when the provider replayed a stored response for the idempotency key. */
  replayed: boolean;
}

/**
 * An external HTTP dependency behind timeout, retry and circuit breaker (see the module comment).
 *
 * Breaker states as reported by {@link state} and {@link onStateChange}: `open` after `breakerThreshold`
 * consecutive failed attempts; `half-open` once `halfOpenAfterMs` have passed (cockatiel itself moves to
 * half-open lazily, on the next call, so a timer announces it: consumers paused by the breaker resume
 * and their next call is the probe); `closed` after a successful probe, `open` again after a failed one.
 * Only transient failures (timeouts, 5xx, 429, no answer) count: a 4xx means the dependency is healthy.
 */
export class HttpDependency {
  readonly name: string;
  readonly #o: Required<Omit<HttpDependencyOptions, "logger">> & { logger?: Logger | undefined };
  /**
   * Keep-alive connections through undici's pool: `fetch` (undici under the hood too) built a Request, a
   * Response, header objects and an abort bridge per call, and cost payments and notifications more CPU
   * than the rest of their work (docs/benchmarks.md).
   */
  readonly #pool: Pool;
  readonly #path: string;
  readonly #breaker: CircuitBreakerPolicy;
  readonly #policy: IPolicy;
  readonly #listeners = new Set<(s: BreakerState) => void>();
  #state: BreakerState = "closed";
  #halfOpenTimer: NodeJS.Timeout | undefined;

  constructor(opts: HttpDependencyOptions) {
    this.name = opts.name;
    this.#o = {
      retries: 2,
      retryInitialDelayMs: 100,
      retryMaxDelayMs: 1_000,
      breakerThreshold: 5,
      halfOpenAfterMs: 5_000,
      deferMs: 250,
      connections: 64,
      ...opts,
      baseUrl: opts.baseUrl.replace(/\/+$/, ""),
    };
    const base = new URL(this.#o.baseUrl);
    this.#path = base.pathname.replace(/\/+$/, "");
    this.#pool = new Pool(base.origin, { connections: this.#o.connections, pipelining: 1 });
    const transient = handleWhen(isTransient);
    const retryPolicy = retry(transient, {
      maxAttempts: this.#o.retries,
      backoff: new ExponentialBackoff({
        initialDelay: this.#o.retryInitialDelayMs,
        maxDelay: this.#o.retryMaxDelayMs,
      }),
    });
    retryPolicy.onRetry((r) =>
      this.#o.logger?.debug(
        { dependency: this.name, delay_ms: r.delay, err: "error" in r ? r.error.message : undefined },
        "retrying call",
      ),
    );
    this.#breaker = circuitBreaker(transient, {
      halfOpenAfter: this.#o.halfOpenAfterMs,
      breaker: new ConsecutiveBreaker(this.#o.breakerThreshold),
    });
    this.#breaker.onStateChange((s) => this.#onBreakerState(s));
    // Cooperative: the attempt's fetch is aborted through the signal and reports the timeout itself.
    // No abort once an attempt has returned (cockatiel's default): the answer is complete by then, and the
    // abort built a DOMException (a stack trace) and ran undici's abort listeners for every successful call.
    this.#policy = wrap(
      retryPolicy,
      this.#breaker,
      timeout(this.#o.timeoutMs, { strategy: TimeoutStrategy.Cooperative, abortOnReturn: false }),
    );
  }

  /** Current breaker state. */
  get state(): BreakerState {
    return this.#state;
  }

  /** Calls `fn` on every breaker state change; returns an unsubscribe function. */
  onStateChange(fn: (s: BreakerState) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /**
   * POSTs a JSON body with an `Idempotency-Key` through the policies.
   * @throws UpstreamError (retryable or not, see the module comment) when every attempt failed.
   * @throws DeferError when the breaker is open: nothing was sent.
   */
  post<T>(path: string, body: unknown, opts: { idempotencyKey: string }): Promise<HttpResult<T>> {
    return this.#call<T>("POST", path, body, { "idempotency-key": opts.idempotencyKey });
  }

  /** GETs a JSON resource through the same policies. */
  get<T>(path: string): Promise<HttpResult<T>> {
    return this.#call<T>("GET", path, undefined, {});
  }

  /**
   * Stops the half-open timer, which otherwise keeps the process alive until it fires, and closes the
   * connections once calls in progress have finished (service shutdown).
   */
  close(): void {
    clearTimeout(this.#halfOpenTimer);
    this.#halfOpenTimer = undefined;
    void this.#pool.close().catch(() => undefined);
  }

  async #call<T>(
    method: string,
    path: string,
    body: unknown,
    headers: Record<string, string>,
  ): Promise<HttpResult<T>> {
    try {
      // A signal of its own per call: cockatiel's shared default signal would collect one abort listener
      // per concurrent call (a MaxListenersExceededWarning beyond 10).
      return await this.#policy.execute(
        ({ signal }) => this.#attempt<T>(method, path, body, headers, signal),
        new AbortController().signal,
      );
    } catch (err) {
      if (err instanceof BrokenCircuitError) {
        throw new DeferError(`${this.name} circuit breaker is open`, this.#o.deferMs, err);
      }
      throw err;
    }
  }

  async #attempt<T>(
    method: string,
    path: string,
    body: unknown,
    headers: Record<string, string>,
    signal: AbortSignal,
  ): Promise<HttpResult<T>> {
    let status: number;
    let replayed: boolean;
    let text: string;
    try {
      const res = await this.#pool.request({
        path: this.#path + path,
        method,
        signal,
        headers: {
          accept: "application/json",
          ...(body === undefined ? {} : { "content-type": "application/json" }),
          ...headers,
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      status = res.statusCode;
      replayed = res.headers["idempotent-replayed"] === "true";
      text = await res.body.text();
    } catch (err) {
      if (signal.aborted) {
        throw new UpstreamError(
          this.name,
          UpstreamErrorCode.Timeout,
          `${method} ${path} timed out after ${this.#o.timeoutMs} ms`,
          { cause: err },
        );
      }
      const code = (err as { code?: unknown }).code;
      throw new UpstreamError(
        this.name,
        UpstreamErrorCode.Unreachable,
        `${method} ${path} failed: ${(err as Error).message}${typeof code === "string" ? ` (${code})` : ""}`,
        { cause: err },
      );
    }
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (status >= 200 && status < 300) {
      if (parsed === undefined) {
        throw new UpstreamError(this.name, UpstreamErrorCode.BadResponse, `${method} ${path}: not JSON`, {
          httpStatus: status,
        });
      }
      return { status, body: parsed as T, replayed };
    }
    const detail = describeProblem(parsed) ?? text.slice(0, 200);
    const code = status >= 500 || status === 429 ? UpstreamErrorCode.Unavailable : UpstreamErrorCode.Rejected;
    throw new UpstreamError(this.name, code, `${method} ${path} answered ${status}: ${detail}`, {
      httpStatus: status,
      problem: parsed,
    });
  }

  #onBreakerState(s: CircuitState): void {
    const next: BreakerState =
      s === CircuitState.Closed ? "closed" : s === CircuitState.HalfOpen ? "half-open" : "open";
    clearTimeout(this.#halfOpenTimer);
    this.#halfOpenTimer = undefined;
    if (next === "open" && s !== CircuitState.Isolated) {
      // A little later than cockatiel's own deadline, so the probe call is not rejected as too early.
      this.#halfOpenTimer = setTimeout(() => {
        this.#halfOpenTimer = undefined;
        if (this.#breaker.state === CircuitState.Open) this.#setState("half-open");
      }, this.#o.halfOpenAfterMs + 20);
    }
    this.#setState(next);
  }

  #setState(next: BreakerState): void {
    if (next === this.#state) return;
    const prev = this.#state;
    this.#state = next;
    const log = this.#o.logger;
    if (next === "open") log?.warn({ dependency: this.name, from: prev }, "circuit breaker open");
    else log?.info({ dependency: this.name, from: prev }, `circuit breaker ${next}`);
    for (const fn of this.#listeners) fn(next);
  }
}

function describeProblem(body: unknown): string | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const p = body as { title?: unknown; detail?: unknown };
  const parts = [p.title, p.detail].filter((x): x is string => typeof x === "string");
  return parts.length > 0 ? parts.join(" — ") : undefined;
}

/**
 * Pauses the consumer runners that call `dep` while its breaker is open and resumes them when it goes
 * half-open (or closed), so messages wait in the stream without using up delivery attempts. `runners` is
 * read at each change, so it may be bound before the runners exist (in a service's `setup`).
 * @returns a function that unbinds.
 */
export function pauseWhileOpen(
  dep: HttpDependency,
  runners: () => Iterable<ConsumerRunner | undefined>,
): () => void {
  const apply = (s: BreakerState) => {
    for (const r of runners()) {
      if (!r) continue;
      if (s === "open") r.pause();
      else r.resume();
    }
  };
  return dep.onStateChange(apply);
}

/**
 * Registers a gauge `<name>` (0 closed, 1 open, 2 half-open) following `dep`'s breaker on `registry`.
 */
export function breakerGauge(dep: HttpDependency, registry: Registry, name: string): Gauge {
  const gauge = new Gauge({
    name,
    help: `Circuit breaker state of the ${dep.name} client: 0 closed, 1 open, 2 half-open.`,
    registers: [registry],
  });
  gauge.set(breakerStateValue[dep.state]);
  dep.onStateChange((s) => gauge.set(breakerStateValue[s]));
  return gauge;
}
