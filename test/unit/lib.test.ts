import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Writable } from "node:stream";
import { Type } from "@sinclair/typebox";
import fc from "fast-check";
import { canonicalJson, canonicalJsonOf, fingerprint } from "../../src/lib/canonical.js";
import { ConfigError } from "../../src/lib/errors.js";
import { Env, parseConfig } from "../../src/lib/config.js";
import { CommonConfig } from "../../src/lib/service.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { initTracing, tracer } from "../../src/lib/telemetry/tracing.js";
import { backoffDelay } from "../../src/lib/messaging/backoff.js";
import { RecentMap } from "../../src/lib/recent-map.js";
import { KeyedQueue } from "../../src/lib/keyed-queue.js";
import { ORDER_ID_PATTERN, isOrderId } from "../../src/lib/ids.js";
import { Durables } from "../../src/lib/events/consumers.js";
import {
  DecodeErrorCode,
  decodeEvent,
  encodeEvent,
  EventDecodeError,
  makeEvent,
  OrderId,
  subjectOf,
} from "../../src/lib/events/mod.js";

test("config: values are converted, defaults applied", () => {
  const c = parseConfig(Type.Composite([CommonConfig, Type.Object({ PORT: Env.port(8080, "port") })]), {
    PORT: "9000",
    MAX_ATTEMPTS: "7",
  });
  assert.equal(c.PORT, 9000);
  assert.equal(c.MAX_ATTEMPTS, 7);
  assert.equal(c.NATS_URL, "nats://127.0.0.1:4222");
  assert.equal(c.LOG_LEVEL, "info");
});

test("config: a bad or missing value stops with a message naming the variable and what was expected", () => {
  const schema = Type.Object({
    PORT: Env.port(8080, "orders HTTP port"),
    GATEWAY_URL: Env.url("gateway base URL"),
  });
  assert.throws(
    () => parseConfig(schema, { PORT: "eighty" }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(
        err.message,
        /PORT: expected an integer between 0 and 65535 .*orders HTTP port.*got "eighty"/,
      );
      assert.match(err.message, /GATEWAY_URL: expected a string \(uri\).*it is missing/);
      return true;
    },
  );
  assert.throws(() => parseConfig(CommonConfig, { LOG_LEVEL: "loud" }), /LOG_LEVEL: expected one of "fatal"/);
  assert.throws(
    () => parseConfig(schema, { PORT: "70000", GATEWAY_URL: "http://x" }),
    /PORT: expected an integer between 0 and 65535/,
  );
});

test("logger: JSON lines with service, PII redacted", () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const log = createLogger({ service: "orders", destination: sink });
  log
    .child({ trace_id: "t1", order_id: "o1" })
    .info({ email: "alice@example.com", data: { email: "a@b.c", card: "4242" } }, "placed");
  const line = JSON.parse(lines[0]!);
  assert.equal(line.service, "orders");
  assert.equal(line.trace_id, "t1");
  assert.equal(line.order_id, "o1");
  assert.equal(line.level, "info");
  assert.equal(line.email, "[redacted]");
  assert.equal(line.data.email, "[redacted]");
  assert.equal(line.data.card, "[redacted]");
  assert.doesNotMatch(lines[0]!, /alice@example\.com/);
});

test("backoff: grows exponentially, capped, with bounded jitter", () => {
  const o = { initialMs: 100, maxMs: 1_000, multiplier: 2, jitter: 0.2 };
  assert.equal(
    backoffDelay(1, o, () => 0.5),
    100,
  );
  assert.equal(
    backoffDelay(3, o, () => 0.5),
    400,
  );
  assert.equal(
    backoffDelay(10, o, () => 0.5),
    1_000,
  );
  assert.equal(
    backoffDelay(2, o, () => 0),
    180,
  );
  assert.equal(
    backoffDelay(2, o, () => 1),
    220,
  );
});

test("events: deterministic ids, subjects, and typed non-retryable decode errors", () => {
  const e = makeEvent(
    "OrderCancelled",
    { orderId: "o-1", reason: "timeout" },
    { aggregateId: "o-1", source: "orders" },
  );
  assert.equal(e.id, "o-1:OrderCancelled");
  assert.equal(subjectOf(e), "orders.o-1");
  assert.equal(
    subjectOf(
      makeEvent(
        "StockRejected",
        { orderId: "o-1", reason: "x", skus: [] },
        { aggregateId: "o-1", source: "inventory" },
      ),
    ),
    "inventory.o-1.StockRejected",
  );
  assert.deepEqual(decodeEvent(encodeEvent(e)), e);
  const cases: [Uint8Array, string][] = [
    [new TextEncoder().encode("{nope"), DecodeErrorCode.Malformed],
    [new Uint8Array([0xff, 0xfe]), DecodeErrorCode.Malformed],
    [new TextEncoder().encode(JSON.stringify({ ...e, type: "Nope" })), DecodeErrorCode.UnknownType],
    [new TextEncoder().encode(JSON.stringify({ ...e, version: 9 })), DecodeErrorCode.VersionAhead],
    [
      new TextEncoder().encode(JSON.stringify({ ...e, data: { orderId: "o-1", reason: "bored" } })),
      DecodeErrorCode.SchemaInvalid,
    ],
    [new TextEncoder().encode(JSON.stringify({ ...e, trace_id: "x" })), DecodeErrorCode.SchemaInvalid],
  ];
  for (const [bytes, code] of cases) {
    assert.throws(
      () => decodeEvent(bytes),
      (err: unknown) => err instanceof EventDecodeError && err.code === code && err.retryable === false,
    );
  }
  assert.throws(() => encodeEvent({ ...e, data: { orderId: "o 1", reason: "timeout" } }), EventDecodeError);
});

test("tracing: spans are exported over OTLP/HTTP when an endpoint is set", async () => {
  const received: { path: string; body: Buffer }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      received.push({ path: req.url ?? "", body: Buffer.concat(chunks) });
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  const tracing = initTracing({ service: "otlp-test", otlpEndpoint: `http://127.0.0.1:${port}` });
  tracer().startSpan("send orders.o-1").end();
  await tracing.shutdown();
  server.close();
  assert.equal(received.length >= 1, true, "the exporter posted");
  assert.equal(received[0]!.path, "/v1/traces");
  const text = received.map((r) => r.body.toString("latin1")).join("");
  assert.match(text, /otlp-test/);
  assert.match(text, /send orders\.o-1/);
});

void test("RecentMap keeps at most max entries, forgetting the least recently set first", () => {
  const m = new RecentMap<string, number>(2);
  m.set("a", 1);
  m.set("b", 2);
  m.set("a", 3); // "a" is now the newest
  m.set("c", 4); // forgets "b"
  assert.equal(m.size, 2);
  assert.equal(m.has("b"), false);
  assert.equal(m.get("a"), 3);
  assert.equal(m.get("c"), 4);
  m.delete("a");
  assert.equal(m.has("a"), false);
  assert.throws(() => new RecentMap(0), RangeError);
});

void test("canonical JSON: equal values serialise identically, keys sorted at every level", () => {
  assert.equal(
    canonicalJson({ b: 1, a: { d: [1, "x", null], c: true } }),
    '{"a":{"c":true,"d":[1,"x",null]},"b":1}',
  );
  assert.equal(canonicalJson({ a: 1, b: 2 }), canonicalJson({ b: 2, a: 1 }));
  assert.equal(canonicalJson({ a: undefined, b: [undefined] }), '{"b":[null]}');
  assert.equal(canonicalJson("\ud800\u0000é"), '"\\ud800\\u0000é"');
  assert.equal(canonicalJson(new Date(0)), "{}", "toJSON is not called");
  assert.equal(fingerprint({ a: 1, b: 2 }), fingerprint({ b: 2, a: 1 }));
  assert.match(fingerprint({}), /^[0-9a-f]{64}$/);
});

void test("canonical JSON: what JSON cannot represent faithfully throws instead of becoming null", () => {
  for (const bad of [Number.NaN, Infinity, -Infinity, 1n, () => 1, Symbol("s"), undefined]) {
    assert.throws(() => canonicalJson(bad), TypeError, String(bad));
    assert.throws(() => canonicalJson({ x: [bad === undefined ? Number.NaN : bad] }), TypeError, String(bad));
    assert.throws(() => fingerprint({ x: bad === undefined ? Number.NaN : bad }), TypeError, String(bad));
  }
  assert.throws(() => canonicalJson({ x: Number.NaN }), TypeError);
  assert.throws(() => canonicalJson({ x: 1n }), TypeError);
  // JSON text can still hold a number beyond the double range: it parses to Infinity.
  assert.throws(() => canonicalJson(JSON.parse('{"x":1e400}')), TypeError);
});

void test("canonical JSON matches the plain definition (sorted keys, undefined members left out) for any JSON value", () => {
  const reference = (v: unknown): string => {
    if (v === null || typeof v !== "object") return JSON.stringify(v);
    if (Array.isArray(v)) return `[${v.map((x) => (x === undefined ? "null" : reference(x))).join(",")}]`;
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${reference(o[k])}`).join(",")}}`;
  };
  fc.assert(
    fc.property(
      fc.jsonValue(),
      fc.dictionary(fc.string(), fc.option(fc.jsonValue(), { nil: undefined })),
      (json, obj) => {
        assert.equal(canonicalJson(json), reference(json));
        assert.equal(canonicalJson(obj), reference(obj));
      },
    ),
    { numRuns: 500 },
  );
});

void test("canonicalJsonOf(keys) writes exactly what canonicalJson writes (or throws the same) for objects of those keys", () => {
  const outcome = (f: () => string): string => {
    try {
      return f();
    } catch (err) {
      return `throws ${(err as Error).constructor.name}`;
    }
  };
  const value = fc.oneof(
    fc.string(),
    fc.string({ unit: "binary" }),
    fc.constant(null),
    fc.constant(undefined),
    fc.boolean(),
    fc.integer(),
    fc.double(),
    fc.jsonValue(),
  );
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.oneof(fc.string(), fc.constantFrom("a", "b", "__proto__", "é", "\ud800")), {
        maxLength: 8,
      }),
      fc.infiniteStream(value),
      (keys, values) => {
        const obj: Record<string, unknown> = {};
        for (const k of keys) Object.defineProperty(obj, k, { value: values.next().value, enumerable: true });
        const write = canonicalJsonOf(keys);
        assert.equal(
          outcome(() => write(obj)),
          outcome(() => canonicalJson(obj)),
        );
      },
    ),
    { numRuns: 500 },
  );
  assert.equal(canonicalJsonOf([])({}), "{}");
  assert.equal(canonicalJsonOf(["b", "a", "b"])({ a: 1, b: "x" }), '{"a":1,"b":"x"}');
});

void test("KeyedQueue runs work of one key one at a time, in call order, other keys in parallel", async () => {
  const queue = new KeyedQueue();
  const log: string[] = [];
  let releaseFirst!: () => void;
  const gate = new Promise<void>((r) => (releaseFirst = r));
  const a1 = queue.run("a", async () => {
    log.push("a1 start");
    await gate;
    log.push("a1 end");
  });
  const a2 = queue.run("a", async () => {
    log.push("a2");
  });
  const b = queue.run("b", async () => {
    log.push("b");
  });
  await b;
  assert.deepEqual(log, ["a1 start", "b"]);
  releaseFirst();
  await Promise.all([a1, a2]);
  assert.deepEqual(log, ["a1 start", "b", "a1 end", "a2"]);
  await assert.rejects(
    queue.run("a", () => Promise.reject(new Error("boom"))),
    /boom/,
  );
  assert.equal(await queue.run("a", async () => 42), 42, "a failure does not block the key");
  await assert.rejects(
    queue.run("a", () => {
      throw new Error("sync boom");
    }),
    /sync boom/,
  );
  assert.equal(await queue.run("a", async () => 43), 43, "nor does a synchronous throw");
});

void test("order ids: one pattern, subject-token safe, used by the event catalog", () => {
  assert.equal(ORDER_ID_PATTERN, "^[A-Za-z0-9_-]{1,64}$");
  assert.equal(OrderId.pattern, ORDER_ID_PATTERN);
  for (const ok of ["ord_0mwpzy1g7ab7c9302ac80ddcc", "a", "A-9_z", "x".repeat(64)])
    assert.ok(isOrderId(ok), ok);
  for (const bad of ["", "x".repeat(65), "a.b", "a b", "a*", "a>", "é", "a\n", "\u0000"])
    assert.ok(!isOrderId(bad), JSON.stringify(bad));
});

void test("durable consumer names: one per consumer, each a valid durable name of the form <service>-<what>", () => {
  const names = Object.values(Durables);
  assert.equal(new Set(names).size, names.length);
  for (const n of names) assert.match(n, /^(orders|inventory|payments|notifications)-[a-z]+$/);
});
