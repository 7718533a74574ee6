/**
 * Mail provider simulator (a stand-in for an email API such as Postmark/SES in dev and tests). Separate
 * process, reached over HTTP only; it never sends anything, it records. See docs/simulators.md.
 */
import type { FastifyInstance } from "fastify";
import { type Static, Type } from "@sinclair/typebox";
import {
  Faults,
  IdempotencyKeyHeaders,
  RecordLog,
  ProblemError,
  type SimulatorOptions,
  createSimulatorServer,
  fingerprint,
  newId,
  registerAdminRoutes,
  sendOutcome,
} from "../shared.js";

export const MessageRequest = Type.Object({
  to: Type.String({ format: "email", maxLength: 320 }),
  subject: Type.String({ maxLength: 998 }),
  text: Type.String({ maxLength: 1_000_000 }),
  tags: Type.Optional(Type.Record(Type.String(), Type.String())),
});
export type MessageRequest = Static<typeof MessageRequest>;

export interface MessageResponse {
  id: string;
  status: "queued";
}

export interface StoredMessage {
  id: string;
  to: string;
  subject: string;
  text: string;
  tags: Record<string, string>;
  idempotencyKey: string;
  at: string;
}

export interface MailProviderOptions extends SimulatorOptions {
  /** Persist messages and idempotency records to this JSON file (loaded at start, rewritten atomically). */
  mailLogFile?: string;
}

const TAG_PREFIX = "tag.";

/**
 * Filters from a `GET /v1/messages` query: `to=`, `orderId=` (shorthand for `tag.orderId=`) and any
 * `tag.<name>=<value>`. All given filters must match.
 */
function messageFilter(query: Record<string, unknown>): (m: StoredMessage) => boolean {
  const tags: [string, string][] = [];
  let to: string | undefined;
  for (const [k, v] of Object.entries(query)) {
    if (typeof v !== "string") {
      throw new ProblemError(
        400,
        "validation",
        "Request validation failed",
        `query parameter ${k} must be given once`,
      );
    }
    if (k === "to") to = v;
    else if (k === "orderId") tags.push(["orderId", v]);
    else if (k.startsWith(TAG_PREFIX) && k.length > TAG_PREFIX.length)
      tags.push([k.slice(TAG_PREFIX.length), v]);
    else {
      throw new ProblemError(
        400,
        "validation",
        "Request validation failed",
        `unknown query parameter ${k}; use to=, orderId= or tag.<name>=`,
      );
    }
  }
  return (m) => (to === undefined || m.to === to) && tags.every(([name, value]) => m.tags[name] === value);
}

/** Builds the mail provider simulator. Call `listen()` on the result, or use `inject()` in tests. */
export function buildMailProvider(opts: MailProviderOptions = {}): FastifyInstance {
  const app = createSimulatorServer("mail-provider", opts);
  const faults = new Faults(opts.seed);
  const log = new RecordLog<StoredMessage>({
    file: opts.mailLogFile,
    field: "messages",
    label: "mail log file",
    kind: "mail-provider log",
  });
  const { idempotency } = log;
  app.addHook("onClose", () => log.close());

  app.post<{ Body: MessageRequest; Headers: IdempotencyKeyHeaders }>(
    "/v1/messages",
    { ...faults.hooks, schema: { body: MessageRequest, headers: IdempotencyKeyHeaders } },
    async (req, reply) => {
      const { to, subject, text } = req.body;
      const tags = req.body.tags ?? {};
      const key = req.headers["idempotency-key"];
      const outcome = await idempotency.execute(
        "messages",
        key,
        fingerprint({ to, subject, text, tags }),
        () => {
          const id = newId("msg");
          log.push({ id, to, subject, text, tags, idempotencyKey: key, at: new Date().toISOString() });
          req.log.debug({ messageId: id, to, tags }, "message queued");
          const body: MessageResponse = { id, status: "queued" };
          return { status: 202, body };
        },
      );
      return sendOutcome(reply, outcome);
    },
  );

  app.get("/v1/messages", async (req) => {
    const matches = messageFilter(req.query as Record<string, unknown>);
    return { messages: log.items.filter(matches) };
  });

  registerAdminRoutes(app, faults, () => log.reset());

  return app;
}
