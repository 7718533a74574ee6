/**
 * Prints a development bearer token (docs/security.md), signed with the stack's HS256 secret:
 *
 *   npm run -s token -- <customerId>          a customer's token (sub = customerId)
 *   npm run -s token -- --admin [<name>]      an operator's token (scope "operator")
 *   options: --ttl <seconds> (default 3600)
 *
 * The secret: `AUTH_HS256_SECRET` (its value) when set, else the file `AUTH_HS256_SECRET_FILE`, else the one the stack
 * keeps under `DATA_DIR` (default `./.data`; created there when `npm start` has not run yet, so both agree).
 * Only the token goes to stdout: `TOKEN=$(npm run -s token -- alice)`. Exit codes: 0 printed, 2 usage error.
 */
import { ConfigError } from "../lib/errors.js";
import {
  DEFAULT_AUDIENCE,
  SECRET_FILE_ENV,
  devSecretFromEnv,
  devSecretPath,
  ensureDevSecret,
  signDevToken,
} from "../lib/http/dev-token.js";
import { TOKEN_USAGE, parseTokenArgs } from "./token-cli.js";

async function main(): Promise<void> {
  const args = parseTokenArgs(process.argv.slice(2));
  if (typeof args === "string") {
    process.stderr.write(`${args ? `token: ${args}\n` : ""}${TOKEN_USAGE}\n`);
    process.exit(args ? 2 : 0);
  }
  const env = process.env;
  const secret =
    env["AUTH_HS256_SECRET"] || env[SECRET_FILE_ENV]
      ? await devSecretFromEnv(env)
      : await ensureDevSecret(devSecretPath(env["DATA_DIR"] || "./.data"));
  const token = await signDevToken(secret, {
    sub: args.sub,
    operator: args.operator,
    ttlS: args.ttlS,
    audience: env["AUTH_AUDIENCE"] || DEFAULT_AUDIENCE,
    ...(env["AUTH_ISSUER"] ? { issuer: env["AUTH_ISSUER"] } : {}),
  });
  process.stdout.write(`${token}\n`);
}

main().catch((err: unknown) => {
  // A ConfigError names the variable or file, never a secret.
  process.stderr.write(
    `token: ${err instanceof ConfigError ? err.message : String((err as Error).message)}\n`,
  );
  process.exit(1);
});
