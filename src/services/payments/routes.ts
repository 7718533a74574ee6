import type { FastifyInstance } from "fastify";
import { ORDER_ID_PATTERN, isOrderId } from "../../lib/ids.js";
import { problem, sendProblem } from "../../lib/http/problem.js";
import type { PaymentStore } from "./store.js";

/**
 * `GET /payments/:orderId` → `{orderId, status, amount, currency, paymentId?, refundId?, …}`, or a 404
 * problem document (400 for an id that cannot be an order id).
 */
export function registerPaymentRoutes(app: FastifyInstance, store: PaymentStore): void {
  app.get<{ Params: { orderId: string } }>("/payments/:orderId", async (req, reply) => {
    const { orderId } = req.params;
    if (!isOrderId(orderId)) {
      return sendProblem(
        reply,
        problem(400, "invalid-order-id", "Bad Request", `orderId must match ${ORDER_ID_PATTERN}`),
      );
    }
    const payment = await store.get(orderId);
    if (!payment) {
      return sendProblem(
        reply,
        problem(404, "payment-not-found", "Not Found", `no payment for order ${orderId}`),
      );
    }
    return { orderId, ...payment };
  });
}
