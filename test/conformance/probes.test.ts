/**
 * Probes that tell the truth: a service started through its composition root (`startService`, with a minimal service
 * definition of two durable consumers) on its own real nats-server answers `/ready` 503 — naming why — while it
 * drains, while NATS is unreachable, and while one of its durable consumers is missing on the server, and 200 again
 * once the cause is gone; `/health` (liveness) stays 200 throughout. A consumer deleted underneath the service is
 * provisioned again from its declaration after `CONSUMER_RECREATE_MS`.
 *
 * Every wait is a bounded poll of the probe (or an awaited event), never a fixed sleep.
 */
import assert from "node:assert/strict";
import { describe, it, type TestContext } from "node:test";
import { Type } from "@sinclair/typebox";
import { jetstreamManager } from "@nats-io/jetstream";
import { Env } from "../../src/lib/config.js";
import { Streams } from "../../src/lib/events/catalog.js";
import type { AnyEnvelope } from "../../src/lib/events/mod.js";
import { startService, type ServiceDefinition } from "../../src/lib/service.js";
import { consumerConfig, ensureConsumer, type ConsumerSpec } from "../../src/lib/messaging/topology.js";
import { connectTo, startNatsServer, type NatsServer } from "../helpers/nats.js";
import { eventually, orderPlacedEvents, within } from "../helpers/messaging.js";
import { AUTH_ENV } from "../helpers/auth.js";

const ORDERS_SPEC: ConsumerSpec = {
  stream: Streams.ORDERS,
  durable: "probes-orders",
  filterSubject: "orders.*",
  description: "probes test: OrderPlaced",
};
const PAYMENTS_SPEC: ConsumerSpec = {
  stream: Streams.PAYMENTS,
  durable: "probes-payments",
  description: "probes test: everything on PAYMENTS",
};

const ProbesConfig = Type.Object({ PORT: Env.port(0, "HTTP port") });

/** What the test service's OrderPlaced handler reports, and a gate the test can hold it at. */
class Handled {
  readonly ids: string[] = [];
  #waiters: { id: string; resolve: () => void }[] = [];
  #gate: Promise<void> = Promise.resolve();
  #open: () => void = () => undefined;

  /** Handlers started from now on wait until {@link release}. */
  hold(): void {
    this.#gate = new Promise((r) => (this.#open = r));
  }
  release(): void {
    this.#open();
  }
  /** Resolves once a handler has started on the event `id` (it may still be held). */
  started(id: string): Promise<void> {
    if (this.ids.includes(id)) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ id, resolve }));
  }
  async handle(e: AnyEnvelope): Promise<void> {
    this.ids.push(e.id);
    for (const w of this.#waiters.filter((x) => x.id === e.id)) w.resolve();
    this.#waiters = this.#waiters.filter((x) => x.id !== e.id);
    await this.#gate;
  }
}

function probeService(handled: Handled): ServiceDefinition<typeof ProbesConfig> {
  return {
    name: "probes",
    config: ProbesConfig,
    consumers: () => [
      { spec: ORDERS_SPEC, handlers: { OrderPlaced: (e) => handled.handle(e) } },
      { spec: PAYMENTS_SPEC, handlers: {} },
    ],
  };
}

interface Probe {
  status: number;
  body: any;
}

async function probe(base: string, path: "/health" | "/ready"): Promise<Probe> {
  const r = await fetch(base + path);
  return { status: r.status, body: await r.json() };
}

/** Polls `/ready` until `check` passes on its answer (bounded; the last assertion error is thrown). */
function untilReady(base: string, check: (p: Probe) => void, timeoutMs = 20_000): Promise<Probe> {
  return eventually(
    async () => {
      const p = await probe(base, "/ready");
      check(p);
      return p;
    },
    timeoutMs,
    50,
  );
}

const isReady = (p: Probe) => assert.equal(p.status, 200, JSON.stringify(p.body));

async function assertLive(base: string): Promise<void> {
  const h = await probe(base, "/health");
  assert.equal(h.status, 200, "/health stays 200: the process is alive");
  assert.equal(h.body.status, "ok");
}

/** A nats-server and the test service on it; everything is stopped after the test. */
async function start(t: TestContext, env: Record<string, string> = {}) {
  const nats: NatsServer = await startNatsServer();
  const handled = new Handled();
  const svc = await startService(probeService(handled), {
    ...AUTH_ENV,
    NATS_URL: nats.url,
    PORT: "0",
    LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
    DRAIN_TIMEOUT_MS: "20000",
    ...env,
  }).catch(async (err: unknown) => {
    await nats.stop();
    throw err;
  });
  // The service first (its NATS connection drains), then the server.
  t.after(async () => {
    handled.release();
    await svc.stop();
    await nats.stop();
  });
  await untilReady(svc.url, isReady);
  return { nats, svc, handled, base: svc.url };
}

void describe("probes tell the truth", () => {
  void it("while draining: /ready 503 'draining', /health 200", async (t) => {
    const { svc, handled, base } = await start(t);
    // Hold a handler, so the shutdown stays in its "stop consumers" step (HTTP still open) until released.
    handled.hold();
    const [event] = orderPlacedEvents(1, "drain");
    await svc.ctx.publisher.publish(event!);
    await within(handled.started(event!.id), 10_000, "the handler to start");

    const stopped = svc.stop();
    const p = await untilReady(base, (r) => {
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.equal(r.body.failing?.lifecycle, "draining", JSON.stringify(r.body));
    });
    assert.equal(p.body.status, "not_ready");
    await assertLive(base);

    handled.release();
    assert.equal(await within(stopped, 20_000, "the shutdown"), true, "a clean shutdown");
  });

  void it("while NATS is unreachable: /ready 503 naming NATS, /health 200; ready again once NATS is back", async (t) => {
    const { nats, base } = await start(t);
    await nats.kill();
    const down = await untilReady(base, (r) => {
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.match(String(r.body.failing?.nats), /NATS/, JSON.stringify(r.body));
    });
    assert.match(down.body.failing.nats, /disconnected|reconnecting/);
    await assertLive(base);

    await nats.start();
    await untilReady(base, isReady);
    await assertLive(base);
  });

  void it("while a durable consumer is deleted: /ready 503 naming it, /health 200; ready again once it is provisioned", async (t) => {
    // Recreation by the service itself is far off: the test provisions it.
    const { nats, svc, handled, base } = await start(t, { CONSUMER_RECREATE_MS: "600000" });
    const nc = await connectTo(nats);
    t.after(() => nc.close());
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.delete(ORDERS_SPEC.stream, ORDERS_SPEC.durable);

    const missing = await untilReady(base, (r) => {
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.match(String(r.body.failing?.consumers), /probes-orders.*not found/, JSON.stringify(r.body));
    });
    assert.doesNotMatch(
      missing.body.failing.consumers,
      /probes-payments/,
      "only the missing consumer is named",
    );
    assert.equal(missing.body.failing.nats, undefined, "NATS itself is fine");
    await assertLive(base);

    await ensureConsumer(jsm, ORDERS_SPEC);
    await untilReady(base, isReady);
    // And it consumes again.
    const [event] = orderPlacedEvents(1, "back");
    await svc.ctx.publisher.publish(event!);
    await within(handled.started(event!.id), 10_000, "the event to be handled by the reprovisioned consumer");
  });

  void it("a deleted durable consumer is provisioned again by the service from its declaration after CONSUMER_RECREATE_MS", async (t) => {
    const { nats, svc, handled, base } = await start(t, { CONSUMER_RECREATE_MS: "1500" });
    const nc = await connectTo(nats);
    t.after(() => nc.close());
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.delete(ORDERS_SPEC.stream, ORDERS_SPEC.durable);

    await untilReady(base, (r) => {
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.match(String(r.body.failing?.consumers), /probes-orders.*not found/, JSON.stringify(r.body));
    });
    await assertLive(base);
    // Nobody but the service recreates it.
    await untilReady(base, isReady);
    const info = await jsm.consumers.info(ORDERS_SPEC.stream, ORDERS_SPEC.durable);
    for (const [k, v] of Object.entries(consumerConfig(ORDERS_SPEC)))
      assert.deepEqual((info.config as unknown as Record<string, unknown>)[k], v, k);
    const [event] = orderPlacedEvents(1, "healed");
    await svc.ctx.publisher.publish(event!);
    await within(handled.started(event!.id), 10_000, "the event to be handled by the recreated consumer");
  });
});
