/** The command line of `npm run token` (src/tools/token.ts), apart so that tests import it without running it. */
import { parseArgs } from "node:util";

/** Usage text of `npm run token`. */
export const TOKEN_USAGE = `usage: npm run -s token -- <customerId> | --admin [<name>]  [--ttl <seconds>]

env: DATA_DIR (default ./.data), AUTH_HS256_SECRET_FILE or AUTH_HS256_SECRET, AUTH_AUDIENCE, AUTH_ISSUER`;

/** What the command line asks for, or a usage error message. */
export function parseTokenArgs(argv: string[]): { sub: string; operator: boolean; ttlS: number } | string {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { admin: { type: "boolean" }, ttl: { type: "string" }, help: { type: "boolean", short: "h" } },
    });
  } catch (err) {
    return (err as Error).message;
  }
  const { values, positionals } = parsed;
  if (values.help) return "";
  const ttlS = values.ttl === undefined ? 3600 : Number(values.ttl);
  if (!Number.isInteger(ttlS) || ttlS < 1 || ttlS > 30 * 86_400) return "--ttl: seconds, 1 to 2592000";
  if (positionals.length > 1) return "one subject at most";
  const operator = values.admin === true;
  const sub = positionals[0] ?? (operator ? "admin" : undefined);
  if (sub === undefined) return "give a customerId, or --admin";
  return { sub, operator, ttlS };
}
