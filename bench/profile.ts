/**
 * Summarises V8 CPU profiles (`node --cpu-prof`, one `.cpuprofile` per process) into the top frames by self
 * time, and the share of time per area (our code, nats client, JSON, pino, fastify, GC, idle, ...).
 *
 *   npx tsx bench/profile.ts <dir-with-.cpuprofile-files> [pid=name ...]
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

interface CpuNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: CpuNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileSummary {
  file: string;
  pid: number;
  name: string;
  /** Sampled seconds, idle excluded. */
  busySeconds: number;
  totalSeconds: number;
  top: { frame: string; selfPct: number }[];
  areas: { area: string; selfPct: number }[];
}

/** Which part of the program a frame belongs to. */
function areaOf(url: string, fn: string): string {
  if (fn === "(idle)") return "idle";
  if (fn === "(garbage collector)") return "gc";
  if (fn === "(program)") return "program (native)";
  if (url.includes("/@nats-io/")) return "nats client";
  if (url.includes("/pino") || url.includes("sonic-boom") || url.includes("fast-redact"))
    return "pino (logging)";
  if (
    url.includes("/fastify") ||
    url.includes("/find-my-way") ||
    url.includes("/avvio") ||
    url.includes("light-my-request") ||
    url.includes("fast-json-stringify")
  )
    return "fastify";
  if (url.includes("/@opentelemetry/")) return "opentelemetry";
  if (url.includes("/@sinclair/typebox")) return "typebox";
  if (url.includes("/prom-client")) return "prom-client";
  if (url.includes("/cockatiel")) return "cockatiel";
  if (url.includes("/pglite")) return "pglite";
  if (url.includes("/pg/") || url.includes("/pg-")) return "pg";
  if (url.includes("/node_modules/")) return "other packages";
  if (url.startsWith("node:") || url === "") {
    if (/^(stringify|parse)$/.test(fn) && url === "") return "JSON (native)";
    return fn.startsWith("(") ? fn : "node core / native";
  }
  const m = /\/dist\/(lib\/[\w-]+|services\/[\w-]+|simulators\/[\w-]+|stack)/.exec(url);
  if (m) return `shopstream ${m[1]}`;
  return "other";
}

/** Summarises one profile. */
export function summarise(p: CpuProfile, topN = 15): Omit<ProfileSummary, "file" | "pid" | "name"> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  if (p.samples && p.timeDeltas) {
    for (let i = 0; i < p.samples.length; i++) {
      const id = p.samples[i]!;
      self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0));
    }
  } else {
    for (const n of p.nodes) self.set(n.id, n.hitCount ?? 0);
  }
  let total = 0;
  let idle = 0;
  const frames = new Map<string, number>();
  const areas = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n) continue;
    total += us;
    const { functionName, url, lineNumber } = n.callFrame;
    const fn = functionName || "(anonymous)";
    if (fn === "(idle)") {
      idle += us;
      continue;
    }
    const short = url.replace(/^.*\/node_modules\//, "").replace(/^file:\/\/.*\/dist\//, "dist/");
    const key = `${fn} ${short ? `${short}:${lineNumber + 1}` : ""}`.trim();
    frames.set(key, (frames.get(key) ?? 0) + us);
    const a = areaOf(url, fn);
    areas.set(a, (areas.get(a) ?? 0) + us);
  }
  const busy = total - idle;
  const pct = (us: number) => Math.round((1000 * us) / Math.max(1, busy)) / 10;
  return {
    busySeconds: Math.round(busy / 1e4) / 100,
    totalSeconds: Math.round(total / 1e4) / 100,
    top: [...frames]
      .sort((a, b) => b[1] - a[1])
      .slice(0, topN)
      .map(([frame, us]) => ({ frame, selfPct: pct(us) })),
    areas: [...areas].sort((a, b) => b[1] - a[1]).map(([area, us]) => ({ area, selfPct: pct(us) })),
  };
}

/** Summarises every `.cpuprofile` in `dir`; `names` maps pids to process names. */
export async function summariseDir(
  dir: string,
  names: Map<number, string>,
  topN = 15,
): Promise<ProfileSummary[]> {
  const out: ProfileSummary[] = [];
  for (const f of (await readdir(dir)).filter((x) => x.endsWith(".cpuprofile")).sort()) {
    const pid = Number(/\.(\d+)\.\d+\.\d+\.cpuprofile$/.exec(f)?.[1] ?? 0);
    const p = JSON.parse(await readFile(join(dir, f), "utf8")) as CpuProfile;
    out.push({ file: f, pid, name: names.get(pid) ?? `pid-${pid}`, ...summarise(p, topN) });
  }
  return out.sort((a, b) => b.busySeconds - a.busySeconds);
}

/** Plain-text rendering. */
export function formatSummaries(list: ProfileSummary[], topN = 12): string {
  const lines: string[] = [];
  for (const s of list) {
    lines.push(`## ${s.name} (pid ${s.pid}): ${s.busySeconds} s busy of ${s.totalSeconds} s sampled`);
    lines.push(
      `   areas: ${s.areas
        .filter((a) => a.area !== "idle" && a.selfPct >= 1)
        .map((a) => `${a.area} ${a.selfPct}%`)
        .join(", ")}`,
    );
    for (const t of s.top.slice(0, topN)) lines.push(`   ${t.selfPct.toFixed(1).padStart(5)}%  ${t.frame}`);
  }
  return lines.join("\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [dir, ...pairs] = process.argv.slice(2);
  if (!dir) {
    process.stderr.write("usage: tsx bench/profile.ts <dir> [pid=name ...]\n");
    process.exit(2);
  }
  const names = new Map(pairs.map((p) => p.split("=")).map(([a, b]) => [Number(a), b ?? a!]));
  process.stdout.write(formatSummaries(await summariseDir(dir, names)) + "\n");
}
