/**
 * Canonical JSON: the one text of a value, for hashing and comparing (request fingerprints, the audit log's
 * payloads and hash chain). Every caller uses this module; the audit hash chain makes its output a
 * persistent format, so it must not change.
 *
 * The rules:
 * - object keys sorted (by UTF-16 code units, as `Array.prototype.sort` does) at every level;
 * - `undefined` object members left out, `undefined` array elements written as `null`;
 * - no whitespace; strings and numbers written as `JSON.stringify` writes them (lone surrogates escaped as
 *   `\udxxx`, so the text is always valid UTF-8 once encoded);
 * - objects are read through their own enumerable keys only: `toJSON` is not called (a `Date` is `{}`);
 * - what JSON cannot represent faithfully throws a `TypeError` instead of being written as something else:
 *   `NaN` and `±Infinity` (JSON has no such numbers; `JSON.stringify` would silently write `null`, making
 *   different values hash alike), bigint, functions, symbols and a top-level `undefined`.
 *
 * Values parsed from JSON never hold anything that throws except numbers beyond the double range (`1e400`
 * parses to `Infinity`); the fingerprinted request bodies are schema-checked first, which refuses those.
 */
import { createHash } from "node:crypto";

/**
 * The canonical JSON text of `value` (see the module comment for the rules).
 * @throws TypeError for values JSON cannot represent faithfully (non-finite numbers, bigint, functions,
 * symbols, a top-level `undefined`).
 */
export function canonicalJson(value: unknown): string {
  // Hot (the audit log writes every event with it): plain loops and string building, no intermediate arrays.
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isFinite(value)) throw new TypeError(`canonicalJson: ${value} is not a JSON number`);
      return JSON.stringify(value);
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) {
        let out = "[";
        for (let i = 0; i < value.length; i++) {
          const v: unknown = value[i];
          out += (i > 0 ? "," : "") + (v === undefined ? "null" : canonicalJson(v));
        }
        return out + "]";
      }
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj).sort();
      let out = "{";
      let first = true;
      for (const k of keys) {
        const v = obj[k];
        if (v === undefined) continue;
        out += (first ? "" : ",") + JSON.stringify(k) + ":" + canonicalJson(v);
        first = false;
      }
      return out + "}";
    }
    default:
      throw new TypeError(`canonicalJson: cannot represent a ${typeof value}`);
  }
}

/**
 * An optimisation of {@link canonicalJson} for objects of one fixed shape: the returned function gives
 * `canonicalJson(value)` for any object whose own enumerable keys are exactly `keys`, with the keys' order
 * and quoting worked out once. Values that are strings, `null` or finite numbers are written directly;
 * anything else (an undefined member, a nested value, a non-finite number) takes {@link canonicalJson}
 * itself, so the result and the errors are the same. A property test holds the two equal.
 */
export function canonicalJsonOf<K extends string>(
  keys: readonly K[],
): (value: Readonly<Record<K, unknown>>) => string {
  const sorted = [...new Set(keys)].sort();
  if (sorted.length === 0) return (value) => canonicalJson(value);
  const prefixes = sorted.map((k, i) => (i === 0 ? "{" : ",") + JSON.stringify(k) + ":");
  return (value) => {
    let out = "";
    for (let i = 0; i < sorted.length; i++) {
      const v = value[sorted[i]!];
      if (typeof v === "string") out += prefixes[i]! + JSON.stringify(v);
      else if (v === null) out += prefixes[i]! + "null";
      else if (typeof v === "number" && Number.isFinite(v)) out += prefixes[i]! + JSON.stringify(v);
      else return canonicalJson(value);
    }
    return out + "}";
  };
}

/** SHA-256 (hex) of the canonical JSON of `value`. */
export function fingerprint(value: unknown): string {
  return createHash("sha256").update(canonicalJson(value)).digest("hex");
}
