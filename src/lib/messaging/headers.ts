/** Header names ShopStream sets on its messages (beside NATS's own `Nats-Msg-Id`). */
export const Hdr = {
  /** Event type, so a consumer can skip an event it does not handle without decoding it. */
  Type: "Shopstream-Type",
  /** W3C trace context. */
  TraceParent: "traceparent",
  /** Set on a message republished from the DLQ: the DLQ sequence it came from. */
  Redrive: "Shopstream-Redrive",
  DlqError: "Shopstream-Dlq-Error",
  DlqCode: "Shopstream-Dlq-Code",
  DlqAttempts: "Shopstream-Dlq-Attempts",
  DlqStream: "Shopstream-Dlq-Stream",
  DlqSubject: "Shopstream-Dlq-Subject",
  DlqSequence: "Shopstream-Dlq-Sequence",
  DlqConsumer: "Shopstream-Dlq-Consumer",
  DlqAt: "Shopstream-Dlq-At",
  /** Set on a DLQ entry stored without the body because the copy would not fit: the body's size in bytes. */
  DlqBodyOmitted: "Shopstream-Dlq-Body-Omitted",
} as const;
