/**
 * Order ids: the one pattern every place checks them with (the event catalog's `OrderId`, the services' HTTP
 * routes, the audit log). An order id is a token of every saga subject (`orders.<orderId>`,
 * `inventory.<orderId>.StockReserved`, …), so it is restricted to subject-safe characters: ASCII letters,
 * digits, `_` and `-`, 1 to 64 of them. The orders service makes them as `ord_<time, base 36><random hex>`.
 */

/** An order id's form without anchors, to embed in a larger pattern (e.g. a subject's). */
export const ORDER_ID_UNANCHORED = "[A-Za-z0-9_-]{1,64}";

/** The order id pattern, anchored: a JSON Schema `pattern` (`^[A-Za-z0-9_-]{1,64}$`). */
export const ORDER_ID_PATTERN = `^${ORDER_ID_UNANCHORED}$`;

const ORDER_ID = new RegExp(ORDER_ID_PATTERN);

/** Is `s` a well-formed order id? */
export function isOrderId(s: string): boolean {
  return ORDER_ID.test(s);
}
