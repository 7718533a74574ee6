/**
 * The permissions module (src/lib/messaging/permissions.ts) against the code it describes: each service's declared
 * durables are the ones it runs, its event subjects are the catalog's, administration is denied to every service,
 * the generated nats-server configuration is accepted by nats-server, and docs/security-nats.md's matrix is the
 * module's.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parse as parseYaml } from "yaml";
import { Streams } from "../../src/lib/events/catalog.js";
import { natsAuthFromEnv } from "../../src/lib/messaging/connection.js";
import {
  NATS_USERS,
  SERVICE_USERS,
  passwordEnvOf,
  permissionMatrix,
  permissionsOf,
  renderKubernetesAuthorization,
  renderNatsConfig,
  serviceAccess,
  servicePermissions,
  type NatsUser,
} from "../../src/lib/messaging/permissions.js";
import { inventoryConsumerSpecs } from "../../src/services/inventory/service.js";
import { notificationsConsumerSpecs } from "../../src/services/notifications/service.js";
import { ordersConsumerSpecs } from "../../src/services/orders/service.js";
import { paymentsConsumerSpecs } from "../../src/services/payments/service.js";
import { findNatsServerBinary } from "../helpers/nats.js";

const MATRIX_START = "<!-- permission-matrix:start -->";
const MATRIX_END = "<!-- permission-matrix:end -->";

void describe("NATS permissions module", () => {
  void it("declares exactly the durables each service runs", () => {
    const runs = {
      orders: ordersConsumerSpecs({
        ORDER_TIMEOUT_MS: 60_000,
        TIMEOUT_MAX_ACK_PENDING: 1_000,
        TIMEOUT_ACK_WAIT_MARGIN_MS: 60_000,
      }),
      inventory: inventoryConsumerSpecs(),
      payments: paymentsConsumerSpecs(),
      notifications: notificationsConsumerSpecs(),
      audit: [], // a projector: ordered consumers, no durable
    };
    for (const s of SERVICE_USERS)
      assert.deepEqual(
        serviceAccess[s].durables.map((d) => `${d.stream}/${d.durable}`).sort(),
        runs[s].map((c) => `${c.stream}/${c.durable}`).sort(),
        s,
      );
  });

  void it("lets a service publish its own event subjects and no other service's", () => {
    const pub = (s: (typeof SERVICE_USERS)[number]) => servicePermissions(s).publish.allow;
    assert.ok(pub("orders").includes("orders.*"));
    assert.ok(pub("payments").includes("payments.*.PaymentCaptured"));
    for (const s of SERVICE_USERS.filter((x) => x !== "orders"))
      assert.ok(!pub(s).some((x) => x.startsWith("orders.")), `${s} may publish on ORDERS`);
    assert.deepEqual(
      pub("notifications").filter((x) => !x.startsWith("$") && !x.startsWith("dlq.")),
      ["notifications.*.NotificationSent", "notifications.*.NotificationWithheld"],
    );
    // Customers' data keys: orders writes them, notifications only reads them (src/lib/pii).
    assert.ok(pub("orders").includes("$KV.customer-keys.>"));
    assert.ok(pub("notifications").includes("$JS.API.DIRECT.GET.KV_customer-keys.>"));
    assert.ok(!pub("notifications").some((x) => x.startsWith("$KV.")), "notifications writes no KV");
    for (const s of SERVICE_USERS.filter((x) => x !== "orders" && x !== "notifications"))
      assert.ok(!pub(s).some((x) => x.includes("customer-keys")), `${s} may touch customer-keys`);
    assert.ok(pub("payments").includes("dlq.payments-orders"));
    assert.ok(!pub("payments").includes("dlq.inventory-orders"));
  });

  void it("denies stream and consumer administration to every service, and wildcard publishing to all but admin", () => {
    for (const s of SERVICE_USERS) {
      const p = servicePermissions(s);
      for (const admin of ["$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>"])
        assert.ok(p.publish.deny.includes(admin), `${s} lacks deny ${admin}`);
      assert.ok(!p.publish.allow.some((x) => x === ">" || x === "$JS.API.>"), s);
      assert.deepEqual(p.subscribe.allow[0], `_INBOX_${s}.>`);
    }
    for (const s of SERVICE_USERS.filter((x) => x !== "audit"))
      assert.ok(
        servicePermissions(s).publish.deny.includes(`$JS.API.CONSUMER.CREATE.${Streams.ORDERS}.>`),
        s,
      );
    // The audit block: ordered consumers on every stream, the other services' durables denied by name.
    const audit = servicePermissions("audit");
    for (const s of ["ORDERS", "INVENTORY", "PAYMENTS", "NOTIFICATIONS", "DLQ"]) {
      assert.ok(audit.publish.allow.includes(`$JS.API.CONSUMER.CREATE.${s}.>`), s);
      assert.ok(audit.publish.allow.includes(`$JS.API.CONSUMER.MSG.NEXT.${s}.*`), s);
      assert.ok(audit.publish.allow.includes(`$JS.API.STREAM.INFO.${s}`), s);
      // Its former durables it may delete (the projector does at start).
      assert.ok(audit.publish.allow.includes(`$JS.API.CONSUMER.DELETE.${s}.*`), s);
    }
    assert.ok(
      !audit.publish.allow.some((x) => x.startsWith("$JS.ACK.")),
      "ordered consumers acknowledge nothing",
    );
    assert.ok(audit.publish.deny.includes("$JS.API.CONSUMER.MSG.NEXT.ORDERS.payments-orders"));
    assert.ok(audit.publish.deny.includes("$JS.ACK.ORDERS.inventory-orders.>"));
    assert.ok(audit.publish.deny.includes("$JS.API.CONSUMER.DELETE.ORDERS.notifications-orders"));
    assert.equal(permissionsOf("admin"), undefined);
    assert.ok(!permissionsOf("operator")!.publish.allow.some((x) => x.includes("STREAM.PURGE")));
  });

  void it("writes a configuration nats-server accepts", () => {
    const passwords = Object.fromEntries(NATS_USERS.map((u) => [u, `pw-${u}`])) as Record<NatsUser, string>;
    const dir = mkdtempSync(join(tmpdir(), "nats-conf-"));
    try {
      const file = join(dir, "nats.conf");
      writeFileSync(file, renderNatsConfig(passwords));
      // `-t`: test the configuration and exit.
      const out = execFileSync(findNatsServerBinary(), ["-c", file, "-t"], {
        encoding: "utf8",
        stdio: "pipe",
      });
      assert.doesNotMatch(out, /error/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it("docs/security-nats.md carries the module's permission matrix (regenerate: npm run docs:nats)", () => {
    const doc = readFileSync(new URL("../../docs/security-nats.md", import.meta.url), "utf8");
    const start = doc.indexOf(MATRIX_START);
    const end = doc.indexOf(MATRIX_END);
    assert.ok(start >= 0 && end > start, "markers missing");
    // Compared cell by cell: prettier pads the columns of the table in the document.
    const cells = (table: string) =>
      table
        .trim()
        .split("\n")
        .map((row) => row.split("|").map((c) => c.trim().replace(/^-{3,}$/, "---")));
    assert.deepEqual(cells(doc.slice(start + MATRIX_START.length, end)), cells(permissionMatrix()));
  });

  void it("deploy/k8s/base/nats-auth.yaml carries the module's authorization block (regenerate: npm run k8s:nats-auth)", () => {
    const file = readFileSync(new URL("../../deploy/k8s/base/nats-auth.yaml", import.meta.url), "utf8");
    const cm = parseYaml(file) as { kind: string; metadata: { name: string }; data: Record<string, string> };
    assert.equal(cm.kind, "ConfigMap");
    assert.equal(cm.metadata.name, "nats-auth");
    assert.deepEqual(Object.keys(cm.data), ["auth.conf"]);
    assert.equal(cm.data["auth.conf"], renderKubernetesAuthorization());
    // No password in the repository: each one is an environment reference, unquoted so nats-server resolves it.
    assert.deepEqual(
      [...cm.data["auth.conf"].matchAll(/^\s*password:\s*(.*)$/gm)].map((m) => m[1]),
      NATS_USERS.map((u) => `$${passwordEnvOf(u)}`),
    );
  });

  void it("writes a Kubernetes authorization block nats-server accepts, the passwords from its environment", () => {
    const dir = mkdtempSync(join(tmpdir(), "nats-conf-"));
    try {
      const file = join(dir, "nats.conf");
      writeFileSync(join(dir, "auth.conf"), renderKubernetesAuthorization());
      writeFileSync(file, "listen: 127.0.0.1:4222\ninclude auth.conf\n");
      const env = Object.fromEntries(NATS_USERS.map((u) => [passwordEnvOf(u), `pw${u}`]));
      const out = execFileSync(findNatsServerBinary(), ["-c", file, "-t"], {
        encoding: "utf8",
        stdio: "pipe",
        env: { ...process.env, ...env },
      });
      assert.doesNotMatch(out, /error/i);
      // A password missing from the environment (a Secret without that key) is a configuration error.
      const { [passwordEnvOf("orders")]: _missing, ...partial } = env;
      assert.throws(() =>
        execFileSync(findNatsServerBinary(), ["-c", file, "-t"], {
          stdio: "pipe",
          env: {
            ...Object.fromEntries(
              Object.entries(process.env).filter(([k]) => !k.startsWith("NATS_PASSWORD_")),
            ),
            ...partial,
          },
        }),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void it("takes the password from NATS_PASSWORD or NATS_PASSWORD_FILE, and never puts it in an error", () => {
    assert.equal(natsAuthFromEnv({}), undefined);
    assert.deepEqual(natsAuthFromEnv({ NATS_USER: "orders", NATS_PASSWORD: "s3cret" }), {
      user: "orders",
      pass: "s3cret",
      inboxPrefix: "_INBOX_orders",
    });
    assert.throws(() => natsAuthFromEnv({ NATS_USER: "orders" }), /NATS_PASSWORD/);
    const missing = (() => {
      try {
        natsAuthFromEnv({ NATS_USER: "orders", NATS_PASSWORD_FILE: "/nonexistent/s3cret-file" });
      } catch (err) {
        return (err as Error).message;
      }
      return "";
    })();
    assert.match(missing, /NATS_PASSWORD_FILE: cannot read \/nonexistent\/s3cret-file \(ENOENT\)/);
  });
});
