/**
 * The audit consumers: one per stream, with no filter and a handler for every event type of the stream,
 * and one on the DLQ that records every entry undecoded (its body may be anything).
 */
import { Streams, type EventType } from "../../lib/events/catalog.js";
import type { AnyEnvelope } from "../../lib/events/envelope.js";
import {
  typesOfStream,
  type EventHandler,
  type HandlerContext,
  type HandlerMap,
  type RawHandler,
} from "../../lib/messaging/consumer.js";
import type { ConsumerSpec } from "../../lib/messaging/topology.js";
import type { ConsumerDefinition } from "../../lib/service.js";
import { entryFromDeadLetter, entryFromEvent } from "./audit.js";
import type { AuditWriter } from "./writer.js";

/** The event streams the audit consumes (the DLQ aside). */
export const AUDITED_STREAMS = [Streams.ORDERS, Streams.INVENTORY, Streams.PAYMENTS, Streams.NOTIFICATIONS];

/** Durable name of the audit consumer of `stream`: `audit-orders`, …, `audit-dlq`. */
export function auditDurable(stream: string): string {
  return `audit-${stream.toLowerCase()}`;
}

/** Every audit durable name. */
export const AUDIT_DURABLES = [...AUDITED_STREAMS, Streams.DLQ].map(auditDurable);

/** Handlers recording every catalog event type of `stream`. */
export function eventHandlers(writer: AuditWriter, stream: string): HandlerMap {
  const handle = async (event: AnyEnvelope, ctx: HandlerContext): Promise<void> => {
    const r = await writer.append(
      entryFromEvent(event, { stream, subject: ctx.subject, streamSeq: ctx.streamSequence }),
    );
    ctx.logger.debug({ position: r.position, duplicate: r.status === "duplicate" }, "event audited");
  };
  const handlers: Partial<Record<EventType, EventHandler<EventType>>> = {};
  for (const type of typesOfStream(stream)) handlers[type] = handle as EventHandler<EventType>;
  return handlers;
}

/** The raw handler of `audit-dlq`: a DeadLetter row per DLQ entry, whatever its body. */
export function deadLetterHandler(writer: AuditWriter): RawHandler {
  return async (msg, ctx) => {
    const headers: Record<string, string> = {};
    for (const k of msg.headers?.keys() ?? []) headers[k] = msg.headers!.get(k);
    const r = await writer.append(
      entryFromDeadLetter({
        stream: msg.stream,
        subject: msg.subject,
        sequence: msg.streamSequence,
        data: msg.data,
        headers,
        storedAt: msg.timestamp,
      }),
    );
    ctx.logger.debug({ position: r.position, duplicate: r.status === "duplicate" }, "dead letter audited");
  };
}

/** Options for {@link auditConsumers}. */
export interface AuditConsumerOptions {
  concurrency: number;
  maxAckPending: number;
}

/**
 * The five audit consumers. `audit-dlq` gets a very high attempt budget: its only failures are an
 * unavailable database, and dead-lettering a dead letter would just add noise to the DLQ.
 */
export function auditConsumers(writer: AuditWriter, opts: AuditConsumerOptions): ConsumerDefinition[] {
  return auditConsumerSpecs(opts).map((spec): ConsumerDefinition =>
    spec.stream === Streams.DLQ
      ? {
          spec,
          handlers: {},
          raw: deadLetterHandler(writer),
          concurrency: opts.concurrency,
          maxAttempts: 10_000,
        }
      : { spec, handlers: eventHandlers(writer, spec.stream), concurrency: opts.concurrency },
  );
}

/** The five audit durables as declared (provisioning creates them from here too). */
export function auditConsumerSpecs(opts: Pick<AuditConsumerOptions, "maxAckPending">): ConsumerSpec[] {
  const events = AUDITED_STREAMS.map((stream): ConsumerSpec => ({
    stream,
    durable: auditDurable(stream),
    description: `audit: every ${stream} event`,
    maxAckPending: opts.maxAckPending,
  }));
  const dlq: ConsumerSpec = {
    stream: Streams.DLQ,
    durable: auditDurable(Streams.DLQ),
    description: "audit: every dead letter",
    maxAckPending: opts.maxAckPending,
  };
  return [...events, dlq];
}
