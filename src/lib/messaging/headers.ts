/** Header names ShopStream sets on its messages (beside NATS's own `Nats-Msg-Id`). */
export const Hdr = {
  /** Event type, so a consumer can skip an event it does not handle without decoding it. */
  Type: "Shopstream-Type",
  /** W3C trace context. */
  TraceParent: "traceparent",
  /** Set on a message republished from the DLQ: the DLQ sequence it came from. */
  Redrive: "Shopstream-Redrive",
  /** Set on a message republished from the DLQ: how often this message has been redriven so far (1, 2, …). */
  RedriveCount: "Shopstream-Redrive-Count",
  /**
   * Set on a message republished from the DLQ, one value per earlier dead-lettering (JSON: at, consumer, code,
   * attempts, error): the message's attempt history across redrives, carried into its next DLQ entry.
   */
  RedriveHistory: "Shopstream-Redrive-History",
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
  /** On a discard record (subject `dlq._discarded.<consumer>`): the DLQ sequence of the entry discarded. */
  DlqDiscarded: "Shopstream-Dlq-Discarded",
  /** On a discard record: the operator's reason. */
  DlqDiscardReason: "Shopstream-Dlq-Discard-Reason",
  /** On a discard record: who discarded it (the operator token's `sub`). */
  DlqDiscardedBy: "Shopstream-Dlq-Discarded-By",
} as const;
