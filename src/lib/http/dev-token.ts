/**
 * The development signing key and the tokens signed with it: one helper for the stack's supervisor (which creates
 * the key before starting services), `npm run token`, the load generator, the checker, the bench, the chaos
 * harness and the tests. Production verifies tokens against a JWKS URL or a public key instead (src/lib/http/auth.ts);
 * nothing here is used there.
 */
import { randomBytes } from "node:crypto";
import { link, mkdir, readFile, unlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { SignJWT } from "jose";
import { ConfigError } from "../errors.js";

/** The audience every ShopStream token is issued for (`AUTH_AUDIENCE`'s default). */
export const DEFAULT_AUDIENCE = "shopstream";
/** The scope value that makes a token an operator's (space-separated `scope` claim, RFC 8693 style). */
export const OPERATOR_SCOPE = "operator";
/** Environment variable naming the HS256 secret file. */
export const SECRET_FILE_ENV = "AUTH_HS256_SECRET_FILE";

/** Where the stack keeps its development HS256 secret: `<DATA_DIR>/auth/jwt-hs256.key`. */
export function devSecretPath(dataDir: string): string {
  return join(dataDir, "auth", "jwt-hs256.key");
}

/** Decodes a secret (base64url of at least 32 random bytes); `where` names its variable or file, never its value. */
export function decodeDevSecret(text: string, where: string): Uint8Array {
  const key = Buffer.from(text.trim(), "base64url");
  if (key.length < 32) {
    throw new ConfigError(
      `invalid configuration:\n  ${where}: expected a base64url secret of at least 32 bytes (value not shown)`,
    );
  }
  return new Uint8Array(key);
}
const decodeSecret = (text: string, path: string) => decodeDevSecret(text, `${SECRET_FILE_ENV} (${path})`);

/** Reads the HS256 secret at `path` (fails with a {@link ConfigError} naming the file when it is missing). */
export async function readDevSecret(path: string): Promise<Uint8Array> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new ConfigError(`${SECRET_FILE_ENV}: cannot read ${path} (${(err as NodeJS.ErrnoException).code})`);
  }
  return decodeSecret(text, path);
}

/**
 * Returns the HS256 secret at `path`, creating it first (32 random bytes, base64url, mode 0600, directory 0700)
 * when there is none. Safe when several processes race: the secret is written to a private temporary file and
 * linked into place, so a reader sees either no file or a whole one, and the first link wins.
 */
export async function ensureDevSecret(path: string): Promise<Uint8Array> {
  try {
    return decodeSecret(await readFile(path, "utf8"), path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  await writeFile(tmp, randomBytes(32).toString("base64url") + "\n", { mode: 0o600, flag: "wx" });
  try {
    await link(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  } finally {
    await unlink(tmp);
  }
  return readDevSecret(path);
}

/** What a development token says. */
export interface DevTokenClaims {
  /** The customer (or the operator's name). */
  sub: string;
  /** An operator token (`scope: "operator"`). */
  operator?: boolean;
  /** Lifetime in seconds (default 1 hour). */
  ttlS?: number;
  audience?: string;
  issuer?: string;
}

/** Signs an HS256 token with the development secret. */
export async function signDevToken(secret: Uint8Array, c: DevTokenClaims): Promise<string> {
  const jwt = new SignJWT(c.operator ? { scope: OPERATOR_SCOPE } : {})
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(c.sub)
    .setAudience(c.audience ?? DEFAULT_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(`${c.ttlS ?? 3600}s`);
  if (c.issuer) jwt.setIssuer(c.issuer);
  return jwt.sign(secret);
}

/**
 * Development tokens for many callers at once (the load generator's thousand customers, the tests): each token is
 * signed once and reused until it is within a minute of expiry.
 */
export class DevTokens {
  readonly #secret: Uint8Array;
  readonly #ttlS: number;
  readonly #audience: string | undefined;
  readonly #cache = new Map<string, { token: string; expiresAt: number }>();

  constructor(secret: Uint8Array, opts: { ttlS?: number; audience?: string } = {}) {
    this.#secret = secret;
    this.#ttlS = opts.ttlS ?? 3600;
    this.#audience = opts.audience;
  }

  /** Opens the secret file at `path` (created when missing, see {@link ensureDevSecret}). */
  static async open(path: string, opts: { ttlS?: number; audience?: string } = {}): Promise<DevTokens> {
    return new DevTokens(await ensureDevSecret(path), opts);
  }

  /** A token for `sub` (an operator's when `operator`), from the cache when it has a minute left. */
  async token(sub: string, operator = false): Promise<string> {
    const key = `${operator ? "op" : "c"}:${sub}`;
    const hit = this.#cache.get(key);
    if (hit && hit.expiresAt - Date.now() > 60_000) return hit.token;
    const token = await signDevToken(this.#secret, {
      sub,
      operator,
      ttlS: this.#ttlS,
      ...(this.#audience ? { audience: this.#audience } : {}),
    });
    if (this.#cache.size > 100_000) this.#cache.clear();
    this.#cache.set(key, { token, expiresAt: Date.now() + this.#ttlS * 1000 });
    return token;
  }

  /** `{ authorization: "Bearer …" }` for a customer. */
  async customer(customerId: string): Promise<{ authorization: string }> {
    return { authorization: `Bearer ${await this.token(customerId)}` };
  }

  /** `{ authorization: "Bearer …" }` for an operator. */
  async operator(name = "operator"): Promise<{ authorization: string }> {
    return { authorization: `Bearer ${await this.token(name, true)}` };
  }
}

/**
 * The operator token of a command-line tool (`npm run check`, `npm run dlq`, the bench): `SHOPSTREAM_TOKEN` when set,
 * else one signed with the stack's development secret (`AUTH_HS256_SECRET_FILE`, else under `DATA_DIR`, default
 * `./.data`). Never creates a secret: a tool talks to a stack that already has one.
 */
export async function operatorTokenFromEnv(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const given = env["SHOPSTREAM_TOKEN"];
  if (given) return given;
  return signDevToken(await devSecretFromEnv(env), { sub: "operator-cli", operator: true });
}

/**
 * The development secret a tool signs with: `AUTH_HS256_SECRET` (the value, e.g. a Kubernetes dev cluster's), else the
 * file `AUTH_HS256_SECRET_FILE`, else the stack's under `DATA_DIR` (default `./.data`).
 */
export async function devSecretFromEnv(env: NodeJS.ProcessEnv = process.env): Promise<Uint8Array> {
  const value = env["AUTH_HS256_SECRET"];
  if (value) return decodeDevSecret(value, "AUTH_HS256_SECRET");
  const file = env[SECRET_FILE_ENV] ?? devSecretPath(env["DATA_DIR"] ?? "./.data");
  return readDevSecret(file);
}
