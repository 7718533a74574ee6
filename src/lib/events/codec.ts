import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";
import type { TSchema } from "@sinclair/typebox";
import { NonRetryableError } from "../errors.js";
import "../formats.js";
import { eventTypes, isEventType, isSkuEventType, type EventType } from "./catalog.js";
import { EnvelopeSchema, type AnyEnvelope, type Envelope, type EnvelopeShape } from "./envelope.js";
import { currentVersion, downcast, EventVersions, oldestVersion, schemaOf, upcast } from "./versions.js";

/** Stable codes of {@link EventDecodeError}. */
export const DecodeErrorCode = {
  Malformed: "EVENT_MALFORMED",
  SchemaInvalid: "EVENT_SCHEMA_INVALID",
  UnknownType: "EVENT_UNKNOWN_TYPE",
  /** A version older than any kept in the catalog's `previousVersions` (or not a version at all). */
  UnsupportedVersion: "EVENT_VERSION_UNSUPPORTED",
  /** A version newer than this process reads: written by a newer release (see the decode middleware). */
  VersionAhead: "EVENT_VERSION_AHEAD",
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

/** Is `err` an event of a version newer than this process reads ({@link DecodeErrorCode.VersionAhead})? */
export function isVersionAhead(err: unknown): err is EventDecodeError {
  return err instanceof EventDecodeError && err.code === DecodeErrorCode.VersionAhead;
}

const envelopeCheck = TypeCompiler.Compile(EnvelopeSchema);
/** The compiled data schema of every known version of every type, by `<type>@<version>`. */
const dataChecks = new Map<string, TypeCheck<TSchema>>();
for (const t of eventTypes)
  for (let v = oldestVersion(t); v <= currentVersion(t); v++)
    dataChecks.set(`${t}@${v}`, TypeCompiler.Compile(schemaOf(t, v)!));

function firstError(check: TypeCheck<TSchema>, value: unknown): string {
  const e = check.Errors(value).First();
  return e ? `${e.path || "/"}: ${e.message}` : "invalid";
}

/**
 * Checks an envelope object as it was published: envelope shape, known type, a version this process reads
 * (`versions`), the data schema of that version, and `data.orderId` = `aggregate_id`. Returns it unchanged.
 */
function checkPublished(value: unknown, versions: EventVersions): EnvelopeOf {
  if (!envelopeCheck.Check(value)) {
    throw new EventDecodeError(DecodeErrorCode.SchemaInvalid, `envelope ${firstError(envelopeCheck, value)}`);
  }
  const type = value.type;
  if (!isEventType(type)) {
    throw new EventDecodeError(DecodeErrorCode.UnknownType, `unknown event type ${JSON.stringify(type)}`);
  }
  const reads = versions.readVersion(type);
  if (value.version > reads) {
    throw new EventDecodeError(
      DecodeErrorCode.VersionAhead,
      `${type} version ${value.version} is newer than this release reads (up to ${reads}): written by a newer release`,
    );
  }
  const check = value.version >= oldestVersion(type) ? dataChecks.get(`${type}@${value.version}`) : undefined;
  if (!check) {
    throw new EventDecodeError(
      DecodeErrorCode.UnsupportedVersion,
      `${type} version ${value.version} is not supported (versions ${oldestVersion(type)} to ${reads} are read)`,
    );
  }
  if (!check.Check(value.data)) {
    const at = value.version === currentVersion(type) ? "" : ` (version ${value.version})`;
    throw new EventDecodeError(
      DecodeErrorCode.SchemaInvalid,
      `${type}${at} data ${firstError(check, value.data)}`,
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
  return value as EnvelopeOf;
}

type EnvelopeOf = EnvelopeShape & { type: EventType };

/**
 * Validates an envelope object (not bytes): envelope shape, known type, a version this process reads, and that
 * version's data schema; then upcasts an older version to the current one (the catalog's `previousVersions`), so
 * handlers only ever see current data. Returns it typed, or throws an {@link EventDecodeError}.
 */
export function validateEvent(value: unknown, versions: EventVersions = EventVersions.CURRENT): AnyEnvelope {
  const env = checkPublished(value, versions);
  const current = currentVersion(env.type);
  if (env.version === current) return env as AnyEnvelope;
  return { ...env, version: current, data: upcast(env.type, env.version, current, env.data) } as AnyEnvelope;
}

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

function parse(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch (err) {
    throw new EventDecodeError(DecodeErrorCode.Malformed, `not a JSON event: ${(err as Error).message}`, err);
  }
}

/**
 * Decodes and validates an event from message bytes, upcast to the current version of its type.
 * @throws EventDecodeError (non-retryable) for invalid UTF-8, invalid JSON, unknown type, a version not read
 *   (`EVENT_VERSION_AHEAD` when newer than `versions` reads) or bad data.
 */
export function decodeEvent(bytes: Uint8Array, versions: EventVersions = EventVersions.CURRENT): AnyEnvelope {
  return validateEvent(parse(bytes), versions);
}

/**
 * Decodes and validates an event from message bytes as it was published: checked against the schema of its own
 * version, not upcast (the audit records what was published). The `data` type is that of the current version only
 * when `version` is current.
 * @throws EventDecodeError like {@link decodeEvent}.
 */
export function decodePublished(bytes: Uint8Array): EnvelopeShape & { type: EventType } {
  return checkPublished(parse(bytes), EventVersions.CURRENT);
}

/**
 * Validates and encodes an event to bytes, at the version `versions` writes for its type: an event of a newer
 * version is downcast first (the catalog's `previousVersions`) and checked against the older schema. Validation at
 * publish time keeps a bad event off the bus.
 * @throws EventDecodeError when the event does not match its schema.
 */
export function encodeEvent(env: Envelope, versions: EventVersions = EventVersions.CURRENT): Uint8Array {
  const checked = checkPublished(env, EventVersions.CURRENT);
  const target = versions.writeVersion(checked.type);
  if (checked.version <= target) return encoder.encode(JSON.stringify(env));
  const older = { ...env, version: target, data: downcast(checked.type, checked.version, target, env.data) };
  checkPublished(older, EventVersions.CURRENT);
  return encoder.encode(JSON.stringify(older));
}
