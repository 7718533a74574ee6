import assert from "node:assert/strict";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { defaultPorts } from "../../src/lib/ports.js";
import { Printer, forEachLine, prettyPinoLine } from "../../src/stack/output.js";
import {
  childEnv,
  duplicatePorts,
  nodeArgs,
  resolveEntryPoint,
  stackProcesses,
} from "../../src/stack/processes.js";

void describe("stack process table", () => {
  void it("has every process of src/lib/ports.ts once, on its default port", () => {
    const names = stackProcesses.map((p) => p.name).sort();
    assert.deepEqual(names, Object.keys(defaultPorts).sort());
    for (const p of stackProcesses) assert.equal(p.defaultPort, defaultPorts[p.name]);
  });

  void it("names each port variable, source and compiled file after the process", () => {
    for (const p of stackProcesses) {
      assert.equal(p.portEnv, `${p.name.toUpperCase().replaceAll("-", "_")}_PORT`);
      const dir = p.kind === "simulator" ? "simulators" : "services";
      assert.equal(p.source, `src/${dir}/${p.name}/main.ts`);
      assert.equal(p.compiled, `dist/${dir}/${p.name}/main.js`);
      assert.equal(p.readyPath, p.kind === "service" ? "/ready" : "/health");
    }
  });

  void it("starts simulators first and orders last", () => {
    const tiers = stackProcesses.map((p) => p.tier);
    assert.deepEqual(
      tiers,
      [...tiers].sort((a, b) => a - b),
    );
    for (const p of stackProcesses) {
      const expected = p.kind === "simulator" ? 0 : p.name === "orders" ? 2 : 1;
      assert.equal(p.tier, expected, p.name);
    }
  });
});

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

void describe("resolveEntryPoint", () => {
  const orders = stackProcesses.find((p) => p.name === "orders")!;
  const only =
    (...files: string[]) =>
    (path: string) =>
      files.includes(path);

  void it("uses the .ts source in dev mode and reports a missing source, naming the file", () => {
    assert.deepEqual(resolveEntryPoint(orders, "/r", "dev", only("/r/src/services/orders/main.ts")), {
      status: "ok",
      file: "/r/src/services/orders/main.ts",
    });
    assert.deepEqual(resolveEntryPoint(orders, "/r", "dev", only()), {
      status: "missing",
      reason: "src/services/orders/main.ts not found",
    });
  });

  void it("finds the entry point of every process of the table in this repository", () => {
    for (const p of stackProcesses) {
      assert.deepEqual(
        resolveEntryPoint(p, ROOT, "dev"),
        { status: "ok", file: join(ROOT, p.source) },
        p.name,
      );
    }
  });

  void it("uses dist/ in production mode and calls a stale build an error, not a skip", () => {
    assert.deepEqual(resolveEntryPoint(orders, "/r", "production", only("/r/dist/services/orders/main.js")), {
      status: "ok",
      file: "/r/dist/services/orders/main.js",
    });
    const stale = resolveEntryPoint(orders, "/r", "production", only("/r/src/services/orders/main.ts"));
    assert.equal(stale.status, "not-built");
    assert.match(stale.status === "not-built" ? stale.reason : "", /npm run build/);
    assert.equal(resolveEntryPoint(orders, "/r", "production", only()).status, "missing");
  });

  void it("runs .ts through the tsx loader and .js directly", () => {
    assert.deepEqual(
      nodeArgs("/r/a.ts", () => "file:///tsx.mjs"),
      ["--import", "file:///tsx.mjs", "/r/a.ts"],
    );
    const js = nodeArgs("/r/a.js", () => assert.fail("tsx must not be needed for compiled code"));
    assert.deepEqual(js, ["--enable-source-maps", "/r/a.js"]);
  });
});

void describe("childEnv", () => {
  const base = {
    name: "payments" as const,
    port: 8082,
    natsUrl: "nats://127.0.0.1:4333",
    logLevel: "debug",
    dataDir: "/data",
    paymentGatewayUrl: "http://127.0.0.1:9090",
    mailProviderUrl: "http://127.0.0.1:9091",
  };

  void it("passes the parent environment on, overridden by what the stack decides", () => {
    const env = childEnv({
      ...base,
      parent: { PATH: "/bin", PORT: "1", NATS_URL: "nats://elsewhere:1", DATABASE_URL: "postgres://x/y" },
    });
    assert.equal(env.PATH, "/bin");
    assert.equal(env.DATABASE_URL, "postgres://x/y");
    assert.equal(env.PORT, "8082");
    assert.equal(env.NATS_URL, "nats://127.0.0.1:4333");
    assert.equal(env.LOG_LEVEL, "debug");
    assert.equal(env.DATA_DIR, "/data/payments", "each process has its own folder");
    assert.equal(env.PAYMENT_GATEWAY_URL, "http://127.0.0.1:9090");
    assert.equal(env.MAIL_PROVIDER_URL, "http://127.0.0.1:9091");
    assert.equal(env.LEDGER_FILE, "/data/payment-gateway/ledger.json");
    assert.equal(env.MAIL_LOG_FILE, "/data/mail-provider/messages.json");
  });

  void it("gives a service its own NATS credential variables, over the parent's", () => {
    const env = childEnv({
      ...base,
      parent: { NATS_USER: "admin", NATS_PASSWORD: "parent-secret" },
      nats: {
        NATS_USER: "payments",
        NATS_PASSWORD: "",
        NATS_PASSWORD_FILE: "/data/secrets/nats-payments.password",
      },
    });
    assert.equal(env.NATS_USER, "payments");
    assert.equal(env.NATS_PASSWORD, "", "an inherited password must not override the file");
    assert.equal(env.NATS_PASSWORD_FILE, "/data/secrets/nats-payments.password");
  });

  void it("leaves DATABASE_URL out when the parent has none", () => {
    assert.equal("DATABASE_URL" in childEnv({ ...base, parent: {} }), false);
  });
});

void describe("duplicatePorts", () => {
  void it("names both processes configured on one port", () => {
    const dups = duplicatePorts([
      { name: "orders", portEnv: "ORDERS_PORT", port: 1 },
      { name: "audit", portEnv: "AUDIT_PORT", port: 2 },
      { name: "payments", portEnv: "PAYMENTS_PORT", port: 1 },
    ]);
    assert.deepEqual(dups, [["orders (ORDERS_PORT)", "payments (PAYMENTS_PORT)", 1]]);
  });
});

void describe("stack output", () => {
  void it("shortens pino lines to level, message, order id and error", () => {
    const line = JSON.stringify({
      level: "warn",
      time: "2026-01-01T00:00:00.000Z",
      service: "orders",
      trace_id: "t",
      order_id: "ord_1",
      err: { message: "boom", stack: "..." },
      msg: "handler failed",
    });
    assert.equal(prettyPinoLine(line, false), "WARN  handler failed order_id=ord_1 err=boom");
    assert.equal(
      prettyPinoLine(JSON.stringify({ level: 30, time: 1, msg: "listening" }), false),
      "INFO  listening",
    );
  });

  void it("leaves lines that are not pino JSON alone", () => {
    assert.equal(prettyPinoLine("payment-gateway listening on http://127.0.0.1:9090", false), undefined);
    assert.equal(prettyPinoLine("{not json", false), undefined);
    assert.equal(prettyPinoLine(JSON.stringify({ level: 30 }), false), undefined);
    assert.equal(prettyPinoLine("[1,2]", false), undefined);
  });

  void it("prefixes every line with the padded name, colours only when asked", () => {
    const out: string[] = [];
    const plain = new Printer({
      width: 8,
      color: false,
      pretty: false,
      out: (t) => out.push(t),
      err: () => {},
    });
    plain.line("orders", "one\ntwo");
    assert.deepEqual(out, ["orders   | one\norders   | two\n"]);
    const coloured = new Printer({
      width: 8,
      color: true,
      pretty: true,
      out: (t) => out.push(t),
      err: () => {},
    });
    coloured.line("orders", JSON.stringify({ level: "info", msg: "hi" }));
    assert.equal(out[1], "\u001b[36morders  \u001b[0m \u001b[2m|\u001b[0m \u001b[32mINFO \u001b[0m hi\n");
  });

  void it("delivers whole lines across chunk boundaries, and the last one without a newline", async () => {
    const stream = new PassThrough();
    const lines: string[] = [];
    forEachLine(stream, (l) => lines.push(l));
    stream.write("a\nb");
    stream.write("c\r\n");
    stream.end("d");
    await new Promise((resolve) => stream.on("end", resolve));
    assert.deepEqual(lines, ["a", "bc", "d"]);
  });
});
