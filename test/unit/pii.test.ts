/**
 * Sealed personal data (src/lib/pii/seal.ts, personal-data.ts): AES-256-GCM tokens bound to their customer, and how a
 * stored value reads back with the customer's current key, another key, no key, or none needed (legacy plain text).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  SEALED_PATTERN,
  SealedValueInvalidError,
  isSealed,
  newDataKey,
  open,
  parseSealed,
  seal,
} from "../../src/lib/pii/seal.js";
import { revealWith } from "../../src/lib/pii/personal-data.js";

void describe("pii: sealing", () => {
  const key = newDataKey();

  void it("round-trips, with a fresh IV each time, and never shows the plaintext", () => {
    const a = seal(key, "cus_1", "ada@example.com");
    const b = seal(key, "cus_1", "ada@example.com");
    assert.notEqual(a, b);
    for (const t of [a, b]) {
      assert.ok(isSealed(t));
      assert.match(t, new RegExp(SEALED_PATTERN));
      assert.doesNotMatch(t, /ada|example/);
      assert.equal(parseSealed(t).keyId, key.keyId);
      assert.equal(open(key, "cus_1", t), "ada@example.com");
    }
    assert.equal(open(key, "cus_ü", seal(key, "cus_ü", "zoë@exämple.com")), "zoë@exämple.com");
  });

  void it("a token moved to another customer, altered, or opened with another key does not open", () => {
    const t = seal(key, "cus_1", "ada@example.com");
    assert.throws(() => open(key, "cus_2", t), SealedValueInvalidError);
    const parts = t.split(":");
    const body = Buffer.from(parts[4]!, "base64url");
    body[0] = body[0]! ^ 1;
    const altered = [...parts.slice(0, 4), body.toString("base64url")].join(":");
    assert.throws(() => open(key, "cus_1", altered), SealedValueInvalidError);
    assert.throws(() => open(newDataKey(), "cus_1", t), SealedValueInvalidError);
    for (const bad of ["pii:v1:", "pii:v1:a:b", "pii:v1:k:AAAA:AAAA", "ada@example.com"])
      assert.throws(() => parseSealed(bad), SealedValueInvalidError, bad);
  });

  void it("reveals with the customer's current key; no key or a newer key reads as erased; plain text as itself", () => {
    const t = seal(key, "cus_1", "ada@example.com");
    assert.deepEqual(revealWith(key, "cus_1", t), { erased: false, value: "ada@example.com" });
    assert.deepEqual(revealWith(null, "cus_1", t), { erased: true });
    assert.deepEqual(revealWith(newDataKey(), "cus_1", t), { erased: true });
    assert.deepEqual(revealWith(null, "cus_1", "legacy@example.com"), {
      erased: false,
      value: "legacy@example.com",
    });
    // The right key id but another customer's record: tampering, not erasure.
    assert.throws(() => revealWith(key, "cus_2", t), SealedValueInvalidError);
  });
});
