import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import { ShopStreamError, describeError } from "../errors.js";

// ---------------------------------------------------------------------------------------------------
// problem+json
// ---------------------------------------------------------------------------------------------------

export const PROBLEM_CONTENT_TYPE = "application/problem+json";
const PROBLEM_BASE = "https://shopstream.dev/problems/";

/** One field-level validation problem, listed in a problem document's `errors`. */
export interface ProblemFieldError {
  /** JSON pointer into the request, e.g. `/body/amount` or `/headers/idempotency-key`. */
  pointer: string;
  message: string;
}

/** RFC 9457 problem document. */
export interface ProblemDocument {
  type: string;
  title: string;
  status: number;
  detail: string;
  errors?: ProblemFieldError[];
}

/**
 * JSON Schema of a {@link ProblemDocument} as this library sends it (no other members), for route response
 * schemas: declare error responses with {@link problemResponse}, which also types them `application/problem+json`.
 */
export const ProblemSchema = Type.Object(
  {
    type: Type.String({ format: "uri", description: "URI identifying the problem type" }),
    title: Type.String({ description: "short summary of the problem type" }),
    status: Type.Integer({ minimum: 400, maximum: 599, description: "the HTTP status code" }),
    detail: Type.String({ description: "explanation of this occurrence" }),
    errors: Type.Optional(
      Type.Array(
        Type.Object(
          {
            pointer: Type.String({ description: "JSON pointer into the request, e.g. `/body/items/0/sku`" }),
            message: Type.String(),
          },
          { additionalProperties: false },
        ),
        { description: "the offending fields, when the request was invalid" },
      ),
    ),
  },
  { additionalProperties: false, description: "RFC 9457 problem details" },
);
// Compile-time check: the schema and the interface describe the same document.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _problemSchemaMatches: Same<Static<typeof ProblemSchema>, ProblemDocument> = true;

/**
 * A route response schema for an error status, declared as it is sent: `application/problem+json` with
 * {@link ProblemSchema}. Fastify picks the serializer by the reply's content type, which {@link sendProblem} sets.
 */
export function problemResponse(description: string) {
  return { description, content: { [PROBLEM_CONTENT_TYPE]: { schema: ProblemSchema } } };
}

/** An error rendered as `application/problem+json` with the given status. */
export class ProblemError extends ShopStreamError {
  override readonly name: string = "ProblemError";
  readonly title: string;
  readonly errors: ProblemFieldError[] | undefined;
  readonly headers: Record<string, string>;

  /** `slug` becomes both the error `code` and the last segment of the problem `type` URI. */
  constructor(
    status: number,
    slug: string,
    title: string,
    detail: string,
    extra: { errors?: ProblemFieldError[]; headers?: Record<string, string> } = {},
  ) {
    super(slug, detail, { retryable: status >= 500 || status === 429, status });
    this.title = title;
    this.errors = extra.errors;
    this.headers = extra.headers ?? {};
  }

  toProblem(): ProblemDocument {
    return problem(this.status, this.code, this.title, this.message, this.errors);
  }
}

/** Builds an RFC 9457 problem document. */
export function problem(
  status: number,
  slug: string,
  title: string,
  detail: string,
  errors?: ProblemFieldError[],
): ProblemDocument {
  const doc: ProblemDocument = { type: PROBLEM_BASE + slug, title, status, detail };
  if (errors && errors.length > 0) doc.errors = errors;
  return doc;
}

/** Sends a problem document with the right content type. */
export function sendProblem(reply: FastifyReply, doc: ProblemDocument): FastifyReply {
  return reply.code(doc.status).type(PROBLEM_CONTENT_TYPE).send(doc);
}

const STATUS_TITLES: Record<number, string> = {
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  413: "Payload Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  431: "Request Header Fields Too Large",
  422: "Unprocessable Content",
  409: "Conflict",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

export function errorToProblem(
  err: FastifyError,
  log: FastifyBaseLogger,
): { doc: ProblemDocument; headers: Record<string, string> } {
  if (err instanceof ProblemError) return { doc: err.toProblem(), headers: err.headers };
  if (err instanceof ShopStreamError && !(err instanceof ProblemError)) {
    const st = err.status;
    if (st >= 500) log.error({ err }, `request failed: ${describeError(err)}`);
    return {
      doc: problem(
        st,
        err.code.toLowerCase().replace(/_/g, "-"),
        STATUS_TITLES[st] ?? "Error",
        st >= 500 ? "temporarily unavailable, retry later" : err.message,
      ),
      headers: st === 503 ? { "retry-after": "1" } : {},
    };
  }
  if (err.validation) {
    const context = err.validationContext ?? "request";
    const errors = err.validation.map((v) => {
      const missing = (v.params as { missingProperty?: unknown }).missingProperty;
      const path = v.instancePath + (typeof missing === "string" ? `/${missing}` : "");
      return { pointer: `/${context}${path}`, message: v.message ?? "is invalid" };
    });
    return {
      doc: problem(
        400,
        "validation",
        "Request validation failed",
        `invalid ${context}: ${err.message}`,
        errors,
      ),
      headers: {},
    };
  }
  const status = err.statusCode ?? 500;
  if (status >= 400 && status < 500) {
    return {
      doc: problem(status, "bad-request", STATUS_TITLES[status] ?? "Client Error", err.message),
      headers: {},
    };
  }
  log.error({ err }, `unhandled error: ${describeError(err)}`);
  return { doc: problem(500, "internal", "Internal Server Error", "unexpected error"), headers: {} };
}

/**
 * Makes every error of a fastify instance an RFC 9457 `application/problem+json` document: request
 * validation (400, listing each offending field as a JSON pointer), malformed JSON (400), oversized
 * bodies (413), {@link ProblemError}s and {@link ShopStreamError}s with their own status, unknown
 * routes (404); anything else is logged and answered 500 without internals.
 */
export function installProblemHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { doc, headers } = errorToProblem(err, req.log);
    void reply.headers(headers);
    return sendProblem(reply, doc);
  });
  app.setNotFoundHandler((req, reply) =>
    sendProblem(
      reply,
      problem(404, "not-found", "Not Found", `no route ${req.method} ${req.url.split("?")[0]}`),
    ),
  );
}

/** Answers an error raised before routing (malformed URL, over-long path parameter) as problem+json. */
function frameworkErrorToProblem(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const { doc, headers } = errorToProblem(err, req.log);
  void sendProblem(reply.headers(headers), doc);
}

/**
 * Answers an error of the HTTP parser itself — a malformed request line or header, a bad Content-Length or
 * chunk, headers over Node's size limit (431), a request timeout (408) — as problem+json on the raw socket,
 * then closes it (the connection's framing can no longer be trusted).
 */
function clientErrorToProblem(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const [status, detail] =
    err.code === "ERR_HTTP_REQUEST_TIMEOUT"
      ? [408, "the request was not received in time"]
      : err.code === "HPE_HEADER_OVERFLOW"
        ? [431, "the request headers exceed the size limit"]
        : [400, "malformed HTTP request"];
  const body = JSON.stringify(
    problem(status, "bad-request", STATUS_TITLES[status] ?? "Client Error", detail),
  );
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}

/**
 * Fastify constructor options that make errors raised outside the request lifecycle problem+json too
 * (Fastify's defaults answer them as plain `application/json`): `frameworkErrors` for a malformed URL or an
 * over-long path parameter, `clientErrorHandler` for errors of the HTTP parser.
 */
export const problemServerOptions = {
  frameworkErrors: frameworkErrorToProblem,
  clientErrorHandler: clientErrorToProblem,
};
