/**
 * A process of its own running one ConsumerRunner, for test/conformance/poison.test.ts: poison that kills the
 * process handling it. Its OrderPlaced handler kills its own process with SIGKILL when it gets the event
 * `POISON_EVENT_ID` (no ack, no nak, no log flushed: the server only sees the ack wait run out), and handles any
 * other event normally.
 *
 * Environment: `NATS_URL`, `POISON_STREAM`, `POISON_DURABLE` (the consumer, declared by the test),
 * `POISON_ACK_WAIT_MS`, `POISON_MAX_DELIVERIES` (given through the ConsumerSpec), `POISON_MAX_ATTEMPTS`,
 * `POISON_EVENT_ID`; `LOG_LEVEL` for the runner's log on stderr (default warn).
 *
 * Protocol, one line each on stdout, written synchronously so that a line is in the pipe before the process dies:
 * `ready` (the runner is bound to its consumer), `entered <event id> <attempt>` (the handler was called),
 * `handled <event id>` (a handler call returned). SIGTERM stops the runner gracefully and exits 0.
 */
import { writeSync } from "node:fs";
import { jetstream } from "@nats-io/jetstream";
import { ConsumerRunner } from "../../src/lib/messaging/consumer.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { connectTo } from "./nats.js";

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`poison-child: ${name} is not set`);
  return v;
}

const say = (line: string) => writeSync(1, `${line}\n`);

const poisonId = env("POISON_EVENT_ID");
const logger = createLogger({
  service: "poison-child",
  level: (process.env.LOG_LEVEL as "warn" | undefined) ?? "warn",
  destination: process.stderr,
});
const nc = await connectTo(env("NATS_URL"));
const js = jetstream(nc);
const runner = new ConsumerRunner({
  js,
  spec: {
    stream: env("POISON_STREAM"),
    durable: env("POISON_DURABLE"),
    ackWaitMs: Number(env("POISON_ACK_WAIT_MS")),
    maxDeliveries: Number(env("POISON_MAX_DELIVERIES")),
  },
  handlers: {
    OrderPlaced: async (event, ctx) => {
      say(`entered ${event.id} ${ctx.attempt}`);
      if (event.id === poisonId) process.kill(process.pid, "SIGKILL");
      say(`handled ${event.id}`);
    },
  },
  publisher: new Publisher(js, { timeoutMs: 2_000, retryDelayMs: 50 }),
  logger,
  concurrency: 1,
  maxAttempts: Number(env("POISON_MAX_ATTEMPTS")),
  backoff: { initialMs: 50, maxMs: 1_000 },
});
process.once("SIGTERM", () => {
  void (async () => {
    await runner.stop(1_000);
    await nc.close();
    process.exit(0);
  })();
});
await runner.start();
say("ready");
