import type { FastifyInstance } from "fastify";
import type { TSchema } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { Value } from "@sinclair/typebox/value";
import "../formats.js";

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
        ? Value.Convert(schema as TSchema, Value.Default(schema as TSchema, data ?? {}))
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
