/**
 * What the console API answers: types only, with no imports, so the server (src/services/console) and the browser
 * bundle (web/console) share one definition.
 */

/** `GET /api/session`: who is signed in, and what the console offers. */
export interface Session {
  sub: string;
  devControls: boolean;
  maxRedrives: number;
  sampleMs: number;
}

/** One durable consumer as the console shows it. */
export interface ConsumerRow {
  stream: string;
  durable: string;
  pending: number;
  ackPending: number;
  /** pending + ack pending. */
  lag: number;
  redelivered: number;
  /** Messages acknowledged per second over the last samples. */
  ackRate: number;
  /** lag / ack rate, in seconds; null when nothing is being acknowledged (or nothing to clear: 0). */
  etaSeconds: number | null;
  /** Paused by an operator (the consumer-control bucket): who and when; null when it is not. */
  paused: { by: string; at: string } | null;
}

/** A breaker of an external dependency: 0 closed, 1 open, 2 half-open; null when its service did not answer. */
export interface BreakerRow {
  dependency: string;
  service: string;
  state: "closed" | "open" | "half-open" | "unknown";
}

/** One overview sample. */
export interface OverviewSample {
  at: string;
  rates: { placed: number; confirmed: number; cancelled: number };
  /** POST → terminal over the last minute, in milliseconds (null: no order finished). */
  latency: { p50: number | null; p99: number | null; count: number };
  consumers: ConsumerRow[];
  breakers: BreakerRow[];
  dlqDepth: number;
  streams: { name: string; messages: number; bytes: number }[];
}
