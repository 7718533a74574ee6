/**
 * Two per-message costs of nats.js 3.3 that the profiles of every service showed (docs/benchmarks.md,
 * "Where the CPU goes"), removed by replacing two methods of its internal classes. Installed once per
 * process by {@link connectNats}; each is checked against the shape it replaces and skipped, with a reason,
 * when that shape is not there (another nats.js version), so an upgrade loses the gain, never correctness.
 *
 * 1. **Write coalescing.** The client writes its outbound buffer to the socket in a microtask after the first
 *    command. Acks and publishes made by different handlers settle in different microtasks, so under load
 *    nearly every ack and publish became its own `write()` syscall (`writeBuffer`: 18–28 % of every
 *    service's CPU). Here the flush runs in `setImmediate`: everything a process sends during one turn of
 *    the event loop (e.g. the acks and publishes caused by one socket read of deliveries) goes out in one
 *    write. Order is unchanged (one buffer, drained in order); the added latency is the rest of the turn.
 *    The 32 KiB inline flush stays, so a burst never buffers more than that.
 * 2. **No error per successful request.** `RequestOne.cancel()`, called after every reply, rejects its
 *    already-resolved promise with a new `RequestError("cancelled")`: a stack trace captured and thrown
 *    away for each publish, KV write and direct get (3–5 % of a service's CPU). The replacement builds the
 *    error only when the request really is cancelled before it settled.
 */
import { ProtocolHandler, RequestOne } from "@nats-io/nats-core/internal";
import { errors } from "@nats-io/transport-node";

/** What was installed, and why not where it was skipped. */
export interface NatsTuning {
  coalescedFlush: boolean | string;
  quietCancel: boolean | string;
}

let installed: NatsTuning | undefined;

interface ProtocolInternals {
  outbound: { length(): number; size(): number; fill(...b: Uint8Array[]): void };
  pendingLimit: number;
  flushPending: (this: ProtocolInternals) => void;
  sendCommand: (this: ProtocolInternals, cmd: string | Uint8Array, ...payloads: Uint8Array[]) => void;
}

interface RequestInternals {
  timer?: { cancel(): void };
  mux: { cancel(r: unknown): void };
  deferred: { reject(err: unknown): void };
  settled?: boolean;
  resolver: (this: RequestInternals, err: Error | null, msg: unknown) => void;
  cancel: (this: RequestInternals, err?: Error) => void;
}

const encoder = new TextEncoder();

/** Installs the tuning (idempotent). Returns what is in effect. */
export function installNatsTuning(): NatsTuning {
  if (installed) return installed;
  installed = { coalescedFlush: tuneFlush(), quietCancel: tuneCancel() };
  return installed;
}

function tuneFlush(): boolean | string {
  const proto = ProtocolHandler.prototype as unknown as ProtocolInternals;
  const src = String(proto.sendCommand);
  if (typeof proto.flushPending !== "function" || !/queueMicrotask/.test(src) || !/pendingLimit/.test(src))
    return "ProtocolHandler.sendCommand is not the expected nats.js 3.x shape";
  proto.sendCommand = function (this: ProtocolInternals, cmd, ...payloads) {
    const empty = this.outbound.length() === 0;
    this.outbound.fill(typeof cmd === "string" ? encoder.encode(cmd) : cmd, ...payloads);
    if (empty) setImmediate(() => this.flushPending());
    else if (this.outbound.size() >= this.pendingLimit) this.flushPending();
  };
  return true;
}

function tuneCancel(): boolean | string {
  const proto = RequestOne.prototype as unknown as RequestInternals;
  const resolver = String(proto.resolver);
  const cancel = String(proto.cancel);
  if (!/this\.cancel\(\)/.test(resolver) || !/RequestError\("cancelled"\)/.test(cancel))
    return "RequestOne.resolver/cancel are not the expected nats.js 3.x shape";
  const original = proto.resolver;
  proto.resolver = function (this: RequestInternals, err, msg) {
    // The original settles the promise, then calls cancel(), whose reject is a no-op by then.
    this.settled = true;
    original.call(this, err, msg);
  };
  proto.cancel = function (this: RequestInternals, err?: Error) {
    this.timer?.cancel();
    this.mux.cancel(this);
    if (!this.settled || err) {
      this.settled = true;
      this.deferred.reject(err ?? new errors.RequestError("cancelled"));
    }
  };
  return true;
}
