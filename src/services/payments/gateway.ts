import type { HttpDependency } from "../../lib/http-client.js";
import { chargeKey, refundKey, type ChargeOutcome } from "./payment.js";

/** The gateway's charge answer (the fields payments reads). */
interface ChargeResponse {
  id: string;
  status: "captured" | "declined";
  declineReason?: string;
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

  constructor(http: HttpDependency) {
    this.http = http;
  }

  /**
   * Charges an order's total (key `charge:<orderId>`).
   * @throws UpstreamError (retryable: 5xx/timeout; non-retryable: other 4xx), DeferError (breaker open).
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
