import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { ConfigError } from "./errors.js";
import "./formats.js";

/**
 * Parses environment variables through a TypeBox object schema.
 *
 * Values are converted (strings to numbers/booleans) and defaults applied; any invalid or missing value
 * raises a {@link ConfigError} whose message names every offending variable and what was expected.
 * Libraries never read `process.env`: only entry points call this, once, at start-up.
 */
export function parseConfig<S extends TSchema>(schema: S, env: NodeJS.ProcessEnv = process.env): Static<S> {
  const raw: Record<string, unknown> = {};
  const props = (schema as unknown as { properties?: Record<string, TSchema> }).properties ?? {};
  for (const key of Object.keys(props)) {
    const v = env[key];
    if (v !== undefined && v !== "") raw[key] = v;
  }
  const value = Value.Convert(schema, Value.Default(schema, raw));
  const problems: string[] = [];
  for (const e of Value.Errors(schema, value)) {
    const name = e.path.replace(/^\//, "") || "(root)";
    const expected = describeExpected(e.schema);
    const got =
      raw[name] === undefined
        ? "it is missing"
        : isSensitive(name, props[name])
          ? "got a value that is not shown (secret)"
          : `got ${JSON.stringify(raw[name])}`;
    problems.push(`  ${name}: expected ${expected}; ${got}`);
  }
  if (problems.length > 0) {
    const unique = [...new Set(problems)];
    throw new ConfigError(`invalid configuration:\n${unique.join("\n")}`);
  }
  return value;
}

/** Names of variables whose values are secrets: never echoed in a configuration error. */
const SECRET_NAME = /SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|CREDENTIAL|_KEY$|DATABASE_URL/i;

/** A variable whose value must not be echoed: marked `sensitive: true` in its schema, or named like a secret. */
function isSensitive(name: string, s: TSchema | undefined): boolean {
  return SECRET_NAME.test(name) || (s as { sensitive?: boolean } | undefined)?.sensitive === true;
}

function describeExpected(s: TSchema): string {
  const desc = (s as { description?: string }).description;
  const parts: string[] = [];
  const t = (s as { type?: string }).type;
  if (Array.isArray((s as { anyOf?: TSchema[] }).anyOf)) {
    const lits = (s as unknown as { anyOf: { const?: unknown }[] }).anyOf.map((x) => JSON.stringify(x.const));
    parts.push(`one of ${lits.join(", ")}`);
  } else if (t) parts.push(t === "integer" ? "an integer" : `a ${t}`);
  const min = (s as { minimum?: number }).minimum;
  const max = (s as { maximum?: number }).maximum;
  if (min !== undefined && max !== undefined) parts.push(`between ${min} and ${max}`);
  else if (min !== undefined) parts.push(`>= ${min}`);
  else if (max !== undefined) parts.push(`<= ${max}`);
  const fmt = (s as { format?: string }).format;
  if (fmt) parts.push(`(${fmt})`);
  if (desc) parts.push(`— ${desc}`);
  return parts.join(" ") || "a valid value";
}

/** Common schema pieces for configuration. */
export const Env = {
  port: (def: number, description: string) =>
    Type.Integer({ minimum: 0, maximum: 65535, default: def, description }),
  url: (description: string, def?: string) =>
    def === undefined
      ? Type.String({ format: "uri", description })
      : Type.String({ format: "uri", default: def, description }),
  logLevel: () =>
    Type.Union(
      ["fatal", "error", "warn", "info", "debug", "trace", "silent"].map((l) => Type.Literal(l)),
      { default: "info", description: "pino log level" },
    ),
  ms: (def: number, description: string) => Type.Integer({ minimum: 0, default: def, description }),
};
