import { pino, type Logger, type DestinationStream, type LevelWithSilent } from "pino";

export type { Logger } from "pino";

/**
 * Paths redacted from every log line: customer e-mail addresses and card data (PII), wherever an
 * event's data or a request body puts them.
 */
export const redactPaths = [
  "email",
  "*.email",
  "*.*.email",
  "data.email",
  "card",
  "*.card",
  "*.*.card",
  "cardNumber",
  "*.cardNumber",
  "req.headers.authorization",
  "req.headers.cookie",
];

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  /** The service name: the `service` field of every line. */
  service: string;
  level?: LevelWithSilent;
  /** Where lines go (default stdout). Tests pass an in-memory stream. */
  destination?: DestinationStream;
}

/**
 * Creates the pino JSON logger of a service: every line carries `service`; handlers log through
 * children that add `trace_id` and `order_id`; PII in {@link redactPaths} is replaced by `[redacted]`.
 */
export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: opts.level ?? "info",
      base: { service: opts.service },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: redactPaths, censor: "[redacted]" },
    },
    opts.destination,
  );
}
