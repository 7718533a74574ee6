/**
 * Personal data masked for display: e-mail addresses keep their first letter and domain (`a•••@example.com`), and
 * the values of fields named like personal data (name, address, phone, card) are replaced. The console shows dead
 * letters masked unless an operator asks to unmask one.
 */
const EMAIL = /([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})/g;
const PERSONAL_KEY = /^(?:.*name|address|street|phone|card.*|iban)$/i;

/** `value` with personal data masked (a copy; the input is not changed). */
export function maskPersonalData(value: unknown, key = ""): unknown {
  if (typeof value === "string") {
    if (PERSONAL_KEY.test(key) && !/^(?:sku|type|stream|subject)$/i.test(key)) return "•••";
    return value.replace(EMAIL, (_m, first: string, domain: string) => `${first}•••@${domain}`);
  }
  if (Array.isArray(value)) return value.map((v) => maskPersonalData(v, key));
  if (value !== null && typeof value === "object")
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, maskPersonalData(v, k)]));
  return value;
}
