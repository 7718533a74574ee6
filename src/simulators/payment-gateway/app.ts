/**
 * Payment gateway simulator (a stand-in for Stripe & co. in dev and tests). Separate process, reached
 * over HTTP only. Amounts are integer minor units (cents). See docs/simulators.md.
 */
import type { FastifyInstance } from "fastify";
import { type Static, Type } from "@sinclair/typebox";
import {
  Faults,
  IdempotencyKeyHeaders,
  RecordLog,
  ProblemError,
  type SimulatorOptions,
  createSimulatorServer,
  fingerprint,
  newId,
  registerAdminRoutes,
  sendOutcome,
  type IdempotentOutcome,
} from "../shared.js";

/** Card number that is always declined with `card_declined`. */
export const DECLINE_CARD = "4000000000000002";
/** Card number that is always declined with `insufficient_funds`. */
export const INSUFFICIENT_FUNDS_CARD = "4000000000009995";
/** Customer ids with this prefix are always declined with `card_declined`. */
export const DECLINE_CUSTOMER_PREFIX = "decline-";
/** Charges above this amount (minor units) are declined with `amount_too_large`. */
export const MAX_CHARGE_AMOUNT = 1_000_000_00;

export type DeclineReason = "card_declined" | "insufficient_funds" | "amount_too_large";

const Amount = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: "minor units" });

export const ChargeRequest = Type.Object({
  amount: Amount,
  currency: Type.String({ pattern: "^[A-Za-z]{3}$", description: "ISO 4217 code" }),
  customerId: Type.String({ minLength: 1, maxLength: 255 }),
  orderId: Type.String({ minLength: 1, maxLength: 255 }),
  card: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
});
export type ChargeRequest = Static<typeof ChargeRequest>;

export const RefundRequest = Type.Object({
  chargeId: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
  orderId: Type.String({ minLength: 1, maxLength: 255 }),
  amount: Amount,
});
export type RefundRequest = Static<typeof RefundRequest>;

const OrderFilter = Type.Object({ orderId: Type.Optional(Type.String({ minLength: 1 })) });
type OrderFilter = Static<typeof OrderFilter>;

/**
 * How charge answers lie (`PUT /admin/tamper`; `{}` or `POST /admin/reset` for honest answers): the amount off by
 * `amountDelta`, another `currency`, another `orderId`. What is recorded (and in the ledger) is what was asked.
 */
export const TamperSchema = Type.Object(
  {
    amountDelta: Type.Optional(Type.Integer({ description: "added to the amount in charge answers" })),
    currency: Type.Optional(
      Type.String({ pattern: "^[A-Z]{3}$", description: "currency of charge answers" }),
    ),
    orderId: Type.Optional(
      Type.String({ minLength: 1, maxLength: 128, description: "orderId of charge answers" }),
    ),
  },
  { additionalProperties: false },
);
export type Tamper = Static<typeof TamperSchema>;

/** A charge outcome as the tamper switch makes the gateway answer it (unchanged when the switch is off). */
function tampered(outcome: IdempotentOutcome, t: Tamper): IdempotentOutcome {
  if (outcome.status !== 201 || (t.amountDelta === undefined && !t.currency && !t.orderId)) return outcome;
  const body = { ...(outcome.body as ChargeResponse) };
  if (t.amountDelta !== undefined) body.amount += t.amountDelta;
  if (t.currency) body.currency = t.currency;
  if (t.orderId) body.orderId = t.orderId;
  return { ...outcome, body };
}

export interface ChargeResponse {
  id: string;
  status: "captured" | "declined";
  amount: number;
  currency: string;
  orderId: string;
  declineReason?: DeclineReason;
}

export interface RefundResponse {
  id: string;
  chargeId: string;
  orderId: string;
  amount: number;
  status: "succeeded";
}

export interface LedgerEntry {
  id: string;
  kind: "charge" | "refund";
  status: "captured" | "declined" | "succeeded";
  orderId: string;
  amount: number;
  currency: string;
  idempotencyKey: string;
  at: string;
  /** Charges only. */
  customerId?: string;
  /** Declined charges only. */
  declineReason?: DeclineReason;
  /** Refunds only: the refunded charge. */
  chargeId?: string;
}

export interface OrderSummary {
  orderId: string;
  currency: string;
  /** Sum of captured charge amounts. */
  captured: number;
  /** Sum of refund amounts. */
  refunded: number;
  /** captured − refunded. */
  net: number;
  /** Number of captured charges. */
  charges: number;
  /** Number of declined charges. */
  declined: number;
  /** Number of refunds. */
  refunds: number;
}

export interface PaymentGatewayOptions extends SimulatorOptions {
  /** Persist ledger and idempotency records to this JSON file (loaded at start, rewritten atomically). */
  ledgerFile?: string;
}

function declineReason(req: ChargeRequest): DeclineReason | undefined {
  if (req.amount > MAX_CHARGE_AMOUNT) return "amount_too_large";
  if (req.card === DECLINE_CARD) return "card_declined";
  if (req.card === INSUFFICIENT_FUNDS_CARD) return "insufficient_funds";
  if (req.customerId.startsWith(DECLINE_CUSTOMER_PREFIX)) return "card_declined";
  return undefined;
}

/** Summarizes the ledger per order, in order of first appearance. */
export function summarizeLedger(entries: readonly LedgerEntry[]): OrderSummary[] {
  const byOrder = new Map<string, OrderSummary>();
  for (const e of entries) {
    let s = byOrder.get(e.orderId);
    if (!s) {
      s = {
        orderId: e.orderId,
        currency: e.currency,
        captured: 0,
        refunded: 0,
        net: 0,
        charges: 0,
        declined: 0,
        refunds: 0,
      };
      byOrder.set(e.orderId, s);
    }
    if (e.kind === "charge" && e.status === "captured") {
      s.captured += e.amount;
      s.charges += 1;
    } else if (e.kind === "charge") {
      s.declined += 1;
    } else {
      s.refunded += e.amount;
      s.refunds += 1;
    }
    s.net = s.captured - s.refunded;
  }
  return [...byOrder.values()];
}

/** Builds the payment gateway simulator. Call `listen()` on the result, or use `inject()` in tests. */
export function buildPaymentGateway(opts: PaymentGatewayOptions = {}): FastifyInstance {
  const app = createSimulatorServer("payment-gateway", opts);
  const faults = new Faults(opts.seed);
  const log = new RecordLog<LedgerEntry>({
    file: opts.ledgerFile,
    field: "entries",
    label: "ledger file",
    kind: "payment-gateway ledger",
  });
  const { idempotency } = log;
  app.addHook("onClose", () => log.close());

  // A lying gateway (fault injection): charge answers misreport what was charged, the ledger keeps the truth.
  let tamper: Tamper = {};
  const operator = { config: { auth: "operator" as const } };
  app.get("/admin/tamper", operator, async () => tamper);
  app.put<{ Body: Tamper }>("/admin/tamper", { ...operator, schema: { body: TamperSchema } }, async (req) => {
    tamper = { ...req.body };
    req.log.info({ tamper }, "charge answers tampered");
    return tamper;
  });

  app.post<{ Body: ChargeRequest; Headers: IdempotencyKeyHeaders }>(
    "/v1/charges",
    { ...faults.hooks, schema: { body: ChargeRequest, headers: IdempotencyKeyHeaders } },
    async (req, reply) => {
      const { amount, currency, customerId, orderId, card } = req.body;
      const request: ChargeRequest = { amount, currency, customerId, orderId, card };
      const key = req.headers["idempotency-key"];
      const outcome = await idempotency.execute("charges", key, fingerprint(request), () => {
        const reason = declineReason(request);
        const id = newId("ch");
        const entry: LedgerEntry = {
          id,
          kind: "charge",
          status: reason === undefined ? "captured" : "declined",
          orderId,
          amount,
          currency,
          idempotencyKey: key,
          at: new Date().toISOString(),
          customerId,
        };
        if (reason !== undefined) entry.declineReason = reason;
        log.push(entry);
        const body: ChargeResponse = {
          id,
          status: entry.status as ChargeResponse["status"],
          amount,
          currency,
          orderId,
        };
        if (reason !== undefined) body.declineReason = reason;
        req.log.debug({ chargeId: id, orderId, amount, status: body.status }, "charge recorded");
        return { status: 201, body };
      });
      return sendOutcome(reply, tampered(outcome, tamper));
    },
  );

  app.post<{ Body: RefundRequest; Headers: IdempotencyKeyHeaders }>(
    "/v1/refunds",
    { ...faults.hooks, schema: { body: RefundRequest, headers: IdempotencyKeyHeaders } },
    async (req, reply) => {
      const { chargeId, orderId, amount } = req.body;
      const key = req.headers["idempotency-key"];
      const fp = fingerprint({ chargeId, orderId, amount });
      const outcome = await idempotency.execute("refunds", key, fp, () => {
        const charge =
          chargeId === undefined
            ? log.items.findLast(
                (e) => e.kind === "charge" && e.status === "captured" && e.orderId === orderId,
              )
            : log.items.find((e) => e.kind === "charge" && e.id === chargeId);
        if (!charge) {
          throw new ProblemError(
            404,
            "charge-not-found",
            "Charge not found",
            chargeId === undefined ? `no captured charge for order ${orderId}` : `no charge ${chargeId}`,
          );
        }
        if (charge.orderId !== orderId) {
          throw new ProblemError(
            422,
            "order-mismatch",
            "Charge belongs to another order",
            `charge ${charge.id} belongs to order ${charge.orderId}, not ${orderId}`,
          );
        }
        if (charge.status !== "captured") {
          throw new ProblemError(
            422,
            "charge-not-captured",
            "Charge not captured",
            `charge ${charge.id} was declined`,
          );
        }
        const already = log.items
          .filter((e) => e.kind === "refund" && e.chargeId === charge.id)
          .reduce((sum, e) => sum + e.amount, 0);
        if (already + amount > charge.amount) {
          throw new ProblemError(
            422,
            "refund-exceeds-charge",
            "Refund exceeds captured amount",
            `charge ${charge.id} captured ${charge.amount}, already refunded ${already}; cannot refund ${amount} more`,
          );
        }
        const id = newId("re");
        log.push({
          id,
          kind: "refund",
          status: "succeeded",
          orderId,
          amount,
          currency: charge.currency,
          idempotencyKey: key,
          at: new Date().toISOString(),
          chargeId: charge.id,
        });
        const body: RefundResponse = { id, chargeId: charge.id, orderId, amount, status: "succeeded" };
        req.log.info({ refundId: id, chargeId: charge.id, orderId, amount }, "refund recorded");
        return { status: 201, body };
      });
      return sendOutcome(reply, outcome);
    },
  );

  app.get<{ Querystring: OrderFilter }>(
    "/v1/ledger",
    { schema: { querystring: OrderFilter } },
    async (req) => {
      const { orderId } = req.query;
      return { entries: orderId === undefined ? log.items : log.items.filter((e) => e.orderId === orderId) };
    },
  );

  app.get<{ Querystring: OrderFilter }>(
    "/v1/ledger/summary",
    { schema: { querystring: OrderFilter } },
    async (req) => {
      const { orderId } = req.query;
      const orders = summarizeLedger(log.items);
      return { orders: orderId === undefined ? orders : orders.filter((o) => o.orderId === orderId) };
    },
  );

  registerAdminRoutes(app, faults, async () => {
    tamper = {};
    await log.reset();
  });

  return app;
}
