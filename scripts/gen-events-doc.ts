/**
 * Generates the events documentation from the code, so that it stays true:
 *
 * - `docs/asyncapi.json`: an AsyncAPI 3.0 document — one channel per stream subject pattern, one message per
 *   event type (the envelope with the type's TypeBox data schema as JSON Schema, headers, an example), and
 *   send/receive operations per service and durable consumer;
 * - `docs/events.md`: the same for humans — the envelope, the subjects, and a section per event with its
 *   owner stream, the consumers it is delivered to, its data fields and an example.
 *
 * Sources: the catalog (`src/lib/events/catalog.ts`), the envelope (`src/lib/events/envelope.ts`), the stream
 * declarations (`src/lib/service.ts`), the message headers (`src/lib/messaging/headers.ts`) and the table of
 * processes in `docs/architecture.md` (who publishes what, which durable consumer takes which filter). A
 * disagreement between them (an event nobody publishes, a filter no stream carries) stops the generation.
 *
 * `npm run docs:events` writes both files; `test/unit/events-doc.test.ts` regenerates them in memory and fails
 * when the committed ones differ.
 */
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as prettier from "prettier";
import {
  catalog,
  eventTypes,
  isSkuEventType,
  previousVersions,
  Streams,
  type EventData,
  type EventType,
} from "../src/lib/events/catalog.js";
import { EnvelopeSchema, makeEvent, subjectOf, type Envelope } from "../src/lib/events/envelope.js";
import { Hdr } from "../src/lib/messaging/headers.js";
import { streamSpecs } from "../src/lib/service.js";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const ASYNCAPI_PATH = `${ROOT}docs/asyncapi.json`;
export const MARKDOWN_PATH = `${ROOT}docs/events.md`;
const ARCHITECTURE_PATH = `${ROOT}docs/architecture.md`;

// ---------------------------------------------------------------------------------------------------
// Hand-written parts: what the schemas do not say
// ---------------------------------------------------------------------------------------------------

/** What each envelope field means (every field of `EnvelopeSchema` must be here). */
export const ENVELOPE_NOTES: Record<string, string> = {
  id: "Deterministic event id, `<orderId>:<EventType>` (plus `:<suffix>` where one order has several events of a type; `<sku>:<EventType>[:<suffix>]` for the catalog events). Also the `Nats-Msg-Id`, so a retried or redone publish is stored once.",
  type: "The event type: one of the catalog's.",
  version:
    "Schema version of `data` for this type. Consumers read the current and the previous versions (upcast to the current one); a newer one is kept for a replica that reads it, then dead-lettered (see Versions).",
  aggregate_id:
    "The order the event is about (`data.orderId` must be the same); for the catalog events (ProductAdded, PriceChanged, StockAdjusted) the SKU (`data.sku`).",
  data: "The type's payload (see each event).",
  timestamp: "When the event was made (ISO 8601, UTC).",
  trace_id: "W3C trace id: one order is one trace across every service.",
  causation_id: "The id of the event this one is a consequence of; `null` at the edge (the API).",
  source: "The publishing service.",
};

/** Notes on data fields, by field name (optional). */
const FIELD_NOTES: Record<string, string> = {
  orderId: "the order: equals the envelope's `aggregate_id`",
  customerId: "the customer, as given to the API",
  email:
    "the customer's address sealed under the customer's data key (`pii:v1:…`; unreadable once erased: `DELETE /customers/{id}/personal-data`)",
  total: "minor units (cents)",
  amount: "minor units (cents)",
  unitPrice: "minor units (cents), from the catalog",
  currency: "ISO 4217 code",
  placedAt: "when the API accepted the order",
  timeoutAt: "when a still-PENDING order is cancelled with reason `timeout`",
  reason: "why",
  detail: "free text for people",
  skus: "the SKUs that could not be reserved",
  paymentId: "the gateway's charge id",
  refundId: "the gateway's refund id",
  messageId: "the mail provider's message id",
  kind: "which e-mail",
  sku: "the SKU: equals the envelope's `aggregate_id` (catalog events)",
  price: "unit price in minor units (cents)",
  previousPrice: "the unit price before the change, minor units (cents)",
  revision: "the catalog entry's KV revision this change wrote (orders the changes of one SKU)",
  stock: "units available when the product was added",
  quantity: "units",
  adjustmentId:
    "the operator's Idempotency-Key (or a generated id): one adjustment, applied and published once",
  note: "free text for people",
  operator: "the operator who made the change (the token's `sub`)",
  name: "the product's name",
};

/** Headers of every event message. */
const EVENT_HEADERS: { name: string; description: string; required: boolean }[] = [
  {
    name: "Nats-Msg-Id",
    description: "The event id: the server drops a repeat within the duplicate window.",
    required: true,
  },
  {
    name: Hdr.Type,
    description: "The event type, so a consumer skips a type it does not handle without decoding it.",
    required: true,
  },
  { name: Hdr.TraceParent, description: "W3C trace context of the publishing span.", required: false },
  {
    name: Hdr.Redrive,
    description: "Set on a message redriven from the DLQ: the DLQ sequence it came from.",
    required: false,
  },
];

/** Headers of a DLQ entry (besides the original message's own). */
const DLQ_HEADERS: Record<string, string> = {
  [Hdr.DlqConsumer]: "The durable consumer that gave up on the message.",
  [Hdr.DlqCode]: "Stable error code, e.g. `EVENT_SCHEMA_INVALID`, `EVENT_MALFORMED`, `ORDER_NOT_FOUND`.",
  [Hdr.DlqError]: "The error, one line (at most 1024 characters).",
  [Hdr.DlqAttempts]: "Delivery attempts made (1 for a non-retryable error).",
  [Hdr.DlqStream]: "The original stream.",
  [Hdr.DlqSubject]: "The original subject.",
  [Hdr.DlqSequence]: "The original stream sequence.",
  [Hdr.DlqAt]: "When it was dead-lettered (ISO 8601).",
  [Hdr.DlqBodyOmitted]:
    "Present when the body was too large to copy with these headers: its size in bytes (the body stays in the original stream at the recorded sequence).",
};

const EXAMPLE_ORDER = "ord_0m5x2k9qa4f2c81d93b7e6a05";
const EXAMPLE_SKU = "SKU-A";
const EXAMPLE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const EXAMPLE_TIME = new Date("2025-06-02T09:30:00.000Z");

/** An example `data` for every event type: one order's confirmed saga, plus the unhappy outcomes. */
export const EXAMPLES: { [T in EventType]: EventData<T> } = {
  OrderPlaced: {
    orderId: EXAMPLE_ORDER,
    customerId: "cus_42",
    email: "pii:v1:CQkJCQkJCQkJCQkJCQkJCQ:AwMDAwMDAwMDAwMD:RJrCQz9QPy8KLCZyiDiSxHFQy0XrIJtAoQ1E8R81nQ",
    items: [
      { sku: "SKU-A", quantity: 2, unitPrice: 1250 },
      { sku: "SKU-B", quantity: 1, unitPrice: 399 },
    ],
    total: 2899,
    currency: "EUR",
    placedAt: "2025-06-02T09:30:00.000Z",
    timeoutAt: "2025-06-02T09:31:00.000Z",
  },
  StockReserved: {
    orderId: EXAMPLE_ORDER,
    customerId: "cus_42",
    items: [
      { sku: "SKU-A", quantity: 2 },
      { sku: "SKU-B", quantity: 1 },
    ],
    total: 2899,
    currency: "EUR",
    expiresAt: "2025-06-02T09:31:00.000Z",
  },
  StockRejected: { orderId: EXAMPLE_ORDER, reason: "out_of_stock", skus: ["SKU-B"] },
  PaymentCaptured: { orderId: EXAMPLE_ORDER, paymentId: "ch_7f3a9c", amount: 2899, currency: "EUR" },
  PaymentDeclined: { orderId: EXAMPLE_ORDER, reason: "card_declined" },
  OrderConfirmed: { orderId: EXAMPLE_ORDER, paymentId: "ch_7f3a9c", total: 2899, currency: "EUR" },
  OrderCancelled: { orderId: EXAMPLE_ORDER, reason: "payment_declined", detail: "card_declined" },
  StockCommitted: {
    orderId: EXAMPLE_ORDER,
    items: [
      { sku: "SKU-A", quantity: 2 },
      { sku: "SKU-B", quantity: 1 },
    ],
  },
  StockReleased: {
    orderId: EXAMPLE_ORDER,
    items: [
      { sku: "SKU-A", quantity: 2 },
      { sku: "SKU-B", quantity: 1 },
    ],
  },
  PaymentRefunded: {
    orderId: EXAMPLE_ORDER,
    paymentId: "ch_7f3a9c",
    refundId: "re_19b2d4",
    amount: 2899,
    currency: "EUR",
  },
  NotificationSent: { orderId: EXAMPLE_ORDER, kind: "order_confirmed", messageId: "msg_5d0e81" },
  NotificationWithheld: { orderId: EXAMPLE_ORDER, kind: "order_confirmed", reason: "personal_data_erased" },
  ProductAdded: {
    sku: EXAMPLE_SKU,
    name: "Coffee mug",
    price: 1250,
    currency: "EUR",
    stock: 100,
    operator: "ops-ada",
  },
  PriceChanged: {
    sku: EXAMPLE_SKU,
    price: 1350,
    previousPrice: 1250,
    currency: "EUR",
    revision: 7,
    operator: "ops-ada",
  },
  StockAdjusted: {
    sku: EXAMPLE_SKU,
    adjustmentId: "restock-2025-06-02",
    quantity: 50,
    reason: "restock",
    note: "delivery 4711",
    operator: "ops-ada",
  },
};

/** The event each example is a consequence of (its causation). */
const CAUSES: { [T in EventType]: EventType | null } = {
  OrderPlaced: null,
  StockReserved: "OrderPlaced",
  StockRejected: "OrderPlaced",
  PaymentCaptured: "StockReserved",
  PaymentDeclined: "StockReserved",
  OrderConfirmed: "PaymentCaptured",
  OrderCancelled: "PaymentDeclined",
  StockCommitted: "OrderConfirmed",
  StockReleased: "OrderCancelled",
  PaymentRefunded: "OrderCancelled",
  NotificationSent: "OrderConfirmed",
  NotificationWithheld: "OrderConfirmed",
  ProductAdded: null,
  PriceChanged: null,
  StockAdjusted: null,
};

/** The id suffix of an example event, where its type has several events per aggregate. */
function exampleSuffix(type: EventType): string | undefined {
  if (type === "NotificationSent" || type === "NotificationWithheld")
    return (EXAMPLES[type] as { kind: string }).kind;
  if (type === "PriceChanged") return String(EXAMPLES.PriceChanged.revision);
  if (type === "StockAdjusted") return EXAMPLES.StockAdjusted.adjustmentId;
  return undefined;
}

/** The aggregate placeholder of a type's subject and id: `<orderId>`, or `<sku>` for the catalog events. */
function aggregatePlaceholder(type: EventType): string {
  return isSkuEventType(type) ? "<sku>" : "<orderId>";
}

// ---------------------------------------------------------------------------------------------------
// Reading the sources
// ---------------------------------------------------------------------------------------------------

/** A durable consumer as the architecture table declares it. */
export interface ConsumerDecl {
  service: string;
  durable: string;
  stream: string;
  /** Filter subject; "" = the whole stream. */
  filter: string;
}

/** What docs/architecture.md's table of processes says. */
export interface Topology {
  /** Publishing service of each event type. */
  publisher: Record<EventType, string>;
  consumers: ConsumerDecl[];
  services: string[];
}

/** Does subject (or pattern) `s` fall under filter `f` (`*` one token, `>` the rest)? */
export function subjectMatches(f: string, s: string): boolean {
  if (!f) return true;
  const ft = f.split(".");
  const st = s.split(".");
  for (let i = 0; i < ft.length; i++) {
    if (ft[i] === ">") return st.length > i;
    if (i >= st.length || (ft[i] !== "*" && ft[i] !== st[i])) return false;
  }
  return ft.length === st.length;
}

/** The stream whose subjects take `subject`. */
function streamOfSubject(subject: string): string | undefined {
  return streamSpecs.find((s) => s.subjects.some((p) => subjectMatches(p, subject)))?.name;
}

/** The address of an event type's subject, with `{orderId}` for the order. */
function addressOf(type: EventType): string {
  return subjectOf({ type, aggregate_id: "{orderId}" });
}

/** Parses the table of processes (`## The pieces`) of docs/architecture.md. */
export function parseArchitecture(markdown: string): Topology {
  const section = markdown.split(/^## /m).find((s) => s.startsWith("The pieces"));
  if (!section) throw new Error("docs/architecture.md: no '## The pieces' section");
  const rows = section
    .split("\n")
    .filter((l) => l.startsWith("|"))
    .map((l) =>
      l
        .slice(1, -1)
        .split("|")
        .map((c) => c.trim()),
    )
    .filter((cells) => !/^-+$/.test(cells[0] ?? ""));
  const [header, ...body] = rows;
  if (!header || !/consumes/.test(header[2] ?? "") || !/publishes/.test(header[3] ?? ""))
    throw new Error(`docs/architecture.md: unexpected table header ${JSON.stringify(header)}`);
  const publisher: Partial<Record<EventType, string>> = {};
  const consumers: ConsumerDecl[] = [];
  const services: string[] = [];
  for (const [process = "", , consumes = "", publishes = ""] of body) {
    const service = process.split(/[\s(]/)[0]!;
    const published = publishes === "—" ? [] : publishes.split(",").map((t) => t.trim());
    const declared = [...consumes.matchAll(/`([a-z0-9-]+)`(?:\s*→\s*`([^`]+)`)?/g)];
    if (published.length === 0 && declared.length === 0) continue; // the simulators
    services.push(service);
    for (const t of published) {
      if (!Object.hasOwn(catalog, t))
        throw new Error(`docs/architecture.md: ${service} publishes unknown ${t}`);
      if (publisher[t as EventType]) throw new Error(`docs/architecture.md: ${t} has two publishers`);
      publisher[t as EventType] = service;
    }
    for (const [, durable = "", filter = ""] of declared) {
      const stream = filter
        ? streamOfSubject(filter)
        : streamSpecs.find((s) => durable.endsWith(`-${s.name.toLowerCase()}`))?.name;
      if (!stream)
        throw new Error(`docs/architecture.md: no stream carries ${durable} (${filter || "no filter"})`);
      consumers.push({ service, durable, stream, filter });
    }
  }
  for (const t of eventTypes) {
    if (!publisher[t]) throw new Error(`docs/architecture.md: nobody publishes ${t}`);
  }
  return { publisher: publisher as Record<EventType, string>, consumers, services };
}

/** The JSON Schema keywords the catalog's TypeBox schemas use. */
interface JsonSchema {
  type?: string;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  const?: unknown;
  description?: string;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  format?: string;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  [keyword: string]: unknown;
}

/** Plain JSON Schema of a TypeBox schema (its symbol keys dropped). */
function jsonSchema(schema: unknown): JsonSchema {
  return JSON.parse(JSON.stringify(schema)) as JsonSchema;
}

/** The example envelope of an event type published by `source` (deterministic). */
export function exampleEvent<T extends EventType>(type: T, source: string): Envelope<T> {
  const cause = CAUSES[type];
  return makeEvent(type, EXAMPLES[type] as EventData<T>, {
    aggregateId: isSkuEventType(type) ? EXAMPLE_SKU : EXAMPLE_ORDER,
    source,
    ...(cause
      ? { cause: { id: `${EXAMPLE_ORDER}:${cause}`, trace_id: EXAMPLE_TRACE } }
      : { traceId: EXAMPLE_TRACE }),
    idSuffix: exampleSuffix(type),
    now: EXAMPLE_TIME,
  });
}

/** The consumers an event type is delivered to (their filter takes its subject). */
export function consumersOf(topology: Topology, type: EventType): ConsumerDecl[] {
  const subject = subjectOf({ type, aggregate_id: "x" });
  return topology.consumers.filter(
    (c) => c.stream === catalog[type].stream && subjectMatches(c.filter, subject),
  );
}

// ---------------------------------------------------------------------------------------------------
// AsyncAPI
// ---------------------------------------------------------------------------------------------------

const channelId = (stream: string) => stream.toLowerCase();

/** The AsyncAPI 3.0 document. */
export function buildAsyncApi(topology: Topology): Record<string, unknown> {
  const envelope = jsonSchema(EnvelopeSchema);
  const props = envelope.properties ?? {};
  for (const [k, v] of Object.entries(props)) {
    if (!ENVELOPE_NOTES[k]) throw new Error(`no note for envelope field ${k}`);
    props[k] = { ...v, description: ENVELOPE_NOTES[k] };
  }
  const schemas: Record<string, unknown> = { Envelope: envelope };
  const messages: Record<string, unknown> = {};
  for (const type of eventTypes) {
    const def = catalog[type];
    schemas[`${type}Data`] = jsonSchema(def.data);
    const previous = previousVersions[type] ?? [];
    for (const p of previous) schemas[`${type}DataV${p.version}`] = jsonSchema(p.data);
    const versionShape = (version: number, ref: string) => ({
      type: "object",
      properties: { type: { const: type }, version: { const: version }, data: { $ref: ref } },
    });
    const example = exampleEvent(type, topology.publisher[type]);
    messages[type] = {
      name: type,
      title: type,
      summary: def.description,
      contentType: "application/json",
      headers: {
        type: "object",
        properties: Object.fromEntries(
          EVENT_HEADERS.map((h) => [
            h.name,
            h.name === Hdr.Type
              ? { type: "string", const: type, description: h.description }
              : { type: "string", description: h.description },
          ]),
        ),
        required: EVENT_HEADERS.filter((h) => h.required).map((h) => h.name),
      },
      payload: {
        allOf: [
          { $ref: "#/components/schemas/Envelope" },
          previous.length === 0
            ? versionShape(def.version, `#/components/schemas/${type}Data`)
            : {
                oneOf: [
                  versionShape(def.version, `#/components/schemas/${type}Data`),
                  ...previous.map((p) =>
                    versionShape(p.version, `#/components/schemas/${type}DataV${p.version}`),
                  ),
                ],
              },
        ],
      },
      examples: [
        {
          name: `${type}Example`,
          headers: { "Nats-Msg-Id": example.id, [Hdr.Type]: type },
          payload: example,
        },
      ],
      "x-shopstream": {
        stream: def.stream,
        version: def.version,
        publisher: topology.publisher[type],
        ...(previous.length > 0
          ? {
              previousVersions: previous.map((p) => ({
                version: p.version,
                summary: p.description,
                upcast: p.upcast.toString(),
                downcast: p.downcast.toString(),
              })),
            }
          : {}),
      },
    };
  }
  messages["DeadLetter"] = {
    name: "DeadLetter",
    title: "DeadLetter",
    summary:
      "A message a consumer gave up on (non-retryable, or past its attempts): the original body and headers, with why.",
    contentType: "application/octet-stream",
    headers: {
      type: "object",
      properties: Object.fromEntries(
        Object.entries(DLQ_HEADERS).map(([name, description]) => [name, { type: "string", description }]),
      ),
      required: Object.keys(DLQ_HEADERS).filter((h) => h !== Hdr.DlqBodyOmitted),
    },
    payload: { description: "The original message body, byte for byte (may be anything: it was refused)." },
  };

  const channels: Record<string, unknown> = {};
  for (const spec of streamSpecs) {
    const id = channelId(spec.name);
    const types = eventTypes.filter((t) => catalog[t].stream === spec.name);
    const isDlq = spec.name === Streams.DLQ;
    const address = isDlq
      ? "dlq.{consumer}"
      : spec.name === Streams.ORDERS
        ? "orders.{orderId}"
        : `${id}.{orderId}.{eventType}`;
    for (const t of types) {
      const a = addressOf(t);
      const pattern = address.replace("{eventType}", t);
      if (a !== pattern) throw new Error(`${t}: subject ${a} is not on channel ${address}`);
    }
    channels[id] = {
      address,
      title: spec.name,
      description: `Stream ${spec.name} (subjects ${spec.subjects.map((s) => `\`${s}\``).join(", ")}): ${spec.description}.`,
      parameters: isDlq
        ? { consumer: { description: "The durable consumer that dead-lettered the message." } }
        : {
            orderId: {
              description:
                spec.name === Streams.INVENTORY
                  ? "The `aggregate_id`: the order id, or the SKU for the catalog events (ProductAdded, PriceChanged, StockAdjusted)."
                  : "The order id (`aggregate_id`).",
            },
            ...(spec.name === Streams.ORDERS
              ? {}
              : { eventType: { enum: types, description: "The event type." } }),
          },
      messages: Object.fromEntries(
        (isDlq ? ["DeadLetter"] : types).map((t) => [t, { $ref: `#/components/messages/${t}` }]),
      ),
    };
  }

  const operations: Record<string, unknown> = {};
  for (const service of topology.services) {
    const published = eventTypes.filter((t) => topology.publisher[t] === service);
    for (const stream of [...new Set(published.map((t) => catalog[t].stream))]) {
      const id = channelId(stream);
      const types = published.filter((t) => catalog[t].stream === stream);
      operations[`${service}-publish-${id}`] = {
        action: "send",
        channel: { $ref: `#/channels/${id}` },
        title: `${service} publishes to ${stream}`,
        summary: types.join(", "),
        messages: types.map((t) => ({ $ref: `#/channels/${id}/messages/${t}` })),
      };
    }
    const own = topology.consumers.filter((c) => c.service === service);
    for (const c of own) {
      const id = channelId(c.stream);
      const types =
        c.stream === Streams.DLQ
          ? ["DeadLetter"]
          : eventTypes.filter(
              (t) =>
                catalog[t].stream === c.stream &&
                subjectMatches(c.filter, subjectOf({ type: t, aggregate_id: "x" })),
            );
      operations[c.durable] = {
        action: "receive",
        channel: { $ref: `#/channels/${id}` },
        title: `${service} consumes ${c.stream} (durable ${c.durable})`,
        summary: `Durable pull consumer \`${c.durable}\`, ${c.filter ? `filter \`${c.filter}\`` : "no filter"}.`,
        messages: types.map((t) => ({ $ref: `#/channels/${id}/messages/${t}` })),
        bindings: { nats: { queue: c.durable, bindingVersion: "0.1.0" } },
      };
    }
    if (own.length > 0) {
      operations[`${service}-dead-letter`] = {
        action: "send",
        channel: { $ref: `#/channels/${channelId(Streams.DLQ)}` },
        title: `${service} dead-letters what its consumers give up on`,
        messages: [{ $ref: `#/channels/${channelId(Streams.DLQ)}/messages/DeadLetter` }],
      };
    }
  }
  // The audit is a projector, not a durable consumer: it reads every stream whole (src/services/audit/projector.ts).
  for (const spec of streamSpecs) {
    const id = channelId(spec.name);
    const types =
      spec.name === Streams.DLQ ? ["DeadLetter"] : eventTypes.filter((t) => catalog[t].stream === spec.name);
    operations[`audit-read-${id}`] = {
      action: "receive",
      channel: { $ref: `#/channels/${id}` },
      title: `audit reads ${spec.name} (ordered consumer, no durable)`,
      summary:
        "Ordered consumer (ephemeral, no acknowledgements) from the audit's position in its database + 1; every message is recorded.",
      messages: types.map((t) => ({ $ref: `#/channels/${id}/messages/${t}` })),
    };
  }

  return {
    asyncapi: "3.0.0",
    info: {
      title: "ShopStream events",
      version: "1.0.0",
      description:
        "The events of the ShopStream order saga on NATS JetStream: one stream per owning context, written only by its owner, plus a dead-letter queue. Every event travels in the same JSON envelope; `data` is validated against its type's schema when published and when consumed. Generated from the code by `npm run docs:events`; see docs/events.md.",
    },
    defaultContentType: "application/json",
    servers: {
      nats: {
        host: "{natsHost}",
        protocol: "nats",
        description: "NATS JetStream (`NATS_URL`).",
        variables: { natsHost: { default: "127.0.0.1:4222" } },
      },
    },
    channels,
    operations,
    components: { schemas, messages },
  };
}

// ---------------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------------

const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
const code = (s: string) => `\`${s}\``;

function typeOf(s: JsonSchema): string {
  if (s.anyOf) return s.anyOf.map((x) => ("const" in x ? JSON.stringify(x.const) : typeOf(x))).join(" | ");
  if (s.type === "array") return `${s.items ? typeOf(s.items) : "any"}[]`;
  return s.type ?? "any";
}

function constraintsOf(s: JsonSchema): string {
  const out: string[] = [];
  const range = (min: number | undefined, max: number | undefined, unit = "") =>
    min !== undefined && max !== undefined
      ? `${min}–${max}${unit}`
      : min !== undefined
        ? `≥ ${min}${unit}`
        : `≤ ${max}${unit}`;
  if (s.minLength !== undefined || s.maxLength !== undefined)
    out.push(`length ${range(s.minLength, s.maxLength)}`);
  if (s.pattern !== undefined) out.push(`pattern ${code(s.pattern)}`);
  if (s.format !== undefined) out.push(`format ${s.format}`);
  if (s.minimum !== undefined || s.maximum !== undefined) out.push(range(s.minimum, s.maximum));
  if (s.minItems !== undefined || s.maxItems !== undefined) out.push(range(s.minItems, s.maxItems, " items"));
  if (s.type === "array" && s.items && s.items.type !== "object") {
    const inner = constraintsOf(s.items);
    if (inner) out.push(`each: ${inner}`);
  }
  return out.join("; ");
}

interface FieldRow {
  field: string;
  type: string;
  required: boolean;
  constraints: string;
  notes: string;
}

function fieldsOf(schema: JsonSchema, prefix = ""): FieldRow[] {
  const rows: FieldRow[] = [];
  const required = new Set(schema.required ?? []);
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    const nested = prop.type === "array" ? prop.items : prop;
    rows.push({
      field: `${prefix}${name}`,
      type: prop.type === "array" && nested?.type === "object" ? "object[]" : typeOf(prop),
      required: required.has(name),
      constraints: constraintsOf(prop),
      notes: prop.description ?? FIELD_NOTES[name] ?? "",
    });
    if (nested?.type === "object")
      rows.push(...fieldsOf(nested, `${prefix}${name}${prop.type === "array" ? "[]" : ""}.`));
  }
  return rows;
}

function table(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.map(cell).join(" | ")} |`),
  ].join("\n");
}

/** docs/events.md (before formatting). */
export function buildMarkdown(topology: Topology): string {
  const envelope = jsonSchema(EnvelopeSchema);
  const envRequired = new Set(envelope.required ?? []);
  const out: string[] = [];
  out.push(
    "# Events",
    "",
    "<!-- Generated by `npm run docs:events` (scripts/gen-events-doc.ts). Do not edit: test/unit/events-doc.test.ts fails when this file is out of date. -->",
    "",
    "The events of the order saga, generated from the catalog (`src/lib/events/catalog.ts`), the envelope " +
      "(`src/lib/events/envelope.ts`), the stream declarations (`src/lib/service.ts`) and the table of processes " +
      "in [architecture.md](architecture.md). The same in machine-readable form: [asyncapi.json](asyncapi.json) " +
      "(AsyncAPI 3.0).",
    "",
    "## The envelope",
    "",
    "Every event is one JSON object; `data` is checked against the schema of its type and version when it is " +
      "published and when it is consumed. An event that fails (not JSON, not UTF-8, wrong shape, unknown type, " +
      "a version no longer read, `data.orderId` not the `aggregate_id`) is never retried: each consumer copies " +
      "it to the DLQ with a code and moves on. An event of a version newer than the consumer reads is not a " +
      "failure but a rollout in progress: see [Versions](#versions).",
    "",
    table(
      ["field", "type", "required", "constraints", "meaning"],
      Object.entries(envelope.properties ?? {}).map(([name, s]) => [
        code(name),
        typeOf(s),
        envRequired.has(name) ? "yes" : "no",
        constraintsOf(s),
        ENVELOPE_NOTES[name] ?? "",
      ]),
    ),
    "",
    "Message headers:",
    "",
    table(
      ["header", "required", "meaning"],
      EVENT_HEADERS.map((h) => [code(h.name), h.required ? "yes" : "no", h.description]),
    ),
    "",
    "## Streams and subjects",
    "",
    "One stream per owning context, written only by its owner. ORDERS has one subject per order (the Order " +
      "aggregate's event stream and its unit of optimistic concurrency), so its consumers see every order " +
      "event and skip the types they have no handler for, unread, on the `Shopstream-Type` header. The other " +
      "streams put the type last in the subject, and consumers filter on it. Besides the durable consumers " +
      "below, the audit reads every stream and the DLQ whole, as a projector: ordered consumers (no durable, " +
      "no acknowledgements) from the position it keeps in its database (see docs/architecture.md).",
    "",
    table(
      ["stream", "subjects", "events", "written by", "consumers (durable → filter)"],
      streamSpecs.map((spec) => {
        const types = eventTypes.filter((t) => catalog[t].stream === spec.name);
        const writers =
          spec.name === Streams.DLQ
            ? "the consumer runner of any service"
            : [...new Set(types.map((t) => topology.publisher[t]))].join(", ");
        return [
          spec.name,
          spec.subjects.map(code).join(", "),
          spec.name === Streams.DLQ ? "DeadLetter" : types.join(", "),
          writers,
          topology.consumers
            .filter((c) => c.stream === spec.name)
            .map((c) => `${code(c.durable)} → ${c.filter ? code(c.filter) : "all"}`)
            .join("; "),
        ];
      }),
    ),
    "",
    "## Versions",
    "",
    "Every event carries the schema version of its `data` (`version`). The catalog holds, per type, the current " +
      "schema and the previous ones with their upcasts (version N − 1 → N) and downcasts (N → N − 1), in one place " +
      "(`previousVersions` in `src/lib/events/catalog.ts`; `src/lib/events/versions.ts`):",
    "",
    "- **Consumers** read every kept version: an older event is checked against its own version's schema, then " +
      "upcast step by step to the current one, so handlers only see current data. The audit records events as " +
      "published, not upcast.",
    "- **Producers** write the current version, unless told otherwise during a rollout: `EVENT_VERSIONS` " +
      '(`"Type=version,…"`, e.g. `StockReserved=1`) makes a process write that older version — the event is ' +
      "built at the current version, downcast, and checked against the older schema before it leaves.",
    "- **A newer version than a consumer reads** (`EVENT_VERSION_AHEAD`: a newer release wrote it) is neither " +
      "handled nor dead-lettered at once: the runner keeps it (heartbeats, no delivery attempt used) and hands " +
      "it back when it stops — in a rolling deploy, to a replica of the new release — and dead-letters it only " +
      "`FUTURE_VERSION_WAIT_MS` (10 min) after its publication, to be redriven once a release that reads it " +
      "runs. `EVENT_READ_VERSIONS` lowers the newest version a process reads, to rehearse a rollout with one " +
      "build (the chaos scenario `rolling-upgrade`).",
    "- **A version older than any kept** is dead-lettered at once (`EVENT_VERSION_UNSUPPORTED`): a version is " +
      "dropped from `previousVersions` only once none can be in flight or redriven.",
    "",
    "A rollout that changes a type: (1) deploy the release that reads the new version everywhere with its " +
      "producers pinned to the old one (`EVENT_VERSIONS=Type=<old>`); (2) once no replica of the old release " +
      "runs, remove the pin (a rolling restart). Rolling back step 2 first pins the producers again.",
    "",
    table(
      ["type", "current version", "previous versions read"],
      eventTypes.map((t) => [
        t,
        String(catalog[t].version),
        (previousVersions[t] ?? []).map((p) => String(p.version)).join(", ") || "—",
      ]),
    ),
    "",
    "## Events",
    "",
  );
  for (const type of eventTypes) {
    const def = catalog[type];
    const example = exampleEvent(type, topology.publisher[type]);
    const rows = fieldsOf(jsonSchema(def.data));
    out.push(
      `### ${type}`,
      "",
      `${def.description}`,
      "",
      `- Stream: **${def.stream}**, subject ${code(addressOf(type).replace("{orderId}", aggregatePlaceholder(type)))}`,
      `- Published by: **${topology.publisher[type]}**; schema version ${def.version}` +
        ((previousVersions[type] ?? []).length > 0
          ? ` (previous versions read: ${(previousVersions[type] ?? []).map((p) => p.version).join(", ")}; see below)`
          : ""),
      `- Event id: ${code(example.id.replace(EXAMPLE_ORDER, "<orderId>").replace(`${EXAMPLE_SKU}:`, "<sku>:"))}`,
      "",
      "Delivered to (the consumers whose filter takes the subject; one without a handler for this type " +
        "acknowledges it unread):",
      "",
      table(
        ["service", "durable consumer", "filter"],
        consumersOf(topology, type).map((c) => [
          c.service,
          code(c.durable),
          c.filter ? code(c.filter) : "none",
        ]),
      ),
      "",
      "Data fields (no others are allowed):",
      "",
      table(
        ["field", "type", "required", "constraints", "notes"],
        rows.map((r) => [code(r.field), r.type, r.required ? "yes" : "no", r.constraints, r.notes]),
      ),
      "",
      "Example:",
      "",
      "```json",
      JSON.stringify(example, null, 2),
      "```",
      "",
    );
    for (const p of [...(previousVersions[type] ?? [])].reverse()) {
      out.push(
        `#### ${type} version ${p.version}`,
        "",
        `${p.description} Read and upcast to version ${p.version + 1}; written when \`EVENT_VERSIONS\` says ` +
          `\`${type}=${p.version}\` (downcast from version ${p.version + 1}).`,
        "",
        table(
          ["field", "type", "required", "constraints", "notes"],
          fieldsOf(jsonSchema(p.data)).map((r) => [
            code(r.field),
            r.type,
            r.required ? "yes" : "no",
            r.constraints,
            r.notes,
          ]),
        ),
        "",
        "Upcast to the next version, and downcast from it:",
        "",
        "```ts",
        `upcast: ${p.upcast.toString()}`,
        `downcast: ${p.downcast.toString()}`,
        "```",
        "",
      );
    }
  }
  out.push(
    "## Dead letters",
    "",
    "A consumer that gives up on a message (a non-retryable error at once, any other after its last " +
      "attempt) copies it to `dlq.<consumer>` on the DLQ stream, body and headers as they were, with these " +
      "headers added, and only then terminates it. `listDeadLetters`, `inspectDeadLetter` and " +
      "`redriveDeadLetter` (`src/lib/messaging/dlq.ts`) list, inspect and redrive entries.",
    "",
    table(
      ["header", "meaning"],
      Object.entries(DLQ_HEADERS).map(([h, d]) => [code(h), d]),
    ),
    "",
  );
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------------

/** Both documents, as they are written to disk. */
export async function renderEventDocs(): Promise<{ asyncapi: string; markdown: string }> {
  const topology = parseArchitecture(await readFile(ARCHITECTURE_PATH, "utf8"));
  const asyncapi = `${JSON.stringify(buildAsyncApi(topology), null, 2)}\n`;
  const options = (await prettier.resolveConfig(MARKDOWN_PATH)) ?? {};
  const markdown = await prettier.format(buildMarkdown(topology), { ...options, filepath: MARKDOWN_PATH });
  return { asyncapi, markdown };
}

async function main(): Promise<void> {
  const { asyncapi, markdown } = await renderEventDocs();
  await writeFile(ASYNCAPI_PATH, asyncapi);
  await writeFile(MARKDOWN_PATH, markdown);
  process.stdout.write(`wrote ${ASYNCAPI_PATH}\nwrote ${MARKDOWN_PATH}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`gen-events-doc: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
