/**
 * The events documentation stays true: docs/asyncapi.json and docs/events.md are exactly what
 * scripts/gen-events-doc.ts generates from the code today, their examples pass the catalog's schemas, and the
 * AsyncAPI document holds together (every reference resolves, every event and consumer is there).
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Value } from "@sinclair/typebox/value";
import type { TSchema } from "@sinclair/typebox";
import "../../src/lib/formats.js";
import { catalog, eventTypes, Streams } from "../../src/lib/events/catalog.js";
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
    for (const type of eventTypes) assert.equal(EXAMPLES[type].orderId, placed.orderId, type);
  });

  test("the AsyncAPI document holds together", async () => {
    const doc = JSON.parse(await readFile(ASYNCAPI_PATH, "utf8")) as Record<string, any>;
    assert.equal(doc["asyncapi"], "3.0.0");
    const resolve = (ref: string): unknown => {
      assert.match(ref, /^#\//, ref);
      let node: any = doc;
      for (const part of ref.slice(2).split("/")) {
        node = node?.[part.replace(/~1/g, "/").replace(/~0/g, "~")];
        assert.ok(node !== undefined, `unresolved ${ref}`);
      }
      return node;
    };
    // Every $ref anywhere resolves.
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node && typeof node === "object") {
        for (const [k, v] of Object.entries(node)) {
          if (k === "$ref") resolve(v as string);
          else walk(v);
        }
      }
    };
    walk(doc);

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
    // filter takes; each operation's messages are on its channel.
    for (const [id, op] of Object.entries(operations as Record<string, any>)) {
      assert.ok(op.action === "send" || op.action === "receive", id);
      const channelRef = op.channel.$ref as string;
      for (const m of op.messages as { $ref: string }[])
        assert.ok(m.$ref.startsWith(`${channelRef}/messages/`), `${id}: ${m.$ref} is on ${channelRef}`);
    }
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
