import type { CustomerKeys } from "./keys.js";
import { isSealed, open, parseSealed, seal, type DataKey } from "./seal.js";

/** A stored personal value as read back: its plaintext, or the fact that it was erased. */
export type Revealed = { erased: false; value: string } | { erased: true };

/**
 * Personal data under crypto-shredding: values are sealed under the customer's current data key when written, and
 * revealed with the key their token names when read. A value whose key is gone (the customer was erased, and maybe
 * has a new key since) reads as erased. A value written before sealing existed (plain text, no `pii:` prefix) reads
 * as itself: it cannot be erased by destroying a key (docs/security.md, rollout).
 */
export class PersonalData {
  constructor(readonly keys: CustomerKeys) {}

  /** Seals `plaintext` for the customer, making the customer's key first if there is none. */
  async seal(customerId: string, plaintext: string): Promise<string> {
    return seal(await this.keys.sealingKey(customerId), customerId, plaintext);
  }

  /** Reveals one stored value (one read of the key bucket when it is sealed). */
  async reveal(customerId: string, stored: string): Promise<Revealed> {
    if (!isSealed(stored)) return { erased: false, value: stored };
    return revealWith(await this.keys.current(customerId), customerId, stored);
  }
}

/**
 * Reveals a stored value with a key already read ({@link CustomerKeys.current}; null: the customer has none), e.g.
 * once for a page of one customer's orders.
 * @throws SealedValueInvalidError when the token names the key but does not open under it (altered, misplaced).
 */
export function revealWith(key: DataKey | null, customerId: string, stored: string): Revealed {
  if (!isSealed(stored)) return { erased: false, value: stored };
  const { keyId } = parseSealed(stored);
  if (!key || key.keyId !== keyId) return { erased: true };
  return { erased: false, value: open(key, customerId, stored) };
}
