/**
 * The operators' catalog and stock API of the inventory service (issue 13, part 3). Every change is a compare-and-set
 * on the inventory's KV state, then an event on the INVENTORY stream (aggregate: the SKU), which the audit records:
 *
 * - `POST /inventory/products` `{sku, name, price, currency, stock}` → 201 (200 when the same product was added
 *   before), ProductAdded (id `<sku>:ProductAdded`); 409 when the SKU exists with another name, price or currency;
 * - `PUT /inventory/:sku/price` `{price}` → 200, PriceChanged (id `<sku>:PriceChanged:<revision>`). Orders reads the
 *   `catalog` bucket through a KV watch, so new orders pay the new price; an order placed before keeps the unit
 *   prices of its OrderPlaced;
 * - `POST /inventory/:sku/adjustments` `{quantity, reason, note?}` → 200, StockAdjusted (id
 *   `<sku>:StockAdjusted:<adjustmentId>`): a restock (quantity > 0) or a write-off (quantity < 0, at most the units
 *   available). With an `Idempotency-Key` a retry is applied once (the stock record remembers its last
 *   {@link MAX_REMEMBERED_ADJUSTMENTS} adjustment ids); the same key with another quantity is a 422.
 *
 * Crash safety: the state is written first, the event second. A retry of the same request (same body, same key)
 * finds the state written and publishes the event again under the same id; a publish that already reached the stream
 * is found there (the SKU's last event of the type) or dropped by the server's duplicate window. An adjustment's
 * StockAdjusted is also kept in the stock record by the write that moves the stock (an outbox, adjustments.ts) until
 * it is on the stream, so one whose client never retries after a crash or a failed publish is published by the
 * inventory's sweep (at start, and after a failure); the checker's I3 `adjustment-mismatch` reports a stock change
 * without its event (src/checker/checker.ts).
 */
import { createHash, randomBytes } from "node:crypto";
import type { JetStreamManager } from "@nats-io/jetstream";
import { Type, type Static } from "@sinclair/typebox";
import type { FastifyInstance } from "fastify";
import { AdjustmentReason, Streams, type EventData, type SkuEventType } from "../../lib/events/catalog.js";
import { decodeEvent } from "../../lib/events/codec.js";
import { makeEvent, subjectOf } from "../../lib/events/envelope.js";
import { bearerSecurity, principalOf } from "../../lib/http/auth.js";
import { ProblemError, problemResponse } from "../../lib/http/problem.js";
import type { Publisher } from "../../lib/messaging/publisher.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { CatalogEntry, SKU_PATTERN } from "./catalog.js";
import type { AdjustmentOutbox } from "./adjustments.js";
import { MAX_REMEMBERED_ADJUSTMENTS, type UnpublishedAdjustment } from "./inventory.js";
import type { InventoryStore } from "./store.js";

/** What the catalog routes need besides the store. */
export interface CatalogDeps {
  publisher: Publisher;
  jsm: JetStreamManager;
  logger: Logger;
  /** The publishing service's name (`source` of the events). */
  source: string;
  /** Publishes the stock adjustments' events kept in the stock records. */
  outbox: AdjustmentOutbox;
}

/** The 401/403 answers of an operator route. */
export const authResponses = {
  401: problemResponse("No bearer token, or one that is not valid"),
  403: problemResponse("The token is not an operator's (`insufficient_scope`)"),
} as const;

/** A SKU with its catalog entry and stock figures. */
export const StockViewSchema = Type.Object({
  sku: Type.String(),
  name: Type.String(),
  price: Type.Integer({ description: "unit price in minor units (cents)" }),
  currency: Type.String(),
  initial: Type.Integer({ description: "units when the SKU was first loaded or added" }),
  adjusted: Type.Integer({ description: "sum of the operators' adjustments (restocks > 0, write-offs < 0)" }),
  available: Type.Integer(),
  reserved: Type.Integer(),
  committed: Type.Integer(),
});

const MAX_UNITS = 1_000_000_000;
/** Highest unit price an operator may set (cents): a million in the currency. */
const MAX_PRICE = 100_000_000;

const AddProductBody = Type.Object(
  {
    ...CatalogEntry.properties,
    price: Type.Integer({ minimum: 0, maximum: MAX_PRICE, description: "unit price in cents" }),
    stock: Type.Integer({ minimum: 0, maximum: MAX_UNITS, description: "units available from the start" }),
  },
  { additionalProperties: false },
);
const PriceBody = Type.Object(
  { price: Type.Integer({ minimum: 0, maximum: MAX_PRICE, description: "new unit price in cents" }) },
  { additionalProperties: false },
);
const AdjustmentBody = Type.Object(
  {
    quantity: Type.Integer({
      minimum: -MAX_UNITS,
      maximum: MAX_UNITS,
      description: "units to add (> 0, e.g. a restock) or take away (< 0, e.g. damaged); never 0",
    }),
    reason: AdjustmentReason,
    note: Type.Optional(Type.String({ maxLength: 500 })),
  },
  { additionalProperties: false },
);
const SkuParams = Type.Object({ sku: Type.String({ pattern: SKU_PATTERN }) });
const IdempotencyHeaders = Type.Object({
  "idempotency-key": Type.Optional(
    Type.String({
      minLength: 1,
      maxLength: 255,
      description: "makes a retry safe: the adjustment is applied and published once",
    }),
  ),
});

/** The adjustment id of an operator's Idempotency-Key (a hash: subject- and KV-safe), or a fresh one. */
export function adjustmentIdOf(operator: string, key: string | undefined): string {
  if (key === undefined) return `adj_${randomBytes(16).toString("hex")}`;
  return `adj_${createHash("sha256")
    .update(JSON.stringify([operator, key]))
    .digest("hex")
    .slice(0, 32)}`;
}

function unknownSku(sku: string): ProblemError {
  return new ProblemError(404, "sku-not-found", "SKU Not Found", `no SKU ${JSON.stringify(sku)}`);
}

/** Registers the catalog and stock routes in the inventory's `/inventory` scope. */
export function registerCatalogRoutes(
  api: FastifyInstance,
  getStore: () => InventoryStore,
  getDeps: () => CatalogDeps,
): void {
  /**
   * Publishes a catalog event unless the stream already has it: the SKU's last event of the type is this one, or
   * (PriceChanged) a later revision. Ids are deterministic, so the server's duplicate window covers the rest.
   */
  async function publish<T extends SkuEventType>(
    type: T,
    data: EventData<T> & { sku: string },
    idSuffix: string | undefined,
  ): Promise<void> {
    const d = getDeps();
    const event = makeEvent(type, data, { aggregateId: data.sku, source: d.source, idSuffix });
    const last = await d.jsm.streams.getMessage(Streams.INVENTORY, { last_by_subj: subjectOf(event) });
    if (last) {
      try {
        const stored = decodeEvent(last.data);
        if (stored.id === event.id) return;
        if (stored.type === "PriceChanged" && type === "PriceChanged") {
          if (stored.data.revision >= (data as EventData<"PriceChanged">).revision) return;
        }
      } catch {
        /* not an event: publish ours */
      }
    }
    await d.publisher.publish(event);
  }

  api.post<{ Body: Static<typeof AddProductBody> }>(
    "/products",
    {
      schema: {
        summary: "Add a product to the catalog with its first stock (ProductAdded)",
        security: bearerSecurity,
        body: AddProductBody,
        response: {
          200: { ...StockViewSchema, description: "The same product was added before: nothing changed" },
          201: StockViewSchema,
          400: problemResponse("The body fails the schema"),
          ...authResponses,
          409: problemResponse("The SKU exists with another name, price or currency (`sku-exists`)"),
          415: problemResponse("Send application/json"),
          503: problemResponse("Inventory state or the event stream is not reachable: retry"),
        },
      },
    },
    async (req, reply) => {
      const store = getStore();
      const b = req.body;
      const r = await store.addProduct(b);
      if (r.kind === "conflict")
        throw new ProblemError(
          409,
          "sku-exists",
          "Conflict",
          `${b.sku} is in the catalog already as ${JSON.stringify(r.entry)}: change its price with PUT /inventory/${b.sku}/price`,
        );
      await publish(
        "ProductAdded",
        { ...r.entry, stock: r.stock, operator: principalOf(req).sub },
        undefined,
      );
      getDeps().logger.info({ sku: b.sku, price: b.price, stock: r.stock, kind: r.kind }, "product added");
      const view = await store.view(b.sku);
      return reply.code(r.kind === "created" ? 201 : 200).send(view);
    },
  );

  api.put<{ Params: Static<typeof SkuParams>; Body: Static<typeof PriceBody> }>(
    "/:sku/price",
    {
      schema: {
        summary: "Change a product's unit price (PriceChanged); orders placed before keep theirs",
        security: bearerSecurity,
        params: SkuParams,
        body: PriceBody,
        response: {
          200: Type.Object({
            ...StockViewSchema.properties,
            previousPrice: Type.Optional(Type.Integer({ description: "the price before the last change" })),
            revision: Type.Integer({ description: "the catalog entry's revision (PriceChanged.revision)" }),
          }),
          400: problemResponse("The SKU or the body fails the schema"),
          ...authResponses,
          404: problemResponse("No such SKU"),
          415: problemResponse("Send application/json"),
          503: problemResponse("Inventory state or the event stream is not reachable: retry"),
        },
      },
    },
    async (req) => {
      const store = getStore();
      const { sku } = req.params;
      const r = await store.setPrice(sku, req.body.price);
      if (r.kind === "unknown") throw unknownSku(sku);
      // Unchanged because the price already was this one: publish (again) only what an earlier change of this
      // very revision may not have published (a crash before its publish); an entry never changed has nothing.
      if (r.entry.previousPrice !== undefined) {
        await publish(
          "PriceChanged",
          {
            sku,
            price: r.entry.price,
            previousPrice: r.entry.previousPrice,
            currency: r.entry.currency,
            revision: r.revision,
            operator: principalOf(req).sub,
          },
          String(r.revision),
        );
      }
      if (r.changed)
        getDeps().logger.info(
          { sku, price: r.entry.price, previousPrice: r.entry.previousPrice, revision: r.revision },
          "price changed",
        );
      const view = await store.view(sku);
      if (!view) throw unknownSku(sku);
      return {
        ...view,
        ...(r.entry.previousPrice !== undefined ? { previousPrice: r.entry.previousPrice } : {}),
        revision: r.revision,
      };
    },
  );

  api.post<{
    Params: Static<typeof SkuParams>;
    Body: Static<typeof AdjustmentBody>;
    Headers: Static<typeof IdempotencyHeaders>;
  }>(
    "/:sku/adjustments",
    {
      schema: {
        summary:
          "Restock (quantity > 0) or write off (quantity < 0) units of a SKU, with a reason (StockAdjusted)",
        description: `With an Idempotency-Key a retry is applied once (the last ${MAX_REMEMBERED_ADJUSTMENTS} adjustments of a SKU are remembered). A write-off takes units from \`available\` only: reserved and sold units cannot be written off.`,
        security: bearerSecurity,
        params: SkuParams,
        body: AdjustmentBody,
        headers: IdempotencyHeaders,
        response: {
          200: Type.Object({
            ...StockViewSchema.properties,
            adjustmentId: Type.String(),
            replayed: Type.Boolean({ description: "true when this Idempotency-Key was applied before" }),
          }),
          400: problemResponse("The SKU, the body or the Idempotency-Key fails the schema"),
          ...authResponses,
          404: problemResponse("No such SKU"),
          409: problemResponse("A write-off of more units than are available (`insufficient-stock`)"),
          415: problemResponse("Send application/json"),
          422: problemResponse(
            "quantity 0, or the Idempotency-Key was used with another quantity (`idempotency-key-reused`)",
          ),
          503: problemResponse("Inventory state or the event stream is not reachable: retry"),
        },
      },
    },
    async (req) => {
      const store = getStore();
      const { sku } = req.params;
      const { quantity, reason, note } = req.body;
      if (quantity === 0)
        throw new ProblemError(422, "zero-adjustment", "Unprocessable Content", "quantity must not be 0", {
          errors: [{ pointer: "/body/quantity", message: "must not be 0" }],
        });
      const operator = principalOf(req).sub;
      const adjustmentId = adjustmentIdOf(operator, req.headers["idempotency-key"]);
      const { outbox } = getDeps();
      // The event is kept in the stock record by the same write (the outbox: adjustments.ts), then published.
      const kept: UnpublishedAdjustment = {
        reason,
        ...(note !== undefined ? { note } : {}),
        operator,
        at: new Date().toISOString(),
        afterSeq: await outbox.streamPosition(),
      };
      const r = await store.adjustStock(sku, adjustmentId, quantity, kept);
      switch (r.kind) {
        case "unknown":
          throw unknownSku(sku);
        case "insufficient":
          throw new ProblemError(
            409,
            "insufficient-stock",
            "Conflict",
            `cannot write off ${-quantity} units of ${sku}: ${r.available} available`,
          );
        case "already_applied":
          if (r.quantity !== quantity)
            throw new ProblemError(
              422,
              "idempotency-key-reused",
              "Unprocessable Content",
              `this Idempotency-Key adjusted ${sku} by ${r.quantity}, not ${quantity}`,
            );
          break;
        case "applied":
          getDeps().logger.info({ sku, quantity, reason, adjustmentId }, "stock adjusted");
          break;
      }
      // A retry of an adjustment whose event is on the stream already publishes nothing.
      const unpublished = r.kind === "applied" ? kept : r.unpublished;
      if (unpublished) {
        try {
          await outbox.publish(sku, { id: adjustmentId, quantity, unpublished });
        } catch (err) {
          outbox.schedule(1000); // kept in the stock record: published by a sweep, whether or not the client retries
          throw err;
        }
      }
      const view = await store.view(sku);
      if (!view) throw unknownSku(sku);
      return { ...view, adjustmentId, replayed: r.kind === "already_applied" };
    },
  );
}
