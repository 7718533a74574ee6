/**
 * Messaging conformance, poison: a message whose handling kills the process is dead-lettered (MAX_DELIVERIES) once
 * the server has delivered it more than `maxDeliveries` times, without running the handler again — counted by the
 * server across processes, shown with real child processes that die of it; a handler call that never settles is
 * abandoned after the handler timeout (a failed attempt, nak with backoff, DLQ after maxAttempts) while other
 * messages keep flowing; and parking uses neither deliveries nor handler time. Each test has its own nats-server.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { DeferError } from "../../src/lib/messaging/consumer.js";
import { DeadLetterCode } from "../../src/lib/messaging/dlq.js";
import { Metrics } from "../../src/lib/telemetry/metrics.js";
import {
  Recorder,
  eventually,
  orderPlacedEvents,
  sleep,
  startMessaging,
  within,
} from "../helpers/messaging.js";

const CHILD = fileURLToPath(new URL("../helpers/poison-child.ts", import.meta.url));

/** A running test/helpers/poison-child.ts: its stdout lines, and its exit. */
class Child {
  readonly lines: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly #proc: ChildProcess;
  #stderr = "";
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly #waiters = new Set<() => void>();

  constructor(env: Record<string, string>) {
    this.#proc = spawn(process.execPath, ["--import", "tsx", CHILD], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let partial = "";
    this.#proc.stdout!.setEncoding("utf8").on("data", (d: string) => {
      const parts = (partial + d).split("\n");
      partial = parts.pop()!;
      this.lines.push(...parts);
      this.#changed();
    });
    this.#proc.stderr!.setEncoding("utf8").on("data", (d: string) => {
      this.#stderr = (this.#stderr + d).slice(-4_000);
      if (process.env.TEST_LOG) process.stderr.write(d);
    });
    this.exited = new Promise((resolve) =>
      this.#proc.once("close", (code, signal) => {
        this.#exit = { code, signal };
        this.#changed();
        resolve(this.#exit);
      }),
    );
  }

  /** Resolves once a stdout line equals `line`; rejects if the process exits first, or after `timeoutMs`. */
  until(line: string, timeoutMs: number): Promise<void> {
    const p = new Promise<void>((resolve, reject) => {
      const check = () => {
        if (this.lines.includes(line)) resolve();
        else if (this.#exit)
          reject(new Error(`child exited (${JSON.stringify(this.#exit)}) ${this.#story()}`));
        else return;
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
    return within(p, timeoutMs, `child line "${line}" ${this.#story()}`);
  }

  /** Lines `entered <id> <attempt>` of event `id`: the attempts with which the handler was called. */
  entered(id: string): number[] {
    return this.lines.filter((l) => l.startsWith(`entered ${id} `)).map((l) => Number(l.split(" ")[2]));
  }

  kill(signal: NodeJS.Signals): void {
    if (!this.#exit) this.#proc.kill(signal);
  }

  #story(): string {
    return `(stdout: ${JSON.stringify(this.lines)}; stderr tail: ${this.#stderr.slice(-1_000)})`;
  }

  #changed(): void {
    for (const w of [...this.#waiters]) w();
  }
}

void describe("messaging conformance: poison", () => {
  void it("a message that kills its handler's process: after maxDeliveries (3) processes died of it, the fourth dead-letters it as MAX_DELIVERIES without running the handler", async (t) => {
    const f = await startMessaging();
    const children: Child[] = [];
    t.after(async () => {
      for (const c of children) c.kill("SIGKILL");
      await Promise.all(children.map((c) => c.exited));
      await f.close();
    });
    const ackWaitMs = 1_000;
    const maxDeliveries = 3;
    const spec = await f.consumer("poison-crash", { ackWaitMs });
    const [poison, good] = orderPlacedEvents(2, "crash-poison");
    const poisonSeq = (await f.publisher.publish(poison!)).seq;
    const start = () => {
      const c = new Child({
        NATS_URL: f.single.url,
        POISON_STREAM: spec.stream,
        POISON_DURABLE: spec.durable,
        POISON_ACK_WAIT_MS: String(ackWaitMs),
        POISON_MAX_DELIVERIES: String(maxDeliveries),
        // Not below maxDeliveries: the limit under test is the delivery count, not failed attempts.
        POISON_MAX_ATTEMPTS: String(maxDeliveries),
        POISON_EVENT_ID: poison!.id,
      });
      children.push(c);
      return c;
    };

    // Three processes in turn take the poison and die of it (SIGKILL from its own handler): no ack, no nak, no
    // failure reported; the server redelivers it to the next one after the ack wait.
    for (let n = 1; n <= maxDeliveries; n++) {
      const c = start();
      const exit = await within(c.exited, 60_000, `process ${n} to die of the poison`);
      assert.equal(exit.signal, "SIGKILL", `process ${n} was killed by its handler (${c.lines.join(" | ")})`);
      assert.deepEqual(c.entered(poison!.id), [n], `process ${n} ran the handler on delivery ${n}`);
    }
    assert.deepEqual(await f.deadLetters(), [], "nothing dead-lettered while processes died");

    // A fourth process: the server's delivery count is now past the limit.
    await f.publisher.publish(good!);
    const fourth = start();
    await fourth.until(`handled ${good!.id}`, 60_000);
    const [dl] = await eventually(async () => {
      const dls = await f.deadLetters(spec.durable);
      assert.equal(dls.length, 1, "the poison is dead-lettered");
      return dls;
    }, 15_000);
    assert.equal(dl!.code, DeadLetterCode.MaxDeliveries);
    assert.equal(dl!.attempts, maxDeliveries + 1, "the server's delivery count");
    assert.equal(dl!.sequence, poisonSeq);
    assert.equal(dl!.type, "OrderPlaced");
    assert.match(dl!.error, /more than maxDeliveries 3/);
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0, "term'd: not redelivered again");

    fourth.kill("SIGTERM");
    const exit = await within(fourth.exited, 15_000, "the fourth process to stop");
    assert.equal(exit.code, 0, "the fourth process did not die of the poison");
    assert.deepEqual(fourth.entered(poison!.id), [], "the fourth process never ran the poison's handler");
    assert.deepEqual(
      children.flatMap((c) => c.entered(poison!.id)),
      [1, 2, 3],
      "the handler ran exactly maxDeliveries times in all",
    );
  });

  void it("a handler that never settles is abandoned after the handler timeout: retried with backoff as a failed attempt, dead-lettered after maxAttempts, its slot freed for other messages, its late outcome ignored", async (t) => {
    const f = await startMessaging();
    const hung: (() => void)[] = [];
    t.after(async () => {
      for (const release of hung) release();
      await f.close();
    });
    // Ack wait 2 s: the runner's heartbeats keep the hung message, so only the timeout can bring it back.
    const spec = await f.consumer("poison-hang");
    const rec = new Recorder();
    const metrics = new Metrics("conformance", { defaultMetrics: false });
    const handlerTimeoutMs = 500;
    const maxAttempts = 3;
    const [poison, good] = orderPlacedEvents(2, "hang-poison");
    await f.startRunner(spec, {
      concurrency: 1,
      maxAttempts,
      handlerTimeoutMs,
      metrics,
      handlers: rec.handlers((e) =>
        e.id === poison!.id ? new Promise<void>((resolve) => hung.push(resolve)) : undefined,
      ),
    });
    await f.publisher.publish(poison!);
    await rec.until(() => rec.callsOf(poison!.id).length > 0, 10_000, "the poison's first call");
    await f.publisher.publish(good!);

    // Concurrency 1, and the first call never settles: the other message is handled only if the slot was freed.
    await rec.untilCompleted([good!.id], 10_000, "the other message");
    assert.ok(
      rec.maxActive >= 2,
      "it ran while a hung call was still running: the slot was freed, the call left",
    );

    const [dl] = await eventually(async () => {
      const dls = await f.deadLetters(spec.durable);
      assert.equal(dls.length, 1, "dead-lettered");
      return dls;
    }, 15_000);
    assert.equal(dl!.code, DeadLetterCode.HandlerTimeout);
    assert.equal(dl!.attempts, maxAttempts);
    assert.match(dl!.error, /did not settle within 500 ms/);
    const calls = rec.callsOf(poison!.id);
    assert.deepEqual(
      calls.map((c) => [c.attempt, c.outcome]),
      [
        [1, "running"],
        [2, "running"],
        [3, "running"],
      ],
      "each attempt abandoned while still running",
    );
    const gaps = calls.slice(1).map((c, i) => Math.round(c.at - calls[i]!.at));
    t.diagnostic(`attempt gaps ${gaps.join(", ")} ms`);
    for (const gap of gaps)
      assert.ok(gap >= handlerTimeoutMs * 0.9, `not abandoned early (${gaps.join(", ")} ms)`);
    await f.settled(spec);

    // The abandoned calls settle now; their outcome must be ignored: no ack, no nak, nothing counted.
    for (const release of hung.splice(0)) release();
    await rec.until(
      () => rec.callsOf(poison!.id).every((c) => c.outcome === "ok"),
      5_000,
      "the hung calls to return",
    );
    await sleep(200); // a bounded window in which a wrong late ack or nak would be sent and counted
    const handled = async (outcome: string) =>
      (await metrics.handled.get()).values.find(
        (v) => v.labels.consumer === spec.durable && v.labels.outcome === outcome,
      )?.value ?? 0;
    assert.equal(await handled("ack"), 1, "only the other message was acked");
    assert.equal(await handled("retry"), maxAttempts - 1, "each abandoned attempt but the last was nak'd");
    assert.equal(await handled("dlq"), 1);
    const ci = await f.settled(spec);
    assert.equal(ci.num_redelivered, 0);
    assert.equal((await f.deadLetters()).length, 1);
  });

  void it("parking uses neither deliveries nor handler time: a message deferred (and run) longer than the handler timeout in all, with maxDeliveries 2, is acked on the delivery it first ran on", async (t) => {
    const f = await startMessaging();
    t.after(() => f.close());
    const spec = await f.consumer("poison-parked");
    const rec = new Recorder();
    const handlerTimeoutMs = 300;
    const defers = 8; // calls of 100 ms, each followed by 50 ms parked: well past the handler timeout in all
    await f.startRunner(spec, {
      // 2, not 1: a delivery lost in transit (a pull ended under load) must not fail the test; a message whose
      // parking used deliveries would use 9, one whose parked time counted as handler time would be retried.
      maxDeliveries: 2,
      handlerTimeoutMs,
      handlers: rec.handlers(async (e) => {
        await sleep(100);
        if (rec.callsOf(e.id).length <= defers) throw new DeferError("dependency not ready", 50);
      }),
    });
    const [event] = orderPlacedEvents(1, "parked");
    await f.publisher.publish(event!);

    await rec.untilCompleted([event!.id], 15_000);
    const calls = rec.callsOf(event!.id);
    assert.equal(calls.length, defers + 1);
    assert.ok(
      calls.at(-1)!.at - calls[0]!.at > handlerTimeoutMs * 3,
      "the message was held, and its calls ran, much longer than the handler timeout in all",
    );
    const delivery = calls[0]!.attempt;
    assert.ok(
      calls.every((c) => c.attempt === delivery),
      "every call on the same delivery: never abandoned, nak'd or redelivered",
    );
    const ci = await f.settled(spec);
    assert.equal(ci.delivered.consumer_seq, delivery, "not delivered again after its first call");
    assert.deepEqual(await f.deadLetters(), []);
  });
});
