/**
 * Bearer-token verification (src/lib/http/auth.ts) and the development secret and tokens (src/lib/http/dev-token.ts):
 * every way a token can be wrong is a 401 with the right challenge, a customer on an operator route is a 403, and
 * neither a token nor a key reaches a log line, a problem document or a configuration error.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtemp, readFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Fastify, { type FastifyInstance } from "fastify";
import { SignJWT, exportJWK, exportSPKI, generateKeyPair, type JWTPayload } from "jose";
import { parseConfig } from "../../src/lib/config.js";
import { AuthConfig, TokenVerifier, installAuth, type Principal } from "../../src/lib/http/auth.js";
import {
  DevTokens,
  devSecretPath,
  ensureDevSecret,
  operatorTokenFromEnv,
  signDevToken,
} from "../../src/lib/http/dev-token.js";
import { installProblemHandlers } from "../../src/lib/http/problem.js";
import { createLogger } from "../../src/lib/telemetry/logger.js";
import { CommonConfig } from "../../src/lib/service.js";
import { parseTokenArgs } from "../../src/tools/token-cli.js";

const AUD = "shopstream";
const secret = new Uint8Array(32).map((_, i) => (i * 7 + 3) % 256);
const otherSecret = new Uint8Array(32).map((_, i) => (i * 11 + 5) % 256);
const hs = () => new TokenVerifier(secret, ["HS256"], { audience: AUD, clockToleranceS: 0, source: "test" });
const now = () => Math.floor(Date.now() / 1000);

/** Signs `claims` with HS256 (or `key`/`alg`), `sub` alice and an hour of life unless overridden. */
async function sign(
  claims: JWTPayload = {},
  opts: { key?: Parameters<SignJWT["sign"]>[0]; alg?: string; noExp?: boolean } = {},
): Promise<string> {
  const jwt = new SignJWT({
    sub: "alice",
    aud: AUD,
    iat: now(),
    ...(opts.noExp ? {} : { exp: now() + 3600 }),
    ...claims,
  });
  return jwt.setProtectedHeader({ alg: opts.alg ?? "HS256" }).sign(opts.key ?? secret);
}

const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");

/** Every token that must be refused, by what is wrong with it. */
async function badTokens(): Promise<Record<string, string>> {
  const good = await sign();
  const [h, p] = good.split(".");
  return {
    "alg none": `${b64({ alg: "none", typ: "JWT" })}.${p}.`,
    "alg none, signature kept": `${b64({ alg: "none" })}.${p}.${good.split(".")[2]}`,
    expired: await sign({ exp: now() - 60, iat: now() - 3600 }),
    "not yet valid": await sign({ nbf: now() + 600 }),
    "wrong audience": await sign({ aud: "someone-else" }),
    "no audience": await sign({ aud: undefined }),
    "no expiry": await sign({}, { noExp: true }),
    "no subject": await sign({ sub: undefined }),
    "a control character in sub": await sign({ sub: "a\u0000b" }),
    "signed with another key": await sign({}, { key: otherSecret }),
    "HS512 (not allowed)": await sign({}, { alg: "HS512", key: new Uint8Array(64).fill(1) }),
    "payload tampered": `${h}.${b64({ sub: "mallory", aud: AUD, exp: now() + 3600, scope: "operator" })}.${good.split(".")[2]}`,
    garbage: "not-a-token",
    "two parts": `${h}.${p}`,
    empty: "",
  };
}

describe("TokenVerifier", () => {
  test("a good HS256 token gives its sub; `scope` holding operator makes an operator", async () => {
    const v = hs();
    assert.deepEqual(await v.verify(await sign()), { sub: "alice", operator: false } satisfies Principal);
    assert.deepEqual(await v.verify(await sign({ scope: "read operator" })), {
      sub: "alice",
      operator: true,
    });
    assert.deepEqual(await v.verify(await sign({ scope: "operators" })), { sub: "alice", operator: false });
    assert.deepEqual(await v.verify(await sign({ roles: ["operator"] })), { sub: "alice", operator: false });
  });

  test("refuses alg none, expired, not yet valid, wrong audience, unsigned or wrongly signed tokens", async () => {
    const v = hs();
    for (const [what, token] of Object.entries(await badTokens()))
      await assert.rejects(v.verify(token), { name: "TokenError" }, what);
  });

  test("checks the issuer when one is configured", async () => {
    const v = new TokenVerifier(secret, ["HS256"], { audience: AUD, issuer: "https://idp", source: "test" });
    assert.equal((await v.verify(await sign({ iss: "https://idp" }))).sub, "alice");
    await assert.rejects(v.verify(await sign({ iss: "https://evil" })), { name: "TokenError" });
    await assert.rejects(v.verify(await sign()), { name: "TokenError" });
  });

  test("a PEM public key verifies RS256 or ES256 by its type, and refuses HS256 signed with the PEM text", async () => {
    for (const alg of ["RS256", "ES256"] as const) {
      const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
      const pem = await exportSPKI(publicKey);
      const v = await TokenVerifier.fromConfig(
        parseConfig(AuthConfig, { AUTH_PUBLIC_KEY: pem.replace(/\n/g, "\\n") }),
      );
      assert.equal((await v.verify(await sign({}, { key: privateKey, alg }))).sub, "alice", alg);
      // The key-confusion attack: an HS256 token whose secret is the public key's text.
      const confused = await sign({}, { key: new TextEncoder().encode(pem), alg: "HS256" });
      await assert.rejects(
        v.verify(confused),
        { name: "TokenError" },
        `${alg}: HS256 with the PEM as secret`,
      );
      const other = await generateKeyPair(alg);
      await assert.rejects(v.verify(await sign({}, { key: other.privateKey, alg })), { name: "TokenError" });
    }
  });

  test("a JWKS URL verifies tokens signed by one of its keys", async () => {
    const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256", use: "sig" };
    const server = createServer((_req, res) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const { port } = server.address() as { port: number };
      const v = await TokenVerifier.fromConfig(
        parseConfig(AuthConfig, { AUTH_JWKS_URL: `http://127.0.0.1:${port}/jwks.json` }),
      );
      const token = await new SignJWT({ sub: "bob", aud: AUD, exp: now() + 60 })
        .setProtectedHeader({ alg: "ES256", kid: "k1" })
        .sign(privateKey);
      assert.equal((await v.verify(token)).sub, "bob");
      const stranger = await generateKeyPair("ES256");
      const forged = await new SignJWT({ sub: "bob", aud: AUD, exp: now() + 60 })
        .setProtectedHeader({ alg: "ES256", kid: "k1" })
        .sign(stranger.privateKey);
      await assert.rejects(v.verify(forged), { name: "TokenError" });
      await assert.rejects(
        v.verify(await sign()),
        { name: "TokenError" },
        "HS256 is not accepted with a JWKS",
      );
    } finally {
      server.close();
    }
  });

  test("no key configured stops start-up with a message naming the variables", async () => {
    await assert.rejects(
      TokenVerifier.fromConfig(parseConfig(AuthConfig, {})),
      /AUTH_JWKS_URL, AUTH_PUBLIC_KEY, AUTH_HS256_SECRET or AUTH_HS256_SECRET_FILE/,
    );
  });
});

describe("configuration errors never show a secret", () => {
  test("a bad secret, key or database URL is named, its value is not shown", async () => {
    const short = "c2hvcnQtc2VjcmV0LXZhbHVl";
    await assert.rejects(
      TokenVerifier.fromConfig(parseConfig(AuthConfig, { AUTH_HS256_SECRET: `${short}${"!".repeat(30)}` })),
      (err: Error) => {
        assert.match(err.message, /AUTH_HS256_SECRET/);
        assert.ok(!err.message.includes(short), err.message);
        return true;
      },
    );
    assert.throws(
      () => parseConfig(AuthConfig, { AUTH_HS256_SECRET: short }),
      (err: Error) => {
        assert.match(err.message, /AUTH_HS256_SECRET: expected .* not shown/);
        assert.ok(!err.message.includes(short), err.message);
        return true;
      },
    );
    const pem = "-----BEGIN PUBLIC KEY-----\\nTUlJQmdvbGQtbm90LWEta2V5\\n-----END PUBLIC KEY-----";
    await assert.rejects(
      TokenVerifier.fromConfig(parseConfig(AuthConfig, { AUTH_PUBLIC_KEY: pem })),
      (err: Error) => {
        assert.match(err.message, /AUTH_PUBLIC_KEY/);
        assert.ok(!err.message.includes("TUlJQmdvbGQ"), err.message);
        return true;
      },
    );
    const dbPassword = "hunter2-db-password";
    assert.throws(
      () =>
        parseConfig(CommonConfig, {
          AUTH_CLOCK_TOLERANCE_S: "9999",
          DATABASE_URL: `postgres://u:${dbPassword}@h/db`,
        }),
      (err: Error) => {
        assert.match(err.message, /AUTH_CLOCK_TOLERANCE_S/);
        assert.ok(!err.message.includes(dbPassword));
        return true;
      },
    );
  });

  test("a missing secret file is named, not read out", async () => {
    const file = join(await mkdtemp(join(tmpdir(), "auth-")), "none.key");
    await assert.rejects(
      TokenVerifier.fromConfig(parseConfig(AuthConfig, { AUTH_HS256_SECRET_FILE: file })),
      new RegExp(`AUTH_HS256_SECRET_FILE: cannot read ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`),
    );
  });
});

describe("installAuth", () => {
  /** A fastify app with one route of each level, logging at debug into `lines`. */
  async function app(lines: string[]) {
    const logger = createLogger({
      service: "t",
      level: "trace",
      destination: new Writable({
        write(chunk: Buffer, _e, cb) {
          lines.push(chunk.toString());
          cb();
        },
      }),
    });
    const a = Fastify({ loggerInstance: logger }) as unknown as FastifyInstance;
    installProblemHandlers(a);
    installAuth(a, hs(), { logger });
    a.get("/open", { config: { auth: "none" } }, async () => ({ ok: true }));
    a.get("/mine", { config: { auth: "customer" } }, async (req) => req.principal);
    a.get("/ops", async (req) => req.principal);
    await a.ready();
    return a;
  }
  const get = (a: Awaited<ReturnType<typeof app>>, url: string, authorization?: string) =>
    a.inject({ method: "GET", url, headers: authorization === undefined ? {} : { authorization } });

  test("no token → 401 `Bearer`; a bad one → 401 `invalid_token`; a customer on an operator route → 403", async () => {
    const lines: string[] = [];
    const a = await app(lines);
    assert.equal((await get(a, "/open")).statusCode, 200);
    for (const url of ["/mine", "/ops"]) {
      const r = await get(a, url);
      assert.equal(r.statusCode, 401, url);
      assert.equal(r.headers["www-authenticate"], "Bearer");
      assert.match(String(r.headers["content-type"]), /^application\/problem\+json/);
      assert.equal(r.json().status, 401);
    }
    for (const [what, token] of Object.entries(await badTokens())) {
      for (const header of [`Bearer ${token}`, `bearer ${token}`]) {
        const r = await get(a, "/mine", header);
        assert.equal(r.statusCode, 401, what);
        assert.match(String(r.headers["www-authenticate"]), /^Bearer error="invalid_token"/, what);
        assert.equal(r.json().status, 401, what);
      }
    }
    for (const header of [
      "Basic YWxpY2U6cGFzcw==",
      "Bearer",
      "Bearer a b",
      `Bearer ${"x".repeat(10_000)}`,
      "Token abc",
    ]) {
      const r = await get(a, "/mine", header);
      assert.equal(r.statusCode, 401, header.slice(0, 30));
    }
    const customer = `Bearer ${await sign()}`;
    assert.deepEqual((await get(a, "/mine", customer)).json(), { sub: "alice", operator: false });
    const forbidden = await get(a, "/ops", customer);
    assert.equal(forbidden.statusCode, 403);
    assert.match(String(forbidden.headers["www-authenticate"]), /insufficient_scope/);
    const operator = `Bearer ${await sign({ scope: "operator" })}`;
    assert.deepEqual((await get(a, "/ops", operator)).json(), { sub: "alice", operator: true });
    assert.equal((await get(a, "/nowhere")).statusCode, 404, "unknown routes stay 404");
  });

  test("neither a refused token nor the secret appears in the logs or the problem documents", async () => {
    const lines: string[] = [];
    const a = await app(lines);
    const tokens = Object.values(await badTokens()).filter((t) => t.length > 10);
    const bodies: string[] = [];
    for (const t of tokens) bodies.push((await get(a, "/mine", `Bearer ${t}`)).body);
    bodies.push((await get(a, "/ops", `Bearer ${await sign()}`)).body);
    const logged = lines.join("");
    assert.ok(logged.includes("bearer token refused"), "refusals are logged (by reason)");
    const secretB64 = Buffer.from(secret).toString("base64url");
    for (const t of tokens) {
      const pieces = [t, ...t.split(".").slice(1)].filter((p) => p.length > 8);
      for (const piece of pieces) {
        assert.ok(!logged.includes(piece), `a token piece in the logs: ${piece.slice(0, 20)}`);
        for (const b of bodies) assert.ok(!b.includes(piece), "a token piece in a problem document");
      }
    }
    assert.ok(!logged.includes(secretB64) && !bodies.some((b) => b.includes(secretB64)));
  });
});

describe("development secret and tokens", () => {
  test("created once, mode 0600, in a 0700 folder; racing creators agree", async () => {
    const file = devSecretPath(await mkdtemp(join(tmpdir(), "auth-")));
    const keys = await Promise.all(Array.from({ length: 8 }, () => ensureDevSecret(file)));
    for (const k of keys) assert.deepEqual(k, keys[0]);
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal((await stat(join(file, ".."))).mode & 0o777, 0o700);
    assert.ok(Buffer.from((await readFile(file, "utf8")).trim(), "base64url").length >= 32);
    assert.deepEqual(await ensureDevSecret(file), keys[0], "kept across starts");
  });

  test("tokens verify against the same secret: a customer's, an operator's, the CLI's", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "auth-"));
    const key = await ensureDevSecret(devSecretPath(dataDir));
    const v = new TokenVerifier(key, ["HS256"], { audience: AUD, source: "test" });
    const tokens = new DevTokens(key);
    assert.deepEqual(await v.verify(await tokens.token("carol")), { sub: "carol", operator: false });
    assert.deepEqual(await v.verify(await tokens.token("ops", true)), { sub: "ops", operator: true });
    assert.equal(await tokens.token("carol"), await tokens.token("carol"), "cached");
    assert.deepEqual(await v.verify(await operatorTokenFromEnv({ DATA_DIR: dataDir })), {
      sub: "operator-cli",
      operator: true,
    });
    assert.equal(await operatorTokenFromEnv({ SHOPSTREAM_TOKEN: "given" }), "given");
    await assert.rejects(v.verify(await signDevToken(key, { sub: "x", audience: "other" })));
  });

  test("npm run token's arguments", () => {
    assert.deepEqual(parseTokenArgs(["alice"]), { sub: "alice", operator: false, ttlS: 3600 });
    assert.deepEqual(parseTokenArgs(["--admin"]), { sub: "admin", operator: true, ttlS: 3600 });
    assert.deepEqual(parseTokenArgs(["--admin", "bob", "--ttl", "60"]), {
      sub: "bob",
      operator: true,
      ttlS: 60,
    });
    assert.equal(typeof parseTokenArgs([]), "string");
    assert.equal(typeof parseTokenArgs(["a", "b"]), "string");
    assert.equal(typeof parseTokenArgs(["a", "--ttl", "0"]), "string");
  });
});
