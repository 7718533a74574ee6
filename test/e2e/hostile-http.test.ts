/**
 * Hostile input on the public HTTP API, property-based (fast-check) against the real orders service of a
 * whole in-process system: malformed JSON, wrong types, huge and deeply nested bodies, hostile unicode,
 * bad quantities, duplicate/unknown SKUs, too many lines, extra properties, wrong content types, missing
 * bodies, Idempotency-Key misuse, hostile path parameters and query strings, and broken HTTP framing.
 *
 * Properties, for every invalid request: the answer is a 4xx (never 5xx, never 2xx) `application/problem+json`
 * document with `type, title, status, detail` and `status` equal to the HTTP status; nothing changes (the
 * ORDERS stream's message count and the inventory are as before); and the service stays healthy and ready.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import fc from "fast-check";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { decodeEvent } from "../../src/lib/events/codec.js";
import { createOrdersService } from "../../src/services/orders/service.js";
import { customerOf, DEFAULT_TEST_CUSTOMER, startSystem, type System } from "../helpers/system.js";
import { SignJWT } from "jose";
import { customerAuth, operatorAuth, operatorFetch, testSecret } from "../helpers/auth.js";

const MAX_LINES = 20;
const BODY_LIMIT = createOrdersService().bodyLimit ?? 1024 * 1024;
const RUNS = 200;
const catalog = [
  { sku: "SKU-A", name: "Widget A", price: 1250, currency: "EUR", stock: 1_000 },
  { sku: "SKU-B", name: "Widget B", price: 399, currency: "EUR", stock: 1_000 },
  { sku: "SKU-C", name: "Widget C", price: 5, currency: "EUR", stock: 1_000 },
  { sku: "SKU-USD", name: "Dollar widget", price: 700, currency: "USD", stock: 1_000 },
];
const EUR_SKUS = ["SKU-A", "SKU-B", "SKU-C"];

interface Res {
  status: number;
  contentType: string;
  text: string;
  json: any;
  headers: Headers;
}

type Body = string | Uint8Array | ReadableStream<Uint8Array> | undefined;

let sys: System;
let jsm: JetStreamManager;

async function send(
  method: string,
  path: string,
  body?: Body,
  headers: Record<string, string> = {},
): Promise<Res> {
  // Every request carries a valid token unless the test sets `authorization` itself ("" for none): a POST the
  // customer its body names (so a hostile body is refused for what it is, not for a missing token), a GET an
  // operator's (the list query then needs a customerId, as before authentication).
  const h: Record<string, string> = { ...headers };
  if (!("authorization" in h)) {
    Object.assign(
      h,
      method === "POST"
        ? await customerAuth(customerOf(typeof body === "string" ? body : undefined))
        : await operatorAuth(),
    );
  } else if (h["authorization"] === "") delete h["authorization"];
  const init: RequestInit & { duplex?: "half" } = { method, headers: h };
  if (body !== undefined) init.body = body;
  if (body instanceof ReadableStream) init.duplex = "half";
  return readResponse(await fetch(`${sys.urls.orders}${path}`, init));
}

/** A response's status, content type, text, JSON body (undefined when it is not JSON) and headers. */
async function readResponse(r: Response) {
  const text = await r.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return {
    status: r.status,
    contentType: r.headers.get("content-type") ?? "",
    text,
    json,
    headers: r.headers,
  };
}

const JSON_CT = { "content-type": "application/json" };
const post = (body: Body, headers: Record<string, string> = JSON_CT) =>
  send("POST", "/orders", body, headers);

/** A 4xx problem+json document whose `status` is the HTTP status (and, when given, one of `expected`). */
function assertProblem(r: Res, expected?: number | number[], what = ""): void {
  const ctx = `${what} → ${r.status} ${r.contentType} ${r.text.slice(0, 300)}`;
  assert.ok(r.status >= 400 && r.status < 500, `expected a 4xx: ${ctx}`);
  if (expected !== undefined) {
    const want = Array.isArray(expected) ? expected : [expected];
    assert.ok(want.includes(r.status), `expected ${want.join(" or ")}: ${ctx}`);
  }
  assert.match(r.contentType, /^application\/problem\+json(;|$)/, `problem content type: ${ctx}`);
  assert.equal(typeof r.json, "object", `problem body is JSON: ${ctx}`);
  assert.equal(typeof r.json.type, "string", `type: ${ctx}`);
  assert.equal(typeof r.json.title, "string", `title: ${ctx}`);
  assert.equal(typeof r.json.detail, "string", `detail: ${ctx}`);
  assert.equal(r.json.status, r.status, `status matches: ${ctx}`);
}

/** Some `errors[].pointer` of a problem starts with `prefix`. */
function assertPointer(r: Res, prefix: string): void {
  const pointers = ((r.json?.errors ?? []) as { pointer: string }[]).map((e) => e.pointer);
  assert.ok(
    pointers.some((p) => p === prefix || p.startsWith(`${prefix}/`)),
    `a pointer at ${prefix}: ${pointers.join(", ")}`,
  );
}

async function ordersCount(): Promise<number> {
  return (await jsm.streams.info("ORDERS")).state.messages;
}
async function inventory(): Promise<{ items: { sku: string; reserved: number }[] }> {
  return (await (await operatorFetch(`${sys.urls.inventory}/inventory`)).json()) as never;
}
/** Waits until the orders placed so far are terminal and their stock settled (nothing reserved). */
async function settled(): Promise<void> {
  await Promise.all([...sys.accepted].map((id) => sys.waitForTerminal(id, 60_000)));
  await sys.until("stock settled", async () => (await inventory()).items.every((i) => i.reserved === 0));
}

/** Runs `body` and checks that it left the ORDERS stream and the inventory as they were. */
async function unchanged(body: () => Promise<void>): Promise<void> {
  const [n0, inv0] = [await ordersCount(), await inventory()];
  await body();
  assert.equal(await ordersCount(), n0, "ORDERS stream unchanged");
  assert.deepEqual(await inventory(), inv0, "inventory unchanged");
}

const prop = <T>(arb: fc.Arbitrary<T>, check: (v: T) => Promise<void>, numRuns = RUNS) =>
  fc.assert(fc.asyncProperty(arb, check), { numRuns });

// ---------------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------------

const line = fc.record({ sku: fc.constantFrom(...EUR_SKUS), quantity: fc.integer({ min: 1, max: 3 }) });
/** A valid order (unique SKUs of the EUR catalog). */
const validOrder = fc.record({
  customerId: fc.stringMatching(/^[a-z0-9-]{1,20}$/),
  email: fc.stringMatching(/^[a-z0-9]{1,10}$/).map((s) => `${s}@example.com`),
  items: fc.uniqueArray(line, { minLength: 1, maxLength: 3, selector: (l) => l.sku }),
});
type Order = {
  customerId: string;
  email: string;
  items: { sku: string; quantity: number }[];
  currency?: string;
};

const CONTROL = [
  ...Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)),
  "\u007f",
  "\u0080",
  "\u0085",
  "\u009f",
];
const LONE_SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"];
/** Unicode that is fine in free text: emoji, RTL scripts and marks, zero-width and combining characters. */
const FINE_UNICODE = [
  "😀",
  "👩🏽‍💻",
  "🇪🇺",
  "שלום",
  "مرحبا",
  "\u202eevil",
  "\u200f",
  "\u200b",
  "\ufeff",
  "e\u0301",
  "𝔘𝔫𝔦",
  "中文",
  "ß",
  "Ω",
  "\u2028",
];
const fineText = fc
  .array(fc.oneof(fc.constantFrom(...FINE_UNICODE), fc.string({ minLength: 1, maxLength: 3 })), {
    minLength: 1,
    maxLength: 6,
  })
  .map((parts) => parts.join(""))
  .filter((s) => s.length <= 128);
/** Text with at least one control character or lone surrogate. */
const forbiddenText = fc
  .tuple(
    fc.array(fc.constantFrom(...FINE_UNICODE, "a", "b"), { maxLength: 3 }),
    fc.constantFrom(...CONTROL, ...LONE_SURROGATES),
    fc.array(fc.constantFrom(...FINE_UNICODE, "a", "b"), { maxLength: 3 }),
  )
  .map(([a, bad, b]) => a.join("") + bad + b.join(""));

/** Percent-encodes a string byte by byte; a lone surrogate becomes the (invalid) UTF-8 of its code unit. */
function encodeBytes(s: string): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const next = s.charCodeAt(i + 1);
    if (c >= 0xd800 && c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      out += encodeURIComponent(s.slice(i, i + 2));
      i++;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      out += [0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f)]
        .map((b) => `%${b.toString(16).toUpperCase()}`)
        .join("");
    } else out += encodeURIComponent(s[i]!);
  }
  return out;
}

const isLoneSurrogateFree = (s: string) =>
  !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
// eslint-disable-next-line no-control-regex
const hasControl = (s: string) => /[\u0000-\u001f\u007f-\u009f]/.test(s);
/** The API's rule for a customer id. */
const validCustomerId = (s: string) =>
  s.length >= 1 && s.length <= 128 && !hasControl(s) && isLoneSurrogateFree(s);

// ---------------------------------------------------------------------------------------------------

describe("hostile input on the HTTP API", () => {
  before(async () => {
    sys = await startSystem({ catalog, env: { MAX_ORDER_LINES: String(MAX_LINES) } });
    jsm = await jetstreamManager(sys.nc);
    await sys.until("orders ready", async () => (await fetch(`${sys.urls.orders}/ready`)).ok);
  });
  after(async () => {
    await sys?.stop();
  });

  test("malformed JSON text → 400 problem, nothing changes", async () => {
    const validText = validOrder.map((o) => JSON.stringify(o));
    const malformed = fc
      .oneof(
        fc.string({ unit: "binary", maxLength: 200 }),
        fc.string({ unit: "grapheme", maxLength: 50 }),
        // a valid body cut short
        validText.chain((t) => fc.nat(t.length - 1).map((n) => t.slice(0, n))),
        // a valid body with a stray character
        validText.chain((t) =>
          fc
            .tuple(
              fc.nat(t.length),
              fc.constantFrom("{", "}", "[", "]", ",", ":", '"', "\\", "'", "\u0000", "\n", "x"),
            )
            .map(([i, c]) => t.slice(0, i) + c + t.slice(i)),
        ),
        fc.constantFrom(
          "{",
          "}",
          "{'customerId':'a'}",
          '{"customerId":}',
          '{"a":1,}',
          "[1,]",
          "NaN",
          "Infinity",
          "-Infinity",
          "undefined",
          '{"a":1}}',
          "tru",
          "nul",
          "01",
          '{"a":"\\x00"}',
          '{"a":"\\u12"}',
          '{"a":"raw\u0000nul"}',
          '{"a":"raw\ttab"}',
          "/* comment */ {}",
          '{"a":1} // comment',
          "{a:1}",
          "{\"a\":'b'}",
          '{"a":0x10}',
          '{"a":.5}',
          '{"a":+1}',
          '{"a":1e}',
          "\u0000",
        ),
      )
      .filter((s) => {
        try {
          JSON.parse(s.replace(/^\ufeff/, ""));
          return false;
        } catch {
          return true;
        }
      });
    await unchanged(() =>
      prop(malformed, async (text) => {
        assertProblem(await post(text), 400, JSON.stringify(text));
      }),
    );
  });

  test("wrong-typed or missing fields → 400 problem naming the field", async () => {
    type Kind = "string" | "integer" | "array" | "object";
    const fields: { path: (string | number)[]; kind: Kind; required: boolean }[] = [
      // Optional since authentication: the customer is the token's sub (a given customerId must equal it).
      { path: ["customerId"], kind: "string", required: false },
      { path: ["email"], kind: "string", required: true },
      { path: ["currency"], kind: "string", required: false },
      { path: ["items"], kind: "array", required: true },
      { path: ["items", 0], kind: "object", required: true },
      { path: ["items", 0, "sku"], kind: "string", required: true },
      { path: ["items", 0, "quantity"], kind: "integer", required: true },
    ];
    const json = fc.jsonValue({ maxDepth: 2 });
    const wrong = (kind: Kind): fc.Arbitrary<unknown> =>
      fc.oneof(
        ...(kind !== "string"
          ? [fc.string({ maxLength: 10 }), fc.integer({ min: 1, max: 5 }).map(String), fc.constant("1.0")]
          : []),
        ...(kind !== "integer"
          ? [fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true })]
          : [fc.double({ noNaN: true, noDefaultInfinity: true }).filter((d) => !Number.isInteger(d))]),
        fc.boolean(),
        fc.constant(null),
        ...(kind !== "array" ? [fc.array(json, { maxLength: 3 })] : []),
        ...(kind !== "object" ? [fc.dictionary(fc.string({ maxLength: 5 }), json, { maxKeys: 3 })] : []),
      );
    const MISSING = Symbol("missing");
    const arb = fc
      .tuple(validOrder, fc.constantFrom(...fields))
      .chain(([order, field]) =>
        (field.required ? fc.oneof(wrong(field.kind), fc.constant(MISSING)) : wrong(field.kind)).map(
          (value) => ({ order, field, value }),
        ),
      );
    await unchanged(() =>
      prop(arb, async ({ order, field, value }) => {
        const body = structuredClone(order) as Record<string, any>;
        let parent: any = body;
        for (const k of field.path.slice(0, -1)) parent = parent[k];
        const last = field.path[field.path.length - 1]!;
        if (value === MISSING) delete parent[last];
        else parent[last] = value;
        const text = JSON.stringify(body);
        const r = await post(text);
        assertProblem(r, 400, text);
        if (!/"(__proto__|constructor)"/.test(text)) assertPointer(r, `/body/${field.path.join("/")}`);
      }),
    );
  });

  test("quantities 0, negative, fractional, 1e308, -0, huge integers → 400 problem", async () => {
    const literal = fc
      .oneof(
        fc.constantFrom(
          "0",
          "-0",
          "-0.0",
          "0.0",
          "1e308",
          "-1e308",
          "1e400",
          "1E+309",
          "1.5",
          "0.999999",
          "1000.5",
          "1001",
          "5e-324",
          "123456789012345678901234567890",
          "9007199254740993",
          "-9007199254740993",
          "1e21",
        ),
        fc.integer({ max: 0 }).map(String),
        fc.integer({ min: 1001 }).map(String),
        fc.bigInt({ min: 10n ** 16n, max: 10n ** 40n }).map(String),
        fc.double({ noNaN: true, noDefaultInfinity: true }).map(String),
      )
      .filter((l) => {
        const v = JSON.parse(l) as number;
        return !(Number.isInteger(v) && v >= 1 && v <= 1000);
      });
    await unchanged(() =>
      prop(fc.tuple(validOrder, literal), async ([order, lit]) => {
        const text = JSON.stringify(order).replace(/"quantity":\d+/, `"quantity":${lit}`);
        const r = await post(text);
        assertProblem(r, 400, text);
        assertPointer(r, "/body/items/0/quantity");
      }),
    );
  });

  test("duplicate SKUs, unknown SKUs, SKUs priced in another currency → 422 problem naming the line", async () => {
    const bad = fc.constantFrom("duplicate", "unknown", "currency");
    const arb = fc.tuple(
      validOrder,
      fc.array(fc.tuple(bad, fc.stringMatching(/^[A-Z0-9_-]{1,20}$/)), { minLength: 1, maxLength: 4 }),
      fc.boolean(),
    );
    await unchanged(() =>
      prop(arb, async ([order, defects, shuffle]) => {
        const items = [...order.items];
        const badIdx: number[] = [];
        for (const [kind, name] of defects) {
          const sku = kind === "duplicate" ? items[0]!.sku : kind === "unknown" ? `NOPE-${name}` : "SKU-USD";
          items.push({ sku, quantity: 1 });
          badIdx.push(items.length - 1);
        }
        if (shuffle) items.reverse();
        // No currency given: the order is in EUR (the default), so SKU-USD is priced in the wrong currency.
        const body: Order = { ...order, items };
        const r = await post(JSON.stringify(body));
        assertProblem(r, 422, JSON.stringify(body));
        assert.equal(r.json.type, "https://shopstream.dev/problems/order-rejected");
        // Every unknown or wrongly priced line is named, and every repeat of a SKU after its first line.
        for (const i of badIdx) {
          const at = shuffle ? items.length - 1 - i : i;
          const sku = items[at]!.sku;
          const repeat = items.findIndex((l) => l.sku === sku) !== at;
          if (repeat || !EUR_SKUS.includes(sku)) assertPointer(r, `/body/items/${at}/sku`);
        }
      }),
    );
  });

  test(`too many lines (> ${MAX_LINES}) and extra properties → 400 problem`, async () => {
    const many = fc.integer({ min: MAX_LINES + 1, max: 400 }).map((n) =>
      JSON.stringify({
        customerId: "many",
        email: "many@example.com",
        items: Array.from({ length: n }, (_, i) => ({ sku: `SKU-${i}`, quantity: 1 })),
      }),
    );
    const allowedRoot = ["customerId", "email", "items", "currency"];
    const extraKey = fc.oneof(
      fc.string({ maxLength: 20 }),
      fc.constantFrom(
        "__proto__",
        "constructor",
        "prototype",
        "total",
        "unitPrice",
        "price",
        "status",
        "orderId",
      ),
    );
    const extra = fc
      .tuple(validOrder, extraKey, fc.jsonValue({ maxDepth: 2 }), fc.boolean())
      .filter(([, key, , inLine]) =>
        inLine ? !["sku", "quantity"].includes(key) : !allowedRoot.includes(key),
      )
      .map(([order, key, value, inLine]) => {
        const text = JSON.stringify(order);
        const member = `${JSON.stringify(key)}:${JSON.stringify(value)},`;
        return inLine ? text.replace('"items":[{', `"items":[{${member}`) : `{${member}${text.slice(1)}`;
      });
    await unchanged(async () => {
      await prop(many, async (text) => assertProblem(await post(text), 400, text.slice(0, 80)), 50);
      await prop(extra, async (text) => assertProblem(await post(text), 400, text));
    });
  });

  test("huge strings and bodies: over the body limit → 413, long fields → 400", async () => {
    const overLimit = fc.tuple(
      fc.integer({ min: BODY_LIMIT + 1, max: 4 * BODY_LIMIT }),
      fc.constantFrom("customerId", "junk", "items", "chunked"),
    );
    const longField = fc.tuple(
      fc.constantFrom(
        { field: "customerId", max: 128 },
        { field: "email", max: 254 },
        { field: "sku", max: 64 },
        { field: "currency", max: 3 },
      ),
      fc.integer({ min: 1, max: 60_000 }),
    );
    await unchanged(async () => {
      await prop(
        overLimit,
        async ([size, shape]) => {
          let text: string;
          if (shape === "customerId")
            text = JSON.stringify({ customerId: "x".repeat(size), email: "a@b.co", items: [] });
          else if (shape === "items")
            text = JSON.stringify({
              customerId: "c",
              email: "a@b.co",
              items: Array.from({ length: Math.ceil(size / 28) }, () => ({ sku: "SKU-A", quantity: 1 })),
            });
          else text = "z".repeat(size);
          const bytes = new TextEncoder().encode(text);
          const body =
            shape === "chunked"
              ? new ReadableStream<Uint8Array>({
                  start(c) {
                    for (let i = 0; i < bytes.length; i += 16_384) c.enqueue(bytes.subarray(i, i + 16_384));
                    c.close();
                  },
                })
              : bytes;
          assertProblem(await post(body), 413, `${shape} of ${bytes.length} bytes`);
        },
        30,
      );
      await prop(longField, async ([{ field, max }, extra]) => {
        const order: Record<string, any> = {
          customerId: "c",
          email: "a@example.com",
          items: [{ sku: "SKU-A", quantity: 1 }],
        };
        const long = "A".repeat(max + extra);
        if (field === "sku") order["items"][0].sku = long;
        else if (field === "email") order["email"] = `${"a".repeat(max + extra)}@example.com`;
        else order[field] = long;
        const text = JSON.stringify(order);
        const r = await post(text);
        assertProblem(r, text.length > BODY_LIMIT ? 413 : 400, `${field} of ${long.length}`);
      });
    });
  });

  test("deeply nested objects and arrays → 400 (or 413 past the limit), the event loop stays fine", async () => {
    const arb = fc.record({
      depth: fc.integer({ min: 1, max: 40_000 }),
      kind: fc.constantFrom("array", "object"),
      at: fc.constantFrom("root", "customerId", "email", "items", "line", "quantity", "extra"),
    });
    await unchanged(() =>
      prop(
        arb,
        async ({ depth, kind, at }) => {
          const open = kind === "array" ? "[" : '{"a":';
          const close = kind === "array" ? "]" : "}";
          const deep = open.repeat(depth) + "1" + close.repeat(depth);
          const base = '{"customerId":"c","email":"a@example.com","items":[{"sku":"SKU-A","quantity":1}]}';
          const text =
            at === "root"
              ? deep
              : at === "extra"
                ? `{"deep":${deep},${base.slice(1)}`
                : at === "line"
                  ? base.replace('[{"sku"', `[${deep},{"sku"`)
                  : at === "items"
                    ? base.replace(/"items":\[.*\]/, `"items":${deep}`)
                    : at === "quantity"
                      ? base.replace('"quantity":1', `"quantity":${deep}`)
                      : base.replace(at === "email" ? '"a@example.com"' : '"c"', deep);
          const size = Buffer.byteLength(text);
          assertProblem(await post(text), size > BODY_LIMIT ? 413 : 400, `${kind} ×${depth} at ${at}`);
        },
        100,
      ),
    );
  });

  test("hostile unicode: control characters and lone surrogates (JSON escapes) → 400; ASCII-only fields refuse any", async () => {
    const arb = fc.oneof(
      fc.tuple(fc.constantFrom("customerId", "email-local", "email-domain"), forbiddenText),
      fc
        .tuple(fc.constantFrom("sku", "currency"), fc.oneof(forbiddenText, fineText))
        .filter(([f, s]) => !(f === "sku" ? /^[A-Za-z0-9_-]{1,64}$/ : /^[A-Z]{3}$/).test(s)),
    );
    await unchanged(() =>
      prop(arb, async ([field, s]) => {
        const order: Record<string, any> = {
          customerId: "c",
          email: "a@example.com",
          items: [{ sku: "SKU-A", quantity: 1 }],
        };
        if (field === "customerId") order["customerId"] = s;
        else if (field === "email-local") order["email"] = `${s}@example.com`;
        else if (field === "email-domain") order["email"] = `a@${s}.com`;
        else if (field === "sku") order["items"][0].sku = s;
        else order["currency"] = s;
        // JSON.stringify writes control characters and lone surrogates as \u escapes.
        const text = JSON.stringify(order);
        const r = await post(text);
        assertProblem(r, 400, `${field}=${JSON.stringify(s)}`);
        const pointer = field.startsWith("email") ? "email" : field === "sku" ? "items/0/sku" : field;
        assertPointer(r, `/body/${pointer}`);
      }),
    );
  });

  test("bodies that are not UTF-8, or declare another charset → 400 / 415", async () => {
    const badBytes = fc.constantFrom(
      [0xff],
      [0xfe, 0xff],
      [0xc3, 0x28],
      [0xc0, 0xaf],
      [0xed, 0xa0, 0x80],
      [0xf4, 0x90, 0x80, 0x80],
      [0xe9],
      [0x80],
    );
    const charset = fc.constantFrom(
      "latin1",
      "iso-8859-1",
      "utf-16",
      "UTF-16LE",
      "windows-1252",
      "ascii",
      "x-garbage",
    );
    await unchanged(async () => {
      await prop(
        fc.tuple(validOrder, badBytes),
        async ([order, bytes]) => {
          const [head, tail] = JSON.stringify({ ...order, customerId: "@@" }).split('"@@"') as [
            string,
            string,
          ];
          const enc = new TextEncoder();
          const body = new Uint8Array([...enc.encode(`${head}"x`), ...bytes, ...enc.encode(`"${tail}`)]);
          assertProblem(await post(body), 400, `bytes ${bytes.join(",")}`);
        },
        50,
      );
      await prop(
        fc.tuple(validOrder, charset),
        async ([order, cs]) => {
          const r = await post(JSON.stringify(order), { "content-type": `application/json; charset=${cs}` });
          assertProblem(r, 415, cs);
        },
        50,
      );
    });
  });

  test("wrong content type or missing body → 4xx problem", async () => {
    const contentType = fc.constantFrom(
      "text/plain",
      "text/html",
      "application/xml",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=xyz",
      "application/octet-stream",
      "application/jsonx",
      "application/json-patch+json",
      "application/javascript",
      "image/png",
      "json",
      "*/*",
      "application/*",
      "garbage",
      "",
      null,
    );
    const body = fc.oneof(
      validOrder.map((o) => JSON.stringify(o)),
      fc.constant(""),
      fc.constant(undefined),
      fc.constant("customerId=a&email=b"),
    );
    await unchanged(() =>
      prop(fc.tuple(contentType, body), async ([ct, b]) => {
        const headers: Record<string, string> = ct === null ? {} : { "content-type": ct };
        const payload = b === undefined ? undefined : new TextEncoder().encode(b);
        assertProblem(await post(payload, headers), [400, 415], `${ct} with ${JSON.stringify(b)}`);
      }),
    );
    await unchanged(async () => {
      assertProblem(await post(undefined), 400, "no body, JSON content type");
      assertProblem(await post(""), 400, "empty body");
      assertProblem(await post(undefined, {}), 400, "no body, no content type");
      assertProblem(await post("null"), 400, "null");
      assertProblem(await post("[]"), 400, "[]");
      assertProblem(await post('"order"'), 400, "a string");
      assertProblem(await post("42"), 400, "a number");
      assertProblem(await post("{}"), 400, "{}");
    });
  });

  test("Idempotency-Key misuse: empty or too long → 400, beyond the header limit → 431; nothing placed", async () => {
    const key = fc.oneof(
      fc.constantFrom("", " ", "\t"),
      fc.integer({ min: 256, max: 8_000 }).map((n) => "k".repeat(n)),
      fc.integer({ min: 17_000, max: 40_000 }).map((n) => "k".repeat(n)),
    );
    await unchanged(() =>
      prop(
        fc.tuple(validOrder, key),
        async ([order, k]) => {
          const r = await post(JSON.stringify(order), { ...JSON_CT, "idempotency-key": k });
          assertProblem(r, k.length > 16_000 ? 431 : 400, `key of ${k.length}`);
        },
        60,
      ),
    );
  });

  test("GET /orders/<garbage> → 400 (or 404 for a well-formed unknown id), problem+json", async () => {
    const piece = fc.oneof(
      fc.string({ unit: "binary", minLength: 1, maxLength: 10 }),
      fc.constantFrom(
        ...CONTROL,
        ...LONE_SURROGATES,
        ...FINE_UNICODE,
        "/",
        "..",
        ".",
        "%",
        "?",
        "#",
        "&",
        " ",
        "+",
        "\\",
      ),
      fc.stringMatching(/^[A-Za-z0-9_-]{1,70}$/),
    );
    const id = fc.array(piece, { minLength: 1, maxLength: 5 }).map((p) => p.join(""));
    await unchanged(async () => {
      await prop(id, async (s) => {
        const r = await send("GET", `/orders/${encodeBytes(s)}`);
        const wellFormed = /^[A-Za-z0-9_-]{1,64}$/.test(s);
        assertProblem(r, wellFormed ? 404 : [400, 404, 414], JSON.stringify(s));
        if (wellFormed) assert.equal(r.json.type, "https://shopstream.dev/problems/order-not-found");
      });
      // Raw, unencoded garbage.
      for (const path of [
        "%",
        "%zz",
        "%E0%A4%A",
        "%ED%A0%80",
        "%FF%FE",
        "%00",
        "a%00b",
        "x".repeat(101),
        "x".repeat(5_000),
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "ord_1;DROP TABLE",
        "${jndi:ldap:x}",
        "<script>",
      ]) {
        assertProblem(await send("GET", `/orders/${path}`), [400, 404, 414], path);
      }
    });
  });

  test("POST /orders/<garbage>/cancel → 400 (or 404 for a well-formed unknown id); hostile bodies → 400/413/415; nothing cancelled", async () => {
    const piece = fc.oneof(
      fc.string({ unit: "binary", minLength: 1, maxLength: 10 }),
      fc.constantFrom(
        ...CONTROL,
        ...LONE_SURROGATES,
        ...FINE_UNICODE,
        "/",
        "..",
        ".",
        "%",
        "?",
        "#",
        " ",
        "\\",
      ),
      fc.stringMatching(/^[A-Za-z0-9_-]{1,70}$/),
    );
    const id = fc.array(piece, { minLength: 1, maxLength: 5 }).map((p) => p.join(""));
    // An order of the caller's own, so a refused body is refused for what it is.
    const placed = await post(JSON.stringify({ ...orderOf(DEFAULT_TEST_CUSTOMER) }));
    assert.equal(placed.status, 202, placed.text);
    const own = placed.json.orderId as string;
    const status0 = (await sys.waitForTerminal(own)).status;
    await settled();
    const mine = await customerAuth(DEFAULT_TEST_CUSTOMER);
    await unchanged(async () => {
      await prop(id, async (s) => {
        const r = await send("POST", `/orders/${encodeBytes(s)}/cancel`, undefined, mine);
        const wellFormed = /^[A-Za-z0-9_-]{1,64}$/.test(s);
        // A "/" inside the id routes elsewhere (404 route not found); never a cancellation.
        assertProblem(r, wellFormed ? 404 : [400, 404, 414], JSON.stringify(s));
        if (wellFormed) assert.equal(r.json.type, "https://shopstream.dev/problems/order-not-found");
      });
      const jsonValue = fc
        .jsonValue()
        .filter(
          (v) =>
            !(typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0) &&
            v !== null,
        );
      await prop(
        jsonValue,
        async (v) => {
          const r = await send("POST", `/orders/${own}/cancel`, JSON.stringify(v), { ...JSON_CT, ...mine });
          assertProblem(r, 400, JSON.stringify(v).slice(0, 80));
        },
        60,
      );
      for (const [body, ct, want] of [
        ["{", "application/json", 400],
        ["", "application/json", 400],
        ["\u0000", "application/json", 400],
        ["<cancel/>", "application/xml", 415],
        ["reason=x", "application/x-www-form-urlencoded", 415],
        [JSON.stringify({ pad: "x".repeat(BODY_LIMIT) }), "application/json", 413],
      ] as const) {
        const r = await send("POST", `/orders/${own}/cancel`, body, { "content-type": ct, ...mine });
        assertProblem(r, want, `${ct} ${body.slice(0, 20)}`);
      }
    });
    assert.equal((await sys.waitForTerminal(own)).status, status0, "the order was not cancelled");
  });

  test("GET /orders?customerId=…&limit=…&after=… with hostile values → 400 problem, or 200 for valid ones", async () => {
    const customerId = fc.oneof(
      forbiddenText,
      fineText,
      fc.string({ unit: "binary", maxLength: 20 }),
      fc.constantFrom("", "x".repeat(129), "x".repeat(5_000)),
    );
    const validLimit = fc.integer({ min: 1, max: 100 }).map(String);
    const badLimit = fc.oneof(
      fc.constantFrom(
        "-1",
        "0",
        "101",
        "abc",
        "1.5",
        "",
        " ",
        "NaN",
        "Infinity",
        "-0",
        "1e400",
        "true",
        "null",
        "[]",
      ),
      fc.integer({ max: 0 }).map(String),
      fc.integer({ min: 101 }).map(String),
    );
    const after = fc.oneof(
      fc.constant(undefined),
      fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
      fc.constantFrom("", "../x", "a b", "x".repeat(65), "%", "\u0000"),
    );
    const arb = fc.record({
      customerId: fc.option(customerId, { nil: undefined }),
      limit: fc.option(fc.oneof(validLimit, badLimit), { nil: undefined }),
      after,
      repeat: fc.boolean(),
    });
    await unchanged(async () => {
      await prop(arb, async ({ customerId: cid, limit, after: a, repeat }) => {
        const q: string[] = [];
        if (cid !== undefined) q.push(`customerId=${encodeBytes(cid)}`);
        if (limit !== undefined) q.push(`limit=${encodeBytes(limit)}`);
        if (a !== undefined) q.push(`after=${encodeBytes(a)}`);
        if (repeat && q.length > 0) q.push(q[0]!);
        const r = await send("GET", `/orders?${q.join("&")}`);
        const limitOk = limit === undefined || (/^\d+$/.test(limit) && +limit >= 1 && +limit <= 100);
        const afterOk = a === undefined || /^[A-Za-z0-9_-]{1,64}$/.test(a);
        // A value that does not percent-decode to UTF-8 (a lone surrogate here) is taken literally.
        const seen = cid === undefined ? undefined : isLoneSurrogateFree(cid) ? cid : encodeBytes(cid);
        const ok = seen !== undefined && validCustomerId(seen) && limitOk && afterOk && !repeat;
        const what = `?${q.join("&").slice(0, 200)}`;
        if (ok) {
          assert.equal(r.status, 200, `${what} → ${r.status} ${r.text.slice(0, 200)}`);
          assert.deepEqual(r.json, { orders: [], next: null });
        } else assertProblem(r, 400, what);
      });
      // Raw bytes that are not UTF-8 after percent-decoding: never a 5xx; a 200 lists nothing.
      for (const raw of ["%FF", "%ED%A0%80", "%C0%AF", "%E0%A4%A", "%", "%%", "a%00b", "%0a%0d"]) {
        const r = await send("GET", `/orders?customerId=${raw}`);
        if (r.status === 200) assert.deepEqual(r.json, { orders: [], next: null }, raw);
        else assertProblem(r, 400, raw);
      }
    });
  });

  test("DELETE /customers/<hostile id>/personal-data → 400 problem, 204 for a valid id; no one else is erased", async () => {
    // A customer with an order, whose e-mail must stay readable whatever other ids are erased.
    const bystander = "erasure-bystander";
    const placed = await sys.placeOrder({
      customerId: bystander,
      email: "bystander@example.com",
      items: [{ sku: "SKU-C", quantity: 1 }],
    });
    assert.equal(placed.status, 202);
    await settled();
    const id = fc.oneof(
      forbiddenText,
      fineText,
      fc.string({ unit: "binary", maxLength: 20 }),
      fc.constantFrom("", "x".repeat(129), "x".repeat(5_000), "..", "%", "a/b", "?x=1", "#"),
    );
    await unchanged(async () => {
      await prop(
        id.filter((s) => s !== bystander),
        async (s) => {
          const r = await send("DELETE", `/customers/${encodeBytes(s)}/personal-data`);
          const what = JSON.stringify(s.slice(0, 100));
          // `.` and `..` are path segments to a URL (even percent-encoded): the request goes elsewhere, a 404.
          if (s === "." || s === "..") assertProblem(r, 404, what);
          // A lone surrogate is sent as bytes that are not UTF-8: refused (or, taken literally, a valid id).
          else if (!isLoneSurrogateFree(s)) {
            if (r.status !== 204) assertProblem(r, 400, what);
          } else if (validCustomerId(s))
            assert.equal(r.status, 204, `${what} → ${r.status} ${r.text.slice(0, 200)}`);
          else assertProblem(r, [400, 404, 414], what);
        },
        100,
      );
      // Raw bytes that are not UTF-8 after percent-decoding, and empty segments: never a 5xx.
      for (const raw of ["%FF", "%ED%A0%80", "%C0%AF", "%E0%A4%A", "%", "%%", "a%00b", "%0a", ""]) {
        const r = await send("DELETE", `/customers/${raw}/personal-data`);
        if (r.status !== 204) assertProblem(r, [400, 404], raw);
      }
      // A body, or another method, changes nothing either.
      assertProblem(await send("POST", `/customers/${bystander}/personal-data`, "{}", JSON_CT), [404]);
    });
    const view = await (
      await operatorFetch(`${sys.urls.orders}/orders/${placed.body.orderId as string}`)
    ).json();
    assert.deepEqual(
      [(view as { email: string }).email, (view as { personalData: string }).personalData],
      ["bystander@example.com", "present"],
    );
    await settled();
  });

  test("broken HTTP framing on the raw socket → 4xx problem+json, connection closed", async () => {
    const { hostname, port } = new URL(sys.urls.orders);
    const rawHttp = (payload: string) =>
      new Promise<{ status: number; headers: string; body: string }>((resolve, reject) => {
        const sock = net.connect(Number(port), hostname, () => sock.end(payload));
        let out = "";
        sock.setEncoding("latin1");
        sock.on("data", (d: string) => (out += d));
        sock.on("error", () => undefined);
        sock.setTimeout(10_000, () => {
          sock.destroy();
          reject(new Error(`no answer to ${JSON.stringify(payload.slice(0, 60))}`));
        });
        sock.on("close", () => {
          const [head = "", body = ""] = out.split("\r\n\r\n", 2);
          resolve({ status: Number(head.split(" ")[1]), headers: head, body });
        });
      });
    const body = '{"customerId":"c","email":"a@example.com","items":[{"sku":"SKU-A","quantity":1}]}';
    const auth = (await customerAuth("c")).authorization;
    await unchanged(async () => {
      for (const payload of [
        "GARBAGE\r\n\r\n",
        "GET /orders/x HTTP/9.9\r\nHost: x\r\n\r\n",
        "GET /orders/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        `POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n${body}`,
        `POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n${body}`,
        "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        `POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n${body}`,
        "GET /orders/x HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0000b\r\n\r\n",
        "GET /orders/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        `GET /orders/x HTTP/1.1\r\nHost: x\r\nX-Big: ${"h".repeat(20_000)}\r\n\r\n`,
        `GET /${"p".repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      ]) {
        // With a valid token, so that what is refused is the framing, not a missing token.
        const r = await rawHttp(payload.replace("Host: x\r\n", `Host: x\r\nAuthorization: ${auth}\r\n`));
        const what = JSON.stringify(payload.slice(0, 80));
        assert.ok(r.status >= 400 && r.status < 500, `${what} → ${r.headers.split("\r\n")[0]}`);
        assert.match(r.headers, /content-type: application\/problem\+json/i, what);
        const doc = JSON.parse(r.body);
        assert.equal(doc.status, r.status, what);
        for (const k of ["type", "title", "detail"]) assert.equal(typeof doc[k], "string", `${what}: ${k}`);
      }
    });
  });

  test("the service is healthy and ready after the onslaught, and still takes a valid order", async () => {
    for (const url of Object.values(sys.urls)) {
      assert.equal((await fetch(`${url}/health`)).status, 200, `${url}/health`);
    }
    await sys.untilAllReady();
    const metrics = await (await fetch(`${sys.urls.orders}/metrics`)).text();
    assert.doesNotMatch(metrics, /http_requests_total\{[^}]*status="5\d\d"[^}]*\} [1-9]/, "no 5xx answered");
    const r = await sys.placeOrder({
      customerId: "after-run",
      email: "a@example.com",
      items: [{ sku: "SKU-A", quantity: 1 }],
    });
    assert.equal(r.status, 202);
    assert.equal((await sys.waitForTerminal(r.body.orderId)).status, "CONFIRMED");
  });

  test("unicode that is fine (emoji, RTL, zero-width, combining) round-trips exactly in customerId", async () => {
    await prop(
      fineText.filter(validCustomerId),
      async (customerId) => {
        const r = await sys.placeOrder({
          customerId,
          email: "u@example.com",
          items: [{ sku: "SKU-C", quantity: 1 }],
        });
        assert.equal(r.status, 202, `${JSON.stringify(customerId)} → ${r.status} ${JSON.stringify(r.body)}`);
        // Read back as that customer: their own order, their own list.
        const own = { headers: await customerAuth(customerId) };
        const view: any = await (await fetch(`${sys.urls.orders}/orders/${r.body.orderId}`, own)).json();
        assert.equal(view.customerId, customerId);
        const list: any = await (
          await fetch(`${sys.urls.orders}/orders?customerId=${encodeURIComponent(customerId)}`, own)
        ).json();
        assert.ok(
          list.orders.some((o: { orderId: string }) => o.orderId === r.body.orderId),
          "listed under its customer",
        );
        assert.ok(list.orders.every((o: { customerId: string }) => o.customerId === customerId));
      },
      20,
    );
  });

  test("Idempotency-Key reused with another body → 422, with the same body → the same order", async () => {
    const key = `reuse-${Date.now()}`;
    const first: Order = {
      customerId: "idem",
      email: "i@example.com",
      items: [{ sku: "SKU-B", quantity: 1 }],
    };
    const r0 = await post(JSON.stringify(first), { ...JSON_CT, "idempotency-key": key });
    assert.equal(r0.status, 202);
    sys.accepted.add(r0.json.orderId);
    await settled();
    await unchanged(async () => {
      await prop(
        // Keys are per customer: the same customer's other bodies.
        validOrder
          .map((o) => ({ ...o, customerId: first.customerId }))
          .filter((o) => JSON.stringify(o) !== JSON.stringify(first)),
        async (other) => {
          const r = await post(JSON.stringify(other), { ...JSON_CT, "idempotency-key": key });
          assertProblem(r, 422, JSON.stringify(other));
          assert.equal(r.json.type, "https://shopstream.dev/problems/idempotency-key-reused");
        },
        50,
      );
      const again = await post(JSON.stringify(first), { ...JSON_CT, "idempotency-key": key });
      assert.equal(again.status, 202);
      assert.equal(again.json.orderId, r0.json.orderId);
      assert.equal(again.headers.get("idempotent-replayed"), "true");
    });
    // Another customer's request with the same key is theirs alone: a new order, neither 422 nor the first's id.
    const theirs = await post(JSON.stringify({ ...first, customerId: "idem-other" }), {
      ...JSON_CT,
      "idempotency-key": key,
    });
    assert.equal(theirs.status, 202, theirs.text);
    assert.notEqual(theirs.json.orderId, r0.json.orderId);
    assert.equal(theirs.headers.get("idempotent-replayed"), null);
    sys.accepted.add(theirs.json.orderId);
  });

  test("Idempotency-Key reused concurrently with the same body → one order", async () => {
    await prop(
      fc.tuple(validOrder, fc.integer({ min: 2, max: 16 })),
      async ([order, n]) => {
        const key = `concurrent-${Math.random().toString(36).slice(2)}`;
        const body = JSON.stringify(order);
        const rs = await Promise.all(
          Array.from({ length: n }, () => post(body, { ...JSON_CT, "idempotency-key": key })),
        );
        assert.ok(
          rs.every((r) => r.status === 202),
          rs.map((r) => `${r.status} ${r.text}`).join("\n"),
        );
        const ids = new Set(rs.map((r) => r.json.orderId as string));
        assert.equal(ids.size, 1, `one order id: ${[...ids].join(", ")}`);
        const [orderId] = ids as unknown as [string];
        sys.accepted.add(orderId);
        // Exactly one OrderPlaced on the order's subject.
        let placed = 0;
        for (let seq = 1; ;) {
          const m = await jsm.direct
            .getMessage("ORDERS", { seq, next_by_subj: `orders.${orderId}` })
            .catch(() => null);
          if (!m) break;
          if (decodeEvent(m.data).type === "OrderPlaced") placed++;
          seq = m.seq + 1;
        }
        assert.equal(placed, 1, "one OrderPlaced");
      },
      10,
    );
  });

  test("valid orders sent among hostile requests are accepted and CONFIRMED, and the invariants hold", async () => {
    // Its own orders (not declined by the gateway simulator), sent at the same time as malformed ones.
    const orders = fc.sample(
      validOrder.filter((o) => !o.customerId.startsWith("decline-")),
      10,
    );
    const hostile = ['{"customerId":', "[]", "null", JSON.stringify({ ...orders[0], items: [] })];
    const [accepted, refused] = await Promise.all([
      Promise.all(orders.map((o) => sys.placeOrder(o))),
      Promise.all(hostile.map((body) => post(body))),
    ]);
    for (const [i, r] of refused.entries()) assertProblem(r, 400, hostile[i]);
    for (const r of accepted) assert.equal(r.status, 202, JSON.stringify(r.body));
    const finals = await Promise.all(accepted.map((r) => sys.waitForTerminal(r.body.orderId, 60_000)));
    for (const f of finals)
      assert.equal(f.status, "CONFIRMED", `${f.orderId}: ${f.status} ${f.reason ?? ""}`);
    await settled();
    await sys.assertInvariants();
  });

  // -------------------------------------------------------------------------------------------------
  /** An operator's request to the inventory service. */
  const inv = async (method: string, path: string, body?: unknown, raw?: string): Promise<Res> =>
    readResponse(
      await fetch(`${sys.urls.inventory}${path}`, {
        method,
        headers: { ...JSON_CT, ...(await operatorAuth()) },
        body: raw ?? JSON.stringify(body),
      }),
    );
  const inventoryEvents = async () => (await jsm.streams.info("INVENTORY")).state.messages;
  /** Not an integer within [min, max]: fractions, out of range, strings, null, arrays, objects, booleans. */
  const notIntIn = (min: number, max: number) =>
    fc.oneof(
      fc.double({ noInteger: true }),
      min - 1 >= -(2 ** 31) ? fc.integer({ min: -(2 ** 31), max: min - 1 }) : fc.constant(min - 1),
      max + 1 < 2 ** 31 ? fc.integer({ min: max + 1 }) : fc.constantFrom(max + 1, 1e20),
      fc.constantFrom(1e308, -1e308, "1", "", null, true, [], {}, [1], { $gt: 0 }),
      fc.string({ maxLength: 5 }),
    );
  /** A SKU token that is not a SKU (or one no catalog has): for paths and bodies. */
  const badSku = fc.oneof(
    fc.string({ unit: "binary", minLength: 1, maxLength: 8 }).filter((x) => !/^[A-Za-z0-9_-]{1,64}$/.test(x)),
    fc.constantFrom("x".repeat(65), "..", "%00", "SKU A", "SKU.A", "SKU*", "SKU>", "__proto__x.y"),
  );

  test("operator catalog and stock endpoints: hostile bodies and SKUs → 4xx problem, nothing changes", async () => {
    const before = await inventoryEvents();
    await unchanged(async () => {
      // PUT /inventory/{sku}/price
      await prop(
        fc.oneof(
          notIntIn(0, 100_000_000).map((price) => ({ price })),
          fc.record({ price: fc.nat(1000), extra: fc.anything().filter((v) => v !== undefined) }),
          fc.anything().filter((v) => typeof v !== "object" || v === null || Array.isArray(v)),
        ),
        async (body) =>
          assertProblem(await inv("PUT", "/inventory/SKU-A/price", body), 400, JSON.stringify(body)),
        100,
      );
      await prop(
        badSku,
        async (sku) => {
          const r = await inv("PUT", `/inventory/${encodeURIComponent(sku)}/price`, { price: 1 });
          assertProblem(r, [400, 404, 414], JSON.stringify(sku));
        },
        100,
      );
      assertProblem(await inv("PUT", "/inventory/SKU-UNKNOWN/price", { price: 1 }), 404);
      // POST /inventory/{sku}/adjustments
      const reason = fc.constantFrom("restock", "damaged");
      await prop(
        fc.oneof(
          fc.record({ quantity: notIntIn(-1_000_000_000, 1_000_000_000), reason }),
          fc.record({ quantity: fc.integer({ min: 1, max: 5 }), reason: fc.string({ maxLength: 10 }) }),
          fc.record({
            quantity: fc.integer({ min: 1, max: 5 }),
            reason,
            note: fc.string({ minLength: 501 }),
          }),
          // (`undefined` would vanish from the JSON, leaving a valid body)
          fc.record({
            quantity: fc.integer({ min: 1, max: 5 }),
            reason,
            extra: fc.anything().filter((v) => v !== undefined),
          }),
          fc.record({ reason }),
        ),
        async (body) =>
          assertProblem(await inv("POST", "/inventory/SKU-A/adjustments", body), 400, JSON.stringify(body)),
        100,
      );
      assertProblem(await inv("POST", "/inventory/SKU-A/adjustments", { quantity: 0, reason: "lost" }), 422);
      assertProblem(
        await inv("POST", "/inventory/SKU-A/adjustments", { quantity: -1_000_000, reason: "lost" }),
        409,
      );
      await prop(
        badSku,
        async (sku) => {
          const r = await inv("POST", `/inventory/${encodeURIComponent(sku)}/adjustments`, {
            quantity: 1,
            reason: "found",
          });
          assertProblem(r, [400, 404, 414], JSON.stringify(sku));
        },
        100,
      );
      // POST /inventory/products
      const product = { sku: "SKU-HOSTILE", name: "H", price: 1, currency: "EUR", stock: 1 };
      await prop(
        fc.oneof(
          badSku.map((sku) => ({ ...product, sku })),
          notIntIn(0, 100_000_000).map((price) => ({ ...product, price })),
          notIntIn(0, 1_000_000_000).map((stock) => ({ ...product, stock })),
          fc
            .string({ maxLength: 5 })
            .filter((c) => !/^[A-Z]{3}$/.test(c))
            .map((currency) => ({ ...product, currency })),
          fc.constantFrom("", "x".repeat(201)).map((name) => ({ ...product, name })),
          fc
            .anything()
            .filter((v) => v !== undefined)
            .map((extra) => ({ ...product, extra })),
        ),
        async (body) =>
          assertProblem(await inv("POST", "/inventory/products", body), 400, JSON.stringify(body)),
        100,
      );
      // An existing SKU with other figures: 409, the stored entry kept.
      assertProblem(await inv("POST", "/inventory/products", { ...catalog[0], price: 1 }), 409);
      for (const raw of ['{"price":', "[]", "null", "\u0000"])
        assertProblem(await inv("PUT", "/inventory/SKU-A/price", undefined, raw), [400], raw);
    });
    assert.equal(await inventoryEvents(), before, "no event on INVENTORY");
  });

  test("GET /orders/{id}/events with hostile ids and Last-Event-IDs → 400/404 problem, no stream opened", async () => {
    const placed = await sys.placeOrder({
      customerId: "sse-probe",
      email: "s@example.com",
      items: [{ sku: "SKU-C", quantity: 1 }],
    });
    assert.equal(placed.status, 202);
    const id = placed.body.orderId as string;
    await sys.waitForTerminal(id);
    await unchanged(async () => {
      await prop(
        fc.oneof(
          fc
            .string({ unit: "binary", minLength: 1, maxLength: 20 }) // HTTP trims spaces and tabs around a header value: " 1" arrives as "1".
            .filter((x) => !/^[0-9]{1,15}$/.test(x.replace(/^[ \t]+|[ \t]+$/g, ""))),
          fc.constantFrom("-1", "1.5", "1e3", "0x10", "9".repeat(16), "1 2", "١"),
        ),
        async (lastId) => {
          let r: Res;
          try {
            r = await send("GET", `/orders/${id}/events`, undefined, { "last-event-id": lastId });
          } catch {
            return; // a header value fetch itself refuses to send (e.g. a control character)
          }
          assertProblem(r, 400, JSON.stringify(lastId));
        },
        100,
      );
      await prop(
        fc.string({ unit: "binary", minLength: 1, maxLength: 10 }),
        async (garbage) => {
          const r = await send("GET", `/orders/${encodeBytes(garbage)}/events`);
          assertProblem(r, [400, 404, 414], JSON.stringify(garbage));
        },
        100,
      );
    });
  });

  // Tokens (docs/security.md): every way a token can be wrong is a 401; a customer sees only their own orders;
  // operations need an operator.

  /** Every route that needs a token, with a request a valid caller could make. */
  const authenticated = (orderId: string) => [
    { url: `${sys.urls.orders}/orders`, method: "POST", body: JSON.stringify(orderOf("tok")) },
    { url: `${sys.urls.orders}/orders/${orderId}`, method: "GET" },
    { url: `${sys.urls.orders}/orders/${orderId}/cancel`, method: "POST" },
    { url: `${sys.urls.orders}/orders?limit=5`, method: "GET" },
    { url: `${sys.urls.orders}/orders/${orderId}/events`, method: "GET" },
    ...operations(orderId),
  ];
  /** The operations endpoints: operator tokens only. */
  const operations = (orderId: string) => [
    { url: `${sys.urls.audit}/audit/orders/${orderId}`, method: "GET" },
    { url: `${sys.urls.audit}/audit/verify`, method: "GET" },
    { url: `${sys.urls.audit}/audit/events?limit=1`, method: "GET" },
    { url: `${sys.urls.inventory}/inventory`, method: "GET" },
    { url: `${sys.urls.inventory}/inventory/SKU-A`, method: "GET" },
    { url: `${sys.urls.inventory}/inventory/reservations/${orderId}`, method: "GET" },
    // Changes that change nothing when an operator sends them: the same price again, a product as it is, quantity 0.
    { url: `${sys.urls.inventory}/inventory/SKU-A/price`, method: "PUT", body: '{"price":1250}' },
    {
      url: `${sys.urls.inventory}/inventory/products`,
      method: "POST",
      body: JSON.stringify({ sku: "SKU-B", name: "Widget B", price: 399, currency: "EUR", stock: 1_000 }),
    },
    {
      url: `${sys.urls.inventory}/inventory/SKU-A/adjustments`,
      method: "POST",
      body: '{"quantity":0,"reason":"found"}',
    },
    { url: `${sys.urls.payments}/payments/${orderId}`, method: "GET" },
    { url: `${sys.urls.notifications}/notifications/${orderId}`, method: "GET" },
    { url: `${sys.urls.gateway}/admin/faults`, method: "GET" },
    { url: `${sys.urls.gateway}/admin/faults`, method: "PUT", body: "{}" },
    { url: `${sys.urls.gateway}/admin/reset`, method: "POST", destructive: true },
    { url: `${sys.urls.mail}/admin/faults`, method: "GET" },
    { url: `${sys.urls.mail}/admin/reset`, method: "POST", destructive: true },
    // Erases a customer that has no orders here (idempotent: 204 every time).
    { url: `${sys.urls.orders}/customers/ops-probe-nobody/personal-data`, method: "DELETE" },
  ];
  const orderOf = (customerId: string) => ({
    customerId,
    email: "t@example.com",
    items: [{ sku: "SKU-C", quantity: 1 }],
  });
  const call = async (r: { url: string; method: string; body?: string }, authorization?: string) => {
    const headers: Record<string, string> = r.body ? { ...JSON_CT } : {};
    if (authorization !== undefined) headers["authorization"] = authorization;
    return readResponse(
      await fetch(r.url, { method: r.method, headers, ...(r.body ? { body: r.body } : {}) }),
    );
  };
  /** Tokens signed with the system's own secret that are still wrong, by what is wrong with them. */
  const wrongTokens = async (): Promise<Record<string, string>> => {
    const key = await testSecret();
    const now = Math.floor(Date.now() / 1000);
    const base = { sub: "mallory", aud: "shopstream", iat: now, exp: now + 600, scope: "operator" };
    const signed = (claims: Record<string, unknown>) =>
      new SignJWT({ ...base, ...claims }).setProtectedHeader({ alg: "HS256" }).sign(key);
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const good = await signed({});
    return {
      "alg none": `${b64({ alg: "none", typ: "JWT" })}.${b64(base)}.`,
      expired: await signed({ iat: now - 7200, exp: now - 3600 }),
      "not yet valid": await signed({ nbf: now + 3600 }),
      "wrong audience": await signed({ aud: "another-api" }),
      "signed with another secret": await new SignJWT(base)
        .setProtectedHeader({ alg: "HS256" })
        .sign(new Uint8Array(32).fill(7)),
      "payload swapped": `${good.split(".")[0]}.${b64({ ...base, sub: "eve" })}.${good.split(".")[2]}`,
    };
  };

  test("no token → 401 `WWW-Authenticate: Bearer` on every authenticated route; probes and metrics stay open", async () => {
    await unchanged(async () => {
      for (const r of authenticated("ord_000000000aaaaaaaaaaaaaaaa")) {
        const res = await call(r);
        assertProblem(res, 401, `${r.method} ${r.url}`);
        assert.equal(res.headers.get("www-authenticate"), "Bearer", r.url);
      }
    });
    for (const url of [
      sys.urls.orders,
      sys.urls.inventory,
      sys.urls.payments,
      sys.urls.notifications,
      sys.urls.audit,
    ]) {
      for (const path of ["/health", "/ready", "/metrics"])
        assert.equal((await fetch(`${url}${path}`)).status, 200, `${url}${path} without a token`);
    }
    assert.equal((await fetch(`${sys.urls.orders}/openapi.json`)).status, 200);
  });

  test("random garbage, alg none, expired, not-yet-valid, wrong-audience, forged tokens → 401 invalid_token", async () => {
    const routes = authenticated("ord_000000000bbbbbbbbbbbbbbbb");
    const garbage = fc.oneof(
      fc.stringMatching(/^[A-Za-z0-9\-._~+/]{1,300}=*$/),
      fc
        .tuple(
          fc.base64String({ maxLength: 80 }),
          fc.base64String({ maxLength: 200 }),
          fc.base64String({ maxLength: 60 }),
        )
        .map(([a, b, c]) => `${a}.${b}.${c}`.replace(/=/g, "")),
      fc.string({ maxLength: 100 }),
    );
    await unchanged(async () => {
      await prop(
        fc.tuple(garbage, fc.constantFrom(...routes)),
        async ([token, r]) => {
          const res = await call(r, `Bearer ${token}`);
          assertProblem(res, 401, `${r.method} ${r.url} with ${JSON.stringify(token.slice(0, 60))}`);
          assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer( error="invalid_token"|$)/);
          assert.ok(!res.text.includes(token) || token.length < 8, "the token is not echoed");
        },
        100,
      );
      for (const [what, token] of Object.entries(await wrongTokens())) {
        for (const r of routes) {
          const res = await call(r, `Bearer ${token}`);
          assertProblem(res, 401, `${what}: ${r.method} ${r.url}`);
          assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer error="invalid_token"/, what);
          assert.ok(!res.text.includes(token.split(".")[1]!), `${what}: the token is not echoed`);
        }
      }
    });
  });

  test("another customer's order is 404 (as an unknown one), their list is refused, an operator reads both", async () => {
    const pair = fc
      .tuple(fc.stringMatching(/^[a-z0-9-]{1,20}$/), fc.stringMatching(/^[a-z0-9-]{1,20}$/))
      .filter(([a, b]) => a !== b && !a.startsWith("decline-"));
    await prop(
      pair,
      async ([owner, other]) => {
        const placed = await sys.placeOrder(orderOf(owner));
        assert.equal(placed.status, 202, placed.body);
        const id = placed.body.orderId as string;
        const asOwner = await customerAuth(owner);
        const asOther = await customerAuth(other);
        const theirs = await call(
          { url: `${sys.urls.orders}/orders/${id}`, method: "GET" },
          asOther.authorization,
        );
        const unknown = await call(
          { url: `${sys.urls.orders}/orders/ord_000000000cccccccccccccccc`, method: "GET" },
          asOther.authorization,
        );
        assertProblem(theirs, 404, "another customer's order");
        const cancelTheirs = await call(
          { url: `${sys.urls.orders}/orders/${id}/cancel`, method: "POST" },
          asOther.authorization,
        );
        assertProblem(cancelTheirs, 404, "cancelling another customer's order");
        assert.equal(cancelTheirs.json.type, unknown.json.type, "answered as an unknown order");
        assert.equal(theirs.json.type, unknown.json.type, "answered as an unknown order");
        assert.equal(theirs.json.title, unknown.json.title);
        const own = await call(
          { url: `${sys.urls.orders}/orders/${id}`, method: "GET" },
          asOwner.authorization,
        );
        assert.equal(own.status, 200);
        assert.equal(own.json.customerId, owner);
        const list = await call(
          { url: `${sys.urls.orders}/orders?customerId=${encodeURIComponent(owner)}`, method: "GET" },
          asOther.authorization,
        );
        assertProblem(list, 403, "another customer's list");
        assert.match(list.json.type, /customer-mismatch$/);
        const mine = await call(
          { url: `${sys.urls.orders}/orders?limit=100`, method: "GET" },
          asOther.authorization,
        );
        assert.equal(mine.status, 200);
        assert.ok(
          (mine.json.orders as { customerId: string }[]).every((o) => o.customerId === other),
          "a customer's list holds only their orders",
        );
        const op = await operatorAuth();
        assert.equal(
          (await call({ url: `${sys.urls.orders}/orders/${id}`, method: "GET" }, op.authorization)).status,
          200,
        );
        const byOp = await call(
          { url: `${sys.urls.orders}/orders?customerId=${encodeURIComponent(owner)}`, method: "GET" },
          op.authorization,
        );
        assert.ok((byOp.json.orders as { orderId: string }[]).some((o) => o.orderId === id));
        // A body naming someone else is refused, and places nothing.
        const n0 = await ordersCount();
        const mismatch = await post(JSON.stringify(orderOf(owner)), { ...JSON_CT, ...asOther });
        assertProblem(mismatch, 403, "a body naming another customer");
        assert.match(mismatch.json.type, /customer-mismatch$/);
        assert.equal(await ordersCount(), n0);
      },
      10,
    );
    await settled();
  });

  test("a customer's token on operations endpoints → 403; an operator's is let through", async () => {
    const placed = await sys.placeOrder(orderOf("ops-probe"));
    assert.equal(placed.status, 202);
    const id = placed.body.orderId as string;
    await sys.waitForTerminal(id);
    await unchanged(async () => {
      for (const r of operations(id)) {
        const customer = await call(r, (await customerAuth("ops-probe")).authorization);
        assertProblem(customer, 403, `customer: ${r.method} ${r.url}`);
        assert.match(customer.headers.get("www-authenticate") ?? "", /insufficient_scope/);
        // An operator is let through (a reset is not run: it would wipe the simulators' records of this system).
        if ("destructive" in r) continue;
        const operator = await call(r, (await operatorAuth()).authorization);
        assert.ok(
          operator.status !== 401 && operator.status !== 403 && operator.status < 500,
          `operator: ${r.method} ${r.url} → ${operator.status} ${operator.text.slice(0, 200)}`,
        );
      }
    });
  });
});
