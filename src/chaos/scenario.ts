/**
 * What a chaos scenario is: a fault script run against a {@link ChaosSystem} under steady load, plus the
 * system it needs. The runner ({@link ./run.ts}) drives the load, waits for quiet and reconciles.
 */
import type { SystemFacts } from "./reconcile.js";
import type { ChaosSystem, ServiceName } from "./system.js";

/** Small (the CI subset) or full (`npm run chaos`). */
export type Scale = "ci" | "full";

/** A check particular to one scenario, verified after the system is quiet (e.g. poison in the DLQ). */
export interface ScenarioCheck {
  name: string;
  ok: boolean;
  detail: string;
}

/** What a fault script gets. */
export interface FaultContext {
  sys: ChaosSystem;
  scale: Scale;
  /** `ci` or `full` milliseconds, by scale. */
  dur(ciMs: number, fullMs: number): number;
  sleep(ms: number): Promise<void>;
  /** Marks the start of the fault window (the first call counts). */
  faultStart(what: string): void;
  /** Marks the heal (the last call counts). */
  healed(what: string): void;
  /** Adds a line to the scenario's timeline. */
  note(what: string): void;
  /** Order ids accepted so far in this scenario. */
  acceptedIds(): string[];
  /** Scenario-specific figures for the report. */
  extra: Record<string, unknown>;
  /** Registers a check to run once the system is quiet, with what the reconciliation read. */
  verifyLater(check: (facts: SystemFacts) => Promise<ScenarioCheck[]>): void;
}

/** One scenario. */
export interface Scenario {
  name: string;
  /** One line: what is done. */
  summary: string;
  /** What is done and what is measured, for docs/reliability.md. */
  description: string;
  /** A 3-node cluster instead of one node. */
  cluster?: boolean;
  /** Replicas the scenario needs (the system is scaled up to them). */
  replicas?: Partial<Record<ServiceName, number>>;
  /** Offered load, orders/s. */
  rate: Record<Scale, number>;
  /** The fault: inject, hold, heal. Runs while the load runs; load goes on for a while after it returns. */
  fault(ctx: FaultContext): Promise<void>;
}
