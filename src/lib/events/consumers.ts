/**
 * The durable consumer names of the services, named once: each is a JetStream consumer shared by every
 * replica of its service, so a name is also persistent state (renaming one starts a new consumer from the
 * stream's beginning and leaves the old one behind). `<service>-<what it consumes>`.
 *
 * The audit has no durable consumer: it is a projector that reads every stream with ordered consumers (no
 * acknowledgements) from a position kept in its database (`src/services/audit/projector.ts`). Its former
 * durables (`audit-orders`, …, `audit-dlq`) are deleted at its start (`LEGACY_AUDIT_DURABLES`).
 */
export const Durables = {
  /** orders: StockRejected on INVENTORY. */
  ORDERS_INVENTORY: "orders-inventory",
  /** orders: every PAYMENTS event. */
  ORDERS_PAYMENTS: "orders-payments",
  /** orders: OrderPlaced redelivered at the order's deadline (a durable timer). */
  ORDERS_TIMEOUTS: "orders-timeouts",
  /** inventory: OrderPlaced, OrderConfirmed, OrderCancelled. */
  INVENTORY_ORDERS: "inventory-orders",
  /** payments: StockReserved. */
  PAYMENTS_INVENTORY: "payments-inventory",
  /** payments: OrderCancelled. */
  PAYMENTS_ORDERS: "payments-orders",
  /** notifications: OrderConfirmed and OrderCancelled. */
  NOTIFICATIONS_ORDERS: "notifications-orders",
} as const;
export type DurableName = (typeof Durables)[keyof typeof Durables];
