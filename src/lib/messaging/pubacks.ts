/**
 * JetStream publishes with their PubAcks tracked on one subscription. nats.js's `js.publish` makes each publish a
 * request: a token, a timer, a deferred and a mux entry, plus a TextDecoder, option copies and a header object it
 * fills key by key. Here every publish is a plain `PUB` with the reply subject `<inbox>.<n>`; replies on the one
 * inbox subscription are matched to their publish by `n`; one sweep per interval times out the late ones.
 *
 * Same outcomes as `js.publish`: the PubAck (`duplicate` when the server had the message id), a
 * `JetStreamApiError` for an error reply (e.g. wrong last sequence), `NoRespondersError` when no stream
 * answered (503), `TimeoutError` when the PubAck did not come in time, and the connection's own errors
 * (closed, draining, max_payload) thrown by the publish itself.
 */
import { JetStreamApiError, JetStreamError, type PubAck } from "@nats-io/jetstream";
import { ProtocolHandler } from "@nats-io/nats-core/internal";
import {
  createInbox,
  errors as natsErrors,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";

interface Pending {
  resolve(ack: PubAck): void;
  reject(err: Error): void;
  subject: string;
  deadline: number;
}

const decoder = new TextDecoder();

/**
 * Whether nats.js's protocol handler still takes headers as anything with `encode()` (nats.js 3): the header block
 * is then written once, as text, instead of through a `MsgHdrs` filled key by key.
 */
const rawHeadersWork = /\bencode\(\)/.test(
  String((ProtocolHandler.prototype as { publish?: unknown }).publish),
);

/** A header block written out already (`NATS/1.0\r\nKey: value\r\n...\r\n`), as nats.js's publish takes it. */
export class HeaderBlock {
  readonly #bytes: Uint8Array;
  constructor(text: string) {
    this.#bytes = new TextEncoder().encode(text);
  }
  encode(): Uint8Array {
    return this.#bytes;
  }
}

/** Publishes on one connection and resolves each publish with its PubAck. */
export class PubAcks {
  readonly #nc: NatsConnection;
  readonly #inbox: string;
  readonly #pending = new Map<string, Pending>();
  #sub: Subscription | undefined;
  #sweeper: NodeJS.Timeout | undefined;
  #sweepMs = 250;
  #next = 0;

  /** Whether this nats.js takes a {@link HeaderBlock}; if not, use `js.publish`. */
  static readonly supported = rawHeadersWork;

  constructor(nc: NatsConnection) {
    this.#nc = nc;
    this.#inbox = createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
  }

  /**
   * Publishes `data` on `subject` with `headers` (which must carry `Nats-Msg-Id` and any expectation) and resolves
   * with the PubAck, or rejects as described above after at most `timeoutMs`.
   */
  publish(
    subject: string,
    data: Uint8Array,
    headers: HeaderBlock | MsgHdrs,
    timeoutMs: number,
  ): Promise<PubAck> {
    this.#open();
    const token = (this.#next++).toString(36);
    return new Promise<PubAck>((resolve, reject) => {
      // Published first: a synchronous failure (closed, draining, too large) leaves nothing pending.
      this.#nc.publish(subject, data, { reply: `${this.#inbox}.${token}`, headers: headers as MsgHdrs });
      this.#pending.set(token, { resolve, reject, subject, deadline: performance.now() + timeoutMs });
      this.#sweep(timeoutMs);
    });
  }

  #open(): void {
    if (this.#sub) return;
    this.#sub = this.#nc.subscribe(`${this.#inbox}.*`, { callback: (err, msg) => this.#reply(err, msg) });
    void this.#nc.closed().then(() => this.#failAll(new natsErrors.ClosedConnectionError()));
  }

  #reply(err: Error | null, msg: Msg): void {
    if (err) {
      this.#failAll(err);
      return;
    }
    const subject = msg.subject;
    const token = subject.slice(this.#inbox.length + 1);
    const p = this.#pending.get(token);
    if (!p) return; // timed out already
    this.#pending.delete(token);
    if (msg.data.length === 0 && msg.headers?.code === 503) {
      p.reject(new natsErrors.NoRespondersError(p.subject));
      return;
    }
    try {
      const r = JSON.parse(decoder.decode(msg.data)) as PubAck & {
        error?: { code: number; err_code: number; description: string };
      };
      if (r.error) p.reject(new JetStreamApiError(r.error));
      else if (!r.stream) p.reject(new JetStreamError("invalid ack response"));
      else {
        r.duplicate = r.duplicate ?? false;
        p.resolve(r);
      }
    } catch (e) {
      p.reject(e as Error);
    }
  }

  /** Keeps one interval running while publishes wait, at a quarter of the shortest timeout (10–250 ms). */
  #sweep(timeoutMs: number): void {
    const every = Math.max(10, Math.min(250, Math.floor(timeoutMs / 4)));
    if (this.#sweeper && every >= this.#sweepMs) return;
    clearInterval(this.#sweeper);
    this.#sweepMs = every;
    this.#sweeper = setInterval(() => {
      const now = performance.now();
      for (const [token, p] of this.#pending) {
        if (now >= p.deadline) {
          this.#pending.delete(token);
          p.reject(new natsErrors.TimeoutError());
        }
      }
      if (this.#pending.size === 0) {
        clearInterval(this.#sweeper);
        this.#sweeper = undefined;
        this.#sweepMs = 250;
      }
    }, every);
    this.#sweeper.unref();
  }

  #failAll(err: Error): void {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }
}
