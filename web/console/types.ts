/** What the console API answers (the server's types, restated for the browser bundle). */

export interface Session {
  sub: string;
  devControls: boolean;
  maxRedrives: number;
  sampleMs: number;
}

export interface ConsumerRow {
  stream: string;
  durable: string;
  pending: number;
  ackPending: number;
  lag: number;
  redelivered: number;
  ackRate: number;
  etaSeconds: number | null;
  paused: { by: string; at: string } | null;
}

export interface OverviewSample {
  at: string;
  rates: { placed: number; confirmed: number; cancelled: number };
  latency: { p50: number | null; p99: number | null; count: number };
  consumers: ConsumerRow[];
  breakers: { dependency: string; service: string; state: "closed" | "open" | "half-open" | "unknown" }[];
  dlqDepth: number;
  streams: { name: string; messages: number; bytes: number }[];
}
