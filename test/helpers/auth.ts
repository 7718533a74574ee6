/**
 * Bearer tokens for tests: one development HS256 secret per test process (a fresh file under the OS temp dir), which
 * every system, service and simulator a test starts verifies against (`AUTH_HS256_SECRET_FILE`, see {@link authEnv}).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { DevTokens, devSecretPath, readDevSecret } from "../../src/lib/http/dev-token.js";
import { TokenVerifier } from "../../src/lib/http/auth.js";

/** The test process's secret file, written when this module loads (so env builders can be synchronous). */
export const secretFile = devSecretPath(mkdtempSync(join(tmpdir(), "shopstream-auth-")));
mkdirSync(dirname(secretFile), { recursive: true, mode: 0o700 });
writeFileSync(secretFile, randomBytes(32).toString("base64url") + "\n", { mode: 0o600 });
const secret = readDevSecret(secretFile);

/** The env that points a service (or `childEnv`) at the test secret. */
export const AUTH_ENV = { AUTH_HS256_SECRET_FILE: secretFile } as const;

/** The env that points a service at the test secret. */
export async function authEnv(): Promise<{ AUTH_HS256_SECRET_FILE: string }> {
  return AUTH_ENV;
}

/** The test secret itself (for tests that check it never leaks). */
export async function testSecret(): Promise<Uint8Array> {
  return secret;
}

let tokens: Promise<DevTokens> | undefined;
/** Development tokens signed with the test secret (cached per subject). */
export function testTokens(): Promise<DevTokens> {
  tokens ??= secret.then((s) => new DevTokens(s));
  return tokens;
}

/** A verifier of the test secret, for simulators built in-process. */
export async function testVerifier(): Promise<TokenVerifier> {
  return TokenVerifier.fromConfig({
    AUTH_HS256_SECRET_FILE: secretFile,
    AUTH_AUDIENCE: "shopstream",
    AUTH_CLOCK_TOLERANCE_S: 5,
  });
}

/** `Authorization` header of an operator. */
export async function operatorAuth(): Promise<{ authorization: string }> {
  return (await testTokens()).operator();
}

/** `Authorization` header of a customer. */
export async function customerAuth(customerId: string): Promise<{ authorization: string }> {
  return (await testTokens()).customer(customerId);
}

/** `fetch` as an operator (unless `init.headers` already carries an `authorization`). */
export async function operatorFetch(url: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  if (!headers.has("authorization")) headers.set("authorization", (await operatorAuth()).authorization);
  return fetch(url, { ...init, headers });
}
