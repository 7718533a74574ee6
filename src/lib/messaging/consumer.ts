import type { Consumer, JetStreamClient, JsMsg } from "@nats-io/jetstream";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { describeError } from "../errors.js";
import { catalog, type EventType } from "../events/catalog.js";
import type { Logger } from "../telemetry/logger.js";
import type { HandlerTally, Metrics } from "../telemetry/metrics.js";
import { backoffDelay, defaultBackoff, type BackoffOptions } from "./backoff.js";
import { deadLetter as sendToDlq } from "./dlq.js";
import type { HandlerMap, RawHandler } from "./handler.js";
import { deadLetter } from "./middleware/dead-letter.js";
import { decode, skipUnhandled } from "./middleware/decode.js";
import type { EventVersions } from "../events/versions.js";
import { Delivery } from "./middleware/delivery.js";
import { dispatchEvents, dispatchRaw } from "./middleware/dispatch.js";
import { keepInPlace } from "./middleware/keep-in-place.js";
import { maxDeliveries } from "./middleware/max-deliveries.js";
import { observe, record } from "./middleware/observe.js";
import { hold } from "./middleware/hold.js";
import { park } from "./middleware/park.js";
import { retry } from "./middleware/retry.js";
import { abandonOverdue, timeout } from "./middleware/timeout.js";
import { traceEvents, traceRaw } from "./middleware/tracing.js";
import { HAND_BACK, compose, type Handle, type Outcome, type RunnerControl } from "./middleware/types.js";
import type { Publisher } from "./publisher.js";
import { PullFeed, connectionOf, type PulledMessage } from "./pull.js";
import type { ConsumerSpec } from "./topology.js";

/** Retrying a pull that failed: 200 ms, 400 ms, … up to 5 s (no jitter: one runner per consumer and process). */
const PULL_RETRY_BACKOFF: BackoffOptions = { initialMs: 200, maxMs: 5_000, multiplier: 2, jitter: 0 };

export {
  DeferError,
  HandlerTimeoutError,
  MaxDeliveriesError,
  RedeliverLaterError,
  type EventHandler,
  type HandlerContext,
  type HandlerMap,
  type HandlerResult,
  type RawHandler,
  type RawMessage,
} from "./handler.js";

/** Handler timeout of a consumer that declares none (120 s): see {@link ConsumerRunnerOptions.handlerTimeoutMs}. */
export const DEFAULT_HANDLER_TIMEOUT_MS = 120_000;

/** Options for {@link ConsumerRunner}. */
export interface ConsumerRunnerOptions {
  js: JetStreamClient;
  spec: ConsumerSpec;
  handlers: HandlerMap;
  /** When set, messages are not decoded and go to this handler instead of `handlers`. */
  raw?: RawHandler | undefined;
  publisher: Publisher;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** Messages handled at once by this process (default 16); keep below the consumer's max_ack_pending. */
  concurrency?: number;
  /**
   * Failed attempts before a message goes to the DLQ (default 5). Attempts are the server's delivery count: a
   * failure on delivery `maxAttempts` or later is dead-lettered with the handler's error code.
   */
  maxAttempts?: number;
  /**
   * Deliveries, as counted by the server (`deliveryCount`, so it survives crashes and restarts), after which a
   * message is dead-lettered with code `MAX_DELIVERIES` **without running the handler again**: poison that kills
   * the process (or freezes it past the ack wait) never reports a failure, so `maxAttempts` alone would let it
   * come back forever. Overrides the spec's `maxDeliveries`; default 2 × `maxAttempts` — one half for the
   * failed attempts, the other for deliveries lost for reasons that are not the message's (another message
   * crashed the process, graceful-stop hand-backs, a NATS outage longer than the ack wait). Every redelivery
   * counts, redeliver-later ones too: timer consumers need a high value (`Infinity`: never). Parked (deferred,
   * paused) and kept-in-place messages are kept alive with `working()` and are not redelivered, so they use none.
   */
  maxDeliveries?: number;
  /**
   * Longest one handler call may run (default {@link DEFAULT_HANDLER_TIMEOUT_MS}, 120 s: far above the slowest
   * legitimate handler — a payment with three 2 s gateway attempts, or a publish retried through a NATS
   * election, ≈ 40 s; `Infinity`: never). A call still running then is abandoned: its message is nak'd with
   * backoff as a failed attempt (or dead-lettered as `HANDLER_TIMEOUT` on the last attempt) and its
   * concurrency slot is freed; the hung promise is left behind and its eventual outcome ignored. Time spent
   * parked or waiting to retry in place does not count. Overrides the spec's `handlerTimeoutMs`.
   */
  handlerTimeoutMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** The event versions this process reads at most (default: every known one; see `EVENT_READ_VERSIONS`). */
  versions?: EventVersions | undefined;
  /**
   * How long after it was stored an event of a version newer than this process reads is kept (then handed back on
   * stop, for a replica of a newer release) before it is dead-lettered as `EVENT_VERSION_AHEAD` (default 10 min).
   */
  futureVersionWaitMs?: number | undefined;
  /** Longest a pull request waits for messages (default and minimum 1 s). Bounds stop latency. */
  fetchExpiresMs?: number;
  /** Interval of automatic `working()` while a handler runs or a message is parked (default ack wait / 3). */
  heartbeatMs?: number;
  /**
   * Messages held as timers (`{ outcome: "hold" }`) at most, besides the concurrency slots (default the spec's
   * `maxAckPending`, else 1000 like the server's default): pulling stops while this many are held.
   */
  maxHeld?: number;
  /**
   * Called after a pull found the durable consumer missing on the server (deleted underneath the runner, which
   * then reports itself not ready until a pull succeeds again): the service provisions it again from its spec.
   */
  onConsumerMissing?: (() => void) | undefined;
}

type State = "idle" | "running" | "stopping" | "stopped";

/**
 * Runs handlers on a durable pull consumer with bounded concurrency and backpressure.
 *
 * Contract, per message:
 * - **ack** after the handler resolves (or at once when the type is known but not handled here);
 * - **nak with delay** (exponential backoff with jitter) when it throws a retryable error, or any error
 *   that is not a {@link ShopStreamError}, before `maxAttempts`;
 * - **nak with its delay** when it resolves `{ outcome: "redeliver", delayMs }` (or throws a RedeliverLaterError):
 *   a durable timer, not a failure;
 * - **DLQ, then term** when it throws a non-retryable error (schema-invalid, unknown type: at once) or
 *   fails its last attempt; if the DLQ copy cannot be stored, nak with delay instead — never a drop;
 * - **hold** on `{ outcome: "hold", untilMs }`: a timer kept by the runner, outside its slots, without `working()`
 *   when it ends well within the ack wait; run again in place at `untilMs`; handed back on stop;
 * - **park** on `{ outcome: "defer" }` (or a DeferError), or any retryable error while paused: kept with
 *   `working()`, run again after resume, no attempt used;
 * - **keep and retry in place** when NATS itself was briefly unavailable to the handler (a timeout, no
 *   responders, no stream leader during an election): kept with `working()`, run again with backoff until
 *   NATS answers, no attempt used — an election must not dead-letter business events;
 * - **abandon** a handler call that has not settled after `handlerTimeoutMs`: a failed attempt like a thrown
 *   retryable error (nak with backoff, DLQ `HANDLER_TIMEOUT` on the last attempt), its slot freed at once, the
 *   hung promise left behind and its outcome ignored;
 * - **DLQ without running the handler** (`MAX_DELIVERIES`) when the server's delivery count exceeds
 *   `maxDeliveries`: earlier deliveries ended without an outcome, e.g. the handler crashed the process.
 *
 * Each rule is a middleware (`./middleware/`); the runner pulls, keeps messages alive and settles outcomes.
 *
 * Backpressure: the runner asks the server only for as many messages as it has free slots (pull credits), so
 * nothing is buffered beyond `concurrency`. `pause()` stops pulling; `stop()` stops pulling, hands back (nak)
 * messages not started, and waits for in-flight handlers up to a timeout.
 */
export class ConsumerRunner {
  readonly name: string;
  readonly #js: JetStreamClient;
  readonly #spec: ConsumerSpec;
  readonly #logger: Logger;
  readonly #metrics: Metrics | undefined;
  readonly #tally: HandlerTally | undefined;
  readonly #concurrency: number;
  readonly #handlerTimeoutMs: number;
  readonly #backoff: BackoffOptions;
  readonly #fetchExpiresMs: number;
  readonly #heartbeatMs: number;
  readonly #ackWaitMs: number;
  readonly #maxHeld: number;
  readonly #onConsumerMissing: (() => void) | undefined;
  readonly #pipeline: Handle;
  /** Pull when at least this many slots are free, so a saturated runner does not pull one at a time. */
  readonly #threshold: number;
  /** Period of the ticker: the heartbeat interval, finer when the handler timeout or the pull checks need it. */
  readonly #tickMs: number;
  #ticker: NodeJS.Timeout | undefined;
  /** Messages being handled, parked or kept in place: what the ticker beats and times. */
  readonly #flights = new Set<Delivery>();
  /** Messages that arrived without a free slot (late deliveries of requests given up on): run when one frees. */
  readonly #waiting: Delivery[] = [];
  #state: State = "idle";
  #paused = false;
  /** Why it is paused: `breaker` (an open circuit breaker), `operator` (by hand, the consumer-control bucket). */
  readonly #pauses = new Set<string>();
  #bound = false;
  /** Why the pulls failed, while not bound (for {@link notReadyReason}). */
  #unbound: string | undefined;
  #inFlight = 0;
  #consumer: Consumer | undefined;
  #feed: PullFeed | undefined;
  /** Consecutive pull failures, and when pulling may be tried again. */
  #failures = 0;
  #retryAt = 0;
  #statusWatch: { stop?: () => void } | undefined;
  #idle: (() => void) | undefined;
  /** The one stop in progress or done: concurrent and repeated stop() calls share it. */
  #stopping: Promise<{ abandoned: number }> | undefined;
  /** Wakes parked messages and their delays when stop() begins (or on resume), so they move on at once. */
  readonly #onStop = new Set<() => void>();
  #resumed: { promise: Promise<void>; resolve: () => void } | undefined;
  /** Messages handed back while our pull requests may still be open; nak'd once they have ended. */
  readonly #heldBack: JsMsg[] = [];
  #feedClosed = false;
  /** Timer holds by due time (epoch ms), earliest first; one timeout armed for the earliest. */
  readonly #holds = new HoldHeap();
  /** Held messages whose hold ends too close to (or past) their ack wait: beaten by the ticker like parked ones. */
  readonly #holdsBeaten = new Set<Delivery>();
  /** Holds that are due and wait for a free slot. */
  readonly #holdsDue: Hold[] = [];
  #holdTimer: NodeJS.Timeout | undefined;
  #holdTimerAt = Infinity;

  constructor(opts: ConsumerRunnerOptions) {
    this.name = opts.spec.durable;
    this.#js = opts.js;
    this.#spec = opts.spec;
    this.#logger = opts.logger;
    this.#metrics = opts.metrics;
    this.#tally = opts.metrics?.handlerTally(this.name);
    this.#onConsumerMissing = opts.onConsumerMissing;
    const ackWait = opts.spec.ackWaitMs ?? 30_000;
    const maxAttempts = Math.max(1, opts.maxAttempts ?? 5);
    this.#concurrency = Math.max(1, opts.concurrency ?? 16);
    this.#handlerTimeoutMs = Math.max(
      1,
      opts.handlerTimeoutMs ?? opts.spec.handlerTimeoutMs ?? DEFAULT_HANDLER_TIMEOUT_MS,
    );
    this.#backoff = { ...defaultBackoff, ...opts.backoff };
    this.#fetchExpiresMs = Math.max(1_000, opts.fetchExpiresMs ?? 1_000);
    this.#heartbeatMs = opts.heartbeatMs ?? Math.max(100, Math.floor(ackWait / 3));
    this.#ackWaitMs = ackWait;
    this.#maxHeld = Math.max(0, opts.maxHeld ?? opts.spec.maxAckPending ?? 1000);
    this.#threshold = Math.max(1, Math.floor(this.#concurrency / 4));
    // A timeout is noticed at most a quarter of it late, a lost pull within half an expiry; setInterval takes at
    // most 2^31-1 ms.
    this.#tickMs = Math.max(
      10,
      Math.min(this.#heartbeatMs, this.#handlerTimeoutMs / 4, this.#fetchExpiresMs / 2, 2 ** 31 - 1),
    );
    const limit = Math.max(1, opts.maxDeliveries ?? opts.spec.maxDeliveries ?? 2 * maxAttempts);
    const publisher = opts.publisher;
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the control's getters read the runner's state
    const runner = this;
    const control: RunnerControl = {
      get paused() {
        return runner.#paused;
      },
      get stopping() {
        return runner.#state !== "running";
      },
      untilResumed: () => this.#untilResumed(),
      delay: (ms) => this.#delayUnlessStopping(ms),
      hold: (d, untilMs) => this.#hold(d, untilMs),
    };
    const handlers = opts.handlers;
    // Outermost first; see each file for its rule. Adjacent hook middleware (all but tracing and timeout) run as
    // one stage: one promise reaction per message for each run of them.
    this.#pipeline = compose(
      [
        observe({ tally: this.#tally, deadLettered: opts.metrics?.deadLettered }),
        deadLetter((d, reason) => sendToDlq(publisher, d.msg as JsMsg, reason), this.#backoff),
        retry({ maxAttempts, backoff: this.#backoff }),
        ...(opts.raw ? [] : [skipUnhandled((type: EventType) => handlers[type] !== undefined)]),
        maxDeliveries(limit),
        ...(opts.raw
          ? [traceRaw]
          : [
              decode(control, { versions: opts.versions, futureVersionWaitMs: opts.futureVersionWaitMs }),
              traceEvents,
            ]),
        hold(control),
        park(control),
        keepInPlace(this.#backoff),
        timeout(this.#handlerTimeoutMs),
      ],
      opts.raw ? dispatchRaw(opts.raw) : dispatchEvents(handlers),
    );
    opts.metrics?.trackInFlight(this.name, () => this.#inFlight);
  }

  /** True while running, bound to its consumer and not stopping (feeds `/ready`). */
  get ready(): boolean {
    return this.#state === "running" && this.#bound;
  }
  /** Why the runner is not {@link ready}, naming its consumer; undefined when it is ready. */
  get notReadyReason(): string | undefined {
    if (this.ready) return undefined;
    const what = `consumer ${this.#spec.stream}/${this.name}`;
    if (this.#state === "idle") return `${what}: not started`;
    if (this.#state !== "running") return `${what}: stopping`;
    return `${what}: ${this.#unbound ?? "not bound"}`;
  }
  get paused(): boolean {
    return this.#paused;
  }
  get inFlight(): number {
    return this.#inFlight;
  }
  /** Messages held as timers (not in flight: they take no slot) or due and waiting for a slot. */
  get held(): number {
    return this.#holds.size + this.#holdsDue.length;
  }

  /** Starts pulling. Resolves once the consumer was found on the server. */
  async start(): Promise<void> {
    if (this.#state !== "idle") throw new Error(`runner ${this.name} already started`);
    const nc = connectionOf(this.#js);
    if (!nc) throw new Error(`runner ${this.name}: the JetStream client does not expose its NATS connection`);
    this.#consumer = await this.#js.consumers.get(this.#spec.stream, this.#spec.durable);
    this.#feed = new PullFeed({
      nc,
      apiPrefix: this.#js.apiPrefix,
      stream: this.#spec.stream,
      durable: this.#spec.durable,
      expiresMs: this.#fetchExpiresMs,
      events: {
        message: (m) => this.#received(m),
        alive: () => this.#alive(),
        lost: (why, detail) => void this.#lost(why, detail),
      },
    });
    this.#feed.open();
    this.#bound = true;
    this.#state = "running";
    this.#watchReconnects(nc);
    this.#ticker = setInterval(() => this.#tick(), this.#tickMs);
    this.#ticker.unref();
    this.#pump();
  }

  /**
   * Stops pulling new messages (in-flight ones finish); attempts are not used up. `reason` says who paused it:
   * `breaker` (the default: an open circuit breaker) or `operator` (by hand). It pulls again once every reason that
   * paused it has resumed it, so a breaker closing does not undo an operator's pause.
   */
  pause(reason = "breaker"): void {
    if (this.#pauses.has(reason)) return;
    this.#pauses.add(reason);
    if (this.#paused) return;
    this.#paused = true;
    this.#metrics?.consumerPaused.set({ consumer: this.name }, 1);
    this.#logger.warn({ consumer: this.name, reason }, "consumer paused");
  }

  /** Withdraws `reason`'s pause; resumes pulling (and runs parked messages again) when no other reason holds it. */
  resume(reason = "breaker"): void {
    if (!this.#pauses.delete(reason)) return;
    if (this.#pauses.size > 0 || !this.#paused) return;
    this.#paused = false;
    this.#metrics?.consumerPaused.set({ consumer: this.name }, 0);
    this.#logger.info({ consumer: this.name, reason }, "consumer resumed");
    this.#wakeResumed();
    this.#pump();
  }

  /** The reasons it is paused for (empty when it pulls). */
  get pausedBy(): string[] {
    return [...this.#pauses];
  }

  /**
   * Graceful stop: stop pulling, hand back (nak, redelivered after one pull expiry) messages not yet started or
   * parked, and wait for in-flight handlers to finish and ack, at most `timeoutMs`.
   * Concurrent and repeated calls share the one stop and its result.
   * @returns how many handlers were still running when the timeout hit (no more heartbeats for them: their
   * messages are redelivered after the ack wait).
   */
  stop(timeoutMs = 10_000): Promise<{ abandoned: number }> {
    return (this.#stopping ??= this.#stop(timeoutMs));
  }

  async #stop(timeoutMs: number): Promise<{ abandoned: number }> {
    if (this.#state === "idle") {
      this.#state = "stopped";
      return { abandoned: 0 };
    }
    if (this.#state === "stopped") return { abandoned: 0 };
    this.#state = "stopping";
    for (const wake of [...this.#onStop]) wake();
    this.#wakeResumed();
    for (const d of this.#waiting.splice(0)) this.#handBack(d);
    this.#releaseHolds();
    const idle = new Promise<void>((resolve) => {
      if (this.#inFlight === 0) resolve();
      else this.#idle = resolve;
    });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, timeoutMs))));
    await Promise.race([Promise.all([idle, this.#feed!.drained()]), timedOut]);
    clearTimeout(timer);
    const abandoned = this.#inFlight;
    if (abandoned > 0)
      this.#logger.warn({ consumer: this.name, abandoned }, "drain timeout: handlers still running");
    this.#closeFeed();
    this.#statusWatch?.stop?.();
    this.#state = "stopped";
    clearInterval(this.#ticker);
    return { abandoned };
  }

  /** No pull request of ours is open any more: hand back what stop() held. */
  #closeFeed(): void {
    this.#feed?.close();
    this.#feedClosed = true;
    for (const m of this.#heldBack.splice(0)) {
      try {
        m.nak(this.#handBackDelayMs());
      } catch {
        // Connection closed: the server redelivers it after the ack wait.
      }
    }
  }

  /** A delivery from our pull requests: it has a slot (credits are only asked for free slots). */
  #received(m: PulledMessage): void {
    this.#markAlive();
    const d = new Delivery(m, this.name, this.#logger);
    if (this.#state !== "running") {
      this.#handBack(d);
      return;
    }
    if (this.#inFlight >= this.#concurrency) {
      // More than was asked for (a request given up on delivered after all): kept alive until a slot frees.
      this.#waiting.push(d);
      return;
    }
    this.#begin(d);
  }

  #begin(d: Delivery): void {
    this.#inFlight++;
    this.#flights.add(d);
    this.#pipeline(d).then(
      (o) => this.#settle(d, o),
      (err: unknown) => this.#settle(d, { outcome: "failed", error: err }),
    );
  }

  /** Tells the server how handling ended (see {@link Outcome}), and frees the slot. */
  #settle(d: Delivery, o: Outcome): void {
    d.done = true;
    this.#flights.delete(d);
    const m = d.msg;
    try {
      switch (o.outcome) {
        case "ack":
        case "skip":
          m.ack();
          break;
        case "redeliver":
        case "retry":
          m.nak(o.delayMs);
          break;
        case "dead-lettered":
          // A bare +TERM: nats-server < 2.10 ignores "+TERM <reason>" entirely (it compares the whole payload), so
          // the message would stay pending and come back every ack wait. The reason is in the DLQ entry anyway.
          m.term();
          break;
        case "hand-back":
          this.#handBack(d, false);
          break;
        default:
          // Not settled by the pipeline (a bug): never a drop.
          this.#logger.error({ consumer: this.name, outcome: o.outcome }, "unsettled outcome; message nak'd");
          m.nak(backoffDelay(d.attempt, this.#backoff));
      }
    } catch {
      // Connection closed: the server redelivers it after the ack wait.
    }
    this.#inFlight--;
    if (this.#inFlight === 0 && this.#idle) {
      const r = this.#idle;
      this.#idle = undefined;
      r();
    }
    if (this.#state === "running" && this.#holdsDue.length > 0) {
      this.#resumeHold(this.#holdsDue.shift()!, true);
      return;
    }
    const next = this.#state === "running" ? this.#waiting.shift() : undefined;
    if (next) this.#begin(next);
    else this.#pump();
  }

  /** Holds `d` until `untilMs` (see {@link RunnerControl.hold}): its slot is freed meanwhile. */
  #hold(d: Delivery, untilMs: number): Promise<boolean> {
    if (this.#state !== "running") return Promise.resolve(false);
    const wait = untilMs - Date.now();
    if (wait <= 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const h: Hold = { d, at: untilMs, resolve };
      this.#flights.delete(d);
      this.#inFlight--;
      d.abandon = undefined;
      // The server redelivers at d.beat + ack wait; a hold that ends a heartbeat interval before that needs no beat
      // (after it, the ticker beats the running handler as usual). Otherwise it is beaten like a parked message.
      const now = performance.now();
      if (now + wait > d.beat + this.#ackWaitMs - this.#heartbeatMs) this.#holdsBeaten.add(d);
      this.#holds.push(h);
      if (untilMs < this.#holdTimerAt) this.#armHolds(untilMs);
      if (this.#inFlight === 0 && this.#idle) {
        const r = this.#idle;
        this.#idle = undefined;
        r();
      }
      if (this.#holdsDue.length > 0) this.#resumeHold(this.#holdsDue.shift()!, true);
      else {
        const next = this.#waiting.shift();
        if (next) this.#begin(next);
        else this.#pump();
      }
    });
  }

  #armHolds(at: number): void {
    clearTimeout(this.#holdTimer);
    this.#holdTimerAt = at;
    // setTimeout takes at most 2^31-1 ms; an earlier wake-up just re-arms.
    this.#holdTimer = setTimeout(
      () => this.#holdsFire(),
      Math.min(Math.max(0, at - Date.now()), 2 ** 31 - 1),
    );
    this.#holdTimer.unref();
  }

  /** Holds that are due go on, each in a free slot (or wait for one). */
  #holdsFire(): void {
    this.#holdTimer = undefined;
    this.#holdTimerAt = Infinity;
    const now = Date.now();
    for (let h = this.#holds.peek(); h && h.at <= now; h = this.#holds.peek()) {
      this.#holds.pop();
      this.#holdsBeaten.delete(h.d);
      if (this.#inFlight < this.#concurrency) this.#resumeHold(h, true);
      else this.#holdsDue.push(h);
    }
    const next = this.#holds.peek();
    if (next && this.#state === "running") this.#armHolds(next.at);
  }

  /** A hold takes a slot again: `go` true runs it on in the pipeline, false hands it back (stopping). */
  #resumeHold(h: Hold, go: boolean): void {
    this.#inFlight++;
    this.#flights.add(h.d);
    h.resolve(go);
  }

  /** stop(): every held message goes back through its pipeline (as a hand-back), in a slot again. */
  #releaseHolds(): void {
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    this.#holdTimerAt = Infinity;
    this.#holdsBeaten.clear();
    for (const h of this.#holdsDue.splice(0)) this.#resumeHold(h, false);
    for (let h = this.#holds.pop(); h; h = this.#holds.pop()) this.#resumeHold(h, false);
  }

  /** Asks for messages for the free slots, unless enough are asked for already. */
  #pump(): void {
    const feed = this.#feed;
    if (!feed || this.#state !== "running" || this.#paused) return;
    if (this.#failures > 0 && performance.now() < this.#retryAt) return;
    const taken = this.#inFlight + this.#waiting.length + feed.outstanding;
    // Held timers take no slot, but no more than maxHeld are taken in all.
    const want = Math.min(this.#concurrency - taken, this.#maxHeld + this.#concurrency - this.held - taken);
    if (want >= this.#threshold) {
      try {
        feed.pull(want);
      } catch (err) {
        // Connection closed or draining: the stop that follows ends the runner; until then, retry later.
        void this.#lost("refused", describeError(err));
      }
    }
  }

  /** The server answered our pulls (a heartbeat, an expiry): the consumer is there; ask again if nothing is owed. */
  #alive(): void {
    this.#markAlive();
    if (this.#feed?.outstanding === 0) this.#pump();
  }

  #markAlive(): void {
    if (!this.#bound) {
      this.#bound = true;
      this.#unbound = undefined;
      this.#logger.info({ consumer: this.name }, "pulling again");
    }
    this.#failures = 0;
  }

  /** Our pull requests are gone: not ready until a pull succeeds again; retried with backoff. */
  async #lost(why: "deleted" | "silent" | "refused", detail: string): Promise<void> {
    if (this.#state !== "running") return;
    this.#failures++;
    this.#retryAt = performance.now() + backoffDelay(this.#failures, PULL_RETRY_BACKOFF);
    this.#bound = false;
    const missing = why === "deleted" || (await this.#consumerMissing());
    if (this.#state !== "running" || this.#bound) return;
    this.#unbound = missing ? "not found on the server" : `pull failed (${detail})`;
    this.#logger.warn(
      { consumer: this.name, err: detail },
      missing ? "consumer not found on the server; retrying" : "pull failed; retrying",
    );
    if (missing) this.#onConsumerMissing?.();
  }

  /**
   * Is the durable consumer gone from the server? A pull open when it is deleted ends with 409 "consumer deleted";
   * a pull on a missing one gets no answer from nats-server 2.9 (silence), so the consumer's info is asked.
   */
  #consumerMissing(): Promise<boolean> {
    return this.#consumer!.info().then(
      () => false,
      (e: unknown) => e instanceof JetStreamApiError && e.code === JetStreamApiCodes.ConsumerNotFound,
    );
  }

  /** After a reconnect our pull requests are gone with the old connection: ask again at once. */
  #watchReconnects(nc: NatsConnection): void {
    const status = nc.status();
    this.#statusWatch = status as { stop?: () => void };
    void (async () => {
      for await (const s of status) {
        if (s.type !== "reconnect" || this.#state !== "running") continue;
        this.#feed?.forget();
        this.#failures = 0;
        this.#pump();
      }
    })();
  }

  /**
   * The runner's one periodic task: abandons handler calls past the handler timeout, sends `working()` for every
   * message held longer than the heartbeat interval minus one tick (so at least once per interval), notices lost
   * pull requests, and pulls again after a failure.
   */
  #tick(): void {
    const now = performance.now();
    abandonOverdue(this.#flights, this.#handlerTimeoutMs, now);
    const beatAfter = this.#heartbeatMs - this.#tickMs;
    for (const d of this.#flights) if (now - d.beat >= beatAfter) this.#beat(d, now);
    for (const d of this.#waiting) if (now - d.beat >= beatAfter) this.#beat(d, now);
    for (const d of this.#holdsBeaten) if (now - d.beat >= beatAfter) this.#beat(d, now);
    this.#feed?.check(now, this.#tickMs);
    this.#pump();
  }

  #beat(d: Delivery, now: number): void {
    d.beat = now;
    try {
      d.msg.working();
    } catch {
      // Connection closed: the server redelivers the message after the ack wait.
    }
  }

  /**
   * Handed-back messages are redelivered after one pull expiry (plus a margin): other runners of this consumer
   * stopping at the same time (a process shutting down several, or a rolling restart) have then closed their
   * last pull, so the message goes to a running replica instead of bouncing between stopping ones, each bounce
   * a delivery attempt (seen under load in the conformance scenario "concurrent close").
   */
  #handBackDelayMs(): number {
    return this.#fetchExpiresMs + 100;
  }

  /** Gives a message back for another runner; `count`: not counted by the pipeline already. */
  #handBack(d: Delivery, count = true): void {
    const m = d.msg as JsMsg;
    try {
      if (this.#feedClosed) {
        m.nak(this.#handBackDelayMs());
      } else {
        // Our pull requests may still be open: nak'd now, the message would come straight back to them, again and
        // again, each time using up a delivery attempt. Keep it (alive) until they have ended.
        m.working();
        this.#heldBack.push(m);
      }
    } catch {
      // Connection closed: the server redelivers it after the ack wait.
    }
    if (count) record(this.#tally, d, HAND_BACK);
  }

  #untilResumed(): Promise<void> {
    if (!this.#paused || this.#state !== "running") return Promise.resolve();
    if (!this.#resumed) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.#resumed = { promise, resolve };
    }
    return this.#resumed.promise;
  }

  #wakeResumed(): void {
    const r = this.#resumed;
    this.#resumed = undefined;
    r?.resolve();
  }

  /** Resolves after `ms`, or at once when the runner is stopping. */
  #delayUnlessStopping(ms: number): Promise<void> {
    if (this.#state !== "running") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#onStop.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#onStop.add(done);
    });
  }
}

/** The catalog types a stream carries, for consumers that accept everything on it (audit). */
export function typesOfStream(stream: string): EventType[] {
  return (Object.keys(catalog) as EventType[]).filter((t) => catalog[t].stream === stream);
}

/** A message held as a timer until `at` (epoch ms). */
interface Hold {
  readonly d: Delivery;
  readonly at: number;
  readonly resolve: (go: boolean) => void;
}

/** A binary min-heap of holds by `at`. */
class HoldHeap {
  readonly #a: Hold[] = [];
  get size(): number {
    return this.#a.length;
  }
  peek(): Hold | undefined {
    return this.#a[0];
  }
  push(h: Hold): void {
    const a = this.#a;
    let i = a.length;
    a.push(h);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]!.at <= h.at) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = h;
  }
  pop(): Hold | undefined {
    const a = this.#a;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || !last) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= a.length) break;
      const r = l + 1;
      const c = r < a.length && a[r]!.at < a[l]!.at ? r : l;
      if (a[c]!.at >= last.at) break;
      a[i] = a[c]!;
      i = c;
    }
    a[i] = last;
    return top;
  }
}
