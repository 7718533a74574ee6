import type { FastifyInstance } from "fastify";
import { ORDER_ID_PATTERN, isOrderId } from "../../lib/ids.js";
import { problem, sendProblem } from "../../lib/http/problem.js";
import type { NotificationStore } from "./store.js";

/**
 * `GET /notifications/:orderId` → `{orderId, notifications: [{orderId, kind, messageId, sentAt}]}` (no
 * address: it is PII), or a 404 problem document when nothing was sent for the order.
 */
export function registerNotificationRoutes(app: FastifyInstance, store: NotificationStore): void {
  app.get<{ Params: { orderId: string } }>("/notifications/:orderId", async (req, reply) => {
    const { orderId } = req.params;
    if (!isOrderId(orderId)) {
      return sendProblem(
        reply,
        problem(400, "invalid-order-id", "Bad Request", `orderId must match ${ORDER_ID_PATTERN}`),
      );
    }
    const notifications = await store.list(orderId);
    if (notifications.length === 0) {
      return sendProblem(
        reply,
        problem(404, "notifications-not-found", "Not Found", `no notification sent for order ${orderId}`),
      );
    }
    return { orderId, notifications };
  });
}
