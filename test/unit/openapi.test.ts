/**
 * The orders API's OpenAPI document, as the running service serves it at /openapi.json, is a valid OpenAPI 3.1
 * document (checked by @apidevtools/swagger-parser against the specification's schema), declares every error
 * response as `application/problem+json` with the problem schema, and says what the service really sends:
 * actual error answers of the running routes have that content type and pass the declared schema.
 *
 * Orders runs in-process through its real `startService` composition root against a real nats-server (no
 * other service: with an empty catalog every SKU is unknown, which is all the error cases need).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import SwaggerParser from "@apidevtools/swagger-parser";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { startService } from "../../src/lib/service.js";
import { PROBLEM_CONTENT_TYPE, ProblemSchema, type ProblemDocument } from "../../src/lib/http/problem.js";
import { createOrdersService } from "../../src/services/orders/service.js";
import { definition as inventoryDefinition } from "../../src/services/inventory/service.js";
import { startNatsServer, type NatsServer } from "../helpers/nats.js";
import { AUTH_ENV, customerAuth, operatorAuth } from "../helpers/auth.js";
import { customerOf } from "../helpers/system.js";

const METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"] as const;

let nats: NatsServer;
let orders: { url: string; stop(): Promise<boolean> };
let dir: string;
/** The served document, as fetched (a fresh copy per call: the parser dereferences in place). */
let served: () => any;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shopstream-openapi-"));
  nats = await startNatsServer();
  orders = await startService(createOrdersService(), {
    ...AUTH_ENV,
    NATS_URL: nats.url,
    PORT: "0",
    LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
    DATA_DIR: join(dir, "data"),
  });
  const res = await fetch(`${orders.url}/openapi.json`);
  assert.equal(res.status, 200);
  const text = await res.text();
  served = () => JSON.parse(text);
});
after(async () => {
  await orders?.stop();
  await nats?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Every (path, method, status, response) of a document. */
function responsesOf(doc: any): { path: string; method: string; status: string; response: any }[] {
  const out: { path: string; method: string; status: string; response: any }[] = [];
  for (const [path, item] of Object.entries<any>(doc.paths ?? {}))
    for (const method of METHODS)
      for (const [status, response] of Object.entries<any>(item[method]?.responses ?? {}))
        out.push({ path, method, status, response });
  return out;
}

/** The parser's verdict on a document: undefined when valid, else its error message. */
async function validationError(doc: unknown): Promise<string | undefined> {
  try {
    await SwaggerParser.validate(doc as never);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

describe("orders OpenAPI document", () => {
  test("the served document passes @apidevtools/swagger-parser's validation (OpenAPI 3.1)", async () => {
    const doc = served();
    assert.equal(doc.openapi, "3.1.0");
    assert.deepEqual(Object.keys(doc.paths).sort(), [
      "/customers/{id}/personal-data",
      "/orders",
      "/orders/{id}",
      "/orders/{id}/cancel",
      "/orders/{id}/events",
    ]);
    assert.equal(await validationError(doc), undefined);
  });

  test("the validator rejects broken documents", async () => {
    const cases: [string, (doc: any) => void, RegExp][] = [
      [
        "a response without its required description",
        (d) => delete d.paths["/orders/{id}"].get.responses["404"].description,
        /description/,
      ],
      ["no info", (d) => delete d.info, /info/],
      [
        "an operation's $ref to nowhere",
        (d) => (d.paths["/orders/{id}"].get.responses["404"] = { $ref: "#/components/responses/Nope" }),
        /Nope|resolve|not found|missing/i,
      ],
      [
        "a parameter in an unknown place",
        (d) => (d.paths["/orders/{id}"].get.parameters[0].in = "body"),
        /in|parameter/i,
      ],
    ];
    for (const [what, breakIt, message] of cases) {
      const doc = served();
      breakIt(doc);
      const error = await validationError(doc);
      assert.ok(error, `${what}: rejected`);
      assert.match(error, message, what);
    }
  });

  test("every 4xx and 5xx response is declared application/problem+json with the problem schema", () => {
    const errors = responsesOf(served()).filter((r) => /^[45]/.test(r.status));
    // Not vacuous: each operation declares its error responses.
    const operations: [string, string][] = [
      ["/orders", "post"],
      ["/orders", "get"],
      ["/orders/{id}", "get"],
      ["/customers/{id}/personal-data", "delete"],
      ["/orders/{id}/cancel", "post"],
    ];
    for (const [path, method] of operations)
      assert.ok(
        errors.some((r) => r.path === path && r.method === method && r.status === "400"),
        `${method.toUpperCase()} ${path} declares a 400`,
      );
    const problemSchema = JSON.parse(JSON.stringify(ProblemSchema));
    for (const { path, method, status, response } of errors) {
      const where = `${method.toUpperCase()} ${path} ${status}`;
      assert.deepEqual(
        Object.keys(response.content ?? {}),
        [PROBLEM_CONTENT_TYPE],
        `${where}: content types`,
      );
      assert.deepEqual(response.content[PROBLEM_CONTENT_TYPE].schema, problemSchema, `${where}: schema`);
      assert.notEqual(response.description, "Default Response", `${where}: described`);
    }
  });

  test("actual error answers are application/problem+json and pass the schema the document declares", async () => {
    const doc = (await SwaggerParser.dereference(served())) as any;
    const ajv = new Ajv2020({ strict: true, allErrors: true });
    addFormats.default(ajv);
    const json = { "content-type": "application/json" };
    const order = {
      customerId: "cus_1",
      email: "ada@example.com",
      items: [{ sku: "SKU-NONE", quantity: 1 }],
    };
    const cases: {
      what: string;
      path: string;
      route: string;
      init?: RequestInit;
      status: number;
      fields?: boolean;
      /** Whose token: "operator", "nobody" (none) or a customer id (default: the body's customer, else a default one). */
      as?: string;
    }[] = [
      {
        what: "a body failing the schema",
        path: "/orders",
        route: "/orders",
        init: { method: "POST", headers: json, body: "{}" },
        status: 400,
        fields: true,
      },
      {
        what: "malformed JSON",
        path: "/orders",
        route: "/orders",
        init: { method: "POST", headers: json, body: "{" },
        status: 400,
      },
      {
        what: "an unknown SKU",
        path: "/orders",
        route: "/orders",
        init: { method: "POST", headers: json, body: JSON.stringify(order) },
        status: 422,
        fields: true,
      },
      {
        what: "an unsupported media type",
        path: "/orders",
        route: "/orders",
        init: { method: "POST", headers: { "content-type": "application/xml" }, body: "<order/>" },
        status: 415,
      },
      {
        what: "a body over the limit",
        path: "/orders",
        route: "/orders",
        init: {
          method: "POST",
          headers: json,
          body: JSON.stringify({ ...order, customerId: "x".repeat(70_000) }),
        },
        status: 413,
      },
      { what: "an unknown order", path: "/orders/ord_unknown", route: "/orders/{id}", status: 404 },
      {
        what: "the live status of an unknown order",
        path: "/orders/ord_unknown/events",
        route: "/orders/{id}/events",
        status: 404,
      },
      {
        what: "a malformed Last-Event-ID",
        path: "/orders/ord_unknown/events",
        route: "/orders/{id}/events",
        init: { headers: { "last-event-id": "x" } },
        status: 400,
        fields: true,
      },
      {
        what: "cancelling an unknown order",
        path: "/orders/ord_unknown/cancel",
        route: "/orders/{id}/cancel",
        init: { method: "POST" },
        status: 404,
      },
      {
        what: "cancelling with a body",
        path: "/orders/ord_unknown/cancel",
        route: "/orders/{id}/cancel",
        init: { method: "POST", headers: json, body: '{"reason":"x"}' },
        status: 400,
        fields: true,
      },
      {
        what: "cancelling a malformed order id",
        path: "/orders/a.b/cancel",
        route: "/orders/{id}/cancel",
        init: { method: "POST" },
        status: 400,
        fields: true,
      },
      { what: "a malformed order id", path: "/orders/a.b", route: "/orders/{id}", status: 400, fields: true },
      {
        what: "an operator's list without customerId",
        path: "/orders?limit=5",
        route: "/orders",
        status: 400,
        fields: true,
        as: "operator",
      },
      {
        what: "no bearer token",
        path: "/orders/ord_unknown",
        route: "/orders/{id}",
        status: 401,
        as: "nobody",
      },
      {
        what: "another customer's id in the body",
        path: "/orders",
        route: "/orders",
        init: { method: "POST", headers: json, body: JSON.stringify(order) },
        status: 403,
        as: "cus_2",
      },
      {
        what: "another customer's list",
        path: "/orders?customerId=cus_1",
        route: "/orders",
        status: 403,
        as: "cus_2",
      },
      {
        what: "an erasure by a customer",
        path: "/customers/cus_1/personal-data",
        route: "/customers/{id}/personal-data",
        init: { method: "DELETE" },
        status: 403,
        as: "cus_1",
      },
      {
        what: "an erasure without a token",
        path: "/customers/cus_1/personal-data",
        route: "/customers/{id}/personal-data",
        init: { method: "DELETE" },
        status: 401,
        as: "nobody",
      },
      {
        what: "an erasure of a malformed customer id",
        path: "/customers/a%01b/personal-data",
        route: "/customers/{id}/personal-data",
        init: { method: "DELETE" },
        status: 400,
        fields: true,
        as: "operator",
      },
    ];
    for (const c of cases) {
      const method = (c.init?.method ?? "GET").toLowerCase();
      const auth =
        c.as === "nobody"
          ? {}
          : c.as === "operator"
            ? await operatorAuth()
            : await customerAuth(c.as ?? customerOf(c.init?.body));
      const res = await fetch(`${orders.url}${c.path}`, {
        ...c.init,
        headers: { ...(c.init?.headers as Record<string, string> | undefined), ...auth },
      });
      const text = await res.text();
      const where = `${c.what}: ${method.toUpperCase()} ${c.path} → ${res.status} ${text.slice(0, 300)}`;
      assert.equal(res.status, c.status, where);
      assert.equal(res.headers.get("content-type")?.split(";")[0], PROBLEM_CONTENT_TYPE, where);
      const declared = doc.paths[c.route]?.[method]?.responses?.[String(c.status)];
      assert.ok(declared, `${where}: the status is declared`);
      const schema = declared.content?.[PROBLEM_CONTENT_TYPE]?.schema;
      assert.ok(schema, `${where}: declared as ${PROBLEM_CONTENT_TYPE}`);
      const body: any = JSON.parse(text);
      const validate = ajv.compile<ProblemDocument>(schema);
      assert.ok(validate(body), `${where}: ${ajv.errorsText(validate.errors)}`);
      assert.equal(body.status, res.status, where);
      // The serializer the schema compiles to keeps the field-level errors.
      if (c.fields) assert.ok((body.errors?.length ?? 0) > 0, `${where}: errors listed`);
    }
    // Not vacuous: the declared schema refuses what is not a problem document.
    const schema = doc.paths["/orders/{id}"].get.responses["404"].content[PROBLEM_CONTENT_TYPE].schema;
    const validate = ajv.compile(schema);
    assert.equal(validate({ orderId: "ord_1", status: "PENDING" }), false);
    assert.equal(validate({ type: "not a uri", title: "t", status: 404, detail: "d" }), false);
    assert.equal(validate({ type: "https://x/y", title: "t", status: 404, detail: "d", extra: 1 }), false);
  });
});

describe("inventory OpenAPI document", () => {
  test("is a valid OpenAPI 3.1 document with the operator catalog routes, every error problem+json", async () => {
    const inventory = await startService(inventoryDefinition, {
      ...AUTH_ENV,
      NATS_URL: nats.url,
      PORT: "0",
      LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
      DATA_DIR: join(dir, "inventory-data"),
    });
    try {
      const res = await fetch(`${inventory.url}/openapi.json`);
      assert.equal(res.status, 200);
      const doc = (await res.json()) as any;
      assert.equal(await validationError(structuredClone(doc)), undefined);
      assert.deepEqual(Object.keys(doc.paths).sort(), [
        "/inventory/",
        "/inventory/products",
        "/inventory/reservations/{orderId}",
        "/inventory/{sku}",
        "/inventory/{sku}/adjustments",
        "/inventory/{sku}/price",
      ]);
      const errors = responsesOf(doc).filter((r) => /^[45]/.test(r.status));
      assert.ok(errors.length > 10);
      for (const { path, method, status, response } of errors)
        assert.deepEqual(
          Object.keys(response.content ?? {}),
          [PROBLEM_CONTENT_TYPE],
          `${method} ${path} ${status}`,
        );
    } finally {
      await inventory.stop();
    }
  });
});
