import { Type } from "@sinclair/typebox";
import { connect } from "@nats-io/transport-node";
import { parseConfig } from "../lib/config.js";
import { operatorTokenFromEnv } from "../lib/http/dev-token.js";
import { authOptions, natsAuthFromEnv } from "../lib/messaging/connection.js";
import { defaultPorts } from "../lib/ports.js";
import { checkInvariants, formatReport } from "./checker.js";

const local = (p: number) => `http://127.0.0.1:${p}`;
const Config = Type.Object({
  NATS_URL: Type.String({ default: "nats://127.0.0.1:4222" }),
  NATS_USER: Type.Optional(
    Type.String({ minLength: 1, description: "NATS user (operator) with authentication" }),
  ),
  NATS_PASSWORD: Type.Optional(Type.String({ description: "password of NATS_USER" })),
  NATS_PASSWORD_FILE: Type.Optional(Type.String({ minLength: 1, description: "file holding it" })),
  INVENTORY_URL: Type.String({ format: "uri", default: local(defaultPorts.inventory) }),
  AUDIT_URL: Type.String({ format: "uri", default: local(defaultPorts.audit) }),
  PAYMENT_GATEWAY_URL: Type.String({ format: "uri", default: local(defaultPorts["payment-gateway"]) }),
  MAIL_PROVIDER_URL: Type.String({ format: "uri", default: local(defaultPorts["mail-provider"]) }),
  PENDING_GRACE_MS: Type.Integer({
    minimum: 0,
    default: 120_000,
    description: "pending orders younger than this are not stuck",
  }),
});

/** `npm run check`: checks I1–I6 against a running system; exit 1 when any is violated. */
async function main(): Promise<void> {
  const c = parseConfig(Config);
  const json = process.argv.includes("--json");
  const nc = await connect({
    servers: c.NATS_URL.split(","),
    name: "checker",
    ...authOptions(natsAuthFromEnv(c)),
  });
  try {
    const report = await checkInvariants({
      nc,
      inventoryUrl: c.INVENTORY_URL,
      auditUrl: c.AUDIT_URL,
      gatewayUrl: c.PAYMENT_GATEWAY_URL,
      mailUrl: c.MAIL_PROVIDER_URL,
      pendingGraceMs: c.PENDING_GRACE_MS,
      authorization: `Bearer ${await operatorTokenFromEnv()}`,
    });
    process.stdout.write((json ? JSON.stringify(report, null, 2) : formatReport(report)) + "\n");
    process.exitCode = report.ok ? 0 : 1;
  } finally {
    await nc.close();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`check failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
});
