/**
 * What the benchmark watches while the load runs, once a second: CPU and RSS of every process of the stack (from
 * /proc/<pid>/stat and /proc/<pid>/status), the machine's CPU (/proc/stat) and load average, and every durable
 * consumer's lag (num_pending and num_ack_pending from consumer info). Also the message counts of the streams.
 */
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import type { JetStreamManager } from "@nats-io/jetstream";

const HZ = 100; // USER_HZ on Linux

/** utime+stime in seconds and RSS in MB of one process, or undefined when it is gone. */
export function procStat(pid: number): { cpuS: number; rssMb: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const cpuS = (Number(f[11]) + Number(f[12])) / HZ;
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = /VmRSS:\s+(\d+) kB/.exec(status);
    return { cpuS, rssMb: rss ? Number(rss[1]) / 1024 : 0 };
  } catch {
    return undefined;
  }
}

/** Busy and total jiffies of the whole machine. */
export function machineJiffies(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line;
  return {
    busy: user + nice + system + irq + softirq + steal,
    total: user + nice + system + idle + iowait + irq + softirq + steal,
  };
}

/** One sample (one second). */
export interface Sample {
  /** ms since the phase started. */
  t: number;
  /** % of one core used in the last interval, by process name. */
  cpuPct: Record<string, number>;
  rssMb: Record<string, number>;
  /** Machine busy % of all cores in the last interval. */
  machineBusyPct: number;
  load1: number;
  /** num_pending by `stream/durable`. */
  pending: Record<string, number>;
  /** num_ack_pending by `stream/durable`. */
  ackPending: Record<string, number>;
}

/** Per-process totals over a window. */
export interface ProcessUsage {
  cpuPctAvg: number;
  rssMbMax: number;
  /** CPU seconds used over the window. */
  cpuS?: number;
}

/** Samples CPU/RSS per process and consumer lag every `intervalMs` until stopped. */
export class Sampler {
  readonly samples: Sample[] = [];
  #timer: NodeJS.Timeout | undefined;
  #last = new Map<string, { pid: number; cpuS: number; at: number }>();
  #lastMachine = machineJiffies();
  #t0 = Date.now();
  #first = new Map<string, { pid: number; cpuS: number }>();
  #firstAt = Date.now();
  #firstMachine = machineJiffies();
  #rssMax = new Map<string, number>();
  #busy = false;

  constructor(
    private readonly processes: () => Map<string, number>,
    private readonly jsm: JetStreamManager | undefined,
    private readonly streams: string[],
    private readonly intervalMs = 1_000,
  ) {}

  start(): void {
    this.#t0 = Date.now();
    this.#firstAt = Date.now();
    this.#firstMachine = machineJiffies();
    this.#lastMachine = this.#firstMachine;
    for (const [name, pid] of this.processes()) {
      const s = procStat(pid);
      if (!s) continue;
      this.#first.set(name, { pid, cpuS: s.cpuS });
      this.#last.set(name, { pid, cpuS: s.cpuS, at: Date.now() });
    }
    this.#timer = setInterval(() => void this.#tick(), this.intervalMs);
  }

  async #tick(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      const now = Date.now();
      const cpuPct: Record<string, number> = {};
      const rssMb: Record<string, number> = {};
      for (const [name, pid] of this.processes()) {
        const s = procStat(pid);
        if (!s) continue;
        const prev = this.#last.get(name);
        if (prev && prev.pid === pid) cpuPct[name] = (100 * (s.cpuS - prev.cpuS)) / ((now - prev.at) / 1000);
        if (!this.#first.has(name)) this.#first.set(name, { pid, cpuS: s.cpuS });
        this.#last.set(name, { pid, cpuS: s.cpuS, at: now });
        rssMb[name] = Math.round(s.rssMb * 10) / 10;
        this.#rssMax.set(name, Math.max(this.#rssMax.get(name) ?? 0, s.rssMb));
      }
      const m = machineJiffies();
      const machineBusyPct =
        (100 * (m.busy - this.#lastMachine.busy)) / Math.max(1, m.total - this.#lastMachine.total);
      this.#lastMachine = m;
      const pending: Record<string, number> = {};
      const ackPending: Record<string, number> = {};
      if (this.jsm) {
        for (const stream of this.streams) {
          try {
            for await (const c of this.jsm.consumers.list(stream)) {
              pending[`${stream}/${c.name}`] = c.num_pending;
              ackPending[`${stream}/${c.name}`] = c.num_ack_pending;
            }
          } catch {
            /* server busy: skip this second */
          }
        }
      }
      this.samples.push({
        t: now - this.#t0,
        cpuPct,
        rssMb,
        machineBusyPct: Math.round(machineBusyPct * 10) / 10,
        load1: loadavg()[0]!,
        pending,
        ackPending,
      });
    } finally {
      this.#busy = false;
    }
  }

  /** Stops sampling; returns the average CPU (% of one core) and max RSS per process since start. */
  stop(): { processes: Record<string, ProcessUsage>; machineBusyPct: number; seconds: number } {
    clearInterval(this.#timer);
    const secs = (Date.now() - this.#firstAt) / 1000;
    const out: Record<string, ProcessUsage> = {};
    for (const [name, pid] of this.processes()) {
      const s = procStat(pid);
      const f = this.#first.get(name);
      if (!s || !f || f.pid !== pid) continue;
      out[name] = {
        cpuS: Math.round((s.cpuS - f.cpuS) * 100) / 100,
        cpuPctAvg: Math.round((1000 * (s.cpuS - f.cpuS)) / secs) / 10,
        rssMbMax: Math.round(Math.max(this.#rssMax.get(name) ?? 0, s.rssMb)),
      };
    }
    const m = machineJiffies();
    const busy = (100 * (m.busy - this.#firstMachine.busy)) / Math.max(1, m.total - this.#firstMachine.total);
    return { processes: out, machineBusyPct: Math.round(busy * 10) / 10, seconds: secs };
  }
}

/** Messages ever stored in each stream (last sequence: KV buckets keep one revision, but count every write). */
export async function streamCounts(jsm: JetStreamManager): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for await (const s of jsm.streams.list()) out[s.config.name] = s.state.last_seq;
  return out;
}

/** Messages and bytes each client connection sent (in) and received (out), by connection name. */
export interface ConnTraffic {
  in_msgs: number;
  out_msgs: number;
  in_bytes: number;
  out_bytes: number;
}

/** Per-connection counters from nats-server's /connz (summed by connection name). */
export async function connTraffic(monitorUrl: string | undefined): Promise<Record<string, ConnTraffic>> {
  const out: Record<string, ConnTraffic> = {};
  if (!monitorUrl) return out;
  try {
    const res = await fetch(`${monitorUrl}/connz?limit=1024`);
    const body = (await res.json()) as { connections?: (ConnTraffic & { name?: string })[] };
    for (const c of body.connections ?? []) {
      const name = c.name ?? "unnamed";
      const t = (out[name] ??= { in_msgs: 0, out_msgs: 0, in_bytes: 0, out_bytes: 0 });
      t.in_msgs += c.in_msgs;
      t.out_msgs += c.out_msgs;
      t.in_bytes += c.in_bytes;
      t.out_bytes += c.out_bytes;
    }
  } catch {
    /* monitoring unavailable: no traffic figures */
  }
  return out;
}
