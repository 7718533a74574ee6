/**
 * `npm run provision`: creates every stream, durable consumer and KV bucket of ShopStream (src/tools/provisioning.ts)
 * with the NATS admin credential, so that services running with their own restricted users find them. The local
 * stack runs it before the services; in Kubernetes it is the provisioning Job. Idempotent.
 *
 * Env: NATS_URL; NATS_USER (default `admin`) and NATS_PASSWORD or NATS_PASSWORD_FILE (none: a server without
 * authentication); the declarations' settings (STREAM_REPLICAS, ORDER_TIMEOUT_MS, TIMEOUT_MAX_ACK_PENDING,
 * TIMEOUT_ACK_WAIT_MARGIN_MS) as the services get them. Exit codes: 0 done, 1 failed.
 */
import { Type } from "@sinclair/typebox";
import { connect } from "@nats-io/transport-node";
import { parseConfig } from "../lib/config.js";
import { authOptions, natsAuthFromEnv } from "../lib/messaging/connection.js";
import { CommonConfig } from "../lib/service.js";
import { provisionAll } from "./provisioning.js";

const fail = (line: string): never => {
  process.stderr.write(`provision: ${line}\n`);
  process.exit(1);
};

const c = (() => {
  try {
    return parseConfig(
      Type.Pick(CommonConfig, ["NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE"]),
    );
  } catch (err) {
    return fail((err as Error).message);
  }
})();
const anyPassword = c.NATS_PASSWORD || c.NATS_PASSWORD_FILE;
const auth = (() => {
  try {
    return natsAuthFromEnv({ ...c, NATS_USER: c.NATS_USER ?? (anyPassword ? "admin" : undefined) });
  } catch (err) {
    return fail((err as Error).message);
  }
})();
const nc = await connect({
  servers: c.NATS_URL.split(",").map((s) => s.trim()),
  name: "shopstream-provision",
  timeout: 5_000,
  ...authOptions(auth),
}).catch((err: unknown) => fail(`cannot reach NATS at ${c.NATS_URL}: ${(err as Error).message}`));
let code = 1;
try {
  const report = await provisionAll(nc, process.env);
  for (const r of report) process.stdout.write(`${r.kind.padEnd(8)} ${r.name.padEnd(32)} ${r.outcome}\n`);
  code = 0;
} catch (err) {
  process.stderr.write(`provision: ${(err as Error).message}\n`);
} finally {
  await nc.drain();
}
process.exit(code);
