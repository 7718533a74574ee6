import { Type, type Static } from "@sinclair/typebox";
import { Env } from "../../lib/config.js";
import { defaultPorts } from "../../lib/ports.js";

/** Environment variables of the inventory service (merged with the common ones). */
export const InventoryConfig = Type.Object({
  PORT: Env.port(defaultPorts.inventory, "HTTP port of the inventory service"),
  CATALOG_FILE: Type.Optional(
    Type.String({
      minLength: 1,
      description:
        'JSON file `{"items": [{sku, name, price, currency, stock}]}` replacing the default catalog; loaded once per SKU (never overwrites stored stock)',
    }),
  ),
});
export type InventoryConfig = Static<typeof InventoryConfig>;
