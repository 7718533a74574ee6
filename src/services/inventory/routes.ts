/**
 * The inventory HTTP API (operators only: no route here says otherwise, src/lib/http/auth.ts):
 *
 * - `GET /inventory` → `{items: [{sku, name, price, currency, initial, adjusted, available, reserved, committed}]}`;
 * - `GET /inventory/:sku` → `{sku, name, price, currency, initial, adjusted, available, reserved, committed}`, or 404;
 * - `GET /inventory/reservations/:orderId` → `{status, items, reason?, skus?}`, or 404;
 * - `POST /inventory/products` adds a product (ProductAdded), `PUT /inventory/:sku/price` changes a price
 *   (PriceChanged; orders placed before keep theirs), `POST /inventory/:sku/adjustments` restocks or writes off
 *   units with a reason (StockAdjusted, once per `Idempotency-Key`): see {@link registerCatalogRoutes}.
 *
 * Errors are RFC 9457 problem documents (`application/problem+json`, `{type, title, status, detail}`).
 */
import { ProblemError } from "../../lib/http/problem.js";
import type { FastifyInstance, FastifyReply } from "fastify";
import { isOrderId } from "../../lib/ids.js";
import { ShopStreamError, describeError } from "../../lib/errors.js";
import { Type } from "@sinclair/typebox";
import { bearerSecurity } from "../../lib/http/auth.js";
import { problemResponse } from "../../lib/http/problem.js";
import { isSkuId } from "./catalog.js";
import { authResponses, registerCatalogRoutes, StockViewSchema, type CatalogDeps } from "./catalog-routes.js";
import type { InventoryStore } from "./store.js";

export const PROBLEM_CONTENT_TYPE = "application/problem+json";
const PROBLEM_BASE = "https://shopstream.dev/problems/inventory/";

/** An RFC 9457 problem document. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
}

function sendProblem(reply: FastifyReply, status: number, slug: string, title: string, detail: string) {
  const body: Problem = { type: PROBLEM_BASE + slug, title, status, detail };
  return reply.code(status).type(PROBLEM_CONTENT_TYPE).send(body);
}

/** Adds the inventory routes to the service's HTTP server (in their own scope, with problem+json errors). */
export function registerInventoryRoutes(
  app: FastifyInstance,
  getStore: () => InventoryStore,
  catalogDeps?: () => CatalogDeps,
): void {
  void app.register(
    async (api) => {
      api.setNotFoundHandler((req, reply) =>
        sendProblem(reply, 404, "not-found", "Not Found", `no route ${req.method} ${req.url}`),
      );
      api.setErrorHandler((err, _req, reply) => {
        // Authentication's 401/403 (src/lib/http/auth.ts), with their WWW-Authenticate challenge.
        if (err instanceof ProblemError) {
          const doc = err.toProblem();
          return reply.code(doc.status).headers(err.headers).type(PROBLEM_CONTENT_TYPE).send(doc);
        }
        if (err instanceof ShopStreamError)
          return sendProblem(reply, err.status, err.code.toLowerCase(), err.name, err.message);
        const status = (err as { statusCode?: number }).statusCode ?? 500;
        if (status < 500) return sendProblem(reply, status, "bad-request", "Bad Request", describeError(err));
        api.log.error({ err: describeError(err) }, "inventory request failed");
        return sendProblem(
          reply,
          503,
          "unavailable",
          "Service Unavailable",
          "inventory state is not reachable",
        );
      });

      api.get(
        "/",
        {
          schema: {
            summary: "Every SKU with its catalog entry and stock figures",
            security: bearerSecurity,
            response: { 200: Type.Object({ items: Type.Array(StockViewSchema) }), ...authResponses },
          },
        },
        async () => ({ items: await getStore().list() }),
      );

      if (catalogDeps) registerCatalogRoutes(api, getStore, catalogDeps);

      api.get<{ Params: { sku: string } }>(
        "/:sku",
        {
          schema: {
            summary: "One SKU with its catalog entry and stock figures",
            security: bearerSecurity,
            params: Type.Object({ sku: Type.String() }),
            response: {
              200: StockViewSchema,
              ...authResponses,
              404: problemResponse("No such SKU"),
            },
          },
        },
        async (req, reply) => {
          const { sku } = req.params;
          const view = isSkuId(sku) ? await getStore().view(sku) : null;
          if (!view)
            return sendProblem(reply, 404, "sku-not-found", "SKU Not Found", `no SKU ${JSON.stringify(sku)}`);
          return view;
        },
      );

      api.get<{ Params: { orderId: string } }>(
        "/reservations/:orderId",
        {
          schema: {
            summary: "The stock reservation of one order",
            security: bearerSecurity,
            params: Type.Object({ orderId: Type.String() }),
            response: { ...authResponses, 404: problemResponse("No reservation for that order") },
          },
        },
        async (req, reply) => {
          const { orderId } = req.params;
          const record = isOrderId(orderId) ? await getStore().getReservation(orderId) : null;
          if (!record)
            return sendProblem(
              reply,
              404,
              "reservation-not-found",
              "Reservation Not Found",
              `no reservation for order ${JSON.stringify(orderId)}`,
            );
          return record;
        },
      );
    },
    { prefix: "/inventory" },
  );
}
