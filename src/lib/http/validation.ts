import type { FastifyInstance } from "fastify";
import type { TSchema } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { Value } from "@sinclair/typebox/value";
import "../formats.js";
import { ProblemError } from "./problem.js";

/**
 * Validates requests with TypeBox's compiler instead of Ajv's defaults: bodies are checked strictly
 * (no type coercion: `"5"` is not a quantity, `true` is not a number), while querystring, params and
 * headers — always strings on the wire — are converted to the schema's types first. Errors come out in
 * Ajv's shape (`instancePath`, `message`), so the problem+json handler lists each offending field.
 */
export function installStrictValidation(app: FastifyInstance): void {
  app.setValidatorCompiler(({ schema, httpPart }) => {
    const check = TypeCompiler.Compile(schema as TSchema);
    const convert = httpPart !== "body";
    return (data: unknown) => {
      const value = convert
        ? convertStrings(schema as TSchema, Value.Default(schema as TSchema, data ?? {}))
        : data;
      if (check.Check(value)) return { value };
      const errors = [...check.Errors(value)].slice(0, 20).map((e) => ({
        instancePath: e.path,
        message: e.message,
        params: {},
        keyword: "typebox",
        schemaPath: "",
      }));
      return { error: errors as unknown as Error };
    };
  });
}

const wholeNumber = /^-?\d{1,15}$/;
const decimal = /^-?\d{1,15}(\.\d{1,15})?$/;

/**
 * Converts the string values of a querystring/params/headers object to the types its schema asks for,
 * strictly: `"12"` becomes 12 for an integer, but `"1.5"`, `"1e3"`, `" 7"` or `"0x10"` stay strings and
 * fail validation (TypeBox's own `Value.Convert` truncates `"1.5"` to 1).
 */
function convertStrings(schema: TSchema, data: unknown): unknown {
  const props = (schema as { properties?: Record<string, TSchema> }).properties;
  if (!props || typeof data !== "object" || data === null) return data;
  const out: Record<string, unknown> = { ...(data as Record<string, unknown>) };
  for (const [key, s] of Object.entries(props)) {
    const v = out[key];
    if (typeof v !== "string") continue;
    const type = (s as { type?: string }).type;
    if (type === "integer" && wholeNumber.test(v)) out[key] = Number(v);
    else if (type === "number" && decimal.test(v)) out[key] = Number(v);
    else if (type === "boolean" && (v === "true" || v === "false")) out[key] = v === "true";
  }
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses `application/json` bodies strictly: JSON is UTF-8 (RFC 8259), so a body declaring another charset
 * is refused (415) and one that is not valid UTF-8 is refused (400) — instead of having its bad bytes
 * silently replaced by U+FFFD and stored. The text then goes to fastify's own JSON parser (prototype
 * poisoning refused).
 */
export function installStrictJson(app: FastifyInstance): void {
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (req, body, done) => {
    const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(req.headers["content-type"] ?? "")?.[1];
    if (charset !== undefined && !/^utf-?8$/i.test(charset)) {
      const detail = `JSON bodies are UTF-8; charset ${JSON.stringify(charset)} is not supported`;
      done(new ProblemError(415, "unsupported-charset", "Unsupported Media Type", detail), undefined);
      return;
    }
    let text: string;
    try {
      text = utf8.decode(body as Buffer);
    } catch {
      done(
        new ProblemError(400, "invalid-encoding", "Bad Request", "the body is not valid UTF-8"),
        undefined,
      );
      return;
    }
    void parseJson(req, text, done);
  });
}
