/**
 * Periodic verification of the audit log's hash chain, exported for alerting (ShopStreamAuditChainBroken and
 * ShopStreamAuditChainUnverified in deploy/observability/alerts.rules.yml): every `intervalMs` the whole chain is
 * recomputed, as `GET /audit/verify` does, and the result lands in three metrics:
 *
 * - `shopstream_audit_chain_broken`: 1 when the last completed verification found a row that does not chain, else 0;
 * - `shopstream_audit_chain_last_verified_timestamp_seconds`: when a verification last completed (ok or broken);
 *   0 before the first;
 * - `shopstream_audit_chain_verifications_total{result}`: verifications by result, `ok`, `broken` or `error` (the
 *   database did not answer: the two gauges keep their values).
 *
 * One verification at a time; the first runs `firstDelayMs` after {@link ChainMonitor.start}.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import { describeError } from "../../lib/errors.js";
import type { Logger } from "../../lib/telemetry/logger.js";
import type { VerifyResult } from "./audit.js";

/** What the verifier needs of the store. */
export interface VerifiableStore {
  verify(): Promise<VerifyResult>;
}

/** Options of {@link ChainMonitor}. */
export interface ChainMonitorOptions {
  store: VerifiableStore;
  registry: Registry;
  logger: Logger;
  /** Time between verifications; 0: never (the metrics are still registered). */
  intervalMs: number;
  /** Time from start to the first verification (default: the interval, at most 30 s). */
  firstDelayMs?: number;
}

/** Outcome of one verification. */
export type VerificationOutcome = "ok" | "broken" | "error";

/** See the module comment. */
export class ChainMonitor {
  readonly #o: ChainMonitorOptions;
  readonly #broken: Gauge;
  readonly #lastVerified: Gauge;
  readonly #runs: Counter<"result">;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<VerificationOutcome> | undefined;
  #stopped = false;

  constructor(o: ChainMonitorOptions) {
    this.#o = o;
    const registers = [o.registry];
    this.#broken = new Gauge({
      name: "shopstream_audit_chain_broken",
      help: "1 when the last completed verification of the audit hash chain found a row that does not chain, else 0.",
      registers,
    });
    this.#lastVerified = new Gauge({
      name: "shopstream_audit_chain_last_verified_timestamp_seconds",
      help: "Unix time at which a verification of the audit hash chain last completed (ok or broken); 0 before the first.",
      registers,
    });
    this.#runs = new Counter({
      name: "shopstream_audit_chain_verifications_total",
      help: "Verifications of the audit hash chain by result: ok, broken, error (the database did not answer).",
      labelNames: ["result"],
      registers,
    });
    this.#broken.set(0);
    this.#lastVerified.set(0);
    for (const result of ["ok", "broken", "error"]) this.#runs.inc({ result }, 0);
  }

  /** Starts verifying periodically (nothing when the interval is 0). */
  start(): void {
    if (this.#o.intervalMs <= 0 || this.#stopped) return;
    this.#schedule(this.#o.firstDelayMs ?? Math.min(this.#o.intervalMs, 30_000));
  }

  /** Stops the schedule and waits for a verification in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  /** Verifies the chain now (or joins the verification in progress) and records the outcome. */
  verifyNow(): Promise<VerificationOutcome> {
    this.#running ??= this.#verify().finally(() => (this.#running = undefined));
    return this.#running;
  }

  #schedule(ms: number): void {
    this.#timer = setTimeout(() => {
      void this.verifyNow().then(() => {
        if (!this.#stopped) this.#schedule(this.#o.intervalMs);
      });
    }, ms);
    this.#timer.unref();
  }

  async #verify(): Promise<VerificationOutcome> {
    const t0 = Date.now();
    let result: VerifyResult;
    try {
      result = await this.#o.store.verify();
    } catch (err) {
      this.#runs.inc({ result: "error" });
      this.#o.logger.error({ err: describeError(err) }, "audit chain verification failed");
      return "error";
    }
    const outcome: VerificationOutcome = result.ok ? "ok" : "broken";
    this.#runs.inc({ result: outcome });
    this.#broken.set(result.ok ? 0 : 1);
    this.#lastVerified.set(Date.now() / 1000);
    const fields = { rows: result.rows, ms: Date.now() - t0 };
    if (result.ok) this.#o.logger.info(fields, "audit chain verified");
    else
      this.#o.logger.error(
        { ...fields, first_bad_position: result.firstBadPosition },
        "audit chain BROKEN: a row does not chain (tampering or corruption)",
      );
    return outcome;
  }
}
