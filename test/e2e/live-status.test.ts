/**
 * `GET /orders/{id}/events` end to end (issue 13, part 2), on the whole system with NATS authentication: every status
 * change as a Server-Sent Event as it happens (ids = ORDERS stream sequences), heartbeats while the order is open, the
 * stream closed after the terminal state, resumption with Last-Event-ID (204 when nothing follows), the owner or an
 * operator only, a bounded number of open streams per customer, and a stream's place given back when its client goes.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { readSse, type SseItem } from "../../src/load/sse.js";
import { runLoad } from "../../src/load/generator.js";
import { customerAuth, operatorAuth, testTokens } from "../helpers/auth.js";
import { startSystem, type System } from "../helpers/system.js";

const catalog = [{ sku: "SKU-A", name: "Widget A", price: 1000, currency: "EUR", stock: 1000 }];

interface Opened {
  status: number;
  type: string;
  /** The items read so far (filled as they arrive). */
  items: SseItem[];
  /** Resolves when the server ends the body. */
  ended: Promise<void>;
  /** Resolves with the next message (waits for it). */
  nextMessage(): Promise<{ id: string | undefined; data: any }>;
  abort(): void;
  body: string;
}

async function open(sys: System, orderId: string, headers: Record<string, string>): Promise<Opened> {
  const ctrl = new AbortController();
  const res = await fetch(`${sys.urls.orders}/orders/${orderId}/events`, { headers, signal: ctrl.signal });
  const items: SseItem[] = [];
  let wake: () => void = () => undefined;
  let taken = 0;
  const ended =
    res.status === 200 && res.body
      ? (async () => {
          try {
            for await (const item of readSse(res.body as AsyncIterable<Uint8Array>)) {
              items.push(item);
              wake();
            }
          } catch (err) {
            if (!ctrl.signal.aborted) throw err;
          } finally {
            wake();
          }
        })()
      : Promise.resolve();
  let done = false;
  void ended.finally(() => (done = true));
  const out: Opened = {
    status: res.status,
    type: res.headers.get("content-type") ?? "",
    items,
    ended,
    body: res.status === 200 ? "" : await res.text(),
    async nextMessage() {
      for (;;) {
        const messages = items.filter((i) => i.kind === "message");
        const m = messages[taken];
        if (m && m.kind === "message") {
          taken++;
          return { id: m.id, data: JSON.parse(m.data) };
        }
        if (done) throw new Error("the stream ended without another message");
        await new Promise<void>((r) => (wake = r));
      }
    },
    abort: () => ctrl.abort(),
  };
  return out;
}

const messages = (o: Opened) =>
  o.items.flatMap((i) => (i.kind === "message" ? [{ id: i.id, data: JSON.parse(i.data) }] : []));

describe("live order status (Server-Sent Events), end to end", () => {
  let sys: System;
  before(async () => {
    sys = await startSystem({
      catalog,
      auth: true,
      env: { LIVE_STREAMS_PER_CUSTOMER: "2", LIVE_HEARTBEAT_MS: "200", LIVE_POLL_MS: "1000" },
    });
  });
  after(async () => {
    await sys?.stop();
  });

  const place = async (customer: string) => {
    const r = await sys.placeOrder({
      customerId: customer,
      email: "c@example.com",
      items: [{ sku: "SKU-A", quantity: 1 }],
    });
    assert.equal(r.status, 202);
    return r.body.orderId as string;
  };

  test("follows an order as it happens: PENDING, heartbeats, CONFIRMED, then the stream ends", async () => {
    await sys.setGatewayFaults({ latencyMs: 1500 });
    try {
      const id = await place("live-ada");
      const s = await open(sys, id, await customerAuth("live-ada"));
      assert.equal(s.status, 200);
      assert.match(s.type, /^text\/event-stream/);
      const first = await s.nextMessage();
      assert.equal(first.data.event, "OrderPlaced");
      assert.equal(first.data.status, "PENDING");
      assert.equal(first.data.orderId, id);
      const last = await s.nextMessage();
      assert.equal(last.data.event, "OrderConfirmed");
      assert.equal(last.data.status, "CONFIRMED");
      assert.equal(last.data.total, 1000);
      assert.ok(Number(last.id) > Number(first.id), "ids are increasing stream sequences");
      await s.ended;
      assert.ok(
        s.items.some((i) => i.kind === "comment" && i.text === "heartbeat"),
        "heartbeats while the payment was slow",
      );
      assert.equal(messages(s).length, 2, "nothing after the terminal state");
    } finally {
      await sys.setGatewayFaults({ latencyMs: 0 });
    }
  });

  test("resumes after Last-Event-ID; 204 once the terminal event was received; an operator may follow any order", async () => {
    const id = await place("live-bob");
    await sys.waitForTerminal(id);
    const all = await open(sys, id, await customerAuth("live-bob"));
    await all.ended;
    const [placed, confirmed] = messages(all);
    assert.deepEqual([placed?.data.status, confirmed?.data.status], ["PENDING", "CONFIRMED"]);
    const resumed = await open(sys, id, {
      ...(await customerAuth("live-bob")),
      "last-event-id": placed!.id!,
    });
    await resumed.ended;
    assert.deepEqual(
      messages(resumed).map((m) => [m.id, m.data.status]),
      [[confirmed!.id, "CONFIRMED"]],
    );
    const over = await open(sys, id, {
      ...(await customerAuth("live-bob")),
      "last-event-id": confirmed!.id!,
    });
    assert.equal(over.status, 204);
    const op = await open(sys, id, await operatorAuth());
    await op.ended;
    assert.equal(messages(op).length, 2);
  });

  test("another customer's order is 404, no token 401, a malformed Last-Event-ID 400 (problem+json)", async () => {
    const id = await place("live-cy");
    const other = await open(sys, id, await customerAuth("live-mallory"));
    assert.equal(other.status, 404);
    assert.match(other.type, /application\/problem\+json/);
    assert.equal((await open(sys, id, {})).status, 401);
    const bad = await open(sys, id, { ...(await customerAuth("live-cy")), "last-event-id": "abc" });
    assert.equal(bad.status, 400);
    assert.match(bad.type, /application\/problem\+json/);
    assert.equal((await open(sys, "ord_nonexistent", await customerAuth("live-cy"))).status, 404);
  });

  test("at most LIVE_STREAMS_PER_CUSTOMER open streams; a client that goes away gives its place back", async () => {
    await sys.setGatewayFaults({ latencyMs: 8_000 });
    const opened: Opened[] = [];
    try {
      const ids = [await place("live-dee"), await place("live-dee"), await place("live-dee")];
      for (const id of ids.slice(0, 2)) {
        const s = await open(sys, id, await customerAuth("live-dee"));
        assert.equal(s.status, 200);
        await s.nextMessage();
        opened.push(s);
      }
      const third = await open(sys, ids[2]!, await customerAuth("live-dee"));
      assert.equal(third.status, 429);
      assert.match(third.type, /application\/problem\+json/);
      // Another customer is not affected.
      const eve = await place("live-eve");
      const other = await open(sys, eve, await customerAuth("live-eve"));
      assert.equal(other.status, 200);
      other.abort();
      opened[0]!.abort();
      const again = await sys.until("a place freed by the client that went away", async () => {
        const s = await open(sys, ids[2]!, await customerAuth("live-dee"));
        if (s.status === 200) return s;
        return undefined;
      });
      opened.push(again);
      const m = await again.nextMessage();
      assert.equal(m.data.status, "PENDING");
    } finally {
      for (const s of opened) s.abort();
      await sys.setGatewayFaults({ latencyMs: 0 });
    }
  });

  test("the load generator can await each order's completion over its stream instead of the bus", async () => {
    const records = await runLoad({
      ordersUrl: sys.urls.orders,
      mode: { kind: "closed", concurrency: 3, durationMs: 1500 },
      // Two customers for three clients: some streams meet the per-customer limit and wait their turn.
      body: (i) => ({
        customerId: `live-load-${i % 2}`,
        email: "l@example.com",
        items: [{ sku: "SKU-A", quantity: 1 }],
      }),
      token: async (customerId) => (await testTokens()).token(customerId),
      followOverSse: { timeoutMs: 60_000 },
    });
    assert.ok(records.length > 0);
    for (const r of records) {
      assert.equal(r.httpStatus, 202, JSON.stringify(r));
      assert.equal(r.terminal, "CONFIRMED", JSON.stringify(r));
      assert.ok(r.terminalAt! >= r.answeredAt!, "completion after the answer");
      // The stream's verdict is the order's.
      assert.equal((await sys.waitForTerminal(r.orderId!)).status, "CONFIRMED");
    }
    // Closed loop with completion awaited: a client's next order is sent only after its previous one ended.
    const byStart = [...records].sort((a, b) => a.scheduledAt - b.scheduledAt);
    assert.ok(
      byStart.length <= 3 ||
        byStart.slice(3).every((r) => byStart.some((p) => p.terminalAt! <= r.scheduledAt)),
    );
  });
});
