/**
 * The events documentation stays true: docs/asyncapi.json and docs/events.md are exactly what
 * scripts/gen-events-doc.ts generates from the code today, their examples pass the catalog's schemas, the
 * AsyncAPI document is valid for the official parser (`@asyncapi/parser`: the AsyncAPI 3.0 schema, every
 * reference resolved, its semantic rules), and every stream, event, publisher and consumer is in it.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { DiagnosticSeverity, Parser } from "@asyncapi/parser";
import { Value } from "@sinclair/typebox/value";
import type { TSchema } from "@sinclair/typebox";
import "../../src/lib/formats.js";
import { catalog, eventTypes, isSkuEventType, Streams } from "../../src/lib/events/catalog.js";
import { EnvelopeSchema } from "../../src/lib/events/envelope.js";
import { decodeEvent, encodeEvent, validateEvent } from "../../src/lib/events/codec.js";
import { streamSpecs } from "../../src/lib/service.js";
import {
  ASYNCAPI_PATH,
  EXAMPLES,
  MARKDOWN_PATH,
  ROOT,
  consumersOf,
  exampleEvent,
  parseArchitecture,
  renderEventDocs,
  subjectMatches,
} from "../../scripts/gen-events-doc.js";

const topology = parseArchitecture(await readFile(`${ROOT}docs/architecture.md`, "utf8"));
const plain = (s: unknown): any => JSON.parse(JSON.stringify(s));

const parser = new Parser();
/** What the official AsyncAPI parser makes of a document: the model (when valid) and its error diagnostics. */
async function parseAsyncApi(text: string) {
  const { document, diagnostics } = await parser.parse(text);
  const errors = diagnostics
    // Compared as numbers: the diagnostics' enum and the exported one come from two copies of @stoplight/types.
    .filter((d) => Number(d.severity) === Number(DiagnosticSeverity.Error))
    .map((d) => `${d.code} at /${d.path.join("/")}: ${d.message}`);
  return { document, errors };
}

describe("events documentation", () => {
  test("docs/asyncapi.json and docs/events.md are what `npm run docs:events` generates", async () => {
    const { asyncapi, markdown } = await renderEventDocs();
    const hint = "out of date: run `npm run docs:events` and commit the result";
    assert.equal(await readFile(ASYNCAPI_PATH, "utf8"), asyncapi, `docs/asyncapi.json is ${hint}`);
    assert.equal(await readFile(MARKDOWN_PATH, "utf8"), markdown, `docs/events.md is ${hint}`);
  });

  test("every example passes the catalog's schema of its type, and the whole codec", () => {
    for (const type of eventTypes) {
      const data = EXAMPLES[type];
      assert.ok(
        Value.Check(catalog[type].data as TSchema, data),
        `${type} example data: ${[...Value.Errors(catalog[type].data as TSchema, data)].map((e) => `${e.path} ${e.message}`).join("; ")}`,
      );
      const event = exampleEvent(type, topology.publisher[type]);
      assert.ok(Value.Check(EnvelopeSchema, event), `${type} example envelope`);
      assert.deepEqual(validateEvent(structuredClone(event)), event);
      assert.deepEqual(decodeEvent(encodeEvent(event)), event, `${type} round-trips`);
    }
    // The check is not vacuous: a broken example is refused.
    const broken = structuredClone(exampleEvent("OrderPlaced", "orders")) as unknown as {
      data: { total: unknown };
    };
    broken.data.total = "2899";
    assert.throws(() => validateEvent(broken), /EVENT_SCHEMA_INVALID|OrderPlaced data/);
  });

  test("the examples tell one consistent order: totals are the sum of the lines", () => {
    const placed = EXAMPLES.OrderPlaced;
    const sum = placed.items.reduce((s, l) => s + l.quantity * l.unitPrice, 0);
    assert.equal(placed.total, sum);
    assert.equal(EXAMPLES.StockReserved.total, sum);
    assert.equal(EXAMPLES.PaymentCaptured.amount, sum);
    assert.equal(EXAMPLES.OrderConfirmed.total, sum);
    for (const type of eventTypes) {
      const data = EXAMPLES[type] as { orderId?: string; sku?: string };
      if (isSkuEventType(type)) assert.equal(data.sku, "SKU-A", type);
      else assert.equal(data.orderId, placed.orderId, type);
    }
  });

  test("the generated AsyncAPI document passes @asyncapi/parser without an error", async () => {
    const { asyncapi } = await renderEventDocs();
    const { document, errors } = await parseAsyncApi(asyncapi);
    assert.deepEqual(errors, [], "error diagnostics");
    assert.ok(document, "the parser returns the document");
    assert.equal(document.version(), "3.0.0");
    // The parser's model, references resolved, has every message and every operation's channel.
    assert.deepEqual(
      document
        .components()
        .messages()
        .all()
        .map((m) => m.id())
        .sort(),
      [...eventTypes, "DeadLetter"].sort(),
    );
    for (const op of document.operations().all())
      assert.equal(op.channels().all().length, 1, `${op.id()} is on one channel`);
  });

  test("@asyncapi/parser rejects a broken AsyncAPI document", async () => {
    const { asyncapi } = await renderEventDocs();
    const cases: [string, (doc: any) => void, RegExp][] = [
      [
        "a message payload $ref to nowhere",
        (d) =>
          (d.components.messages.OrderPlaced.payload.allOf[1].properties.data.$ref =
            "#/components/schemas/Nope"),
        /^invalid-ref at \/components\/messages\/OrderPlaced\/payload\/.*Nope.* does not exist/,
      ],
      [
        "an operation without its required action",
        (d) => delete d.operations["orders-publish-orders"].action,
        /at \/operations\/orders-publish-orders: .*required property "action"/,
      ],
      ["no info", (d) => delete d.info, /required property "info"/],
      [
        "an operation sending a message of another channel",
        (d) =>
          (d.operations["orders-publish-orders"].messages = [{ $ref: "#/channels/dlq/messages/DeadLetter" }]),
        /^asyncapi3-operation-messages-from-referred-channel at \/operations\/orders-publish-orders\/messages\/0/,
      ],
      [
        "a schema of no JSON Schema type",
        (d) => (d.components.schemas.OrderPlacedData.type = "objekt"),
        /at \/components\/schemas\/OrderPlacedData\/type: .*must be equal to one of the allowed values/,
      ],
    ];
    for (const [what, breakIt, expected] of cases) {
      const doc = JSON.parse(asyncapi);
      breakIt(doc);
      const { document, errors } = await parseAsyncApi(JSON.stringify(doc));
      assert.equal(document, undefined, `${what}: no document`);
      assert.ok(
        errors.some((e) => expected.test(e)),
        `${what}: an error matching ${expected}, got:\n${errors.join("\n")}`,
      );
    }
  });

  test("the AsyncAPI document has every stream, event, publisher and consumer", async () => {
    const doc = JSON.parse(await readFile(ASYNCAPI_PATH, "utf8")) as Record<string, any>;
    assert.equal(doc["asyncapi"], "3.0.0");

    const { channels, operations, components } = doc as { channels: any; operations: any; components: any };
    // Channels: one per stream, its address a subject pattern of the stream.
    assert.deepEqual(Object.keys(channels).sort(), streamSpecs.map((s) => s.name.toLowerCase()).sort());
    for (const spec of streamSpecs) {
      const ch = channels[spec.name.toLowerCase()];
      const pattern = (ch.address as string).replace(/\{[^}]+\}/g, "*");
      assert.ok(
        spec.subjects.some((s) => subjectMatches(s, pattern)),
        `${spec.name}: ${ch.address} is under ${spec.subjects.join()}`,
      );
      for (const p of (ch.address as string).match(/\{[^}]+\}/g) ?? [])
        assert.ok(ch.parameters?.[p.slice(1, -1)], `${spec.name}: parameter ${p} described`);
    }
    // Messages: one per event type, with the catalog's own data schema and an example that passes it.
    for (const type of eventTypes) {
      const def = catalog[type];
      const msg = components.messages[type];
      assert.ok(msg, `message ${type}`);
      assert.deepEqual(
        components.schemas[`${type}Data`],
        plain(def.data),
        `${type}: the catalog's data schema`,
      );
      assert.ok(channels[def.stream.toLowerCase()].messages[type], `${type} on the ${def.stream} channel`);
      const example = msg.examples[0].payload;
      assert.deepEqual(example, plain(exampleEvent(type, topology.publisher[type])));
      assert.ok(Value.Check(def.data as TSchema, example.data), `${type}: example data passes`);
      assert.deepEqual(validateEvent(example), example);
      assert.equal(msg.headers.properties["Shopstream-Type"].const, type);
    }
    assert.deepEqual(components.schemas["Envelope"].required, plain(EnvelopeSchema).required);
    // Operations: every publisher sends what it publishes; every consumer of the table receives what its
    // filter takes (that each operation's messages are on its channel is the parser's rule).
    for (const type of eventTypes) {
      const sends = Object.entries(operations as Record<string, any>).filter(
        ([, op]) =>
          op.action === "send" &&
          op.messages.some((m: { $ref: string }) => m.$ref.endsWith(`/messages/${type}`)),
      );
      assert.deepEqual(
        sends.map(([id]) => id),
        [`${topology.publisher[type]}-publish-${catalog[type].stream.toLowerCase()}`],
        `${type} is sent by its publisher only`,
      );
      for (const c of consumersOf(topology, type)) {
        const op = operations[c.durable];
        assert.equal(op?.action, "receive", `${c.durable} receives`);
        assert.ok(
          op.messages.some((m: { $ref: string }) => m.$ref.endsWith(`/messages/${type}`)),
          `${c.durable} receives ${type}`,
        );
      }
    }
    const dlqReceivers = Object.values(operations as Record<string, any>).filter(
      (op) => op.action === "receive" && op.channel.$ref === `#/channels/${Streams.DLQ.toLowerCase()}`,
    );
    assert.ok(dlqReceivers.length > 0, "someone reads the DLQ");
  });

  test("the architecture table names a publisher for every event and a stream for every consumer", () => {
    assert.deepEqual(Object.keys(topology.publisher).sort(), [...eventTypes].sort());
    for (const type of eventTypes) {
      // The publisher owns the stream: nobody else publishes to it.
      const others = eventTypes.filter(
        (t) =>
          catalog[t].stream === catalog[type].stream && topology.publisher[t] !== topology.publisher[type],
      );
      assert.deepEqual(others, [], `${catalog[type].stream} has one writer`);
    }
    for (const c of topology.consumers)
      assert.ok(
        streamSpecs.some((s) => s.name === c.stream),
        `${c.durable} on ${c.stream}`,
      );
    assert.throws(() => parseArchitecture("# nothing here"), /The pieces/);
  });
});
