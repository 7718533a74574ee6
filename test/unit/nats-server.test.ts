import assert from "node:assert/strict";
import { chmod, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import {
  type NatsCluster,
  type NatsServer,
  NatsServerError,
  NatsServerNotFoundError,
  connectTo,
  findNatsServerBinary,
  startNatsCluster,
  startNatsServer,
} from "../helpers/nats.js";
import { eventually } from "../helpers/eventually.js";

/** Resolves when `nc` next reports the status `type`; call it before causing the event. */
async function nextStatus(nc: NatsConnection, type: string): Promise<void> {
  for await (const s of nc.status()) if (s.type === type) return;
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

void describe("findNatsServerBinary", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "find-nats-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void it("explains how to get nats-server when an explicit path does not exist", () => {
    const bogus = join(dir, "no-such-nats-server");
    assert.throws(
      () => findNatsServerBinary(bogus, { path: dir, fallbacks: [] }),
      (err: unknown) => {
        assert.ok(err instanceof NatsServerNotFoundError);
        assert.equal(err.code, "NATS_SERVER_NOT_FOUND");
        assert.deepEqual(err.searched, [bogus]);
        assert.match(
          err.message,
          /^nats-server not found: install it \(Debian\/Ubuntu: `sudo apt-get install nats-server`, macOS: `brew install nats-server`\) or set NATS_SERVER_BIN, or point NATS_URL at a running server/,
        );
        return true;
      },
    );
  });

  void it("throws the same advice when neither PATH nor the fallbacks have it", () => {
    assert.throws(() => findNatsServerBinary(undefined, { path: dir, fallbacks: [join(dir, "nope")] }), {
      name: "NatsServerNotFoundError",
      message:
        /nats-server not found: install it .* or set NATS_SERVER_BIN, or point NATS_URL at a running server/,
    });
  });

  void it("takes the first executable nats-server on PATH, skipping non-executable files", async () => {
    const plain = await mkdtemp(join(dir, "plain-"));
    const exec = await mkdtemp(join(dir, "exec-"));
    await writeFile(join(plain, "nats-server"), "not executable");
    await writeFile(join(exec, "nats-server"), "#!/bin/sh\n");
    await chmod(join(exec, "nats-server"), 0o755);
    const found = findNatsServerBinary(undefined, { path: `${plain}:${exec}`, fallbacks: [] });
    assert.equal(found, join(exec, "nats-server"));
  });

  void it("accepts an explicit path to a real binary", () => {
    const real = findNatsServerBinary();
    assert.equal(findNatsServerBinary(real, { path: "", fallbacks: [] }), real);
  });
});

void describe("a single nats-server", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;

  before(async () => {
    server = await startNatsServer();
    nc = await connectTo(server);
    jsm = await jetstreamManager(nc);
  });
  after(async () => {
    await nc?.close();
    await server?.cleanup();
  });

  void it("starts on a free port with JetStream", async () => {
    assert.notEqual(server.port, 4222);
    assert.equal(server.url, `nats://127.0.0.1:${server.port}`);
    assert.ok(server.running);
    assert.ok(server.pid !== undefined && server.pid > 0);
    await jsm.streams.add({ name: "UNIT", subjects: ["unit.>"] });
    const ack = await jetstream(nc).publish("unit.a", "hello");
    assert.equal(ack.seq, 1);
    const msg = await jsm.streams.getMessage("UNIT", { seq: 1 });
    assert.equal(msg?.string(), "hello");
  });

  void it("keeps JetStream data across kill() and restart() on the same port", async () => {
    const oldPid = server.pid;
    // Requests sent before the client has reconnected can be lost; wait for the reconnect itself.
    const reconnected = nextStatus(nc, "reconnect");
    const exit = await server.kill();
    assert.deepEqual(exit, { code: null, signal: "SIGKILL", forced: true });
    assert.equal(server.running, false);
    await server.restart();
    assert.ok(server.running);
    assert.notEqual(server.pid, oldPid);
    await reconnected;
    const msg = await jsm.streams.getMessage("UNIT", { seq: 1 });
    assert.equal(msg?.string(), "hello");
  });

  void it("stop() shuts down gracefully and frees the port", async () => {
    const exit = await server.stop();
    assert.equal(exit?.forced, false);
    assert.equal(exit?.signal, null, "exited by itself, not killed by a signal");
    assert.ok(server.output.some((l) => l.includes("Server Exiting")));
    assert.equal(server.running, false);
    assert.ok(await canListen(server.port));
    assert.deepEqual(await server.stop(), exit, "stopping again reports the same exit");
    assert.throws(() => server.signal("SIGHUP"), { code: "NATS_SERVER_NOT_RUNNING" });

    const reconnected = nextStatus(nc, "reconnect");
    await server.restart();
    await reconnected;
    const info = await jsm.streams.info("UNIT");
    assert.equal(info.state.messages, 1);
  });

  void it("cleanup() removes the temp store dir it created", async () => {
    const other = await startNatsServer({ jetstream: false });
    assert.ok(await exists(other.storeDir));
    await other.cleanup();
    assert.equal(other.running, false);
    assert.equal(await exists(other.storeDir), false);
  });

  void it("rejects with the server's output when it exits before it is ready", async () => {
    await assert.rejects(startNatsServer({ extraArgs: ["--no-such-flag"] }), (err: unknown) => {
      assert.ok(err instanceof NatsServerError);
      assert.equal(err.code, "NATS_SERVER_START_FAILED");
      assert.match(err.message, /exited before it was ready/);
      assert.match(err.message, /no-such-flag/);
      return true;
    });
  });
});

void describe("a 3-node nats-server cluster", () => {
  let cluster: NatsCluster;
  let nc: NatsConnection;

  before(async () => {
    cluster = await startNatsCluster({ size: 3 });
    await cluster.waitForJetStream();
    nc = await connectTo(cluster);
  });
  after(async () => {
    await nc?.close();
    await cluster?.cleanup();
  });

  void it("comes up with distinct servers and a JetStream meta leader", async () => {
    assert.equal(cluster.servers.length, 3);
    assert.equal(new Set(cluster.urls).size, 3);
    assert.equal(new Set(cluster.servers.map((s) => s.serverName)).size, 3);
    const leader = await cluster.waitForJetStream();
    assert.ok(cluster.servers.some((s) => s.serverName === leader));
    const jsm = await jetstreamManager(nc);
    const account = await jsm.getAccountInfo();
    assert.equal(account.streams, 0);
  });

  void it("keeps an R3 stream writable with one node down, and the node catches up after restart", async () => {
    const jsm = await jetstreamManager(nc);
    const js = jetstream(nc);
    const created = await jsm.streams.add({ name: "R3", subjects: ["r3.>"], num_replicas: 3 });
    assert.equal(created.config.num_replicas, 3);
    await js.publish("r3.a", "one", { msgID: "one" });

    // Kill the stream leader: the hardest case, it forces a stream leader election.
    const leaderName = (await jsm.streams.info("R3")).cluster?.leader;
    const victim = cluster.servers.findIndex((s) => s.serverName === leaderName);
    assert.ok(victim >= 0, `stream leader ${leaderName} is one of ours`);
    await cluster.kill(victim);
    assert.equal(cluster.servers[victim]!.running, false);

    const ack = await eventually(() => js.publish("r3.a", "two", { msgID: "two", timeout: 1_000 }), {
      what: "a publish to R3 accepted by the new stream leader",
    });
    assert.equal(ack.seq, 2);
    const during = await jsm.streams.info("R3");
    assert.notEqual(during.cluster?.leader, leaderName);
    assert.equal(during.state.messages, 2);

    await cluster.restart(victim);
    await cluster.waitForJetStream();
    const caughtUp = await eventually(
      async () => {
        const info = await jsm.streams.info("R3");
        const replicas = info.cluster?.replicas ?? [];
        assert.equal(replicas.length, 2);
        assert.ok(
          replicas.every((r) => r.current),
          "all replicas current",
        );
        return info;
      },
      { what: "the restarted node to catch up on R3" },
    );
    assert.equal(caughtUp.state.messages, 2);
  });
});
