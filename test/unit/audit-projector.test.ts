/**
 * The audit projector's stream reader against stand-ins for NATS and the store (no server): a reader whose ordered
 * consumer goes silent while its stream has more is restarted by its watchdog from the committed position. The
 * integration tests (test/integration/audit.test.ts) cover the reader on a real nats-server and database; a
 * consumer silently lost with a NATS node is what the chaos scenario cluster-leader-loss produced.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { JsMsg } from "@nats-io/jetstream";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import type { AuditEntry } from "../../src/services/audit/audit.js";
import { Projector } from "../../src/services/audit/projector.js";
import type { AppendResult } from "../../src/services/audit/store.js";
import { AuditWriter } from "../../src/services/audit/writer.js";
import { eventually } from "../helpers/eventually.js";

/** The messages of one ordered-consumer session: yields what it is given, until stopped. */
class FakeMessages {
  readonly #queue: JsMsg[];
  #done = false;
  #wake: (() => void) | undefined;
  constructor(msgs: JsMsg[]) {
    this.#queue = [...msgs];
  }
  stop(): void {
    this.#done = true;
    this.#wake?.();
  }
  status(): AsyncIterable<never> {
    return {
      [Symbol.asyncIterator]: () => ({ next: async () => ({ done: true, value: undefined as never }) }),
    };
  }
  async *[Symbol.asyncIterator](): AsyncGenerator<JsMsg> {
    while (!this.#done) {
      const m = this.#queue.shift();
      if (m) yield m;
      else await new Promise<void>((r) => (this.#wake = r));
    }
  }
}

function dlqMessage(seq: number): JsMsg {
  return {
    seq,
    subject: "dlq.somewhere",
    data: new Uint8Array(),
    headers: undefined,
    time: new Date(),
  } as never;
}

void describe("audit projector: stream reader", () => {
  void it("restarts a reader whose consumer went silent while its stream has more, from the committed position", async () => {
    const LAST = 3;
    let committed = 0;
    const starts: number[] = [];
    const writes: AuditEntry[][] = [];
    const writer = new AuditWriter(
      {
        append: async (entries, _now, advance) => {
          writes.push([...entries]);
          committed = Math.max(committed, advance?.get("DLQ") ?? 0);
          return entries.map((): AppendResult => ({ status: "inserted", position: 1, conflict: false }));
        },
      },
      { maxBatch: 10, maxDelayMs: 1 },
    );
    const js = {
      consumers: {
        get: async (_stream: string, opts: { opt_start_seq: number }) => {
          starts.push(opts.opt_start_seq);
          // The first session's consumer delivers nothing (lost on the server, not noticed by the client); the
          // next one delivers the stream from where it was asked to start.
          const msgs =
            starts.length === 1
              ? []
              : Array.from({ length: LAST - opts.opt_start_seq + 1 }, (_, i) =>
                  dlqMessage(opts.opt_start_seq + i),
                );
          return { consume: async () => new FakeMessages(msgs), delete: async () => true };
        },
      },
    };
    const jsm = {
      streams: { info: async () => ({ state: { last_seq: LAST } }) },
      consumers: { delete: async () => Promise.reject(new Error("consumer not found")) },
    };
    const store = {
      db: { kind: "pglite" },
      projectorLockKey: "1",
      position: async () => committed,
      positions: async () => new Map([["DLQ", committed]]),
      resetPosition: async () => undefined,
    };
    const projector = new Projector({
      js: js as never,
      jsm: jsm as never,
      store: store as never,
      writer,
      logger: createLogger({ service: "test", level: "silent" }),
      streams: ["DLQ"],
      stallMs: 200,
      backoff: { initialMs: 10, maxMs: 50, multiplier: 2, jitter: 0 },
    });
    await projector.start();
    try {
      await eventually(() => assert.equal(committed, LAST), { what: "every message recorded" });
      assert.deepEqual(starts, [1, 1], "the second session starts from the committed position (nothing yet)");
      assert.equal(projector.sessionsStarted, 2);
      assert.deepEqual(
        writes.flat().map((e) => e.eventId),
        ["dlq:1", "dlq:2", "dlq:3"],
      );
      assert.deepEqual(projector.readiness(), { ready: true, detail: "active" });
      assert.deepEqual(await projector.positions(), { DLQ: { position: LAST, lastSeq: LAST, lag: 0 } });
    } finally {
      await projector.stop();
      await writer.close();
    }
  });
});
