import { NonRetryableError } from "../../lib/errors.js";
import type { HttpDependency } from "../../lib/http-client.js";
import { chargeKey, refundKey, type ChargeOutcome } from "./payment.js";

/** The gateway's charge answer (the fields payments reads and checks). */
interface ChargeResponse {
  id: string;
  status: "captured" | "declined";
  declineReason?: string;
  amount: number;
  currency: string;
  orderId: string;
}

/** Code of the error (and dead letter) when the gateway's answer is not about the charge that was asked. */
export const GATEWAY_MISMATCH = "GATEWAY_RESPONSE_MISMATCH";

/** A charge answer's fields that differ from the request (or are malformed), by name; empty when it matches. */
export function chargeMismatch(
  req: { orderId: string; amount: number; currency: string },
  body: unknown,
): string[] {
  const b = (typeof body === "object" && body !== null ? body : {}) as Partial<Record<string, unknown>>;
  const wrong: string[] = [];
  if (b["orderId"] !== req.orderId) wrong.push("orderId");
  if (b["amount"] !== req.amount) wrong.push("amount");
  if (b["currency"] !== req.currency) wrong.push("currency");
  if (b["status"] !== "captured" && b["status"] !== "declined") wrong.push("status");
  if (typeof b["id"] !== "string" || b["id"] === "") wrong.push("id");
  return wrong;
}

/** The gateway's refund answer (the fields payments reads). */
interface RefundResponse {
  id: string;
}

/**
 * The payment gateway's API as payments uses it, over a resilient {@link HttpDependency}. Each call
 * carries the order's deterministic idempotency key, so repeating it never moves money twice.
 */
export class PaymentGateway {
  readonly http: HttpDependency;

  readonly #onMismatch: ((orderId: string, fields: string[]) => void) | undefined;

  /** `onMismatch` hears of every answer that is not about the charge asked (to log and count it). */
  constructor(http: HttpDependency, onMismatch?: (orderId: string, fields: string[]) => void) {
    this.http = http;
    this.#onMismatch = onMismatch;
  }

  /**
   * Charges an order's total (key `charge:<orderId>`). The answer is not trusted: its order id, amount and currency
   * must be those charged (API10:2023), else the charge fails closed — no outcome, a non-retryable
   * {@link GATEWAY_MISMATCH} error (the message is dead-lettered: no PaymentCaptured, no confirmation).
   * @throws UpstreamError (retryable: 5xx/timeout; non-retryable: other 4xx), DeferError (breaker open),
   *   NonRetryableError GATEWAY_RESPONSE_MISMATCH.
   */
  async charge(req: {
    orderId: string;
    customerId: string;
    amount: number;
    currency: string;
  }): Promise<ChargeOutcome> {
    const res = await this.http.post<ChargeResponse>("/v1/charges", req, {
      idempotencyKey: chargeKey(req.orderId),
    });
    const wrong = chargeMismatch(req, res.body);
    if (wrong.length > 0) {
      this.#onMismatch?.(req.orderId, wrong);
      // Names the fields, not the values: what the gateway said goes to no log line or event.
      throw new NonRetryableError(
        GATEWAY_MISMATCH,
        `the gateway's charge answer for ${req.orderId} does not match the charge (${wrong.join(", ")}): not trusted`,
      );
    }
    return res.body.status === "captured"
      ? { status: "captured", paymentId: res.body.id }
      : { status: "declined", declineReason: res.body.declineReason ?? "declined" };
  }

  /**
   * Refunds a captured charge in full (key `refund:<orderId>`).
   * @returns the refund id.
   */
  async refund(req: { orderId: string; chargeId: string; amount: number }): Promise<string> {
    const res = await this.http.post<RefundResponse>("/v1/refunds", req, {
      idempotencyKey: refundKey(req.orderId),
    });
    return res.body.id;
  }
}
