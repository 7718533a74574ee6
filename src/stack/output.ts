/**
 * How the local stack shows its children's output: whole lines, each prefixed with a padded (and on a terminal,
 * coloured) process name; pino JSON lines optionally shortened to level, message and order id.
 */
import type { Readable } from "node:stream";

const RESET = "\u001b[0m";
const BOLD = 1;
const DIM = 2;
/** Name colours, one per process in table order; chosen to stay readable on dark and light terminals. */
const PALETTE = [36, 35, 33, 32, 34, 96, 95, 93, 92, 94] as const;

const LEVEL_NAMES: Record<number, string> = {
  10: "trace",
  20: "debug",
  30: "info",
  40: "warn",
  50: "error",
  60: "fatal",
};
const LEVEL_COLOURS: Record<string, number> = {
  trace: 90,
  debug: 90,
  info: 32,
  warn: 33,
  error: 31,
  fatal: 31,
};

/** `text` in ANSI colour `code` when `on`. */
export function paint(text: string, code: number, on: boolean): string {
  return on ? `\u001b[${code}m${text}${RESET}` : text;
}

/** How {@link Printer} writes. */
export interface PrinterOptions {
  /** Width the names are padded to. */
  width: number;
  /** ANSI colours. */
  color: boolean;
  /** Shorten pino JSON lines ({@link prettyPinoLine}); raw lines otherwise. */
  pretty: boolean;
  out: (text: string) => void;
  err: (text: string) => void;
}

/** Writes lines of named sources with a `name | ` prefix; one colour per name, in order of first use. */
export class Printer {
  readonly #opts: PrinterOptions;
  readonly #colours = new Map<string, number>();

  constructor(opts: PrinterOptions) {
    this.#opts = opts;
  }

  /** The `name | ` prefix, padded and coloured. */
  prefix(name: string): string {
    const label = paint(name.padEnd(this.#opts.width), this.#colour(name), this.#opts.color);
    return `${label} ${paint("|", DIM, this.#opts.color)} `;
  }

  #colour(name: string): number {
    if (name === "stack") return BOLD;
    let colour = this.#colours.get(name);
    if (colour === undefined) {
      colour = PALETTE[this.#colours.size % PALETTE.length] ?? 36;
      this.#colours.set(name, colour);
    }
    return colour;
  }

  /** A line of `name` (several when `text` holds newlines, each prefixed); `stream` says where it goes. */
  line(name: string, text: string, stream: "out" | "err" = "out"): void {
    const shown = this.#opts.pretty ? (prettyPinoLine(text, this.#opts.color) ?? text) : text;
    const prefix = this.prefix(name);
    this.#opts[stream](
      `${shown
        .split("\n")
        .map((l) => prefix + l)
        .join("\n")}\n`,
    );
  }

  /** Text without any prefix (the summary table). */
  plain(text: string): void {
    this.#opts.out(`${text}\n`);
  }
}

/**
 * A pino JSON line shortened to `LEVEL msg order_id=… err=…`, or undefined when `line` is not a pino line (it is
 * then shown as it is). Levels may be labels (`"info"`, ShopStream's formatter) or numbers (pino's default).
 */
export function prettyPinoLine(line: string, color: boolean): string | undefined {
  if (!line.startsWith("{")) return undefined;
  let rec: unknown;
  try {
    rec = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof rec !== "object" || rec === null) return undefined;
  const r = rec as Record<string, unknown>;
  const level = typeof r["level"] === "number" ? LEVEL_NAMES[r["level"]] : r["level"];
  if (typeof level !== "string" || typeof r["msg"] !== "string") return undefined;
  const parts = [paint(level.toUpperCase().padEnd(5), LEVEL_COLOURS[level] ?? 0, color), r["msg"]];
  if (typeof r["order_id"] === "string") parts.push(paint(`order_id=${r["order_id"]}`, DIM, color));
  const err = r["err"];
  if (typeof err === "object" && err !== null && typeof (err as { message?: unknown }).message === "string") {
    parts.push(`err=${(err as { message: string }).message}`);
  }
  return parts.join(" ");
}

/**
 * Calls `onLine` with each whole line `stream` delivers (without the newline, `\r\n` tolerated); a last line
 * without a newline is delivered when the stream ends.
 */
export function forEachLine(stream: Readable, onLine: (line: string) => void): void {
  let carry = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    const parts = (carry + chunk).split("\n");
    carry = parts.pop() ?? "";
    for (const l of parts) onLine(l.endsWith("\r") ? l.slice(0, -1) : l);
  });
  stream.on("end", () => {
    if (carry !== "") onLine(carry);
    carry = "";
  });
}

/** The last `size` lines pushed, for error messages. */
export class LineRing {
  readonly #lines: string[] = [];
  constructor(readonly size: number) {}

  push(line: string): void {
    this.#lines.push(line);
    if (this.#lines.length > this.size) this.#lines.shift();
  }

  get lines(): readonly string[] {
    return this.#lines;
  }
}
