/**
 * One process of the local stack as a child process: its output shown line by line, its readiness probed over
 * HTTP, and a bounded graceful stop (SIGTERM, then SIGKILL).
 */
import { type ChildProcess, spawn } from "node:child_process";
import type { StackProcess } from "./processes.js";
import { LineRing, type Printer, forEachLine } from "./output.js";

/** How a child ended: exit code, or the signal that ended it. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** What {@link StackChild.waitReady} found. */
export type Readiness = { ok: true } | { ok: false; reason: string; timedOut: boolean };

const PROBE_INTERVAL_MS = 150;
const PROBE_TIMEOUT_MS = 1_000;
/** Lines of output kept per child for error messages. */
export const KEPT_LINES = 40;

/** `exit` as words, e.g. `exit code 1` or `signal SIGKILL`. */
export function describeExit(exit: ChildExit): string {
  return exit.signal !== null ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}

/** A started child process of the stack. Create it with {@link StackChild.spawn}. */
export class StackChild {
  /** Set once it has exited. */
  exit: ChildExit | undefined;
  /** True once the stack asked it to stop: its exit is then expected. */
  stopping = false;
  /** Resolves when the process has exited (also after a spawn failure). */
  readonly exited: Promise<ChildExit>;
  readonly #child: ChildProcess;
  readonly #output = new LineRing(KEPT_LINES);

  private constructor(
    readonly proc: StackProcess,
    /** Base URL, e.g. `http://127.0.0.1:8080`. */
    readonly url: string,
    child: ChildProcess,
    printer: Printer,
  ) {
    this.#child = child;
    this.exited = new Promise((resolve) => {
      child.once("error", (err) => {
        // A spawn failure emits "error" and may never emit "exit".
        this.#output.push(`[stack] cannot run ${proc.name}: ${err.message}`);
        if (child.pid === undefined) resolve((this.exit = { code: -1, signal: null }));
      });
      child.once("close", (code: number | null, signal: NodeJS.Signals | null) => {
        resolve((this.exit = { code, signal }));
      });
    });
    for (const [stream, where] of [
      [child.stdout, "out"],
      [child.stderr, "err"],
    ] as const) {
      if (stream === null) continue;
      forEachLine(stream, (line) => {
        this.#output.push(line);
        printer.line(proc.name, line, where);
      });
    }
  }

  /** Starts `process.execPath` with `args` for `proc`. */
  static spawn(
    proc: StackProcess,
    opts: { url: string; args: string[]; env: NodeJS.ProcessEnv; cwd: string; printer: Printer },
  ): StackChild {
    const child = spawn(process.execPath, opts.args, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return new StackChild(proc, opts.url, child, opts.printer);
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  /** The last {@link KEPT_LINES} lines it printed, oldest first. */
  get lastLines(): readonly string[] {
    return this.#output.lines;
  }

  /** Sends `sig` if it is still running. */
  kill(sig: NodeJS.Signals): void {
    if (this.running) this.#child.kill(sig);
  }

  /**
   * Resolves `{ok: true}` once `GET <url><readyPath>` answers 200; `{ok: false}` with the reason when the process
   * exits first or `timeoutMs` passes. Stops early, with `{ok: false}`, when `cancelled` resolves.
   */
  async waitReady(timeoutMs: number, cancelled: Promise<void>): Promise<Readiness> {
    const deadline = Date.now() + timeoutMs;
    let isCancelled = false;
    void cancelled.then(() => (isCancelled = true));
    const probeUrl = this.url + this.proc.readyPath;
    let last = "no answer yet";
    for (;;) {
      if (this.exit !== undefined) {
        return {
          ok: false,
          reason: `${this.proc.name} exited during start-up (${describeExit(this.exit)})`,
          timedOut: false,
        };
      }
      if (isCancelled) return { ok: false, reason: "start-up cancelled", timedOut: false };
      try {
        const res = await fetch(probeUrl, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
        const body = (await res.text()).trim().slice(0, 300);
        if (res.status === 200) return { ok: true };
        last = `${res.status} ${body}`;
      } catch (err) {
        const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : undefined;
        last = cause ?? (err instanceof Error ? err.message : String(err));
      }
      if (Date.now() >= deadline) {
        return {
          ok: false,
          reason: `${this.proc.name} was not ready within ${timeoutMs} ms: GET ${probeUrl} last answered: ${last}`,
          timedOut: true,
        };
      }
      await Promise.race([delay(PROBE_INTERVAL_MS), this.exited, cancelled]);
    }
  }

  /**
   * Stops it: SIGTERM, then SIGKILL after `timeoutMs`. Resolves with how it ended and whether it had to be killed.
   */
  async stop(timeoutMs: number): Promise<ChildExit & { forced: boolean }> {
    this.stopping = true;
    if (this.exit !== undefined) return { ...this.exit, forced: false };
    this.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">(
      (resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)),
    );
    const first = await Promise.race([this.exited, timedOut]);
    clearTimeout(timer);
    if (first !== "timeout") return { ...first, forced: false };
    this.kill("SIGKILL");
    return { ...(await this.exited), forced: true };
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
