import { parseArgs } from "node:util";
import type { JetStreamManager } from "@nats-io/jetstream";
import {
  inspectDeadLetter,
  listDeadLetters,
  redriveDeadLetter,
  type DeadLetter,
} from "../lib/messaging/dlq.js";
import type { Publisher } from "../lib/messaging/publisher.js";
import { isSealed } from "../lib/pii/seal.js";

/** The usage text of the DLQ tool. */
export const DLQ_USAGE = `usage: npm run dlq -- <command>    (in the image: node dist/tools/dlq.js <command>)

commands:
  list [--consumer <durable>] [--limit <n>] [--json]   dead letters, oldest first (default limit 100)
  show <dlq-seq>                                      one entry as JSON, with its event decoded
  redrive <dlq-seq> [<dlq-seq>...]                    republish to the original subject, then remove from the DLQ

environment: NATS_URL (default nats://127.0.0.1:4222)
exit codes: 0 done, 1 failed (no such entry, NATS unreachable), 2 usage error`;

/** A command line the DLQ tool understood. */
export type DlqCommand =
  | { name: "list"; consumer?: string; limit: number; json: boolean }
  | { name: "show"; seq: number }
  | { name: "redrive"; seqs: number[] }
  | { name: "help" };

/** A command line the DLQ tool does not understand; the message says why. */
export class DlqUsageError extends Error {
  override readonly name = "DlqUsageError";
}

/** What a DLQ command needs: the JetStream manager, a publisher (for redrive) and where to write. */
export interface DlqDeps {
  jsm: JetStreamManager;
  publisher: Publisher;
  out: (line: string) => void;
}

/** Parses the tool's arguments (without `node` and the script); throws {@link DlqUsageError}. */
export function parseDlqArgs(argv: readonly string[]): DlqCommand {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        consumer: { type: "string" },
        limit: { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    throw new DlqUsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  const [name, ...rest] = positionals;
  if (values.help || name === "help") return { name: "help" };
  const onlyFor = (opts: string[], command: string) => {
    for (const o of opts) {
      if (
        (values as Record<string, unknown>)[o] !== undefined &&
        (values as Record<string, unknown>)[o] !== false
      )
        throw new DlqUsageError(`--${o} is not an option of ${command}`);
    }
  };
  switch (name) {
    case "list": {
      if (rest.length > 0) throw new DlqUsageError(`list takes no argument, got ${rest.join(" ")}`);
      const limit = values.limit === undefined ? 100 : sequence(values.limit, "--limit");
      return {
        name: "list",
        limit,
        json: values.json,
        ...(values.consumer ? { consumer: values.consumer } : {}),
      };
    }
    case "show": {
      onlyFor(["consumer", "limit", "json"], "show");
      if (rest.length !== 1) throw new DlqUsageError("show takes one DLQ sequence");
      return { name: "show", seq: sequence(rest[0]!, "the DLQ sequence") };
    }
    case "redrive": {
      onlyFor(["consumer", "limit", "json"], "redrive");
      if (rest.length === 0) throw new DlqUsageError("redrive takes one or more DLQ sequences");
      return { name: "redrive", seqs: rest.map((s) => sequence(s, "a DLQ sequence")) };
    }
    case undefined:
      throw new DlqUsageError("a command is required");
    default:
      throw new DlqUsageError(`unknown command ${JSON.stringify(name)}`);
  }
}

function sequence(text: string, what: string): number {
  if (!/^[1-9][0-9]*$/.test(text)) throw new DlqUsageError(`${what} must be a positive integer, got ${text}`);
  return Number(text);
}

/**
 * Runs one parsed DLQ command and returns the process exit code (0 done, 1 failed). Redrive goes on past a
 * failed entry and reports each one; the exit code is 1 if any failed.
 */
export async function runDlqCommand(cmd: DlqCommand, deps: DlqDeps): Promise<number> {
  const { jsm, publisher, out } = deps;
  switch (cmd.name) {
    case "help":
      out(DLQ_USAGE);
      return 0;
    case "list": {
      const entries = await listDeadLetters(jsm, {
        limit: cmd.limit,
        ...(cmd.consumer ? { consumer: cmd.consumer } : {}),
      });
      if (cmd.json) out(JSON.stringify(entries.map(describe)));
      else out(formatTable(entries));
      return 0;
    }
    case "show": {
      const entry = await inspectDeadLetter(jsm, cmd.seq);
      if (!entry) {
        out(`no DLQ entry ${cmd.seq}`);
        return 1;
      }
      out(JSON.stringify(describe(entry), null, 2));
      return 0;
    }
    case "redrive": {
      let failed = 0;
      for (const seq of cmd.seqs) {
        try {
          const r = await redriveDeadLetter(jsm, publisher, seq);
          out(`redriven DLQ ${seq} -> ${r.subject} (stream sequence ${r.seq})`);
        } catch (err) {
          failed++;
          out(`DLQ ${seq} not redriven: ${(err as Error).message}`);
        }
      }
      return failed === 0 ? 0 : 1;
    }
  }
}

/** Shown in place of a plain e-mail address (an event from before sealing, or a hostile one). */
export const REDACTED = "[redacted]";

/**
 * The event with its personal data masked: a plain `data.email` is redacted; a sealed one (`pii:v1:…`) is shown as it
 * is, since it is ciphertext (docs/security.md#personal-data-and-erasure).
 */
function masked(event: unknown): unknown {
  if (typeof event !== "object" || event === null) return event;
  const data = (event as { data?: unknown }).data;
  if (typeof data !== "object" || data === null) return event;
  const email = (data as { email?: unknown }).email;
  if (email === undefined || (typeof email === "string" && isSealed(email))) return event;
  return { ...event, data: { ...data, email: REDACTED } };
}

/** A dead letter as JSON: its fields, and the body decoded (JSON when it is, else base64), personal data masked. */
export function describe(entry: DeadLetter): Record<string, unknown> {
  const { data, ...fields } = entry;
  const text = Buffer.from(data).toString("utf8");
  let body: Record<string, unknown>;
  if (entry.bodyOmitted) body = { bodyNote: `omitted: read it from ${entry.stream} at ${entry.sequence}` };
  else {
    try {
      body = { event: masked(JSON.parse(text)) };
    } catch {
      body = { bodyBase64: Buffer.from(data).toString("base64") };
    }
  }
  return { ...fields, ...body };
}

/** Dead letters as an aligned text table, one line each. */
export function formatTable(entries: readonly DeadLetter[]): string {
  if (entries.length === 0) return "no dead letters";
  const rows = [
    ["SEQ", "AT", "CONSUMER", "CODE", "ATTEMPTS", "ORIGIN", "TYPE", "ERROR"],
    ...entries.map((e) => [
      String(e.dlqSequence),
      e.at,
      e.consumer,
      e.code,
      String(e.attempts),
      `${e.stream}#${e.sequence}`,
      e.type ?? "-",
      e.error.length > 80 ? `${e.error.slice(0, 77)}...` : e.error,
    ]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
