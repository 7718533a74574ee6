/**
 * The resilient HTTP client shared by payments and notifications (`src/lib/http-client.ts`), against a
 * scripted local HTTP server: error mapping, retries, timeouts, breaker and the pause/resume wiring of runners.
 */
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { Registry } from "prom-client";
import { DeferError, type ConsumerRunner } from "../../src/lib/messaging/consumer.js";
import {
  HttpDependency,
  UpstreamError,
  UpstreamErrorCode,
  breakerGauge,
  pauseWhileOpen,
  type BreakerState,
  type HttpDependencyOptions,
} from "../../src/lib/http-client.js";
import { isNonRetryable } from "../../src/lib/errors.js";

type Step = { status: number; body?: unknown; headers?: Record<string, string> } | "hang";

interface Call {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** Resolves when the client gave up the connection before any answer (a hang step). */
  abandoned: Promise<void>;
}

const servers: Server[] = [];
after(() => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
});

/** A local HTTP server that answers from a script (the last step repeats) and records the requests. */
async function scriptedServer(steps: Step[]): Promise<{ url: string; calls: Call[] }> {
  const calls: Call[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let abandon!: () => void;
      const call: Call = {
        method: req.method ?? "",
        path: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
        abandoned: new Promise<void>((r) => (abandon = r)),
      };
      calls.push(call);
      const step = steps[Math.min(calls.length - 1, steps.length - 1)]!;
      if (step === "hang") {
        res.on("close", () => abandon());
        return;
      }
      res.writeHead(step.status, { "content-type": "application/json", ...step.headers });
      res.end(step.body === undefined ? "" : JSON.stringify(step.body));
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, calls };
}

const options = (baseUrl: string, o: Partial<HttpDependencyOptions>): HttpDependencyOptions => ({
  name: "gw",
  baseUrl,
  timeoutMs: 200,
  retries: 2,
  retryInitialDelayMs: 1,
  retryMaxDelayMs: 5,
  breakerThreshold: 3,
  halfOpenAfterMs: 100,
  ...o,
});

async function client(steps: Step[], o: Partial<HttpDependencyOptions> = {}) {
  const srv = await scriptedServer(steps);
  return { dep: new HttpDependency(options(srv.url, o)), calls: srv.calls };
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Resolves with the next breaker state `dep` reports. */
function nextState(dep: HttpDependency): Promise<BreakerState> {
  return new Promise((resolve) => {
    const off = dep.onStateChange((s) => {
      off();
      resolve(s);
    });
  });
}

void describe("HttpDependency", () => {
  void it("posts JSON with the idempotency key and reports replays", async () => {
    const { dep, calls } = await client([
      { status: 200, body: { id: "ch_1" }, headers: { "idempotent-replayed": "true" } },
    ]);
    const res = await dep.post<{ id: string }>("/v1/charges", { amount: 1 }, { idempotencyKey: "charge:o1" });
    assert.deepEqual(res, { status: 200, body: { id: "ch_1" }, replayed: true });
    assert.equal(calls.length, 1);
    assert.equal(calls[0]!.method, "POST");
    assert.equal(calls[0]!.path, "/v1/charges");
    const h = calls[0]!.headers;
    assert.equal(h["idempotency-key"], "charge:o1");
    assert.equal(h["content-type"], "application/json");
    assert.equal(calls[0]!.body, '{"amount":1}');
  });

  void it("retries 5xx with the same key until it succeeds", async () => {
    const { dep, calls } = await client([
      { status: 503 },
      { status: 500 },
      { status: 201, body: { id: "x" } },
    ]);
    const res = await dep.post("/p", {}, { idempotencyKey: "k" });
    assert.equal(res.status, 201);
    assert.equal(calls.length, 3);
    assert.ok(calls.every((c) => c.headers["idempotency-key"] === "k"));
  });

  void it("gives up after the retries with a retryable UPSTREAM_UNAVAILABLE", async () => {
    const { dep, calls } = await client(
      [{ status: 503, body: { title: "Service Unavailable", detail: "simulated outage" } }],
      { breakerThreshold: 10 },
    );
    const err = await dep.post("/p", {}, { idempotencyKey: "k" }).catch((e: unknown) => e);
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.code, UpstreamErrorCode.Unavailable);
    assert.equal(err.retryable, true);
    assert.equal(err.httpStatus, 503);
    assert.match(err.message, /simulated outage/);
    assert.equal(calls.length, 3);
  });

  void it("maps a 4xx to a non-retryable UPSTREAM_REJECTED without retrying", async () => {
    const { dep, calls } = await client([{ status: 422, body: { title: "Idempotency key reused" } }]);
    const err = await dep.post("/p", {}, { idempotencyKey: "k" }).catch((e: unknown) => e);
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.code, UpstreamErrorCode.Rejected);
    assert.ok(isNonRetryable(err));
    assert.equal(calls.length, 1);
  });

  void it("treats 429 as retryable", async () => {
    const { dep, calls } = await client([{ status: 429 }, { status: 200, body: {} }]);
    await dep.post("/p", {}, { idempotencyKey: "k" });
    assert.equal(calls.length, 2);
  });

  void it("aborts an attempt at the timeout and retries it", async () => {
    const { dep, calls } = await client(["hang", { status: 200, body: { ok: true } }], { timeoutMs: 50 });
    const res = await dep.post("/p", {}, { idempotencyKey: "k" });
    assert.deepEqual(res.body, { ok: true });
    assert.equal(calls.length, 2);
    // The first attempt's connection was given up (aborted), not left waiting for an answer.
    await calls[0]!.abandoned;
  });

  void it("reports timeouts and refused connections as retryable errors", async () => {
    const t = await client(["hang"], { timeoutMs: 20, retries: 0 });
    const te = await t.dep.post("/p", {}, { idempotencyKey: "k" }).catch((e: unknown) => e);
    assert.ok(te instanceof UpstreamError && te.code === UpstreamErrorCode.Timeout && te.retryable);
    const r = { dep: new HttpDependency(options(`http://127.0.0.1:${await closedPort()}`, { retries: 0 })) };
    const re = await r.dep.post("/p", {}, { idempotencyKey: "k" }).catch((e: unknown) => e);
    assert.ok(re instanceof UpstreamError && re.code === UpstreamErrorCode.Unreachable && re.retryable);
    assert.match(re.message, /ECONNREFUSED/);
  });

  void it("opens after consecutive failed attempts, defers calls, then half-opens and closes", async () => {
    const { dep, calls } = await client([
      { status: 503 },
      { status: 503 },
      { status: 503 },
      { status: 200, body: {} },
    ]);
    const states: BreakerState[] = [];
    dep.onStateChange((s) => states.push(s));
    const opened = nextState(dep);
    const err = await dep.post("/p", {}, { idempotencyKey: "k" }).catch((e: unknown) => e);
    // Three attempts, each a failure: the third opens the breaker.
    assert.ok(err instanceof UpstreamError);
    assert.equal(await opened, "open");
    assert.equal(dep.state, "open");
    const deferred = await dep.post("/p", {}, { idempotencyKey: "k" }).catch((e: unknown) => e);
    assert.ok(deferred instanceof DeferError, "an open breaker defers");
    assert.equal(calls.length, 3, "nothing sent while open");
    assert.equal(await nextState(dep), "half-open");
    const res = await dep.post("/p", {}, { idempotencyKey: "k" });
    assert.equal(res.status, 200);
    assert.equal(dep.state, "closed");
    assert.deepEqual(states, ["open", "half-open", "closed"]);
    dep.close();
  });

  void it("does not count 4xx answers against the breaker", async () => {
    const { dep, calls } = await client([{ status: 400, body: {} }], { breakerThreshold: 1 });
    for (let i = 0; i < 3; i++) {
      // Each call reaches the server and is rejected for what it is; an open breaker would defer it instead.
      await assert.rejects(dep.post("/p", {}, { idempotencyKey: "k" }), (err: unknown) => {
        assert.ok(err instanceof UpstreamError, `call ${i + 1}: ${String(err)}`);
        assert.equal(err.code, UpstreamErrorCode.Rejected);
        assert.equal(err.httpStatus, 400);
        return true;
      });
    }
    assert.equal(calls.length, 3, "every call was sent");
    assert.equal(dep.state, "closed");
    dep.close();
  });

  void it("pauses runners while open, resumes them on half-open, and exports the state", async () => {
    const { dep } = await client([{ status: 503 }, { status: 200, body: {} }], {
      breakerThreshold: 1,
      retries: 0,
    });
    const log: string[] = [];
    const runner = (name: string) =>
      ({
        pause: () => log.push(`${name}:pause`),
        resume: () => log.push(`${name}:resume`),
      }) as unknown as ConsumerRunner;
    const runners = [runner("a"), runner("b"), undefined];
    pauseWhileOpen(dep, () => runners);
    const registry = new Registry();
    breakerGauge(dep, registry, "gw_breaker_state");
    const value = async () => (await registry.getSingleMetric("gw_breaker_state")!.get()).values[0]!.value;
    assert.equal(await value(), 0);
    await assert.rejects(dep.post("/p", {}, { idempotencyKey: "k" }), (err: unknown) => {
      assert.ok(err instanceof UpstreamError, String(err));
      assert.equal(err.code, UpstreamErrorCode.Unavailable);
      assert.equal(err.httpStatus, 503);
      return true;
    });
    assert.deepEqual(log, ["a:pause", "b:pause"]);
    assert.equal(await value(), 1);
    assert.equal(await nextState(dep), "half-open");
    assert.deepEqual(log, ["a:pause", "b:pause", "a:resume", "b:resume"]);
    assert.equal(await value(), 2);
    await dep.post("/p", {}, { idempotencyKey: "k" });
    assert.equal(await value(), 0);
    dep.close();
  });
});
