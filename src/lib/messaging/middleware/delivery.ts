import type { Span } from "@opentelemetry/api";
import type { AnyEnvelope } from "../../events/envelope.js";
import type { Logger } from "../../telemetry/logger.js";
import { NOOP_SPAN } from "../../telemetry/tracing.js";
import type { HandlerContext } from "../handler.js";
import { Hdr } from "../headers.js";
import type { Message, Outcome } from "./types.js";

/**
 * One delivered message on its way through the pipeline: what middleware learn about it (its type, the decoded
 * event, its span), what the runner's ticker needs (heartbeat and handler-call times), and the context its handler
 * is given — one object per message.
 */
export class Delivery implements HandlerContext {
  readonly msg: Message;
  readonly consumer: string;
  /** The server's delivery count, 1 on first delivery. */
  readonly attempt: number;
  /** `performance.now()` when the runner took the message. */
  readonly started: number;
  /** Best known event type: the `Shopstream-Type` header ("" without), then the decoded event's. */
  type: string;
  /** The decoded event (typed handlers), once decoded: see {@link decoded}. */
  event: AnyEnvelope | undefined = undefined;
  span: Span = NOOP_SPAN;
  /** `performance.now()` of the last `working()` (of the start, before the first). */
  beat: number;
  /** `performance.now()` when the current handler call began. */
  since = 0;
  /** Ends the current handler call with this outcome (timed out); set while a call runs (see timeout.ts). */
  abandon: ((o: Outcome) => void) | undefined = undefined;
  /** The runner is done with the message: a late `working()` of an abandoned handler is not sent. */
  done = false;
  /** Times the handler was run again in place because NATS was unavailable (see keep-in-place.ts). */
  kept = 0;
  readonly #base: Logger;
  #logger: Logger | undefined;

  constructor(msg: Message, consumer: string, logger: Logger, now = performance.now()) {
    this.msg = msg;
    this.consumer = consumer;
    this.attempt = msg.info.deliveryCount;
    this.started = now;
    this.beat = now;
    this.type = msg.header ? msg.header(Hdr.Type) : (msg.headers?.get(Hdr.Type) ?? "");
    this.#base = logger;
  }

  /** Records the decoded event: its type, and the logger's bindings from now on. */
  decoded(event: AnyEnvelope): void {
    this.event = event;
    this.type = event.type;
    this.#logger = undefined;
  }

  get subject(): string {
    return this.msg.subject;
  }

  get streamSequence(): number {
    return this.msg.seq;
  }

  /**
   * A child of the runner's logger, made on first use (most messages log nothing; pino serialises a child's
   * bindings when it is made): the event's trace, order, id and type once decoded, else subject and sequence.
   */
  get logger(): Logger {
    const e = this.event;
    return (this.#logger ??= e
      ? this.#base.child({
          trace_id: e.trace_id,
          order_id: e.aggregate_id,
          event_id: e.id,
          event_type: e.type,
          consumer: this.consumer,
        })
      : this.#base.child({ consumer: this.consumer, subject: this.msg.subject, seq: this.msg.seq }));
  }

  working(): void {
    // Not once the runner is done with the message: an abandoned handler must not keep its redelivery at bay.
    if (this.done) return;
    this.beat = performance.now();
    this.msg.working();
  }
}
