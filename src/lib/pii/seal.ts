import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { NonRetryableError } from "../errors.js";

/**
 * Sealed personal data: AES-256-GCM under a customer's data key, written as one self-describing token
 * `pii:v1:<keyId>:<iv>:<ciphertext+tag>` (base64url parts). The token names its key, so a reader needs no other
 * field to find it, and it is plain ASCII, so it fits any string field of an event, a log-free row or a subject-free
 * header. The customer id is the additional authenticated data: a token copied into another customer's record does
 * not open.
 */

/** The prefix of every sealed value. A token has no `@`, so it is never mistaken for an e-mail address. */
export const SEALED_PREFIX = "pii:v1:";

/** A customer's data key: 32 random bytes and the id that tokens sealed under it carry. */
export interface DataKey {
  keyId: string;
  key: Buffer;
}

/** The parts of a sealed token. */
export interface SealedParts {
  keyId: string;
  iv: Buffer;
  sealed: Buffer;
}

const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
/** base64url, as the token's parts are written. */
const PART = "[A-Za-z0-9_-]+";
const TOKEN = new RegExp(`^pii:v1:(${PART}):(${PART}):(${PART})$`);
/** The pattern of a sealed token (for schemas). */
export const SEALED_PATTERN = `^pii:v1:${PART}:${PART}:${PART}$`;

/** A sealed value that does not decrypt under the key it names: corrupted or tampered with, never "erased". */
export class SealedValueInvalidError extends NonRetryableError {
  override readonly name = "SealedValueInvalidError";
  constructor(reason: string, cause?: unknown) {
    super("PII_SEALED_INVALID", `sealed personal data does not open: ${reason}`, { status: 500, cause });
  }
}

/** A new random data key. */
export function newDataKey(): DataKey {
  return { keyId: randomBytes(16).toString("base64url"), key: randomBytes(KEY_BYTES) };
}

/** Is `value` a sealed token (as opposed to a legacy plaintext value)? */
export function isSealed(value: string): boolean {
  return value.startsWith(SEALED_PREFIX);
}

/** The parts of a sealed token; throws {@link SealedValueInvalidError} when it is not one. */
export function parseSealed(token: string): SealedParts {
  const m = TOKEN.exec(token);
  if (!m) throw new SealedValueInvalidError("not a pii:v1 token");
  const iv = Buffer.from(m[2]!, "base64url");
  const sealed = Buffer.from(m[3]!, "base64url");
  if (iv.length !== IV_BYTES || sealed.length < TAG_BYTES)
    throw new SealedValueInvalidError("malformed pii:v1 token");
  return { keyId: m[1]!, iv, sealed };
}

/** Seals `plaintext` for `customerId` under `key` (a fresh random IV each time). */
export function seal(key: DataKey, customerId: string, plaintext: string): string {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key.key, iv);
  cipher.setAAD(Buffer.from(customerId, "utf8"));
  const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()]);
  return `${SEALED_PREFIX}${key.keyId}:${iv.toString("base64url")}:${body.toString("base64url")}`;
}

/**
 * Opens a token sealed by {@link seal} with the key it names (the caller found it by {@link parseSealed}'s keyId).
 * @throws SealedValueInvalidError when the key id differs, or the token was altered or belongs to another customer.
 */
export function open(key: DataKey, customerId: string, token: string): string {
  const parts = parseSealed(token);
  if (parts.keyId !== key.keyId) throw new SealedValueInvalidError("sealed under another key");
  try {
    const decipher = createDecipheriv("aes-256-gcm", key.key, parts.iv);
    decipher.setAAD(Buffer.from(customerId, "utf8"));
    decipher.setAuthTag(parts.sealed.subarray(parts.sealed.length - TAG_BYTES));
    const text = Buffer.concat([
      decipher.update(parts.sealed.subarray(0, parts.sealed.length - TAG_BYTES)),
      decipher.final(),
    ]);
    return text.toString("utf8");
  } catch (err) {
    throw new SealedValueInvalidError("authentication failed (altered, or another customer's)", err);
  }
}
