import type { HttpDependency } from "../../lib/http-client.js";
import { mailKey, type MailContent, type NotificationKind } from "./notification.js";

/**
 * The mail provider's API as notifications uses it, over a resilient {@link HttpDependency}. Each send
 * carries the idempotency key `<orderId>:<kind>`, so at most one e-mail per (order, kind) exists at the
 * provider however often it is repeated.
 */
export class Mailer {
  readonly http: HttpDependency;

  constructor(http: HttpDependency) {
    this.http = http;
  }

  /**
   * Sends one e-mail tagged `{orderId, kind}`.
   * @returns the provider's message id (the original one when the send is a replay).
   * @throws UpstreamError (retryable: 5xx/timeout; non-retryable: other 4xx), DeferError (breaker open).
   */
  async send(to: string, orderId: string, kind: NotificationKind, mail: MailContent): Promise<string> {
    const res = await this.http.post<{ id: string }>(
      "/v1/messages",
      { to, subject: mail.subject, text: mail.text, tags: { orderId, kind } },
      { idempotencyKey: mailKey(orderId, kind) },
    );
    return res.body.id;
  }
}
