// Preloaded with NODE_OPTIONS="--import <this file>" by `npm run bench -- --profile` (Node 20 refuses --cpu-prof in
// NODE_OPTIONS): starts the V8 CPU profiler at start-up and writes CPU.<ms>.<pid>.0.001.cpuprofile into
// BENCH_CPU_PROF_DIR when the process exits. The inspector session of the same thread answers synchronously, so
// this works inside the "exit" handler.
import { Session } from "node:inspector";
import process from "node:process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.env.BENCH_CPU_PROF_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.setSamplingInterval", {
    interval: Number(process.env.BENCH_CPU_PROF_INTERVAL_US ?? 1000),
  });
  session.post("Profiler.start");
  let written = false;
  process.on("exit", () => {
    if (written) return;
    written = true;
    session.post("Profiler.stop", (err, res) => {
      if (!err)
        writeFileSync(
          join(dir, `CPU.${Date.now()}.${process.pid}.0.001.cpuprofile`),
          JSON.stringify(res.profile),
        );
    });
  });
}
