/**
 * The local stack (`npm start`) as a user runs it: a real child process that starts a real nats-server and every
 * process of the table, on free ports with a temp data dir; and a checkout lacking one entry point, which must not
 * start at all.
 */
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink } from "node:fs/promises";
import { type Server, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { connect } from "@nats-io/transport-node";
import { NATS_USERS } from "../../src/lib/messaging/permissions.js";
import { stackProcesses } from "../../src/stack/processes.js";
import { devSecretPath } from "../../src/lib/http/dev-token.js";
import { until } from "../helpers/eventually.js";
import { READY_MESSAGE } from "../../src/stack/supervisor.js";
import { PortTakenError, onFreshPorts, takenPortIn } from "../../src/stack/fresh-ports.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

interface RunningStack {
  pid: number;
  out: () => string;
  err: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /**
   * Resolves once stdout matches `re` (checked now and on every chunk the stack prints); rejects if the stack exits
   * first or after `timeoutMs`.
   */
  waitForOutput(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  signal(sig: NodeJS.Signals): void;
}

/**
 * Runs `node --import tsx <root>/src/stack/main.ts` in `root` (default: this repository) with the test's environment
 * plus `env`.
 */
function startStack(env: Record<string, string>, root = ROOT): RunningStack {
  const base = { ...process.env };
  // The stack must start its own NATS and everything in the table, whatever the caller's shell has set.
  for (const k of ["NATS_URL", "NATS_SERVER_BIN", "STACK_ONLY", "STACK_MODE", "PORT", "DATABASE_URL"])
    delete base[k];
  const child = spawn(process.execPath, ["--import", "tsx", join(root, "src", "stack", "main.ts")], {
    cwd: root,
    env: { ...base, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  let closed = false;
  /** Called after every chunk of stdout and when the stack has exited. */
  const listeners = new Set<() => void>();
  const changed = () => {
    for (const l of [...listeners]) l();
  };
  child.stdout.setEncoding("utf8").on("data", (c: string) => {
    out += c;
    changed();
  });
  child.stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    child.once("close", (code, signal) => {
      closed = true;
      res({ code, signal });
      changed();
    }),
  );
  return {
    pid: child.pid!,
    out: () => out,
    err: () => err,
    exited,
    signal: (sig) => child.kill(sig),
    waitForOutput(re, timeoutMs) {
      return new Promise((resolvePromise, reject) => {
        const failure = (why: string) =>
          new Error(
            `stack output never matched ${re} (${why})\n--- stdout ---\n${out}\n--- stderr ---\n${err}`,
          );
        const check = () => {
          const m = out.match(re);
          if (m) done(() => resolvePromise(m));
          else if (closed) done(() => reject(failure("the stack exited")));
        };
        const timer = setTimeout(() => done(() => reject(failure(`${timeoutMs} ms passed`))), timeoutMs);
        const done = (settle: () => void) => {
          clearTimeout(timer);
          listeners.delete(check);
          settle();
        };
        listeners.add(check);
        check();
      });
    },
  };
}

/**
 * A checkout of this repository without `missing` (a path under src/): its own copy of src/stack (the stack finds
 * the entry points relative to its own files), everything else the stack could need linked to the real one.
 */
async function checkoutWithout(dir: string, missing: string): Promise<string> {
  await mkdir(join(dir, "src", "stack"), { recursive: true });
  for (const f of ["package.json", "tsconfig.json"]) await copyFile(join(ROOT, f), join(dir, f));
  await symlink(join(ROOT, "node_modules"), join(dir, "node_modules"));
  for (const f of await readdir(join(ROOT, "src", "stack"))) {
    await copyFile(join(ROOT, "src", "stack", f), join(dir, "src", "stack", f));
  }
  /** Links every entry of src/<sub>, descending only into the folders on the way to `missing`. */
  const link = async (sub: string): Promise<void> => {
    await mkdir(join(dir, "src", sub), { recursive: true });
    for (const e of await readdir(join(ROOT, "src", sub))) {
      const rel = join(sub, e);
      if (`src/${rel}` === missing || rel === "stack") continue;
      if (missing.startsWith(`src/${rel}/`)) await link(rel);
      else await symlink(join(ROOT, "src", rel), join(dir, "src", rel));
    }
  };
  await link("");
  assert.equal(existsSync(join(dir, missing)), false);
  return dir;
}

async function exitOf(stack: RunningStack, timeoutMs: number) {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`stack did not exit within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([stack.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once("error", () => res(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => res(true)));
  });
}

/** `NATS_PORT` → the first of `ports`, `<NAME>_PORT` → the next ones, one per process. */
function portEnv(ports: readonly number[]): Record<string, string> {
  const env: Record<string, string> = { NATS_PORT: String(ports[0]) };
  stackProcesses.forEach((p, i) => (env[p.portEnv] = String(ports[i + 1])));
  return env;
}

/**
 * `<NAME>_PORT` → a free port for every process, plus `NATS_PORT`: for a stack that binds none of them (else use
 * {@link startOnFreePorts}).
 */
async function freePorts(): Promise<Record<string, string>> {
  return onFreshPorts(stackProcesses.length + 1, async (ports) => portEnv(ports));
}

/**
 * Starts the stack with `env` on fresh free ports (as {@link freePorts}; `env` wins) and resolves once `settled` has.
 * A free port is free only until someone binds it: when the stack exits saying one of the picked ports was in use
 * (taken between its choice and the stack's bind), it is started again on fresh ports, at most PORT_ATTEMPTS times
 * ({@link onFreshPorts}). Every stack started is added to `running`.
 */
async function startOnFreePorts(
  running: RunningStack[],
  env: Record<string, string>,
  settled: (stack: RunningStack) => Promise<unknown>,
): Promise<{ stack: RunningStack; env: Record<string, string> }> {
  return onFreshPorts(stackProcesses.length + 1, async (ports) => {
    const all = { ...portEnv(ports), ...env };
    const stack = startStack(all);
    running.push(stack);
    let exited = false;
    void stack.exited.then(() => (exited = true));
    const lostPort = () => {
      const port = exited ? takenPortIn(stack.out() + stack.err(), ports) : undefined;
      if (port !== undefined)
        throw new PortTakenError(port, stack.err().trim().split("\n").slice(-3).join(" | "));
    };
    try {
      await settled(stack);
    } catch (err) {
      lostPort();
      throw err;
    }
    lostPort();
    return { stack, env: all };
  });
}

const run = promisify(execFile);

void describe("npm start (src/stack/main.ts)", { timeout: 300_000 }, () => {
  let dataDir: string;
  const running: RunningStack[] = [];
  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "stack-test-"));
  });
  after(async () => {
    for (const s of running) {
      s.signal("SIGTERM");
      await exitOf(s, 40_000).catch(() => s.signal("SIGKILL"));
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  void it("starts every process, each answers /health (services /ready), and SIGTERM stops all with exit 0", async () => {
    // Every process of the table, none left out.
    const { stack, env } = await startOnFreePorts(running, { DATA_DIR: join(dataDir, "full") }, (s) =>
      s.waitForOutput(new RegExp(`${READY_MESSAGE}: ${stackProcesses.length} processes`), 120_000),
    );
    // The table is written after the ready line, possibly in a later chunk: wait for it, not 1 ms.
    const monitor = await stack.waitForOutput(
      /nats-server\s+nats:\/\/127\.0\.0\.1:(\d+)\s+http:\/\/127\.0\.0\.1:(\d+)\//,
      5_000,
    );
    assert.equal(monitor[1], env["NATS_PORT"], "nats-server on NATS_PORT");
    const monitorPort = Number(monitor[2]);
    // The printed hint signs its requests: a curl without a token would only ever get 401.
    const hint = await stack.waitForOutput(
      /Try[^\n]*\n {2}ADA=\$\(npm run -s token -- cus_1\)\n.*\n.*\n.*\n/,
      5_000,
    );
    for (const curl of hint[0].split("\n").filter((l) => l.includes("curl ")))
      assert.match(curl, /-H "authorization: Bearer \$ADA"/, curl);

    assert.equal((await fetch(`http://127.0.0.1:${monitorPort}/healthz`)).status, 200);
    for (const p of stackProcesses) {
      const url = `http://127.0.0.1:${env[p.portEnv]}`;
      const health = await fetch(`${url}/health`);
      assert.equal(health.status, 200, `${p.name} /health`);
      if (p.kind === "service") {
        const ready = await fetch(`${url}/ready`);
        assert.equal(ready.status, 200, `${p.name} /ready: ${await ready.text()}`);
      }
    }

    // The README's walkthrough: the stack made a development secret (0600); `npm run token` signs with it; a
    // customer's token places an order that is confirmed, and reads it back; no token is 401; ops need --admin.
    const secretFile = devSecretPath(join(dataDir, "full"));
    assert.equal((await stat(secretFile)).mode & 0o777, 0o600, "the dev secret is 0600");
    const token = async (...args: string[]) =>
      (
        await run(process.execPath, ["--import", "tsx", join(ROOT, "src", "tools", "token.ts"), ...args], {
          cwd: ROOT,
          env: { ...process.env, DATA_DIR: join(dataDir, "full") },
        })
      ).stdout.trim();
    const alice = { authorization: `Bearer ${await token("alice")}` };
    const admin = { authorization: `Bearer ${await token("--admin")}` };
    const orders = `http://127.0.0.1:${env["ORDERS_PORT"]}`;
    const inventory = `http://127.0.0.1:${env["INVENTORY_PORT"]}`;
    const placed = await fetch(`${orders}/orders`, {
      method: "POST",
      headers: { "content-type": "application/json", ...alice },
      body: JSON.stringify({ email: "alice@example.com", items: [{ sku: "SKU-MUG", quantity: 1 }] }),
    });
    const { orderId } = (await placed.json()) as { orderId: string };
    assert.equal(placed.status, 202, orderId);
    await until(
      "the walkthrough's order confirmed",
      async () =>
        (
          (await (await fetch(`${orders}/orders/${orderId}`, { headers: alice })).json()) as {
            status: string;
          }
        ).status === "CONFIRMED",
      30_000,
    );
    assert.equal((await fetch(`${orders}/orders/${orderId}`)).status, 401);
    assert.equal((await fetch(`${inventory}/inventory`, { headers: alice })).status, 403);
    assert.equal((await fetch(`${inventory}/inventory`, { headers: admin })).status, 200);
    // The secret and the tokens never reach the stack's output (issue 11 part 6).
    const secretText = (await readFile(secretFile, "utf8")).trim();
    for (const t of [secretText, alice.authorization.slice(7), admin.authorization.slice(7)])
      assert.ok(!(stack.out() + stack.err()).includes(t), "a secret or token in the stack's output");
    // NATS authentication: credentials generated under DATA_DIR/secrets (0700, files 0600), never printed; the
    // services became ready on their own restricted users after provisioning; an anonymous client is refused.
    assert.match(stack.out(), /NATS authentication on/);
    assert.match(stack.out(), /provisioned streams, consumers and KV buckets as admin/);
    const secrets = join(dataDir, "full", "secrets");
    assert.equal((await stat(secrets)).mode & 0o777, 0o700);
    for (const user of NATS_USERS) {
      const file = join(secrets, `nats-${user}.password`);
      assert.equal((await stat(file)).mode & 0o777, 0o600, file);
      const pass = (await readFile(file, "utf8")).trim();
      assert.ok(pass.length >= 24);
      assert.ok(!stack.out().includes(pass) && !stack.err().includes(pass), `${user}'s password printed`);
    }
    assert.equal((await stat(join(secrets, "nats-server.conf"))).mode & 0o777, 0o600);
    await assert.rejects(
      connect({ servers: `nats://127.0.0.1:${env["NATS_PORT"]}`, maxReconnectAttempts: 0 }),
      /authorization/i,
    );

    stack.signal("SIGTERM");
    const exit = await exitOf(stack, 40_000);
    assert.deepEqual(exit, { code: 0, signal: null }, stack.err());
    assert.match(stack.out(), /all stopped/);
    // Orders stops before the other services, the simulators after them.
    const stopOrder = [...stack.out().matchAll(/^stack\s+\| (\S+) stopped/gm)]
      .map((m) => m[1])
      .filter((name) => name !== "all");
    assert.equal(stopOrder[0], "orders", stopOrder.join(", "));
    assert.equal(stopOrder.at(-1), "nats-server");
    const ports = [
      Number(env["NATS_PORT"]),
      monitorPort,
      ...stackProcesses.map((p) => Number(env[p.portEnv])),
    ];
    for (const port of ports)
      assert.equal(await canListen(port), true, `port ${port} still in use after stop`);
    assert.equal(
      existsSync(join(dataDir, "full", "nats", "jetstream")),
      true,
      "JetStream data kept in DATA_DIR",
    );
    assert.equal(existsSync(join(dataDir, "full", "stack.pid")), false);
  });

  void it("exits 1 naming the file when a service's entry point is missing, and starts nothing", async () => {
    const env = await freePorts();
    const checkout = await checkoutWithout(join(dataDir, "checkout"), "src/services/payments/main.ts");
    const stack = startStack({ ...env, DATA_DIR: join(dataDir, "no-entry") }, checkout);
    running.push(stack);
    const exit = await exitOf(stack, 20_000);
    assert.equal(exit.code, 1, `${stack.out()}\n${stack.err()}`);
    assert.match(stack.err(), /payments cannot start: src\/services\/payments\/main\.ts not found/);
    assert.doesNotMatch(stack.out(), new RegExp(READY_MESSAGE));
    assert.doesNotMatch(stack.out(), /nats-server/, "nats-server was not started");
    for (const port of [env["NATS_PORT"], ...stackProcesses.map((p) => env[p.portEnv])]) {
      assert.equal(await canListen(Number(port)), true, `port ${port} free: nothing was started`);
    }
  });

  void it("exits 1 with how to install nats-server when it is missing", async () => {
    const stack = startStack({ ...(await freePorts()), NATS_SERVER_BIN: "/nonexistent", DATA_DIR: dataDir });
    const exit = await exitOf(stack, 20_000);
    assert.equal(exit.code, 1);
    assert.match(
      stack.err(),
      /nats-server not found: install it \(Debian\/Ubuntu: `sudo apt-get install nats-server`/,
    );
    assert.doesNotMatch(stack.out(), new RegExp(READY_MESSAGE));
  });

  void it("exits 1 naming the process, port and variable when a port is taken, and starts nothing", async () => {
    const squatter: Server = createServer();
    await new Promise<void>((res) => squatter.listen(0, "127.0.0.1", res));
    const taken = (squatter.address() as { port: number }).port;
    try {
      const { stack, env } = await startOnFreePorts(
        running,
        { ORDERS_PORT: String(taken), DATA_DIR: dataDir },
        (s) => exitOf(s, 20_000),
      );
      const exit = await exitOf(stack, 20_000);
      assert.equal(exit.code, 1);
      assert.match(
        stack.err(),
        new RegExp(
          `orders cannot start: port ${taken} on 127\\.0\\.0\\.1 is already in use; .*set ORDERS_PORT`,
        ),
      );
      assert.equal(await canListen(Number(env["NATS_PORT"])), true, "nats-server was not started");
    } finally {
      await new Promise((res) => squatter.close(res));
    }
  });

  void it("exits 1 with the process's last output when it dies during start-up, and stops the rest", async () => {
    // The payment gateway refuses a non-numeric SEED (docs/simulators.md: invalid configuration exits 1).
    const { stack, env } = await startOnFreePorts(
      running,
      { STACK_ONLY: "payment-gateway", SEED: "not-a-number", DATA_DIR: dataDir },
      (s) => exitOf(s, 30_000),
    );
    const exit = await exitOf(stack, 30_000);
    assert.equal(exit.code, 1);
    assert.match(stack.err(), /payment-gateway exited during start-up \(exit code 1\); its last output:/);
    assert.match(stack.err(), /SEED/);
    assert.match(stack.out(), /nats-server stopped/);
    assert.equal(await canListen(Number(env["NATS_PORT"])), true);
  });
});
