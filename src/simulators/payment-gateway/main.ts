/**
 * Payment gateway simulator entry point.
 *
 * Env: `PORT` (default 9090), `HOST` (default 127.0.0.1), `LOG_LEVEL` (default info), `SEED` (optional,
 * fault-injection randomness), `LEDGER_FILE` (optional JSON file that keeps the ledger across restarts).
 */
import { runSimulator } from "../shared.js";
import { buildPaymentGateway } from "./app.js";

await runSimulator({
  name: "payment-gateway",
  defaultPort: 9090,
  fileEnv: "LEDGER_FILE",
  build: ({ file, ...opts }) => buildPaymentGateway({ ...opts, ledgerFile: file }),
});
