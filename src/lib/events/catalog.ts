import { type Static, type TObject, Type } from "@sinclair/typebox";
import { ORDER_ID_PATTERN } from "../ids.js";

/**
 * The catalog of every event of the order saga: its type name, owning stream, schema version and
 * runtime schema of `data`. Amounts are integer minor units (cents); ids are strings.
 *
 * This object is the single source of truth: publishers and consumers validate against it, the
 * AsyncAPI document (`docs/asyncapi.json`) is generated from it, and subjects are derived from it.
 */

const Id = Type.String({ minLength: 1, maxLength: 128 });
/** Order ids appear as a subject token, so they are restricted to subject-safe characters (`src/lib/ids.ts`). */
export const OrderId = Type.String({ pattern: ORDER_ID_PATTERN });
const Sku = Type.String({ minLength: 1, maxLength: 64 });
const Currency = Type.String({ pattern: "^[A-Z]{3}$" });
const Cents = Type.Integer({ minimum: 0 });
const Qty = Type.Integer({ minimum: 1, maximum: 10_000 });

export const OrderLine = Type.Object(
  { sku: Sku, quantity: Qty, unitPrice: Cents },
  { additionalProperties: false },
);
export const StockLine = Type.Object({ sku: Sku, quantity: Qty }, { additionalProperties: false });

export const CancelReason = Type.Union([
  Type.Literal("out_of_stock"),
  Type.Literal("payment_declined"),
  Type.Literal("timeout"),
  Type.Literal("invalid_order"),
  Type.Literal("customer_request"),
  Type.Literal("operator_request"),
]);
export type CancelReason = Static<typeof CancelReason>;

/**
 * Reasons of a cancellation asked for through `POST /orders/{id}/cancel` (by the order's customer or an operator):
 * the only cancellations that may follow an OrderConfirmed (within the cancellation window), with a refund and
 * the sold stock returned.
 */
export const REQUESTED_CANCEL_REASONS: readonly CancelReason[] = ["customer_request", "operator_request"];

/** Is `reason` a requested cancellation (see {@link REQUESTED_CANCEL_REASONS})? */
export function isRequestedCancel(reason: CancelReason): boolean {
  return REQUESTED_CANCEL_REASONS.includes(reason);
}

export const NotificationKind = Type.Union([
  Type.Literal("order_confirmed"),
  Type.Literal("order_cancelled"),
]);
export type NotificationKind = Static<typeof NotificationKind>;

/** A catalog SKU as an aggregate id: a subject token (`inventory.<sku>.PriceChanged`), like an order id. */
export const SkuId = Type.String({ pattern: "^[A-Za-z0-9_-]{1,64}$" });

/** Why an operator adjusted the stock of a SKU. */
export const AdjustmentReason = Type.Union([
  Type.Literal("restock"),
  Type.Literal("returned"),
  Type.Literal("damaged"),
  Type.Literal("lost"),
  Type.Literal("found"),
  Type.Literal("correction"),
]);
export type AdjustmentReason = Static<typeof AdjustmentReason>;

function ev<S extends TObject>(stream: StreamName, version: number, description: string, data: S) {
  return { stream, version, description, data } as const;
}

/** The streams, one per owning context, plus the dead-letter queue. */
export const Streams = {
  ORDERS: "ORDERS",
  INVENTORY: "INVENTORY",
  PAYMENTS: "PAYMENTS",
  NOTIFICATIONS: "NOTIFICATIONS",
  DLQ: "DLQ",
} as const;
export type StreamName = (typeof Streams)[keyof typeof Streams];

export const catalog = {
  OrderPlaced: ev(
    "ORDERS",
    1,
    "An order was accepted by the API; prices come from the catalog.",
    Type.Object(
      {
        orderId: OrderId,
        customerId: Id,
        email: Type.String({
          minLength: 3,
          maxLength: 2048,
          description:
            "The customer's e-mail address sealed under the customer's data key (crypto-shredding): `pii:v1:<keyId>:<iv>:<ciphertext>`, AES-256-GCM, base64url parts. Unreadable once the customer's personal data is erased. Events written before sealing carry the plain address (docs/security.md#personal-data-and-erasure).",
        }),
        items: Type.Array(OrderLine, { minItems: 1, maxItems: 100 }),
        total: Cents,
        currency: Currency,
        placedAt: Type.String({ format: "date-time" }),
        timeoutAt: Type.String({ format: "date-time" }),
      },
      { additionalProperties: false },
    ),
  ),
  OrderConfirmed: ev(
    "ORDERS",
    1,
    "The saga succeeded: stock reserved and payment captured.",
    Type.Object(
      { orderId: OrderId, paymentId: Id, total: Cents, currency: Currency },
      { additionalProperties: false },
    ),
  ),
  OrderCancelled: ev(
    "ORDERS",
    1,
    "The saga failed or timed out, or the customer or an operator cancelled the order (reason customer_request or operator_request: a PENDING order, or a CONFIRMED one within the cancellation window, which then follows its OrderConfirmed); compensations follow: stock released or returned, a capture refunded.",
    Type.Object(
      { orderId: OrderId, reason: CancelReason, detail: Type.Optional(Type.String({ maxLength: 1000 })) },
      { additionalProperties: false },
    ),
  ),
  StockReserved: ev(
    "INVENTORY",
    2,
    "Every line of the order was reserved (all or nothing), until the order's deadline.",
    Type.Object(
      {
        orderId: OrderId,
        customerId: Id,
        items: Type.Array(StockLine, { minItems: 1 }),
        total: Cents,
        currency: Currency,
        expiresAt: Type.Union([Type.String({ format: "date-time" }), Type.Null()], {
          description:
            "When the reservation lapses: the order's deadline (OrderPlaced timeoutAt), when orders cancels it " +
            "unless paid. Payments does not charge a lapsed reservation. null: not known (upcast from version 1).",
        }),
      },
      { additionalProperties: false },
    ),
  ),
  StockRejected: ev(
    "INVENTORY",
    1,
    "At least one line could not be reserved; nothing is held.",
    Type.Object(
      { orderId: OrderId, reason: Type.String({ maxLength: 200 }), skus: Type.Array(Sku) },
      { additionalProperties: false },
    ),
  ),
  StockCommitted: ev(
    "INVENTORY",
    1,
    "The reservation of a confirmed order became a sale.",
    Type.Object({ orderId: OrderId, items: Type.Array(StockLine) }, { additionalProperties: false }),
  ),
  StockReleased: ev(
    "INVENTORY",
    1,
    "The reservation of a cancelled order was returned to stock, or, for an order cancelled after its confirmation, the units it had bought (items empty when nothing was held).",
    Type.Object({ orderId: OrderId, items: Type.Array(StockLine) }, { additionalProperties: false }),
  ),
  ProductAdded: ev(
    "INVENTORY",
    1,
    "An operator added a product to the catalog with its price and first stock (aggregate: the SKU).",
    Type.Object(
      {
        sku: SkuId,
        name: Type.String({ minLength: 1, maxLength: 200 }),
        price: Cents,
        currency: Currency,
        stock: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
        operator: Id,
      },
      { additionalProperties: false },
    ),
  ),
  PriceChanged: ev(
    "INVENTORY",
    1,
    "An operator changed a product's unit price; orders placed from now on pay it, orders placed before keep theirs.",
    Type.Object(
      {
        sku: SkuId,
        price: Cents,
        previousPrice: Cents,
        currency: Currency,
        /** The catalog entry's KV revision written: orders the changes of one SKU by. */
        revision: Type.Integer({ minimum: 1 }),
        operator: Id,
      },
      { additionalProperties: false },
    ),
  ),
  StockAdjusted: ev(
    "INVENTORY",
    1,
    "An operator restocked (quantity > 0) or wrote off (quantity < 0) units of a SKU, with a reason; the units go to or come from `available`.",
    Type.Object(
      {
        sku: SkuId,
        adjustmentId: Type.String({ pattern: "^[A-Za-z0-9_-]{1,64}$" }),
        quantity: Type.Integer({
          minimum: -Number.MAX_SAFE_INTEGER,
          maximum: Number.MAX_SAFE_INTEGER,
          description: "units added (> 0) or taken away (< 0); never 0",
        }),
        reason: AdjustmentReason,
        note: Type.Optional(Type.String({ maxLength: 500 })),
        operator: Id,
      },
      { additionalProperties: false },
    ),
  ),
  PaymentCaptured: ev(
    "PAYMENTS",
    1,
    "The gateway captured the order total.",
    Type.Object(
      { orderId: OrderId, paymentId: Id, amount: Cents, currency: Currency },
      { additionalProperties: false },
    ),
  ),
  PaymentDeclined: ev(
    "PAYMENTS",
    1,
    "The gateway declined the charge.",
    Type.Object(
      { orderId: OrderId, reason: Type.String({ maxLength: 200 }) },
      { additionalProperties: false },
    ),
  ),
  PaymentRefunded: ev(
    "PAYMENTS",
    1,
    "A capture was refunded in full because the order was cancelled after it (a timeout or a cancellation racing the capture, or a CONFIRMED order cancelled within the window).",
    Type.Object(
      { orderId: OrderId, paymentId: Id, refundId: Id, amount: Cents, currency: Currency },
      { additionalProperties: false },
    ),
  ),
  NotificationSent: ev(
    "NOTIFICATIONS",
    1,
    "The customer was e-mailed about the order's outcome.",
    Type.Object({ orderId: OrderId, kind: NotificationKind, messageId: Id }, { additionalProperties: false }),
  ),
  NotificationWithheld: ev(
    "NOTIFICATIONS",
    1,
    "The customer could not be e-mailed about the order's outcome because their personal data was erased (the address is unreadable): the order's e-mail is settled without one.",
    Type.Object(
      { orderId: OrderId, kind: NotificationKind, reason: Type.Literal("personal_data_erased") },
      { additionalProperties: false },
    ),
  ),
} as const;

/**
 * A previous schema version of an event type, kept so that events of it are still read: its `data` schema and the
 * steps to the next version and back. `upcast` turns data of this version into data of version + 1 (consumers read
 * old events through the chain of upcasts up to the current version); `downcast` turns data of version + 1 into
 * data of this version (producers told to write this version during a rollout). Both are pure and total on valid
 * input.
 */
export interface PreviousVersion {
  version: number;
  description: string;
  data: TObject;
  upcast(data: Record<string, unknown>): Record<string, unknown>;
  downcast(data: Record<string, unknown>): Record<string, unknown>;
}

/**
 * The previous versions of every event type that has any, oldest first and without gaps up to the catalog's
 * version − 1: the one place where schemas evolve (see docs/events.md#versions). Dropping a version from here
 * makes consumers dead-letter its events (`EVENT_VERSION_UNSUPPORTED`): only once none can be in flight.
 */
export const previousVersions: Partial<Record<keyof typeof catalog, readonly PreviousVersion[]>> = {
  StockReserved: [
    {
      version: 1,
      description: "Every line of the order was reserved (all or nothing). No expiry.",
      data: Type.Object(
        {
          orderId: OrderId,
          customerId: Id,
          items: Type.Array(StockLine, { minItems: 1 }),
          total: Cents,
          currency: Currency,
        },
        { additionalProperties: false },
      ),
      // A version 1 producer did not say when the reservation lapses.
      upcast: (data) => ({ ...data, expiresAt: null }),
      downcast: ({ expiresAt: _lapses, ...data }) => data,
    },
  ],
};

export type Catalog = typeof catalog;
/** Every event type name of the saga. */
export type EventType = keyof Catalog;
/** The `data` of event type `T`. */
export type EventData<T extends EventType> = Static<Catalog[T]["data"]>;

export const eventTypes = Object.keys(catalog) as EventType[];

/** Is `t` an event type of the catalog? */
export function isEventType(t: unknown): t is EventType {
  return typeof t === "string" && Object.hasOwn(catalog, t);
}

/**
 * The catalog events: their aggregate is a SKU (`aggregate_id` = `data.sku`), not an order. Every other event
 * is about one order (`aggregate_id` = `data.orderId`).
 */
export const SKU_EVENT_TYPES = [
  "ProductAdded",
  "PriceChanged",
  "StockAdjusted",
] as const satisfies EventType[];
export type SkuEventType = (typeof SKU_EVENT_TYPES)[number];

/** Is `t` a catalog event (aggregate: a SKU)? */
export function isSkuEventType(t: string): t is SkuEventType {
  return (SKU_EVENT_TYPES as readonly string[]).includes(t);
}
