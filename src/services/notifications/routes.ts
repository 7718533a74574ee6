import type { FastifyInstance } from "fastify";
import { OrderId } from "../../lib/events/catalog.js";
import { problem, sendProblem } from "../../lib/http/problem.js";
import type { NotificationStore } from "./store.js";

const orderIdRegExp = new RegExp(OrderId.pattern ?? "^[A-Za-z0-9_-]{1,64}$");

/**
 * `GET /notifications/:orderId` → `{orderId, notifications: [{orderId, kind, messageId, sentAt}]}` (no
 * address: it is PII), or a 404 problem document when nothing was sent for the order.
 */
export function registerNotificationRoutes(app: FastifyInstance, store: NotificationStore): void {
  app.get<{ Params: { orderId: string } }>("/notifications/:orderId", async (req, reply) => {
    const { orderId } = req.params;
    if (!orderIdRegExp.test(orderId)) {
      return sendProblem(
        reply,
        problem(400, "invalid-order-id", "Bad Request", `orderId must match ${orderIdRegExp.source}`),
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
