/**
 * The product catalog: its stored shape (read by the orders service too, so keep it exactly), the shape of a
 * `CATALOG_FILE`, the default catalog and the file loader.
 */
import { readFile } from "node:fs/promises";
import { Type, type Static } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { ConfigError } from "../../lib/errors.js";

/** SKU ids are KV keys (and appear in subjects and URLs): a safe, short alphabet only. */
export const SKU_PATTERN = "^[A-Za-z0-9_-]{1,64}$";
const skuRegExp = new RegExp(SKU_PATTERN);

/** Is `s` a syntactically valid SKU id? */
export function isSkuId(s: string): boolean {
  return skuRegExp.test(s);
}

export const SkuId = Type.String({ pattern: SKU_PATTERN, description: "SKU id, KV-key safe" });

/**
 * One product as stored in the `catalog` KV bucket under its SKU. The orders service reads this to price
 * orders: `price` is the unit price in minor units (cents) of `currency`.
 */
export const CatalogEntry = Type.Object(
  {
    sku: SkuId,
    name: Type.String({ minLength: 1, maxLength: 200 }),
    price: Type.Integer({ minimum: 0, description: "unit price in cents" }),
    currency: Type.String({ pattern: "^[A-Z]{3}$", description: "ISO 4217 code" }),
  },
  { additionalProperties: false },
);
export type CatalogEntry = Static<typeof CatalogEntry>;

/** A catalog entry with the stock it starts with (only used when the SKU is first loaded). */
export const CatalogSeedItem = Type.Object(
  {
    ...CatalogEntry.properties,
    stock: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: "initial units" }),
  },
  { additionalProperties: false },
);
export type CatalogSeedItem = Static<typeof CatalogSeedItem>;

/** The contents of a `CATALOG_FILE`. */
export const CatalogFile = Type.Object(
  { items: Type.Array(CatalogSeedItem, { minItems: 1, maxItems: 100_000 }) },
  { additionalProperties: false },
);
export type CatalogFile = Static<typeof CatalogFile>;

const LOAD_STOCK = 1_000_000;

/**
 * The catalog loaded when no `CATALOG_FILE` is given: ten products with stock for load runs, plus two
 * small-stock SKUs for demos (`SKU-LIMITED` sells out after 5 units, `SKU-SOLDOUT` has none).
 */
export const DEFAULT_CATALOG: readonly CatalogSeedItem[] = [
  { sku: "SKU-TSHIRT", name: "ShopStream T-shirt", price: 1999, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-HOODIE", name: "ShopStream hoodie", price: 4999, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-MUG", name: "Coffee mug", price: 1250, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-STICKERS", name: "Sticker pack", price: 399, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-CAP", name: "Baseball cap", price: 2200, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-BOTTLE", name: "Steel water bottle", price: 2795, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-NOTEBOOK", name: "Dotted notebook", price: 1450, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-BACKPACK", name: "Laptop backpack", price: 8900, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-SOCKS", name: "Striped socks", price: 899, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-POSTER", name: "Architecture poster", price: 1500, currency: "EUR", stock: LOAD_STOCK },
  { sku: "SKU-LIMITED", name: "Limited edition print", price: 12_000, currency: "EUR", stock: 5 },
  { sku: "SKU-SOLDOUT", name: "Sold-out collector pin", price: 2500, currency: "EUR", stock: 0 },
];

const fileCheck = TypeCompiler.Compile(CatalogFile);
const MAX_LISTED_PROBLEMS = 5;

/**
 * Validates parsed catalog file contents: the schema, then unique SKUs.
 * @returns the problems found (empty when valid), each `<json pointer>: <what is wrong>`.
 */
export function catalogFileProblems(value: unknown): string[] {
  if (!fileCheck.Check(value)) {
    return [...fileCheck.Errors(value)].map((e) => `${e.path || "/"}: ${e.message}`);
  }
  const problems: string[] = [];
  const seen = new Map<string, number>();
  value.items.forEach((item, i) => {
    const first = seen.get(item.sku);
    if (first !== undefined)
      problems.push(`/items/${i}/sku: duplicate SKU "${item.sku}" (also at /items/${first})`);
    else seen.set(item.sku, i);
  });
  return problems;
}

/**
 * Reads and validates a `CATALOG_FILE`.
 * @throws ConfigError naming the file and every problem (unreadable, not JSON, schema, duplicate SKUs).
 */
export async function loadCatalogFile(path: string): Promise<CatalogSeedItem[]> {
  const fail = (problem: string) => new ConfigError(`CATALOG_FILE ${path}: ${problem}`);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw fail(`cannot be read: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw fail(`is not valid JSON: ${(err as Error).message}`);
  }
  const problems = catalogFileProblems(value);
  if (problems.length > 0) {
    const listed = [...new Set(problems)];
    const more =
      listed.length > MAX_LISTED_PROBLEMS ? `\n  (and ${listed.length - MAX_LISTED_PROBLEMS} more)` : "";
    throw fail(
      `is not a valid catalog (expected {"items": [{sku, name, price, currency, stock}]}):\n  ${listed
        .slice(0, MAX_LISTED_PROBLEMS)
        .join("\n  ")}${more}`,
    );
  }
  return (value as CatalogFile).items;
}

/** The stored catalog entry of a seed item (without its stock). */
export function entryOf(item: CatalogSeedItem): CatalogEntry {
  return { sku: item.sku, name: item.name, price: item.price, currency: item.currency };
}
