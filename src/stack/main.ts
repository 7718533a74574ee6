/**
 * `npm start`: runs the whole ShopStream system locally — nats-server with JetStream (unless `NATS_URL` is set),
 * both simulators and every service, each its own process — prints the URLs, and stops it all gracefully on
 * Ctrl-C / SIGTERM. Configuration: environment variables only (README, "Configuration of the stack").
 *
 * Two processes: this one (the front) starts the supervisor ({@link ./supervisor.ts}) in a session of its own and
 * forwards SIGINT/SIGTERM/SIGHUP to it, once per request (SIGHUP as SIGTERM). A terminal's Ctrl-C goes to its
 * whole foreground process group; without this split, nats-server and every service would get it at the same
 * moment as the stack and stop in no particular order, with NATS gone before the services have drained. The front
 * exits with the supervisor's exit code; the supervisor stops by itself if the front disappears.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { nodeArgs } from "./processes.js";

const SUPERVISOR_FLAG = "--supervisor";
/** Signals closer together than this are one request (npm, tsx and the terminal may each deliver a Ctrl-C). */
const SAME_REQUEST_MS = 1_000;

if (process.argv.includes(SUPERVISOR_FLAG)) {
  const { runStack } = await import("./supervisor.js");
  const code = await runStack(process.env);
  process.exitCode = code;
  // Pipes to the front are flushed by now; don't let a stray handle keep a stopped stack alive.
  setTimeout(() => process.exit(code), 1_000).unref();
} else {
  const self = fileURLToPath(import.meta.url);
  const supervisor = spawn(
    process.execPath,
    [...nodeArgs(self, () => import.meta.resolve("tsx")), SUPERVISOR_FLAG],
    {
      detached: true,
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    },
  );
  let lastForwarded = 0;
  const forward = (sig: NodeJS.Signals) => {
    if (Date.now() - lastForwarded < SAME_REQUEST_MS) return;
    lastForwarded = Date.now();
    supervisor.kill(sig === "SIGHUP" ? "SIGTERM" : sig);
  };
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, forward);
  supervisor.once("error", (err) => {
    process.stderr.write(`stack: cannot start the supervisor: ${err.message}\n`);
    process.exit(1);
  });
  supervisor.once("exit", (code, signal) => {
    if (signal !== null) process.stderr.write(`stack: the supervisor was ended by ${signal}\n`);
    process.exit(code ?? 1);
  });
}
