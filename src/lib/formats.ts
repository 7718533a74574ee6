import { FormatRegistry } from "@sinclair/typebox";

/**
 * String formats used by ShopStream's schemas, registered once for TypeBox (which knows none by
 * itself). Importing this module is enough.
 */
const dateTime = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const email = /^[^\s@]{1,64}@[^\s@]{1,253}$/;
/** Control characters (C0, DEL, C1) and lone surrogates: never part of an address. */
const notInEmail =
  // eslint-disable-next-line no-control-regex
  /[\u0000-\u001f\u007f-\u009f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

if (!FormatRegistry.Has("date-time"))
  FormatRegistry.Set("date-time", (v) => dateTime.test(v) && !Number.isNaN(Date.parse(v)));
if (!FormatRegistry.Has("email")) FormatRegistry.Set("email", (v) => email.test(v) && !notInEmail.test(v));
if (!FormatRegistry.Has("uri"))
  FormatRegistry.Set("uri", (v) => {
    try {
      new URL(v);
      return true;
    } catch {
      return false;
    }
  });
