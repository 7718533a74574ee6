/**
 * Mail provider simulator entry point.
 *
 * Env: `PORT` (default 9091), `HOST` (default 127.0.0.1), `LOG_LEVEL` (default info), `SEED` (optional,
 * fault-injection randomness), `MAIL_LOG_FILE` (optional JSON file that keeps messages across restarts).
 */
import { runSimulator } from "../shared.js";
import { buildMailProvider } from "./app.js";

await runSimulator({
  name: "mail-provider",
  defaultPort: 9091,
  fileEnv: "MAIL_LOG_FILE",
  build: ({ file, ...opts }) => buildMailProvider({ ...opts, mailLogFile: file }),
});
