/**
 * The consumer runner's middleware (src/lib/messaging/middleware), each on its own and composed as the runner
 * composes them, without a broker: deliveries wrap a fake message that records its acks, naks, terms and
 * heartbeats; the runner's control (paused, stopping, delays) is a fake whose delays resolve at once.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { headers as natsHeaders, errors as natsErrors, type MsgHdrs } from "@nats-io/transport-node";
import { NonRetryableError, RetryableError } from "../../src/lib/errors.js";
import {
  DecodeErrorCode,
  EventVersions,
  encodeEvent,
  makeEvent,
  type AnyEnvelope,
} from "../../src/lib/events/mod.js";
import { defaultBackoff } from "../../src/lib/messaging/backoff.js";
import { DeadLetterCode, type DeadLetterReason } from "../../src/lib/messaging/dlq.js";
import {
  DeferError,
  HandlerTimeoutError,
  MaxDeliveriesError,
  RedeliverLaterError,
  type HandlerMap,
} from "../../src/lib/messaging/handler.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { deadLetter } from "../../src/lib/messaging/middleware/dead-letter.js";
import { decode, skipUnhandled } from "../../src/lib/messaging/middleware/decode.js";
import { Delivery } from "../../src/lib/messaging/middleware/delivery.js";
import { dispatchEvents, dispatchRaw } from "../../src/lib/messaging/middleware/dispatch.js";
import { isNatsUnavailable, keepInPlace } from "../../src/lib/messaging/middleware/keep-in-place.js";
import { maxDeliveries } from "../../src/lib/messaging/middleware/max-deliveries.js";
import { observe } from "../../src/lib/messaging/middleware/observe.js";
import { hold } from "../../src/lib/messaging/middleware/hold.js";
import { park } from "../../src/lib/messaging/middleware/park.js";
import { retry } from "../../src/lib/messaging/middleware/retry.js";
import { abandonOverdue, timeout } from "../../src/lib/messaging/middleware/timeout.js";
import {
  ACK,
  SKIP,
  compose,
  hooks,
  type Handle,
  type Message,
  type Middleware,
  type Outcome,
  type RunnerControl,
} from "../../src/lib/messaging/middleware/types.js";
import { PublishError } from "../../src/lib/messaging/publisher.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { Metrics } from "../../src/lib/telemetry/metrics.js";

/** A delivered message that records what the pipeline (or the runner) told the server. */
class FakeMsg implements Message {
  readonly acts: string[] = [];
  readonly subject: string;
  readonly seq: number;
  readonly data: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  readonly info: Message["info"];

  constructor(
    o: { data?: Uint8Array; type?: string; deliveryCount?: number; seq?: number; storedAtMs?: number } = {},
  ) {
    this.subject = "orders.o-1";
    this.seq = o.seq ?? 7;
    this.data = o.data ?? new Uint8Array(0);
    if (o.type !== undefined) {
      this.headers = natsHeaders();
      this.headers.set(Hdr.Type, o.type);
    }
    const deliveryCount = o.deliveryCount ?? 1;
    this.info = {
      domain: "",
      stream: "ORDERS",
      consumer: "c",
      deliveryCount,
      redelivered: deliveryCount > 1,
      streamSequence: this.seq,
      deliverySequence: this.seq,
      timestampNanos: (o.storedAtMs ?? 1_700_000_000_000) * 1e6,
      pending: 0,
    };
  }
  ack(): void {
    this.acts.push("ack");
  }
  nak(millis?: number): void {
    this.acts.push(millis === undefined ? "nak" : `nak ${millis}`);
  }
  term(): void {
    this.acts.push("term");
  }
  working(): void {
    this.acts.push("working");
  }
}

/** Log lines written by the deliveries' loggers. */
class Lines {
  readonly lines: { level: string; msg: string; [k: string]: unknown }[] = [];
  readonly logger = createLogger({
    service: "unit",
    level: "debug",
    destination: new Writable({
      write: (chunk: Buffer, _enc, done) => {
        for (const l of chunk.toString("utf8").split("\n")) if (l) this.lines.push(JSON.parse(l));
        done();
      },
    }),
  });
  at(level: string): string[] {
    return this.lines.filter((l) => l.level === level).map((l) => l.msg);
  }
}

const event = (id = "o-1"): AnyEnvelope =>
  makeEvent(
    "OrderPlaced",
    {
      orderId: id,
      customerId: "c-1",
      email: "c1@example.com",
      items: [{ sku: "SKU-1", quantity: 1, unitPrice: 100 }],
      total: 100,
      currency: "EUR",
      placedAt: new Date().toISOString(),
      timeoutAt: new Date(Date.now() + 60_000).toISOString(),
    },
    { aggregateId: id, source: "unit" },
  );

function delivery(
  o: ConstructorParameters<typeof FakeMsg>[0] & { lines?: Lines; decoded?: AnyEnvelope } = {},
): Delivery {
  const d = new Delivery(new FakeMsg(o), "unit-consumer", (o.lines ?? new Lines()).logger);
  if (o.decoded) d.decoded(o.decoded);
  return d;
}

const acts = (d: Delivery) => (d.msg as FakeMsg).acts;
const resolved =
  (o: Outcome): Handle =>
  () =>
    Promise.resolve(o);
const failed = (error: unknown): Outcome => ({ outcome: "failed", error });

/** A runner's control whose delays resolve at once (recorded); paused/stopping set by the test. */
class FakeControl implements RunnerControl {
  paused = false;
  stopping = false;
  readonly delays: number[] = [];
  resumeWaits = 0;
  onResumeWait: () => void = () => {
    this.paused = false;
  };
  untilResumed(): Promise<void> {
    this.resumeWaits++;
    this.onResumeWait();
    return Promise.resolve();
  }
  delay(ms: number): Promise<void> {
    this.delays.push(ms);
    return Promise.resolve();
  }
  /** Hold deadlines asked for; a hold ends at once with `holdGoes` (false: the runner stopped meanwhile). */
  readonly holds: number[] = [];
  holdGoes = true;
  hold(_d: Delivery, untilMs: number): Promise<boolean> {
    this.holds.push(untilMs);
    return Promise.resolve(this.holdGoes);
  }
}

void describe("middleware: composition", () => {
  void it("compose applies the first middleware outermost", async () => {
    const seen: string[] = [];
    const tag =
      (name: string): Middleware =>
      (next) =>
      async (d) => {
        seen.push(`${name} in`);
        const o = await next(d);
        seen.push(`${name} out`);
        return o;
      };
    const handle = compose([tag("a"), tag("b")], () => {
      seen.push("handler");
      return Promise.resolve(ACK);
    });
    assert.equal(await handle(delivery()), ACK);
    assert.deepEqual(seen, ["a in", "b in", "handler", "b out", "a out"]);
  });

  void it("adjacent hook middleware run as one stage, in the same order as nested ones", async () => {
    const seen: string[] = [];
    const tag = (name: string, stop?: Outcome): Middleware =>
      hooks({
        before: () => (seen.push(`${name} before`), stop ? Promise.resolve(stop) : undefined),
        after: (o) => (seen.push(`${name} after ${o.outcome}`), o),
      });
    const asyncAfter = hooks({ after: async (o) => (seen.push("async after"), o) });
    const wrapped = compose([tag("a"), asyncAfter, tag("b"), tag("c")], () => {
      seen.push("handler");
      return Promise.resolve(ACK);
    });
    assert.equal(await wrapped(delivery()), ACK);
    assert.deepEqual(seen, [
      "a before",
      "b before",
      "c before",
      "handler",
      "c after ack",
      "b after ack",
      "async after",
      "a after ack",
    ]);
    // A hook that ends it before the rest: only the hooks outside it see its outcome.
    seen.length = 0;
    const stopped = compose([tag("a"), tag("b", SKIP), tag("c")], () => Promise.resolve(ACK));
    assert.equal(await stopped(delivery()), SKIP);
    assert.deepEqual(seen, ["a before", "b before", "a after skip"]);
    // The same hook on its own is an ordinary middleware.
    seen.length = 0;
    assert.equal(await tag("x")(resolved(ACK))(delivery()), ACK);
    assert.deepEqual(seen, ["x before", "x after ack"]);
  });

  void it("a hook can run the rest of the pipeline again (what park does)", async () => {
    let calls = 0;
    const twice = hooks({
      after: (o, d, again) => (calls === 1 ? again(d) : o),
    });
    const inner = hooks({ after: (o) => ({ ...o, inner: calls }) as unknown as Outcome });
    const handle = compose([twice, inner], () => (calls++, Promise.resolve(ACK)));
    assert.deepEqual(await handle(delivery()), { outcome: "ack", inner: 2 });
    assert.equal(calls, 2);
  });
});

void describe("middleware: dispatch (the handler's result as an outcome)", () => {
  const run = async (behaviour: () => Promise<unknown>) => {
    const handlers = { OrderPlaced: behaviour } as unknown as HandlerMap;
    return dispatchEvents(handlers)(delivery({ decoded: event() }));
  };

  void it("resolving with nothing or { outcome: 'ack' } is an ack", async () => {
    assert.deepEqual(await run(async () => undefined), { outcome: "ack" });
    assert.deepEqual(await run(async () => ({ outcome: "ack" })), { outcome: "ack" });
  });

  void it("a returned redeliver or defer is taken as it is; the thrown errors of older handlers mean the same", async () => {
    assert.deepEqual(await run(async () => ({ outcome: "redeliver", delayMs: 1500.4 })), {
      outcome: "redeliver",
      delayMs: 1500,
    });
    assert.deepEqual(
      await run(async () => {
        throw new RedeliverLaterError(1500);
      }),
      { outcome: "redeliver", delayMs: 1500 },
    );
    assert.deepEqual(await run(async () => ({ outcome: "defer", retryAfterMs: 250 })), {
      outcome: "defer",
      retryAfterMs: 250,
    });
    assert.deepEqual(
      await run(async () => {
        throw new DeferError("breaker open", 250);
      }),
      { outcome: "defer", retryAfterMs: 250 },
    );
  });

  void it("anything else thrown, even before the handler's promise exists, is a failure", async () => {
    const boom = new Error("boom");
    assert.deepEqual(
      await run(async () => {
        throw boom;
      }),
      failed(boom),
    );
    assert.deepEqual(
      await run(() => {
        throw boom;
      }),
      failed(boom),
    );
    const odd = await run(async () => ({ outcome: "explode" }));
    assert.equal(odd.outcome, "failed");
  });

  void it("an event type without a handler is skipped; the handler gets the event and the delivery as context", async () => {
    assert.deepEqual(await dispatchEvents({})(delivery({ decoded: event() })), { outcome: "skip" });
    const d = delivery({ decoded: event(), deliveryCount: 3 });
    let ctxSeen: unknown;
    await dispatchEvents({
      OrderPlaced: async (e, ctx) => {
        assert.equal(e.id, "o-1:OrderPlaced");
        assert.equal(ctx.attempt, 3);
        assert.equal(ctx.streamSequence, 7);
        assert.equal(ctx.subject, "orders.o-1");
        ctxSeen = ctx;
      },
    })(d);
    assert.equal(ctxSeen, d);
  });

  void it("a raw handler gets the undecoded message", async () => {
    const d = delivery({ data: Uint8Array.of(1, 2, 3), seq: 42 });
    let got: unknown;
    const o = await dispatchRaw(async (m) => {
      got = { stream: m.stream, seq: m.streamSequence, data: [...m.data], at: m.timestamp.getTime() };
    })(d);
    assert.equal(o.outcome, "ack");
    assert.deepEqual(got, { stream: "ORDERS", seq: 42, data: [1, 2, 3], at: 1_700_000_000_000 });
  });

  void it("ctx.working() sends +WPI until the runner is done with the message, never after", () => {
    const d = delivery();
    d.working();
    d.done = true;
    d.working();
    assert.deepEqual(acts(d), ["working"]);
  });
});

void describe("middleware: decode", () => {
  const next: Handle = (d) => Promise.resolve(d.event ? ACK : failed(new Error("not decoded")));

  void it("a known type this consumer does not handle is skipped on its header, without decoding", async () => {
    const skip = skipUnhandled((t) => t === "OrderPlaced");
    let called = 0;
    const counting: Handle = () => (called++, Promise.resolve(ACK));
    assert.deepEqual(await skip(counting)(delivery({ type: "OrderConfirmed" })), { outcome: "skip" });
    assert.equal(called, 0);
    // Handled, unknown or missing header: on to decoding.
    for (const type of ["OrderPlaced", "OrderTeleported", undefined])
      assert.equal(await skip(counting)(delivery(type === undefined ? {} : { type })), ACK);
    assert.equal(called, 3);
  });

  void it("decodes into the delivery: type, event and the logger's bindings", async () => {
    const lines = new Lines();
    const e = event();
    const d = delivery({ data: encodeEvent(e), lines });
    d.logger.info("before");
    assert.equal(await decode(new FakeControl())(next)(d), ACK);
    assert.deepEqual(d.event, e);
    assert.equal(d.type, "OrderPlaced");
    d.logger.info("after");
    assert.equal(lines.lines[0]!.seq, 7);
    assert.equal(lines.lines[1]!.order_id, "o-1");
    assert.equal(lines.lines[1]!.trace_id, e.trace_id);
  });

  void it("bytes that do not decode are to be dead-lettered, with the decode error", async () => {
    const o = await decode(new FakeControl())(next)(
      delivery({ data: new TextEncoder().encode("{not json") }),
    );
    assert.equal(o.outcome, "dead-letter");
    assert.equal((o as { error: { code: string } }).error.code, DecodeErrorCode.Malformed);
  });

  /** A StockReserved written at version 2 (the current one). */
  const reservedV2 = () =>
    encodeEvent(
      makeEvent(
        "StockReserved",
        {
          orderId: "o-1",
          customerId: "c-1",
          items: [{ sku: "SKU-1", quantity: 1 }],
          total: 100,
          currency: "EUR",
          expiresAt: "2030-01-01T00:00:00.000Z",
        },
        { aggregateId: "o-1", source: "unit" },
      ),
    );
  /** Reads StockReserved up to version 1, as the release before version 2 did. */
  const v1Reader = EventVersions.parse(undefined, "StockReserved=1");

  void it("a version newer than read is kept until the runner stops, then handed back: no attempt, no DLQ", async () => {
    const control = new FakeControl();
    let ran = 0;
    const counting: Handle = () => (ran++, Promise.resolve(ACK));
    // The runner stops while the message is kept (the fake's delay resolves at once: the stop came first).
    control.delay = (ms) => (control.delays.push(ms), (control.stopping = true), Promise.resolve());
    const d = delivery({ data: reservedV2(), storedAtMs: Date.now() });
    const o = await decode(control, { versions: v1Reader, futureVersionWaitMs: 60_000 })(counting)(d);
    assert.equal(o.outcome, "hand-back");
    assert.equal(ran, 0);
    assert.equal(control.delays.length, 1);
    assert.ok(
      control.delays[0]! > 50_000 && control.delays[0]! <= 60_000,
      `kept for ${control.delays[0]} ms`,
    );
    // The same bytes are read by a process at the current versions, upcast-free (version 2 is current).
    const current = delivery({ data: reservedV2() });
    assert.equal(await decode(new FakeControl())(counting)(current), ACK);
    assert.equal(current.event?.version, 2);
  });

  void it("a version newer than read, past its wait, is to be dead-lettered as EVENT_VERSION_AHEAD with the reason", async () => {
    const control = new FakeControl();
    const old = delivery({ data: reservedV2(), storedAtMs: Date.now() - 61_000 });
    const o = await decode(control, { versions: v1Reader, futureVersionWaitMs: 60_000 })(next)(old);
    assert.equal(o.outcome, "dead-letter");
    const err = (o as { error: { code: string; message: string } }).error;
    assert.equal(err.code, DecodeErrorCode.VersionAhead);
    assert.match(err.message, /StockReserved version 2 is newer than this release reads \(up to 1\)/);
    assert.match(err.message, /redrive/);
    assert.deepEqual(control.delays, [], "not kept");
    // Kept, and the wait runs out while kept (the runner did not stop): dead-lettered then.
    const young = delivery({ data: reservedV2(), storedAtMs: Date.now() - 59_800 });
    const slow = new FakeControl();
    slow.delay = async (ms) => {
      slow.delays.push(ms);
      await new Promise((r) => setTimeout(r, ms + 5));
    };
    const later = await decode(slow, { versions: v1Reader, futureVersionWaitMs: 60_000 })(next)(young);
    assert.equal(later.outcome, "dead-letter");
    assert.equal(slow.delays.length, 1);
  });
});

void describe("middleware: max deliveries", () => {
  void it("past the limit the message is to be dead-lettered without running what follows", async () => {
    let called = 0;
    const handle = maxDeliveries(3)(() => (called++, Promise.resolve(ACK)));
    assert.equal(await handle(delivery({ deliveryCount: 3 })), ACK);
    const o = await handle(delivery({ deliveryCount: 4 }));
    assert.equal(o.outcome, "dead-letter");
    const err = (o as { error: unknown }).error;
    assert.ok(err instanceof MaxDeliveriesError);
    assert.equal(err.code, DeadLetterCode.MaxDeliveries);
    assert.match(err.message, /delivered 4 times, more than maxDeliveries 3/);
    assert.equal(called, 1);
  });

  void it("Infinity: never", async () => {
    assert.equal(await maxDeliveries(Infinity)(resolved(ACK))(delivery({ deliveryCount: 1e9 })), ACK);
  });
});

void describe("middleware: retry", () => {
  const policy = retry({
    maxAttempts: 3,
    backoff: { initialMs: 100, maxMs: 10_000, multiplier: 2, jitter: 0.2 },
  });

  void it("a failed attempt before maxAttempts is retried after its backoff (with jitter)", async () => {
    const err = new Error("connection reset");
    for (const [attempt, nominal] of [
      [1, 100],
      [2, 200],
    ] as const) {
      const o = await policy(resolved(failed(err)))(delivery({ deliveryCount: attempt }));
      assert.equal(o.outcome, "retry");
      const { delayMs, error } = o as { delayMs: number; error: unknown };
      assert.equal(error, err);
      assert.ok(delayMs >= nominal * 0.9 && delayMs <= nominal * 1.1, `attempt ${attempt}: ${delayMs}`);
    }
  });

  void it("the last attempt, and a non-retryable error at once, are to be dead-lettered", async () => {
    const last = await policy(resolved(failed(new RetryableError("BUSY", "busy"))))(
      delivery({ deliveryCount: 3 }),
    );
    assert.equal(last.outcome, "dead-letter");
    const strict = await policy(resolved(failed(new NonRetryableError("BAD", "bad"))))(delivery());
    assert.equal(strict.outcome, "dead-letter");
  });

  void it("what is not a failure passes untouched: a redelivery is never dead-lettered", async () => {
    const later: Outcome = { outcome: "redeliver", delayMs: 1000 };
    assert.equal(await policy(resolved(later))(delivery({ deliveryCount: 99 })), later);
  });
});

void describe("middleware: keep in place (NATS unavailable)", () => {
  void it("recognises NATS being unavailable, also behind a PublishError, and nothing else", () => {
    assert.equal(isNatsUnavailable(new natsErrors.TimeoutError()), true);
    assert.equal(
      isNatsUnavailable(new PublishError("orders.x", new natsErrors.NoRespondersError("x"))),
      true,
    );
    assert.equal(isNatsUnavailable(new Error("boom")), false);
    assert.equal(isNatsUnavailable(new HandlerTimeoutError(10, 5)), false);
    assert.equal(
      isNatsUnavailable(new NonRetryableError("BAD", "bad", { cause: new natsErrors.TimeoutError() })),
      false,
    );
  });

  void it("such a failure is deferred with growing backoff (capped at 5 s), logged on the 1st and every 10th time", async () => {
    const lines = new Lines();
    const d = delivery({ lines });
    const handle = keepInPlace({ ...defaultBackoff, initialMs: 100, jitter: 0 })(
      resolved(failed(new natsErrors.TimeoutError())),
    );
    const delays: number[] = [];
    for (let i = 0; i < 10; i++) {
      const o = await handle(d);
      assert.equal(o.outcome, "defer");
      delays.push((o as { retryAfterMs: number }).retryAfterMs);
    }
    assert.deepEqual(delays.slice(0, 4), [100, 200, 400, 800]);
    assert.equal(Math.max(...delays), 5_000);
    assert.equal(d.kept, 10);
    assert.equal(lines.at("warn").length, 2);
  });

  void it("other failures pass untouched", async () => {
    const o = failed(new Error("boom"));
    assert.equal(await keepInPlace(defaultBackoff)(resolved(o))(delivery()), o);
  });
});

void describe("middleware: park", () => {
  void it("a deferred message is run again in place after its delay, using no attempt", async () => {
    const control = new FakeControl();
    const outcomes: Outcome[] = [
      { outcome: "defer", retryAfterMs: 500 },
      { outcome: "defer", retryAfterMs: 700 },
      ACK,
    ];
    let calls = 0;
    const handle = park(control)(() => Promise.resolve(outcomes[calls++]!));
    const d = delivery();
    assert.equal(await handle(d), ACK);
    assert.equal(calls, 3);
    assert.deepEqual(control.delays, [500, 700]);
    assert.deepEqual(acts(d), [], "nothing told to the server: the message stays where it is");
  });

  void it("a retryable failure while paused parks until resumed, then runs again", async () => {
    const control = new FakeControl();
    let calls = 0;
    const handle = park(control)(() => {
      calls++;
      if (calls === 1) {
        control.paused = true; // what a breaker opening does
        return Promise.resolve(failed(new RetryableError("UPSTREAM_UNAVAILABLE", "503")));
      }
      return Promise.resolve(ACK);
    });
    assert.equal(await handle(delivery()), ACK);
    assert.equal(calls, 2);
    assert.equal(control.resumeWaits, 1);
  });

  void it("while paused, a non-retryable failure or a timed-out call is not parked", async () => {
    const control = new FakeControl();
    control.paused = true;
    control.onResumeWait = () => undefined; // stays paused: only the first call runs after the wait
    for (const error of [new NonRetryableError("BAD", "bad"), new HandlerTimeoutError(600, 500)]) {
      control.paused = false;
      const handle = park(control)(() => {
        control.paused = true;
        return Promise.resolve(failed(error));
      });
      assert.deepEqual(await handle(delivery()), failed(error));
    }
  });

  void it("a message delivered while paused waits for resume before it runs; stopping hands it back", async () => {
    const control = new FakeControl();
    control.paused = true;
    let calls = 0;
    const handle = park(control)(() => (calls++, Promise.resolve(ACK)));
    assert.equal(await handle(delivery()), ACK);
    assert.equal(control.resumeWaits, 1);
    control.stopping = true;
    assert.deepEqual(await handle(delivery()), { outcome: "hand-back" });
    assert.equal(calls, 1);
    // Stopping while deferred: the delay ends at once, and the message is handed back.
    control.stopping = false;
    const deferring = park(control)(() => {
      control.stopping = true;
      return Promise.resolve({ outcome: "defer", retryAfterMs: 60_000 });
    });
    assert.deepEqual(await deferring(delivery()), { outcome: "hand-back" });
  });
});

void describe("middleware: hold (timers held by the runner)", () => {
  void it("a held message runs again in place at its time, with nothing told to the server meanwhile", async () => {
    const control = new FakeControl();
    const outcomes: Outcome[] = [
      { outcome: "hold", untilMs: 1_000 },
      { outcome: "hold", untilMs: 1_500 },
      ACK,
    ];
    let calls = 0;
    const handle = hold(control)(() => Promise.resolve(outcomes[calls++]!));
    const d = delivery();
    assert.equal(await handle(d), ACK);
    assert.equal(calls, 3);
    assert.deepEqual(control.holds, [1_000, 1_500]);
    assert.deepEqual(acts(d), [], "no nak, no working(): the message stays delivered");
    assert.deepEqual(control.delays, [], "not a parking delay");
  });

  void it("a stop during the hold hands the message back without running it again", async () => {
    const control = new FakeControl();
    control.holdGoes = false;
    let calls = 0;
    const handle = hold(control)(
      () => (calls++, Promise.resolve({ outcome: "hold", untilMs: 5 } as Outcome)),
    );
    assert.deepEqual(await handle(delivery()), { outcome: "hand-back" });
    assert.equal(calls, 1);
    // The hold ended, but the runner is stopping by then: handed back too.
    const c2 = new FakeControl();
    const again = hold(c2)(
      () => ((c2.stopping = true), Promise.resolve({ outcome: "hold", untilMs: 5 } as Outcome)),
    );
    assert.deepEqual(await again(delivery()), { outcome: "hand-back" });
  });

  void it("other outcomes pass through; a handler result { outcome: 'hold' } becomes the hold outcome", async () => {
    const control = new FakeControl();
    for (const o of [ACK, failed(new Error("x")), { outcome: "defer", retryAfterMs: 5 } as Outcome]) {
      assert.deepEqual(await hold(control)(resolved(o))(delivery()), o);
    }
    assert.deepEqual(control.holds, []);
    const handlers: HandlerMap = { OrderPlaced: () => Promise.resolve({ outcome: "hold", untilMs: 42 }) };
    const d = delivery({ decoded: event() });
    assert.deepEqual(await dispatchEvents(handlers)(d), { outcome: "hold", untilMs: 42 });
  });

  void it("composed as the runner composes it, a due hold goes through park: paused, it waits for resume", async () => {
    const control = new FakeControl();
    let calls = 0;
    const handle = compose([hold(control), park(control)], () => {
      calls++;
      if (calls === 1) return Promise.resolve({ outcome: "hold", untilMs: 7 });
      return Promise.resolve(ACK);
    });
    control.hold = (_d, untilMs) => {
      control.holds.push(untilMs);
      control.paused = true; // a breaker opened while it was held
      return Promise.resolve(true);
    };
    assert.equal(await handle(delivery()), ACK);
    assert.equal(calls, 2);
    assert.equal(control.resumeWaits, 1, "waited for resume before running again");
  });
});

void describe("middleware: handler timeout", () => {
  void it("a call running past the timeout is abandoned as a failed attempt; its late outcome is ignored", async () => {
    let finish!: (o: Outcome) => void;
    const handle = timeout(500)(() => new Promise<Outcome>((r) => (finish = r)));
    const d = delivery();
    const pending = handle(d);
    assert.ok(d.abandon, "abandonable while running");
    // d.since is a fractional performance.now(): (since + 500) - since may round to 499.99…, so the
    // clock is set a whole millisecond either side of the limit instead of exactly on it.
    abandonOverdue([d], 500, d.since + 499);
    assert.ok(d.abandon, "not before the timeout");
    abandonOverdue([d], 500, d.since + 501);
    const o = await pending;
    assert.equal(o.outcome, "failed");
    const err = (o as { error: unknown }).error;
    assert.ok(err instanceof HandlerTimeoutError);
    assert.match(err.message, /did not settle within 500 ms/);
    assert.equal(d.abandon, undefined);
    finish(ACK); // late: nothing changes
    assert.equal(await pending, o);
  });

  void it("a call that settles in time clears its timer state; Infinity: no timeout at all", async () => {
    const d = delivery();
    assert.equal(await timeout(500)(resolved(ACK))(d), ACK);
    assert.equal(d.abandon, undefined);
    const next = resolved(ACK);
    assert.equal(timeout(Infinity)(next), next);
  });
});

void describe("middleware: dead letter", () => {
  void it("copies to the DLQ with the error's code, then the message is to be terminated", async () => {
    const sent: DeadLetterReason[] = [];
    const handle = deadLetter(async (_d, r) => {
      sent.push(r);
    }, defaultBackoff);
    const coded = await handle(
      resolved({ outcome: "dead-letter", error: new NonRetryableError("ORDER_INVALID", "x") }),
    )(delivery({ deliveryCount: 2 }));
    assert.equal(coded.outcome, "dead-lettered");
    assert.equal((coded as { code: string }).code, "ORDER_INVALID");
    await handle(resolved({ outcome: "dead-letter", error: new Error("plain") }))(delivery());
    assert.deepEqual(sent, [
      { consumer: "unit-consumer", code: "ORDER_INVALID", error: "ORDER_INVALID: x", attempts: 2 },
      { consumer: "unit-consumer", code: DeadLetterCode.HandlerFailed, error: "Error: plain", attempts: 1 },
    ]);
  });

  void it("if the copy cannot be stored the message is retried with backoff: never a drop", async () => {
    const lines = new Lines();
    const handle = deadLetter(() => Promise.reject(new Error("DLQ down")), defaultBackoff);
    const o = await handle(resolved({ outcome: "dead-letter", error: new Error("poison") }))(
      delivery({ lines }),
    );
    assert.equal(o.outcome, "retry");
    assert.ok((o as { delayMs: number }).delayMs > 0);
    assert.deepEqual(lines.at("error"), ["DLQ publish failed; message will be redelivered"]);
  });
});

void describe("middleware: observe (metrics and logs)", () => {
  const count = async (metrics: Metrics, outcome: string) =>
    (await metrics.handled.get()).values.find((v) => v.labels.outcome === outcome)?.value ?? 0;

  void it("counts each outcome by type with its duration, and logs failures and dead letters", async () => {
    const metrics = new Metrics("unit", { defaultMetrics: false });
    const lines = new Lines();
    const handle = (o: Outcome) =>
      observe({ tally: metrics.handlerTally("unit-consumer"), deadLettered: metrics.deadLettered })(
        resolved(o),
      )(delivery({ lines, type: "OrderPlaced" }));
    await handle(ACK);
    await handle(ACK);
    await handle({ outcome: "retry", delayMs: 100, error: new Error("boom") });
    await handle({ outcome: "dead-lettered", code: "ORDER_INVALID", error: new Error("bad") });
    await handle({ outcome: "hand-back" });
    assert.equal(await count(metrics, "ack"), 2);
    assert.equal(await count(metrics, "retry"), 1);
    assert.equal(await count(metrics, "dlq"), 1);
    assert.equal(await count(metrics, "handed_back"), 1);
    const text = await metrics.registry.metrics();
    assert.match(
      text,
      /shopstream_messages_handled_total\{consumer="unit-consumer",type="OrderPlaced",outcome="ack",service="unit"\} 2/,
    );
    assert.match(text, /shopstream_handler_duration_seconds_count\{[^}]*outcome="ack"[^}]*\} 2/);
    assert.match(
      text,
      /shopstream_handler_duration_seconds_bucket\{[^}]*le="0.001"[^}]*outcome="ack"[^}]*\} 2/,
    );
    assert.doesNotMatch(text, /shopstream_handler_duration_seconds_count\{[^}]*handed_back/, "no duration");
    assert.match(
      text,
      /shopstream_dead_lettered_total\{consumer="unit-consumer",code="ORDER_INVALID"[^}]*\} 1/,
    );
    assert.deepEqual(lines.at("warn"), ["handler failed; will retry"]);
    assert.deepEqual(lines.at("error"), ["message dead-lettered"]);
  });
});

void describe("middleware: the runner's pipeline", () => {
  /** The runner's composition (consumer.ts), on a fake control and DLQ. */
  function pipeline(handlers: HandlerMap, control = new FakeControl(), maxAttempts = 3) {
    const dlq: DeadLetterReason[] = [];
    const metrics = new Metrics("unit", { defaultMetrics: false });
    const backoff = { ...defaultBackoff, initialMs: 100 };
    const handle = compose(
      [
        observe({ tally: metrics.handlerTally("unit-consumer"), deadLettered: metrics.deadLettered }),
        deadLetter(async (_d, r) => void dlq.push(r), backoff),
        skipUnhandled((t) => handlers[t] !== undefined),
        maxDeliveries(2 * maxAttempts),
        decode(control),
        retry({ maxAttempts, backoff }),
        park(control),
        keepInPlace(backoff),
        timeout(120_000),
      ],
      dispatchEvents(handlers),
    );
    return { handle, dlq, control };
  }
  const msg = (o: { deliveryCount?: number; type?: string } = {}) =>
    delivery({ data: encodeEvent(event()), type: "OrderPlaced", ...o });

  void it("ack, retry, dead-letter and skip end as the runner settles them", async () => {
    let behaviour: () => Promise<unknown> = async () => undefined;
    const { handle, dlq } = pipeline({ OrderPlaced: () => behaviour() } as unknown as HandlerMap);
    assert.deepEqual(await handle(msg()), ACK);
    behaviour = async () => {
      throw new Error("flaky");
    };
    assert.equal((await handle(msg())).outcome, "retry");
    assert.equal((await handle(msg({ deliveryCount: 3 }))).outcome, "dead-lettered");
    assert.equal(dlq[0]!.code, DeadLetterCode.HandlerFailed);
    assert.equal((await handle(msg({ type: "OrderConfirmed" }))).outcome, "skip");
    assert.equal((await handle(msg({ deliveryCount: 7 }))).outcome, "dead-lettered");
    assert.equal(dlq[1]!.code, DeadLetterCode.MaxDeliveries);
  });

  void it("a handler returning its outcome steers it like the errors older handlers throw", async () => {
    const results: unknown[] = [
      { outcome: "defer", retryAfterMs: 300 },
      { outcome: "redeliver", delayMs: 900 },
    ];
    const { handle, control } = pipeline({
      OrderPlaced: async () => results.shift(),
    } as unknown as HandlerMap);
    assert.deepEqual(await handle(msg()), { outcome: "redeliver", delayMs: 900 });
    assert.deepEqual(control.delays, [300]);
  });
});
