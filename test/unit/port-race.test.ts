/**
 * No port races: a free port is chosen (listen on 0, close) and bound later by another process; in between anything
 * (an outgoing connection, another test) can take it. Every launcher must survive that. The race is injected
 * deterministically: the launchers take a port picker, and {@link Squatter} hands out ports that are already taken.
 */
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { type Server, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { spawn } from "node:child_process";
import { jetstreamManager } from "@nats-io/jetstream";
import { ChaosSystem, lostPort } from "../../src/chaos/system.js";
import { PortTakenError, onFreshPorts, takenPortIn } from "../../src/stack/fresh-ports.js";
import {
  NatsServerError,
  PORT_ATTEMPTS,
  connectTo,
  freePort,
  portsInUse,
  startNatsCluster,
  startNatsServer,
} from "../helpers/nats.js";
import { AUTH_ENV } from "../helpers/auth.js";

/**
 * A port picker whose calls numbered by `squat` (0-based) return a port that something else already listens on: the
 * port is chosen, then taken before the launcher's process can bind it. Other calls return {@link freePort}.
 */
class Squatter {
  calls = 0;
  /** The ports handed out taken, in order. */
  readonly taken: number[] = [];
  readonly #servers: Server[] = [];
  /** Every port handed out: a free port is never handed out twice, so the launcher never re-picks (exact counts). */
  readonly #given = new Set<number>();

  constructor(readonly squat: (call: number) => boolean) {}

  readonly pick = async (host: string): Promise<number> => {
    const call = this.calls++;
    if (!this.squat(call)) {
      // The OS may hand a released port out again; the launcher would then pick once more and shift the count.
      for (;;) {
        const port = await freePort(host);
        if (!this.#given.has(port)) {
          this.#given.add(port);
          return port;
        }
      }
    }
    // Whoever connects (a readiness probe, a soliciting route) is hung up on, so close() does not wait for them.
    const srv = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen({ port: 0, host, exclusive: true }, resolve);
    });
    this.#servers.push(srv);
    const port = (srv.address() as { port: number }).port;
    this.#given.add(port);
    this.taken.push(port);
    return port;
  };

  /** True while every squatted port is still held by the squatter (nobody took it from us). */
  get holding(): boolean {
    return this.#servers.every((s) => s.listening);
  }

  async close(): Promise<void> {
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }
}

/** Pids of the processes whose command line mentions `text`. */
function processesUsing(text: string): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return readFileSync(`/proc/${d}/cmdline`, "utf8").includes(text);
      } catch {
        return false;
      }
    })
    .map(Number);
}

void describe("portsInUse", () => {
  void it("reads the taken port from each of nats-server's fatal listen errors", () => {
    const out = [
      `[1] 2026/12/05 08:44:02.030171 [FTL] Error listening on port: 127.0.0.1:42099, "listen tcp 127.0.0.1:42099: bind: address already in use"`,
      `[2] 2026/12/05 08:44:02.075474 [FTL] Can't start monitoring: can't listen to the monitor port: listen tcp 127.0.0.1:42100: bind: address already in use`,
      `[3] 2026/12/05 08:44:09.931154 [FTL] Error listening on router port: 40127 - listen tcp 127.0.0.1:40127: bind: address already in use`,
      `[4] 2026/12/05 08:44:02.180933 [FTL] error starting profiler: listen tcp [::1]:42101: bind: address already in use`,
      `[5] 2026/12/05 08:44:02.180933 [INF] Listening for client connections on 127.0.0.1:4222`,
    ];
    assert.deepEqual(portsInUse(out), [42099, 42100, 40127, 42101]);
  });
});

void describe(
  "startNatsServer when a picked port is taken before nats-server binds it",
  { timeout: 60_000 },
  () => {
    const squatters: Squatter[] = [];
    const cleanups: (() => Promise<unknown>)[] = [];
    after(async () => {
      for (const c of cleanups) await c();
      for (const s of squatters) await s.close();
    });
    const squatter = (squat: (call: number) => boolean) => {
      const s = new Squatter(squat);
      squatters.push(s);
      return s;
    };

    void it("starts on a fresh client port when the picked one was taken", async () => {
      const sq = squatter((call) => call === 0); // calls: 0 client, 1 monitor
      const server = await startNatsServer({ pickPort: sq.pick, jetstream: false });
      cleanups.push(() => server.cleanup());
      assert.equal(sq.calls, 4, "one failed attempt, then one with two fresh ports");
      assert.ok(!sq.taken.includes(server.port), `client port ${server.port} is not the squatted one`);
      assert.ok(!sq.taken.includes(server.monitorPort));
      assert.ok(sq.holding, "the squatter kept its port");
      const nc = await connectTo(server);
      await nc.flush();
      await nc.close();
    });

    void it("starts on a fresh monitor port when the picked one was taken", async () => {
      const sq = squatter((call) => call === 1);
      const server = await startNatsServer({ pickPort: sq.pick });
      cleanups.push(() => server.cleanup());
      assert.equal(sq.calls, 4);
      assert.ok(!sq.taken.includes(server.monitorPort), `monitor port ${server.monitorPort}`);
      assert.equal((await fetch(`${server.monitorUrl}/healthz`)).status, 200);
    });

    void it("does not retry when the taken port is one the caller asked for", async () => {
      const sq = squatter(() => false);
      const holder = squatter(() => true);
      const port = await holder.pick("127.0.0.1");
      await assert.rejects(startNatsServer({ port, pickPort: sq.pick, jetstream: false }), (err: unknown) => {
        assert.ok(err instanceof NatsServerError);
        assert.equal(err.code, "NATS_SERVER_START_FAILED");
        assert.deepEqual(portsInUse(err.output), [port]);
        return true;
      });
      assert.equal(sq.calls, 1, "only the monitor port was picked, once");
    });

    void it("does not retry a failure that is not a taken port", async () => {
      const sq = squatter(() => false);
      await assert.rejects(
        startNatsServer({ pickPort: sq.pick, extraArgs: ["--no-such-flag"] }),
        (err: unknown) => err instanceof NatsServerError && err.code === "NATS_SERVER_START_FAILED",
      );
      assert.equal(sq.calls, 2, "one attempt");
    });

    void it(`gives up after ${PORT_ATTEMPTS} attempts with a message that says why`, async () => {
      const sq = squatter(() => true);
      await assert.rejects(startNatsServer({ pickPort: sq.pick, jetstream: false }), (err: unknown) => {
        assert.ok(err instanceof NatsServerError);
        assert.equal(err.code, "NATS_SERVER_START_FAILED");
        assert.match(
          err.message,
          new RegExp(`could not start after ${PORT_ATTEMPTS} attempts: each time a port it had picked`),
        );
        return true;
      });
      assert.equal(sq.calls, 2 * PORT_ATTEMPTS);
    });
  },
);

void describe(
  "startNatsCluster when a picked port is taken before nats-server binds it",
  { timeout: 120_000 },
  () => {
    const squatters: Squatter[] = [];
    after(async () => {
      for (const s of squatters) await s.close();
    });

    void it("restarts the whole cluster on fresh ports: a route port, then a monitor port taken", async () => {
      // Per attempt, per member: client, monitor, route. Call 5 is n2's route port in attempt 1; call 9 + 1 is n1's
      // monitor port in attempt 2. Attempt 3 gets free ports only.
      const sq = new Squatter((call) => call === 5 || call === 10);
      squatters.push(sq);
      const cluster = await startNatsCluster({ pickPort: sq.pick, name: "race" });
      try {
        assert.equal(sq.calls, 27, "two failed attempts, then one with nine fresh ports");
        assert.equal(sq.taken.length, 2);
        for (const s of cluster.servers) {
          for (const p of [s.port, s.monitorPort, s.cluster!.port])
            assert.ok(!sq.taken.includes(p), `${s.serverName} on ${p}`);
          for (const r of s.cluster!.routes) assert.ok(!sq.taken.some((p) => r.endsWith(`:${p}`)), r);
        }
        assert.ok(sq.holding);
        await cluster.waitForJetStream();
        // Routed for real: an R3 stream needs all three.
        const nc = await connectTo(cluster);
        try {
          const jsm = await jetstreamManager(nc);
          const info = await jsm.streams.add({ name: "RACE", subjects: ["race.>"], num_replicas: 3 });
          assert.equal(info.cluster?.replicas?.length, 2);
        } finally {
          await nc.close();
        }
      } finally {
        await cluster.cleanup();
      }
    });

    void it(`gives up after ${PORT_ATTEMPTS} attempts, with nothing left running`, async () => {
      const sq = new Squatter((call) => call % 9 === 2); // n1's route port, every attempt
      squatters.push(sq);
      const dir = await mkdtemp(join(tmpdir(), "port-race-"));
      try {
        await assert.rejects(startNatsCluster({ pickPort: sq.pick, baseDir: dir }), (err: unknown) => {
          assert.ok(err instanceof NatsServerError);
          assert.match(
            err.message,
            new RegExp(`cluster shopstream could not start after ${PORT_ATTEMPTS} attempts`),
          );
          assert.deepEqual(portsInUse(err.output), [sq.taken.at(-1)]);
          return true;
        });
        assert.equal(sq.calls, 9 * PORT_ATTEMPTS);
        assert.deepEqual(processesUsing(dir), [], "no nats-server of the cluster is left running");
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  },
);

void describe("lostPort", () => {
  void it("recognises Node's EADDRINUSE for that port only", () => {
    const node = [
      "Error: listen EADDRINUSE: address already in use 127.0.0.1:44159",
      "    at Server.setupListenHandle",
    ];
    const service = ["inventory: failed to start: listen EADDRINUSE: address already in use 127.0.0.1:44159"];
    assert.equal(lostPort(node, 44159), true);
    assert.equal(lostPort(service, 44159), true);
    assert.equal(lostPort(node, 4415), false);
    assert.equal(lostPort(["inventory: failed to start: NATS timeout on 127.0.0.1:44159"], 44159), false);
  });
});

void describe(
  "the chaos system when a picked instance port is taken before its process listens",
  { timeout: 180_000 },
  () => {
    let dir: string;
    const sq = new Squatter((call) => call === 2 || call === 3); // 0, 1: nats-server; 2: payment-gateway; 3: inventory
    let sys: ChaosSystem | undefined;
    const logs: string[] = [];
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "port-race-chaos-"));
    });
    after(async () => {
      await sys?.stop();
      await sq.close();
      await rm(dir, { recursive: true, force: true });
    });

    void it("starts the simulator and the service on fresh ports, not counted as start-up restarts", async () => {
      sys = new ChaosSystem({
        dataDir: join(dir, "data"),
        logDir: join(dir, "logs"),
        only: ["payment-gateway", "inventory"],
        pickPort: sq.pick,
        log: (m) => logs.push(m),
      });
      await sys.start();
      assert.equal(sq.taken.length, 2);
      assert.deepEqual(
        sys.all().map((i) => i.id),
        ["payment-gateway-1", "inventory-1"],
      );
      for (const inst of sys.all()) {
        assert.ok(inst.ready, `${inst.id} ready`);
        assert.ok(!sq.taken.includes(inst.port), `${inst.id} on ${inst.port}`);
      }
      const [gwTaken, inventoryTaken] = sq.taken;
      assert.ok(
        logs.some((l) => l.startsWith(`payment-gateway-1: port ${gwTaken} was taken`)),
        logs.join("\n"),
      );
      assert.ok(
        logs.some((l) => l.startsWith(`inventory-1: port ${inventoryTaken} was taken`)),
        logs.join("\n"),
      );
      assert.deepEqual(sys.startupRestarts, []);
      assert.equal((await fetch(`${sys.url("payment-gateway")}/health`)).status, 200);
      assert.equal((await fetch(`${sys.url("inventory")}/ready`)).status, 200);
      assert.ok(sq.holding);
    });
  },
);

/** Runs the payment-gateway simulator on `port` until `/health` answers (resolves with a stop function) or it exits. */
async function startGateway(port: number, dir: string, env: Record<string, string> = {}) {
  const parent: NodeJS.ProcessEnv = { ...process.env };
  delete parent["NODE_TEST_CONTEXT"]; // else the child takes itself for a test file of this run
  const child = spawn(process.execPath, ["--import", "tsx", "src/simulators/payment-gateway/main.ts"], {
    env: {
      ...parent,
      PORT: String(port),
      HOST: "127.0.0.1",
      LEDGER_FILE: join(dir, `ledger-${port}.json`),
      ...AUTH_ENV,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (output += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (output += c));
  const exited = new Promise<void>((r) => child.once("close", () => r()));
  let gone = false;
  void exited.then(() => (gone = true));
  for (;;) {
    if (gone) return { ok: false as const, output };
    const up = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(1_000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (up)
      return {
        ok: true as const,
        stop: async () => {
          child.kill("SIGTERM");
          await exited;
        },
      };
    await Promise.race([exited, new Promise((r) => setTimeout(r, 100))]); // poll /health until it answers
  }
}

void describe("onFreshPorts", { timeout: 60_000 }, () => {
  let dir: string;
  const squatters: Squatter[] = [];
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "port-race-fresh-"));
  });
  after(async () => {
    for (const s of squatters) await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  void it("reads a taken port from Node's, nats-server's and the stack's messages, and only that port", () => {
    assert.equal(
      takenPortIn("Error: listen EADDRINUSE: address already in use 127.0.0.1:44159", [1, 44159]),
      44159,
    );
    assert.equal(
      takenPortIn(
        `[1] 2026/12/05 08:44:02.030171 [FTL] Error listening on port: 127.0.0.1:42099, "listen tcp 127.0.0.1:42099: bind: address already in use"`,
        [42099],
      ),
      42099,
    );
    assert.equal(
      takenPortIn(
        "stack | orders cannot start: port 18080 on 127.0.0.1 is already in use; stop what uses it",
        [18080],
      ),
      18080,
    );
    assert.equal(
      takenPortIn("orders cannot start: port 18080 on 127.0.0.1 is already in use", [18081]),
      undefined,
    );
    assert.equal(
      takenPortIn("payment-gateway exited during start-up (exit code 1) 18080", [18080]),
      undefined,
    );
  });

  void it("starts a process again on fresh ports when the picked one was taken before it listened", async () => {
    const sq = new Squatter((call) => call === 0);
    squatters.push(sq);
    const used: number[] = [];
    const stop = await onFreshPorts(
      1,
      async ([port]) => {
        used.push(port!);
        const r = await startGateway(port!, dir);
        if (r.ok) return r.stop;
        const taken = takenPortIn(r.output, [port!]);
        if (taken !== undefined) throw new PortTakenError(taken, r.output);
        throw new Error(r.output);
      },
      { pickPort: sq.pick },
    );
    await stop();
    assert.deepEqual(used.length, 2);
    assert.equal(used[0], sq.taken[0]);
    assert.ok(!sq.taken.includes(used[1]!));
  });

  void it("passes any other failure on at once", async () => {
    let calls = 0;
    await assert.rejects(
      onFreshPorts(1, async ([port]) => {
        calls++;
        const r = await startGateway(port!, dir, { SEED: "not-a-number" });
        if (r.ok) await r.stop();
        throw new Error(`gateway failed: ${r.ok ? "started" : r.output}`);
      }),
      /gateway failed: .*SEED/s,
    );
    assert.equal(calls, 1);
  });

  void it(`gives up after ${PORT_ATTEMPTS} attempts, saying why`, async () => {
    let calls = 0;
    await assert.rejects(
      onFreshPorts(2, async ([a]) => {
        calls++;
        throw new PortTakenError(a!, "listen EADDRINUSE");
      }),
      new RegExp(
        `could not start after ${PORT_ATTEMPTS} attempts: each time a port picked for it \\(last: \\d+\\) was taken`,
      ),
    );
    assert.equal(calls, PORT_ATTEMPTS);
  });
});
