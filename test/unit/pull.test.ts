/**
 * The pull feed (src/lib/messaging/pull.ts) without a broker: a fake connection records the pull requests and lets
 * the test deliver messages and JetStream statuses to the inbox, to check the credit accounting, the statuses and
 * the silence detection; and the JsMsg over a core message (acks final, +WPI not).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MsgHdrsImpl, MsgImpl } from "@nats-io/nats-core/internal";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import {
  PullFeed,
  PulledMessage,
  parseDeliveryInfo,
  type PullFeedEvents,
} from "../../src/lib/messaging/pull.js";

const decoder = new TextDecoder();

/** The parts of a NATS connection the feed uses. */
class FakeNc {
  readonly published: { subject: string; data: string; reply?: string }[] = [];
  readonly options = { inboxPrefix: "_INBOX" };
  callback: ((err: Error | null, msg: Msg) => void) | undefined;
  unsubscribed = false;
  subscribe(_subject: string, opts: { callback: (err: Error | null, msg: Msg) => void }) {
    this.callback = opts.callback;
    return { unsubscribe: () => (this.unsubscribed = true) };
  }
  publish(subject: string, data: string | Uint8Array, opts?: { reply?: string }) {
    this.published.push({
      subject,
      data: typeof data === "string" ? data : decoder.decode(data),
      ...(opts?.reply ? { reply: opts.reply } : {}),
    });
  }
  deliver(msg: Partial<Msg>): void {
    this.callback!(null, msg as Msg);
  }
}

/** A delivered JetStream message: its reply is the ack subject (`$JS.ACK.<stream>.<consumer>.<dc>.<sseq>...`). */
function delivered(nc: FakeNc, deliveryCount = 1, seq = 5): Partial<Msg> {
  const reply = `$JS.ACK.ORDERS.c.${deliveryCount}.${seq}.${seq}.1700000000000000000.0`;
  return {
    subject: "orders.o-1",
    reply,
    data: Uint8Array.of(1),
    headers: undefined,
    sid: 1,
    respond: (payload?: string | Uint8Array) => {
      nc.publish(reply, payload ?? "");
      return true;
    },
  };
}

/** A JetStream status on the inbox (no reply; the code and description in the header line). */
function status(code: number, description: string, pending?: number): Partial<Msg> {
  return {
    subject: "_INBOX.x",
    reply: "",
    data: new Uint8Array(0),
    headers: {
      code,
      description,
      get: (k: string) => (k === "Nats-Pending-Messages" && pending !== undefined ? String(pending) : ""),
    } as unknown as Msg["headers"],
  };
}

function feed(expiresMs = 1_000) {
  const nc = new FakeNc();
  const seen: string[] = [];
  const messages: PulledMessage[] = [];
  const events: PullFeedEvents = {
    message: (m) => messages.push(m),
    alive: () => seen.push("alive"),
    lost: (why, detail) => seen.push(`lost ${why}: ${detail}`),
  };
  const f = new PullFeed({
    nc: nc as unknown as NatsConnection,
    apiPrefix: "$JS.API",
    stream: "ORDERS",
    durable: "c",
    expiresMs,
    events,
  });
  f.open();
  return { f, nc, seen, messages };
}

void describe("pull feed", () => {
  void it("asks for credits with one pull request each, and counts deliveries against them", () => {
    const { f, nc, messages } = feed();
    f.pull(5);
    assert.deepEqual(nc.published[0], {
      subject: "$JS.API.CONSUMER.MSG.NEXT.ORDERS.c",
      data: '{"batch":5,"expires":1000000000,"idle_heartbeat":500000000}',
      reply: nc.published[0]!.reply,
    });
    assert.match(nc.published[0].reply!, /^_INBOX\./);
    assert.equal(f.outstanding, 5);
    nc.deliver(delivered(nc, 2, 42));
    assert.equal(f.outstanding, 4);
    assert.equal(messages.length, 1);
    assert.equal(messages[0]!.info.deliveryCount, 2);
    assert.equal(messages[0]!.seq, 42);
    f.pull(3);
    assert.equal(f.outstanding, 7);
  });

  void it("an expired request frees what it still owed; a heartbeat is a sign of life", async () => {
    const { f, nc, seen } = feed();
    f.pull(4);
    nc.deliver(delivered(nc));
    const drained = f.drained();
    nc.deliver(status(100, "Idle Heartbeat"));
    nc.deliver(status(408, "Request Timeout", 3));
    assert.equal(f.outstanding, 0);
    await drained;
    assert.deepEqual(seen, ["alive", "alive"]);
  });

  void it("a consumer deleted under an open request is reported, and its credits freed", () => {
    const { f, nc, seen } = feed();
    f.pull(4);
    nc.deliver(status(409, "Consumer Deleted"));
    assert.equal(f.outstanding, 0);
    assert.deepEqual(seen, ["lost deleted: consumer deleted"]);
  });

  void it("no responders is reported as refused; a refused request keeps the others' credits until its expiry", () => {
    const { f, nc, seen } = feed();
    f.pull(4);
    nc.deliver(status(409, "Exceeded MaxWaiting"));
    assert.equal(f.outstanding, 4);
    f.check(performance.now() + 2_000, 500);
    assert.equal(f.outstanding, 0, "past every expiry nothing is owed");
    f.pull(2);
    nc.deliver(status(503, ""));
    assert.equal(f.outstanding, 0);
    assert.deepEqual(seen, ["lost refused: no responders"]);
  });

  void it("open requests that stay silent for two heartbeats are lost (nats-server 2.9 ignores a pull on a missing consumer)", () => {
    const { f, seen } = feed(10_000);
    f.pull(4);
    const t0 = performance.now();
    f.check(t0 + 5_000, 500);
    assert.equal(f.outstanding, 4, "two heartbeats (2 × 5 s) plus a tick have not passed");
    f.check(t0 + 10_600, 500);
    assert.equal(f.outstanding, 0);
    assert.match(seen[0]!, /^lost silent: no heartbeat for \d+ ms$/);
  });

  void it("close() unsubscribes and frees every credit", () => {
    const { f, nc } = feed();
    f.pull(4);
    f.close();
    assert.equal(nc.unsubscribed, true);
    assert.equal(f.outstanding, 0);
    f.pull(1);
    assert.equal(nc.published.length, 1, "no pull after close");
  });
});

void describe("pulled message", () => {
  void it("acks are final (the first wins); +WPI is not", () => {
    const nc = new FakeNc();
    const m = new PulledMessage(delivered(nc) as Msg, nc as unknown as NatsConnection);
    m.working();
    m.working();
    m.nak(1500);
    m.ack();
    m.term();
    assert.deepEqual(
      nc.published.map((p) => p.data),
      ["+WPI", "+WPI", '-NAK {"delay":1500000000}'],
    );
    const t = new PulledMessage(delivered(nc) as Msg, nc as unknown as NatsConnection);
    t.term();
    assert.equal(
      nc.published.at(-1)!.data,
      "+TERM",
      "a bare +TERM (nats-server 2.9 ignores one with a reason)",
    );
  });

  void it("reads one header from the header bytes, as headers.get() would after decoding them all", () => {
    const encoder = new TextEncoder();
    const make = (set: Record<string, string> | undefined) => {
      const body = encoder.encode('{"x":1}');
      let head: Uint8Array = new Uint8Array(0);
      if (set) {
        const h = new MsgHdrsImpl();
        for (const [k, v] of Object.entries(set)) h.set(k, v);
        head = h.encode();
      }
      const all = new Uint8Array(head.length + body.length);
      all.set(head);
      all.set(body, head.length);
      const core = new MsgImpl(
        {
          subject: encoder.encode("orders.o-1"),
          reply: encoder.encode("$JS.ACK.ORDERS.c.1.5.5.1700000000000000000.0"),
          sid: 1,
          hdr: set ? head.length : -1,
          size: all.length,
        },
        all,
        {} as never,
      );
      return new PulledMessage(core, {} as NatsConnection);
    };
    const m = make({
      "Nats-Msg-Id": "o-1:OrderPlaced",
      "Shopstream-Type": "OrderPlaced",
      Note: "café au lait",
    });
    assert.equal(m.header("Shopstream-Type"), "OrderPlaced");
    assert.equal(m.header("Note"), "café au lait");
    assert.equal(m.header("Shopstream-Typ"), "");
    assert.equal(m.header("Missing"), "");
    assert.equal(m.headers?.get("Shopstream-Type"), "OrderPlaced", "the same as decoding them all");
    assert.equal(m.header("Shopstream-Type"), "OrderPlaced", "and once decoded, from the decoded headers");
    assert.deepEqual(JSON.parse(m.string()), { x: 1 }, "the body is untouched");
    assert.equal(make(undefined).header("Shopstream-Type"), "");
  });

  void it("parses the delivery info of both ack subject formats", () => {
    const old = parseDeliveryInfo("$JS.ACK.ORDERS.c.3.10.12.1700000000000000000.4");
    assert.deepEqual(
      [old.stream, old.consumer, old.deliveryCount, old.streamSequence, old.deliverySequence, old.pending],
      ["ORDERS", "c", 3, 10, 12, 4],
    );
    const recent = parseDeliveryInfo("$JS.ACK.hub.ACCHASH.ORDERS.c.1.10.12.1700000000000000000.0.xyz");
    assert.deepEqual([recent.domain, recent.stream, recent.deliveryCount], ["hub", "ORDERS", 1]);
    assert.throws(() => parseDeliveryInfo("_INBOX.abc"), /not a jetstream message/);
  });
});
