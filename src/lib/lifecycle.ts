import type { Logger } from "./telemetry/logger.js";

/** One step of the shutdown order. */
export interface ShutdownStep {
  name: string;
  run: () => unknown;
}

/**
 * Runs shutdown steps strictly in order, each awaited, the whole bounded by `timeoutMs`. A failing
 * step is logged and the next one still runs: a broken HTTP close must not keep NATS from draining.
 * @returns true when every step finished in time.
 */
export async function runShutdown(
  steps: ShutdownStep[],
  logger: Logger,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (const step of steps) {
    const left = deadline - Date.now();
    if (left <= 0) {
      logger.error({ step: step.name }, "shutdown timed out; skipping remaining steps");
      return false;
    }
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), left)));
    try {
      const r = await Promise.race([Promise.resolve().then(step.run), timedOut]);
      if (r === "timeout") {
        logger.error({ step: step.name }, "shutdown step timed out");
        return false;
      }
      logger.debug({ step: step.name, ms: Date.now() - started }, "shutdown step done");
    } catch (err) {
      logger.error({ step: step.name, err }, "shutdown step failed");
    } finally {
      clearTimeout(timer);
    }
  }
  return true;
}

/**
 * Calls `onSignal` once on the first SIGTERM or SIGINT; a second signal exits at once with code 130.
 * Returns a function that removes the handlers.
 */
export function onTerminationSignal(onSignal: (signal: NodeJS.Signals) => void): () => void {
  let seen = false;
  const handler = (signal: NodeJS.Signals) => {
    if (seen) process.exit(130);
    seen = true;
    onSignal(signal);
  };
  process.on("SIGTERM", handler);
  process.on("SIGINT", handler);
  return () => {
    process.off("SIGTERM", handler);
    process.off("SIGINT", handler);
  };
}
