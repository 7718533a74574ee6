import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";
import type { TSchema } from "@sinclair/typebox";
import { NonRetryableError } from "../errors.js";
import "../formats.js";
import { catalog, eventTypes, isEventType, isSkuEventType, type EventType } from "./catalog.js";
import { EnvelopeSchema, type AnyEnvelope, type Envelope } from "./envelope.js";

/** Stable codes of {@link EventDecodeError}. */
export const DecodeErrorCode = {
  Malformed: "EVENT_MALFORMED",
  SchemaInvalid: "EVENT_SCHEMA_INVALID",
  UnknownType: "EVENT_UNKNOWN_TYPE",
  UnsupportedVersion: "EVENT_VERSION_UNSUPPORTED",
} as const;
export type DecodeErrorCode = (typeof DecodeErrorCode)[keyof typeof DecodeErrorCode];

/** An event that cannot be decoded or fails its schema. Never retryable: redelivery cannot fix bytes. */
export class EventDecodeError extends NonRetryableError {
  override readonly name = "EventDecodeError";
  declare readonly code: DecodeErrorCode;
  constructor(code: DecodeErrorCode, message: string, cause?: unknown) {
    super(code, message, { status: 400, cause });
  }
}

/** Is `err` an {@link EventDecodeError}? */
export function isEventDecodeError(err: unknown): err is EventDecodeError {
  return err instanceof EventDecodeError;
}

const envelopeCheck = TypeCompiler.Compile(EnvelopeSchema);
const dataChecks = new Map<EventType, TypeCheck<TSchema>>(
  eventTypes.map((t) => [t, TypeCompiler.Compile(catalog[t].data as TSchema)]),
);

function firstError(check: TypeCheck<TSchema>, value: unknown): string {
  const e = check.Errors(value).First();
  return e ? `${e.path || "/"}: ${e.message}` : "invalid";
}

/**
 * Validates an envelope object (not bytes): envelope shape, known type, supported version and the
 * type's data schema. Returns it typed, or throws an {@link EventDecodeError}.
 */
export function validateEvent(value: unknown): AnyEnvelope {
  if (!envelopeCheck.Check(value)) {
    throw new EventDecodeError(DecodeErrorCode.SchemaInvalid, `envelope ${firstError(envelopeCheck, value)}`);
  }
  const type = value.type;
  if (!isEventType(type)) {
    throw new EventDecodeError(DecodeErrorCode.UnknownType, `unknown event type ${JSON.stringify(type)}`);
  }
  if (value.version !== catalog[type].version) {
    throw new EventDecodeError(
      DecodeErrorCode.UnsupportedVersion,
      `${type} version ${value.version} is not supported (expected ${catalog[type].version})`,
    );
  }
  const check = dataChecks.get(type)!;
  if (!check.Check(value.data)) {
    throw new EventDecodeError(
      DecodeErrorCode.SchemaInvalid,
      `${type} data ${firstError(check, value.data)}`,
    );
  }
  // Every saga event is about one order: its aggregate. An event naming another order in its data would
  // act on that order while being stored, routed and audited under this one.
  const orderId = (value.data as { orderId?: unknown }).orderId;
  if (orderId !== undefined && orderId !== value.aggregate_id) {
    throw new EventDecodeError(
      DecodeErrorCode.SchemaInvalid,
      `${type} data /orderId ${JSON.stringify(orderId)} is not the aggregate_id ${JSON.stringify(value.aggregate_id)}`,
    );
  }
  // A catalog event is about one SKU, named the same way.
  const sku = (value.data as { sku?: unknown }).sku;
  if (isSkuEventType(type) && sku !== value.aggregate_id) {
    throw new EventDecodeError(
      DecodeErrorCode.SchemaInvalid,
      `${type} data /sku ${JSON.stringify(sku)} is not the aggregate_id ${JSON.stringify(value.aggregate_id)}`,
    );
  }
  return value as AnyEnvelope;
}

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

/**
 * Decodes and validates an event from message bytes.
 * @throws EventDecodeError (non-retryable) for invalid UTF-8, invalid JSON, unknown type or bad data.
 */
export function decodeEvent(bytes: Uint8Array): AnyEnvelope {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch (err) {
    throw new EventDecodeError(DecodeErrorCode.Malformed, `not a JSON event: ${(err as Error).message}`, err);
  }
  return validateEvent(value);
}

/**
 * Validates and encodes an event to bytes. Validation at publish time keeps a bad event off the bus.
 * @throws EventDecodeError when the event does not match its schema.
 */
export function encodeEvent(env: Envelope): Uint8Array {
  validateEvent(env);
  return encoder.encode(JSON.stringify(env));
}
