import type { FastifyInstance } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { bearerSecurity } from "../../lib/http/auth.js";
import { problemResponse } from "../../lib/http/problem.js";
import { customerKeyName, type CustomerKeys } from "../../lib/pii/keys.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import { CustomerId } from "./routes.js";

const CustomerParam = Type.Object({ id: CustomerId });

/**
 * Registers `DELETE /customers/{id}/personal-data` (operator only): erasure by crypto-shredding (GDPR art. 17). It
 * destroys the customer's data key, so every e-mail sealed under it (in the ORDERS stream, the audit log, dead
 * letters) can no longer be read; the audit hash chain, which hashes the sealed form, still verifies. Idempotent:
 * 204 whether or not the customer had a key (erasing an unknown or already erased customer leaves the same state).
 * The customer's next order gets a new key.
 */
export function registerPersonalDataRoutes(
  app: FastifyInstance,
  d: { keys: CustomerKeys; logger: Logger },
): void {
  app.delete<{ Params: Static<typeof CustomerParam> }>(
    "/customers/:id/personal-data",
    {
      config: { auth: "operator" },
      schema: {
        summary: "Erase a customer's personal data (crypto-shredding)",
        description:
          "Destroys the customer's data key: the e-mail of each of their orders becomes unreadable everywhere it is stored (events, audit log, dead letters), and reads show it as erased; the audit chain still verifies. Orders themselves (items, amounts, statuses) are kept. Idempotent: 204 for a customer with or without a key. A later order of the customer is sealed under a new key.",
        security: bearerSecurity,
        params: CustomerParam,
        response: {
          204: Type.Null({ description: "The customer's personal data is erased (or there was none)" }),
          400: problemResponse("The customer id is malformed"),
          401: problemResponse("No bearer token, or one that is not valid"),
          403: problemResponse("Not an operator token"),
          503: problemResponse("Temporarily unavailable (the key bucket is unreachable): retry"),
        },
      },
    },
    async (req, reply) => {
      const existed = await d.keys.erase(req.params.id);
      // The bucket key (a hash) identifies the erasure in the logs without repeating the customer id.
      d.logger.info(
        { customer_key: customerKeyName(req.params.id), had_key: existed },
        "personal data erased",
      );
      return reply.code(204).send();
    },
  );
}
