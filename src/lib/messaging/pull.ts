/**
 * Pulling from one durable consumer with credits: one subscription on one inbox for the runner's life, pull
 * requests sent only for slots that are free, so every delivered message has a slot waiting for it.
 *
 * Why not nats.js's `consume()`: it asks for more as messages *arrive*, not as they are *handled* (with an
 * iterator it sends each re-pull when the iterator reaches it, with a callback at once). Bounding what the
 * runner takes then leaves up to `max_messages` delivered messages waiting in its buffer, where nothing sends
 * them `working()`: a runner whose slots are parked behind an open breaker would see them redelivered after
 * the ack wait, a delivery used each time. With credits, `outstanding + in flight <= concurrency` holds, and a
 * pause is simply "no new pull requests". `fetch()` per pull was the other way: one subscription, status
 * iterator and heartbeat monitor per pull, and no new pull until the last one ended.
 *
 * The protocol is JetStream's pull (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with `batch`, `expires` and
 * `idle_heartbeat`); statuses on the inbox: 100 idle heartbeat, 408 request expired (with the messages it still
 * owed in `Nats-Pending-Messages`), 409 consumer deleted / limits, 503 no responders. Requests lost without a
 * status (a reconnect, a leader change, nats-server 2.9 ignoring a pull on a missing consumer) are noticed by
 * silence: nothing heard for two heartbeats while requests are open.
 */
import type { DeliveryInfo, JetStreamClient, JsMsg, PullOptions } from "@nats-io/jetstream";
import {
  createInbox,
  millis,
  nanos,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";

const ACK = Uint8Array.of(43, 65, 67, 75); // +ACK
const NAK = Uint8Array.of(45, 78, 65, 75); // -NAK
const WPI = Uint8Array.of(43, 87, 80, 73); // +WPI
const TERM = Uint8Array.of(43, 84, 69, 82, 77); // +TERM
const encoder = new TextEncoder();

/** The connection a JetStream client was made on (nats.js keeps it as `nc`); undefined if it is not there. */
export function connectionOf(js: JetStreamClient): NatsConnection | undefined {
  const nc = (js as unknown as { nc?: NatsConnection }).nc;
  return nc && typeof nc.subscribe === "function" && typeof nc.publish === "function" ? nc : undefined;
}

/**
 * The delivery info in a JetStream ack subject (nats.js's `parseInfo`, which it does not export), read in one pass
 * without splitting it: `$JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<delivery seq>.<ns>.<pending>`, or
 * with `<domain>.<account hash>` after `ACK` (and a random token at the end) on newer servers.
 */
export function parseDeliveryInfo(reply: string): DeliveryInfo {
  let n = 0;
  for (let i = reply.indexOf("."); i !== -1 && n < dots.length; i = reply.indexOf(".", i + 1)) dots[n++] = i;
  if ((n !== 8 && n < 10) || !reply.startsWith("$JS.ACK.")) {
    throw new Error(`unable to parse delivery info - not a jetstream message`);
  }
  // Token k of the old format is token k + 2 of the new one.
  const at = n === 8 ? 0 : 2;
  const domain = at ? token(reply, n, 2) : "";
  const deliveryCount = numberToken(reply, n, 4 + at);
  return {
    domain: domain === "_" ? "" : domain,
    account_hash: at ? token(reply, n, 3) : "",
    stream: token(reply, n, 2 + at),
    consumer: token(reply, n, 3 + at),
    deliveryCount,
    redelivered: deliveryCount > 1,
    streamSequence: numberToken(reply, n, 5 + at),
    deliverySequence: numberToken(reply, n, 6 + at),
    timestampNanos: numberToken(reply, n, 7 + at),
    pending: numberToken(reply, n, 8 + at),
  };
}

/** Where the dots of the subject being parsed are (reused: parsing is synchronous). */
const dots = new Int32Array(11);

/** Token `k` (≥ 1) of `s`, which has `n` dots at {@link dots}. */
function token(s: string, n: number, k: number): string {
  return s.slice(dots[k - 1]! + 1, k < n ? dots[k] : s.length);
}

/** Token `k` (≥ 1) of `s` as a decimal number, read without making the substring. */
function numberToken(s: string, n: number, k: number): number {
  let v = 0;
  for (let i = dots[k - 1]! + 1, end = k < n ? dots[k]! : s.length; i < end; i++)
    v = v * 10 + s.charCodeAt(i) - 48;
  return v;
}

const nonAscii = /[\u0080-\uffff]/;

/**
 * A message delivered by a pull: nats.js's `JsMsg` (whose implementation it does not export) over the core
 * message. Acks are final except `working()`; the first final one wins.
 */
export class PulledMessage implements JsMsg {
  readonly #msg: Msg;
  readonly #nc: NatsConnection;
  #info: DeliveryInfo | undefined;
  #acked = false;

  constructor(msg: Msg, nc: NatsConnection) {
    this.#msg = msg;
    this.#nc = nc;
  }

  get subject(): string {
    return this.#msg.subject;
  }
  get sid(): number {
    return this.#msg.sid;
  }
  get data(): Uint8Array {
    return this.#msg.data;
  }
  get headers(): MsgHdrs | undefined {
    return this.#msg.headers;
  }
  get info(): DeliveryInfo {
    return (this.#info ??= parseDeliveryInfo(this.#msg.reply ?? ""));
  }
  get redelivered(): boolean {
    return this.info.deliveryCount > 1;
  }
  get seq(): number {
    return this.info.streamSequence;
  }
  get time(): Date {
    return new Date(millis(this.info.timestampNanos));
  }
  get timestamp(): string {
    return this.time.toISOString();
  }
  get timestampNanos(): bigint {
    const t = (this.#msg.reply ?? "").split(".");
    return BigInt(t[t.length === 9 ? 7 : 9] ?? 0);
  }

  ack(): void {
    this.#respond(ACK, true);
  }
  nak(millis?: number): void {
    this.#respond(millis ? encoder.encode(`-NAK ${JSON.stringify({ delay: nanos(millis) })}`) : NAK, true);
  }
  working(): void {
    this.#respond(WPI, false);
  }
  term(reason = ""): void {
    this.#respond(reason ? encoder.encode(`+TERM ${reason}`) : TERM, true);
  }
  next(subj: string, opts: Partial<PullOptions> = { batch: 1 }): void {
    const args: Record<string, unknown> = { batch: opts.batch ?? 1, no_wait: opts.no_wait ?? false };
    if (opts.expires && opts.expires > 0) args.expires = nanos(opts.expires);
    this.#respond(encoder.encode(`+NXT ${JSON.stringify(args)}`), true, subj);
  }
  async ackAck(opts: Partial<{ timeout: number }> = {}): Promise<boolean> {
    if (this.#acked || !this.#msg.reply) return false;
    this.#acked = true;
    await this.#nc.request(this.#msg.reply, ACK, { timeout: opts.timeout ?? 5_000 });
    return true;
  }
  /**
   * The first value of header `name` ("" without), found in the message's header bytes: nats.js decodes every
   * header of a message on first access of `headers` (lines split, keys checked, arrays made), for one value.
   * Falls back to `headers` when the core message is not nats.js 3's (or they are decoded already).
   */
  header(name: string): string {
    const raw = this.#msg as unknown as { _msg?: { hdr?: number }; _rdata?: Uint8Array; _headers?: MsgHdrs };
    const size = raw._msg?.hdr;
    const bytes = raw._rdata;
    if (typeof size !== "number" || !(bytes instanceof Uint8Array) || raw._headers || size > bytes.length)
      return this.#msg.headers?.get(name) ?? "";
    if (size <= 0) return "";
    // The block as one-byte text (cheaper than searching the bytes); a value that is not ASCII is decoded again.
    const block = Buffer.from(bytes.buffer, bytes.byteOffset, size);
    const text = block.toString("latin1");
    const key = `\r\n${name}:`;
    const at = text.indexOf(key);
    if (at < 0) return "";
    const start = at + key.length;
    const cr = text.indexOf("\r", start);
    const end = cr < 0 ? size : cr;
    const value = text.slice(start, end);
    return (nonAscii.test(value) ? block.toString("utf8", start, end) : value).trim();
  }
  json<T>(): T {
    return this.#msg.json<T>();
  }
  string(): string {
    return this.#msg.string();
  }

  #respond(payload: Uint8Array, final: boolean, reply?: string): void {
    if (this.#acked) return;
    if (final) this.#acked = true;
    this.#msg.respond(payload, reply ? { reply } : undefined);
  }
}

/** What the feed tells its owner. */
export interface PullFeedEvents {
  /** A delivered message (a credit of an open request used up). */
  message(m: PulledMessage): void;
  /** The server answered for our pulls (a message, a heartbeat, an expiry): the consumer is there. */
  alive(): void;
  /**
   * Our open requests are gone without their messages: `deleted` (409 consumer deleted), `silent` (nothing
   * heard for two heartbeats), `refused` (another status: no responders, bad request). Credits are reset.
   */
  lost(why: "deleted" | "silent" | "refused", detail: string): void;
}

/** Options of {@link PullFeed}. */
export interface PullFeedOptions {
  nc: NatsConnection;
  /** The JetStream API prefix (`$JS.API`). */
  apiPrefix: string;
  stream: string;
  durable: string;
  /** Lifetime of each pull request, ≥ 1 s. */
  expiresMs: number;
  events: PullFeedEvents;
}

/**
 * Pull requests of one runner on one inbox. The owner decides how many messages to ask for ({@link pull}); the feed
 * counts what is still owed (`outstanding`), from deliveries and from the statuses that end requests.
 */
export class PullFeed {
  readonly #o: PullFeedOptions;
  readonly #next: string;
  readonly #inbox: string;
  readonly #heartbeatMs: number;
  #sub: Subscription | undefined;
  #outstanding = 0;
  /** When the last open request expires (performance.now()); after that nothing more is owed. */
  #lastExpiry = 0;
  /** `performance.now()` of the last thing heard on the inbox (or of the first request after a quiet time). */
  #heard = 0;
  /** Something was heard since the last check (cheaper than reading the clock per message). */
  #heardSince = false;
  #drained: (() => void) | undefined;

  constructor(o: PullFeedOptions) {
    this.#o = o;
    this.#next = `${o.apiPrefix}.CONSUMER.MSG.NEXT.${o.stream}.${o.durable}`;
    this.#inbox = createInbox((o.nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
    // As nats.js: half the expiry (a request must see a heartbeat before it expires), within 0.5–30 s.
    this.#heartbeatMs = Math.min(30_000, Math.max(500, Math.floor(o.expiresMs / 2)));
  }

  /** Messages asked for and not delivered yet, by requests still open. */
  get outstanding(): number {
    return this.#outstanding;
  }

  /** Subscribes the inbox. */
  open(): void {
    this.#sub = this.#o.nc.subscribe(this.#inbox, { callback: (err, msg) => this.#receive(err, msg) });
  }

  /** Asks for `batch` more messages (one pull request, open for the expiry). */
  pull(batch: number): void {
    if (!this.#sub || batch <= 0) return;
    const now = performance.now();
    if (this.#outstanding === 0) this.#heard = now;
    this.#outstanding += batch;
    this.#lastExpiry = now + this.#o.expiresMs;
    const request = `{"batch":${batch},"expires":${nanos(this.#o.expiresMs)},"idle_heartbeat":${nanos(this.#heartbeatMs)}}`;
    this.#o.nc.publish(this.#next, request, { reply: this.#inbox });
  }

  /** Forgets every open request (after a reconnect: they died with the old connection). */
  forget(): void {
    this.#setOutstanding(0);
  }

  /**
   * Periodic check (the runner's ticker): requests past their expiry without a status are over; open requests that
   * stayed silent for two heartbeats (plus a tick) are lost.
   */
  check(now: number, tickMs: number): void {
    if (this.#heardSince) {
      this.#heardSince = false;
      this.#heard = now;
    }
    if (this.#outstanding === 0) return;
    if (now > this.#lastExpiry + this.#heartbeatMs) {
      // Every request has expired; their 408s were lost (or are late: extra messages then wait for a slot).
      this.#setOutstanding(0);
      return;
    }
    if (now - this.#heard > 2 * this.#heartbeatMs + tickMs) {
      this.#setOutstanding(0);
      this.#o.events.lost("silent", `no heartbeat for ${Math.round(now - this.#heard)} ms`);
    }
  }

  /** Resolves once nothing more is owed: every open request has ended (or its expiry passed). */
  drained(): Promise<void> {
    if (this.#outstanding === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.#drained;
      this.#drained = () => {
        previous?.();
        resolve();
      };
    });
  }

  /** Unsubscribes: whatever is still delivered to the inbox is dropped by the server, and redelivered later. */
  close(): void {
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    this.#setOutstanding(0);
  }

  #setOutstanding(n: number): void {
    this.#outstanding = Math.max(0, n);
    if (this.#outstanding === 0 && this.#drained) {
      const d = this.#drained;
      this.#drained = undefined;
      d();
    }
  }

  #receive(err: Error | null, msg: Msg): void {
    if (err) {
      // The subscription was refused (permissions): requests are lost.
      this.#setOutstanding(0);
      this.#o.events.lost("refused", err.message);
      return;
    }
    this.#heardSince = true;
    if (msg.reply) {
      // A delivery (JetStream messages always carry their ack subject as reply; statuses have none).
      this.#setOutstanding(this.#outstanding - 1);
      this.#o.events.message(new PulledMessage(msg, this.#o.nc));
      return;
    }
    const h = msg.headers;
    const code = h?.code ?? 0;
    const description = (h?.description ?? "").toLowerCase();
    switch (code) {
      case 100: // idle heartbeat
        this.#o.events.alive();
        return;
      case 404: // no messages (no_wait requests: not ours)
      case 408: {
        // A request expired, owing what it could not deliver.
        const owed = parseInt(h?.get("Nats-Pending-Messages") || "0", 10) || 0;
        this.#setOutstanding(this.#outstanding - owed);
        this.#o.events.alive();
        return;
      }
      case 409:
        if (description === "consumer deleted") {
          this.#setOutstanding(0);
          this.#o.events.lost("deleted", description);
          return;
        }
        if (description.startsWith("exceeded")) {
          // One request refused (MaxWaiting, MaxRequestBatch, ...): its credits are freed when its expiry passes.
          return;
        }
        // A leadership change (or another end of every request): ask again.
        this.#setOutstanding(0);
        this.#o.events.alive();
        return;
      default:
        this.#setOutstanding(0);
        this.#o.events.lost("refused", code === 503 ? "no responders" : `${code} ${description}`);
    }
  }
}
