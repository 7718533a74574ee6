/**
 * The DLQ tool: lists, shows and redrives dead letters (the library functions of src/lib/messaging/dlq.ts).
 *
 *   npm run dlq -- list [--consumer <durable>] [--limit <n>] [--json]
 *   npm run dlq -- show <dlq-seq>
 *   npm run dlq -- redrive <dlq-seq> [<dlq-seq>...]
 *
 * In the container image: `node dist/tools/dlq.js <command>`. Env: NATS_URL; with authentication NATS_USER=operator
 * and NATS_PASSWORD (or NATS_PASSWORD_FILE). Exit codes: 0 done, 1 failed,
 * 2 usage error. Unlike a service, it does not wait for NATS: an unreachable server fails at once.
 */
import { Type } from "@sinclair/typebox";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { parseConfig } from "../lib/config.js";
import { authOptions, natsAuthFromEnv } from "../lib/messaging/connection.js";
import { Publisher } from "../lib/messaging/publisher.js";
import { CommonConfig } from "../lib/service.js";
import { DLQ_USAGE, DlqUsageError, parseDlqArgs, runDlqCommand } from "./dlq-cli.js";

const write = (line: string) => process.stdout.write(`${line}\n`);
const fail = (line: string, code: number): never => {
  process.stderr.write(`dlq: ${line}\n`);
  process.exit(code);
};

// 1. The command line and the environment.
let cmd;
try {
  cmd = parseDlqArgs(process.argv.slice(2));
} catch (err) {
  if (err instanceof DlqUsageError) fail(`${err.message}\n${DLQ_USAGE}`, 2);
  throw err;
}
const config = (() => {
  try {
    return parseConfig(
      Type.Pick(CommonConfig, ["NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE"]),
    );
  } catch (err) {
    return fail((err as Error).message, 2);
  }
})();

// 2. NATS, once; 3. the command; 4. a drained connection and the exit code.
const auth = (() => {
  try {
    return natsAuthFromEnv(config);
  } catch (err) {
    return fail((err as Error).message, 2);
  }
})();
const nc = await connect({
  servers: config.NATS_URL.split(",").map((s) => s.trim()),
  name: "shopstream-dlq-tool",
  timeout: 5_000,
  ...authOptions(auth),
}).catch((err: unknown) => fail(`cannot reach NATS at ${config.NATS_URL}: ${(err as Error).message}`, 1));
let code = 1;
try {
  const jsm = await jetstreamManager(nc);
  code = await runDlqCommand(cmd, { jsm, publisher: new Publisher(jetstream(nc)), out: write });
} catch (err) {
  process.stderr.write(`dlq: ${(err as Error).message}\n`);
} finally {
  await nc.drain();
}
process.exit(code);
