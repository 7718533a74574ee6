/**
 * Bearer-token authentication for every ShopStream HTTP server (docs/security.md).
 *
 * - A token is a JWT verified with `jose`: signature, `alg` from an allow-list (never `none`), `exp` required,
 *   `nbf`, `aud` (`AUTH_AUDIENCE`) and, when configured, `iss` (`AUTH_ISSUER`).
 * - Keys, one source per deployment: `AUTH_JWKS_URL` (RS256/ES256, production), else `AUTH_PUBLIC_KEY` (a PEM
 *   public key, RS256 or ES256 by its type), else `AUTH_HS256_SECRET_FILE` (development: the secret the stack
 *   creates under `DATA_DIR`, see dev-token.ts).
 * - The caller is the token's `sub`; an operator is a token whose `scope` claim (space-separated) holds `operator`.
 * - Each route declares who may call it in its config, `config: { auth: "none" | "customer" | "operator" }`;
 *   a route that says nothing is **operator-only** (fail closed). Unknown routes stay 404 for everyone.
 * - 401 problem+json with `WWW-Authenticate: Bearer` when the token is missing, `Bearer error="invalid_token"`
 *   when it is bad; 403 (`insufficient_scope`) when a customer calls an operator route. Neither the token nor any
 *   key ever reaches a log line or a problem document: failures are logged by reason code only.
 */
import { createPublicKey } from "node:crypto";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { Type, type Static } from "@sinclair/typebox";
import {
  createRemoteJWKSet,
  errors,
  importSPKI,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
} from "jose";
import { Counter, type Registry } from "prom-client";
import { ConfigError } from "../errors.js";
import type { Logger } from "../telemetry/logger.js";
import { DEFAULT_AUDIENCE, OPERATOR_SCOPE, decodeDevSecret, readDevSecret } from "./dev-token.js";
import { ProblemError } from "./problem.js";

/** Who may call a route. */
export type AuthLevel = "none" | "customer" | "operator";

/** The authenticated caller. */
export interface Principal {
  /** The token's `sub`: the customer id (or the operator's name). */
  sub: string;
  /** The token's `scope` holds `operator`. */
  operator: boolean;
}

declare module "fastify" {
  interface FastifyRequest {
    /** The caller, set on routes whose `config.auth` is `customer` or `operator`. */
    principal?: Principal;
  }
  interface FastifyContextConfig {
    /** Who may call this route (default `operator`). */
    auth?: AuthLevel;
  }
}

/** Environment variables of token verification (part of every service's config). */
export const AuthConfig = Type.Object({
  AUTH_JWKS_URL: Type.Optional(
    Type.String({
      format: "uri",
      description: "JWKS URL of the identity provider (RS256/ES256); production",
    }),
  ),
  AUTH_PUBLIC_KEY: Type.Optional(
    Type.String({
      minLength: 1,
      sensitive: true,
      description: "PEM (SPKI) public key, RSA (RS256) or EC P-256 (ES256), when there is no JWKS URL",
    }),
  ),
  AUTH_HS256_SECRET: Type.Optional(
    Type.String({
      minLength: 43,
      sensitive: true,
      description: "development HS256 secret itself (base64url, >= 32 bytes), e.g. from a Kubernetes Secret",
    }),
  ),
  AUTH_HS256_SECRET_FILE: Type.Optional(
    Type.String({
      minLength: 1,
      description: "file holding the development HS256 secret (the stack creates it under DATA_DIR)",
    }),
  ),
  AUTH_AUDIENCE: Type.String({
    minLength: 1,
    default: DEFAULT_AUDIENCE,
    description: "required `aud` of every token",
  }),
  AUTH_ISSUER: Type.Optional(Type.String({ minLength: 1, description: "required `iss`, when set" })),
  AUTH_CLOCK_TOLERANCE_S: Type.Integer({
    minimum: 0,
    maximum: 300,
    default: 5,
    description: "clock skew allowed on exp/nbf",
  }),
});
export type AuthConfig = Static<typeof AuthConfig>;

/** Any text but control characters and lone surrogates, up to 128 characters (the orders API's customerId). */
// eslint-disable-next-line no-control-regex
const SUBJECT = /^(?:[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]|[\ud800-\udbff][\udc00-\udfff]){1,128}$/;

/** Whether `s` can be a token's `sub` (a customer id the orders API accepts). */
export function isValidSubject(s: string): boolean {
  return SUBJECT.test(s);
}
/** A bearer token as RFC 6750 defines its characters; anything longer than 8 KiB is refused unread. */
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;
const MAX_TOKEN_CHARS = 8192;

/** Why a token was refused (a reason code, safe to log and count). */
export class TokenError extends Error {
  override readonly name = "TokenError";
  constructor(readonly reason: string) {
    super(reason);
  }
}

type Key = Uint8Array | Awaited<ReturnType<typeof importSPKI>> | JWTVerifyGetKey;

/** Verifies bearer tokens; remembers verified ones until they expire (a token is verified once, not per request). */
export class TokenVerifier {
  readonly #key: Key;
  readonly #algorithms: string[];
  readonly #audience: string;
  readonly #issuer: string | undefined;
  readonly #tolerance: number;
  readonly #cache = new Map<string, { principal: Principal; expiresAt: number }>();
  /** Where the keys come from, for the start-up log (no key material). */
  readonly source: string;

  constructor(
    key: Key,
    algorithms: string[],
    opts: { audience: string; issuer?: string | undefined; clockToleranceS?: number; source: string },
  ) {
    this.#key = key;
    this.#algorithms = algorithms;
    this.#audience = opts.audience;
    this.#issuer = opts.issuer;
    this.#tolerance = opts.clockToleranceS ?? 5;
    this.source = opts.source;
  }

  /** Builds the verifier the configuration asks for (a {@link ConfigError} naming the variable otherwise). */
  static async fromConfig(c: AuthConfig): Promise<TokenVerifier> {
    const common = {
      audience: c.AUTH_AUDIENCE,
      issuer: c.AUTH_ISSUER,
      clockToleranceS: c.AUTH_CLOCK_TOLERANCE_S,
    };
    if (c.AUTH_JWKS_URL) {
      const url = new URL(c.AUTH_JWKS_URL);
      return new TokenVerifier(createRemoteJWKSet(url), ["RS256", "ES256"], {
        ...common,
        source: `JWKS ${url.origin}${url.pathname}`,
      });
    }
    if (c.AUTH_PUBLIC_KEY) {
      const pem = c.AUTH_PUBLIC_KEY.replace(/\\n/g, "\n");
      let alg: "RS256" | "ES256";
      try {
        const k = createPublicKey(pem);
        if (k.asymmetricKeyType === "rsa") alg = "RS256";
        else if (k.asymmetricKeyType === "ec" && k.asymmetricKeyDetails?.namedCurve === "prime256v1")
          alg = "ES256";
        else throw new Error("unsupported key type");
      } catch {
        throw new ConfigError(
          "invalid configuration:\n  AUTH_PUBLIC_KEY: expected a PEM public key, RSA or EC P-256; got one that is not (value not shown)",
        );
      }
      return new TokenVerifier(await importSPKI(pem, alg), [alg], {
        ...common,
        source: `public key (${alg})`,
      });
    }
    if (c.AUTH_HS256_SECRET) {
      return new TokenVerifier(decodeDevSecret(c.AUTH_HS256_SECRET, "AUTH_HS256_SECRET"), ["HS256"], {
        ...common,
        source: "HS256 development secret (AUTH_HS256_SECRET)",
      });
    }
    if (c.AUTH_HS256_SECRET_FILE) {
      return new TokenVerifier(await readDevSecret(c.AUTH_HS256_SECRET_FILE), ["HS256"], {
        ...common,
        source: `HS256 development secret (${c.AUTH_HS256_SECRET_FILE})`,
      });
    }
    throw new ConfigError(
      "invalid configuration:\n  AUTH_JWKS_URL, AUTH_PUBLIC_KEY, AUTH_HS256_SECRET or AUTH_HS256_SECRET_FILE: one is required to verify bearer tokens (npm start sets AUTH_HS256_SECRET_FILE)",
    );
  }

  /** The caller a token proves, or a {@link TokenError} with the reason it does not. */
  async verify(token: string): Promise<Principal> {
    const now = Date.now();
    const hit = this.#cache.get(token);
    if (hit) {
      if (hit.expiresAt > now) return hit.principal;
      this.#cache.delete(token);
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.#key as never, {
        algorithms: this.#algorithms,
        audience: this.#audience,
        ...(this.#issuer ? { issuer: this.#issuer } : {}),
        clockTolerance: this.#tolerance,
        requiredClaims: ["sub", "exp"],
      }));
    } catch (err) {
      throw new TokenError(reasonOf(err));
    }
    const sub = payload.sub;
    if (typeof sub !== "string" || !SUBJECT.test(sub)) throw new TokenError("bad_subject");
    const scope = typeof payload["scope"] === "string" ? payload["scope"].split(" ") : [];
    const principal: Principal = { sub, operator: scope.includes(OPERATOR_SCOPE) };
    const nbfOk = payload.nbf === undefined || payload.nbf * 1000 <= now;
    if (nbfOk && payload.exp !== undefined) {
      if (this.#cache.size >= 50_000) this.#cache.clear();
      this.#cache.set(token, { principal, expiresAt: payload.exp * 1000 });
    }
    return principal;
  }
}

function reasonOf(err: unknown): string {
  if (err instanceof errors.JWTExpired) return "expired";
  if (err instanceof errors.JWTClaimValidationFailed) return `claim_${err.claim}`;
  if (err instanceof errors.JWSSignatureVerificationFailed) return "bad_signature";
  if (err instanceof errors.JOSEAlgNotAllowed) return "alg_not_allowed";
  if (err instanceof errors.JWKSNoMatchingKey) return "no_matching_key";
  if (err instanceof errors.JWKSTimeout || err instanceof errors.JOSEError) {
    return err.code.toLowerCase().replace(/^err_/, "");
  }
  return "malformed";
}

function unauthorized(detail: string, challenge: string): ProblemError {
  return new ProblemError(401, "unauthorized", "Unauthorized", detail, {
    headers: { "www-authenticate": challenge },
  });
}

/** The level of a request's route: its declared `config.auth`, else the default; none for unknown routes. */
function levelOf(req: FastifyRequest, fallback: AuthLevel): AuthLevel {
  if (req.is404) return "none";
  return req.routeOptions.config?.auth ?? fallback;
}

/**
 * Installs authentication on a fastify instance (before its routes are registered): a global `onRequest` hook that
 * enforces each route's `config.auth` and sets `req.principal`.
 */
export function installAuth(
  app: FastifyInstance,
  verifier: TokenVerifier,
  opts: {
    logger?: Logger;
    registry?: Registry;
    /** Level of routes that declare none (default `operator`: fail closed; the simulators use `none`). */
    defaultLevel?: AuthLevel;
  } = {},
): void {
  const fallback = opts.defaultLevel ?? "operator";
  const failures = opts.registry
    ? new Counter({
        name: "http_auth_failures_total",
        help: "Requests refused by authentication (401) or authorisation (403), by reason.",
        labelNames: ["reason"],
        registers: [opts.registry],
      })
    : undefined;
  app.decorateRequest("principal", undefined);
  app.addHook("onRequest", async (req) => {
    const level = levelOf(req, fallback);
    if (level === "none") return;
    const header = req.headers.authorization;
    if (header === undefined || header === "") {
      failures?.inc({ reason: "missing" });
      throw unauthorized("a bearer token is required (Authorization: Bearer <token>)", "Bearer");
    }
    const m = header.length <= MAX_TOKEN_CHARS + 16 ? BEARER.exec(header) : null;
    let principal: Principal;
    try {
      if (!m) throw new TokenError("not_bearer");
      principal = await verifier.verify(m[1]!);
    } catch (err) {
      const reason = err instanceof TokenError ? err.reason : "malformed";
      failures?.inc({ reason });
      opts.logger?.debug({ reason, route: req.routeOptions.url }, "bearer token refused");
      throw unauthorized(
        `the bearer token is not valid (${reason})`,
        'Bearer error="invalid_token", error_description="the token is not valid"',
      );
    }
    if (level === "operator" && !principal.operator) {
      failures?.inc({ reason: "not_operator" });
      throw new ProblemError(403, "forbidden", "Forbidden", "this operation requires an operator token", {
        headers: { "www-authenticate": `Bearer error="insufficient_scope", scope="${OPERATOR_SCOPE}"` },
      });
    }
    req.principal = principal;
  });
}

/** The caller of a route whose `config.auth` is `customer` or `operator` (set by {@link installAuth}). */
export function principalOf(req: FastifyRequest): Principal {
  if (!req.principal) throw new Error("principalOf: the route is not authenticated (config.auth)");
  return req.principal;
}

/** OpenAPI: the bearer security scheme, and the `security` requirement of an authenticated route. */
export const bearerSecurityScheme = {
  bearerAuth: {
    type: "http",
    scheme: "bearer",
    bearerFormat: "JWT",
    description: `A JWT: \`sub\` is the customer; \`scope\` holding \`${OPERATOR_SCOPE}\` makes an operator. In development: \`npm run token -- <customerId>\` or \`npm run token -- --admin\`.`,
  },
} as const;
export const bearerSecurity = [{ bearerAuth: [] as string[] }];
