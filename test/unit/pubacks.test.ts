/**
 * PubAck tracking (src/lib/messaging/pubacks.ts) without a broker: a fake connection records each publish and lets
 * the test answer on the reply subject, to check the matching of replies, every failure `js.publish` has (error
 * reply, no responders, timeout, a publish refused on the spot, a closed connection) and the header block.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { JetStreamApiError } from "@nats-io/jetstream";
import { errors as natsErrors, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { HeaderBlock, PubAcks } from "../../src/lib/messaging/pubacks.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

class FakeNc {
  readonly options = { inboxPrefix: "_INBOX" };
  readonly sent: { subject: string; reply: string; headers: string }[] = [];
  refuse: Error | undefined;
  #callback: ((err: Error | null, msg: Msg) => void) | undefined;
  #closed!: () => void;
  readonly #closedPromise = new Promise<void>((r) => (this.#closed = r));
  subscribe(_subject: string, opts: { callback: (err: Error | null, msg: Msg) => void }) {
    this.#callback = opts.callback;
    return { unsubscribe: () => undefined };
  }
  publish(subject: string, _data: Uint8Array, opts: { reply: string; headers: { encode(): Uint8Array } }) {
    if (this.refuse) throw this.refuse;
    this.sent.push({ subject, reply: opts.reply, headers: decoder.decode(opts.headers.encode()) });
  }
  closed(): Promise<void> {
    return this.#closedPromise;
  }
  close(): void {
    this.#closed();
  }
  /** Answers publish `i` with `body` (and a status code, for no responders). */
  answer(i: number, body: string, code?: number): void {
    this.#callback!(null, {
      subject: this.sent[i]!.reply,
      data: encoder.encode(body),
      headers: code ? ({ code } as unknown as Msg["headers"]) : undefined,
    } as Msg);
  }
}

function tracker() {
  const nc = new FakeNc();
  return { nc, acks: new PubAcks(nc as unknown as NatsConnection) };
}
const block = new HeaderBlock("NATS/1.0\r\nNats-Msg-Id: e-1\r\n\r\n");

void describe("PubAck tracking", () => {
  void it("this nats.js takes a written-out header block", () => {
    assert.equal(PubAcks.supported, true);
  });

  void it("matches each reply to its publish, whatever the order, with duplicate set", async () => {
    const { nc, acks } = tracker();
    const first = acks.publish("orders.a", Uint8Array.of(1), block, 5_000);
    const second = acks.publish("orders.b", Uint8Array.of(2), block, 5_000);
    assert.equal(nc.sent[0]!.headers, "NATS/1.0\r\nNats-Msg-Id: e-1\r\n\r\n");
    assert.notEqual(nc.sent[0]!.reply, nc.sent[1]!.reply);
    nc.answer(1, '{"stream":"ORDERS","seq":8,"duplicate":true}');
    nc.answer(0, '{"stream":"ORDERS","seq":7}');
    assert.deepEqual(await first, { stream: "ORDERS", seq: 7, duplicate: false });
    assert.deepEqual(await second, { stream: "ORDERS", seq: 8, duplicate: true });
  });

  void it("an error reply is a JetStreamApiError with its code; a 503 is no responders", async () => {
    const { nc, acks } = tracker();
    const conflict = acks.publish("orders.a", Uint8Array.of(1), block, 5_000);
    const nobody = acks.publish("nowhere.a", Uint8Array.of(1), block, 5_000);
    nc.answer(0, '{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}');
    nc.answer(1, "", 503);
    await assert.rejects(conflict, (e: unknown) => e instanceof JetStreamApiError && e.code === 10071);
    await assert.rejects(nobody, (e: unknown) => e instanceof natsErrors.NoRespondersError);
  });

  void it("no PubAck in time is a TimeoutError, and a late one is ignored", async () => {
    const { nc, acks } = tracker();
    // The sweep timer does not hold the process open (the connection's socket does, outside this test).
    const alive = setTimeout(() => undefined, 5_000);
    const started = performance.now();
    await assert.rejects(
      acks.publish("orders.a", Uint8Array.of(1), block, 40),
      (e: unknown) => e instanceof natsErrors.TimeoutError,
    );
    assert.ok(performance.now() - started >= 39);
    nc.answer(0, '{"stream":"ORDERS","seq":7}');
    clearTimeout(alive);
  });

  void it("a publish the connection refuses fails at once; a closing connection fails what waits", async () => {
    const { nc, acks } = tracker();
    nc.refuse = new natsErrors.InvalidArgumentError("payload max_payload size exceeded");
    await assert.rejects(acks.publish("orders.a", Uint8Array.of(1), block, 5_000), /max_payload/);
    nc.refuse = undefined;
    const waiting = acks.publish("orders.a", Uint8Array.of(1), block, 5_000);
    nc.close();
    await assert.rejects(waiting, (e: unknown) => e instanceof natsErrors.ClosedConnectionError);
  });
});
