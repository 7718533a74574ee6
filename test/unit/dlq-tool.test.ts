/**
 * The DLQ tool (`npm run dlq`, src/tools/dlq.ts) against a real nats-server: dead letters made the way a consumer
 * runner makes them (deadLetter, then term), then listed, shown and redriven through the tool's commands, and the
 * entry point run once as a process.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { Streams } from "../../src/lib/events/catalog.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { deadLetter } from "../../src/lib/messaging/dlq.js";
import { Publisher } from "../../src/lib/messaging/publisher.js";
import { ensureConsumer, ensureStream } from "../../src/lib/messaging/topology.js";
import { streamSpecs } from "../../src/lib/service.js";
import {
  DlqUsageError,
  formatTable,
  parseDlqArgs,
  runDlqCommand,
  type DlqCommand,
} from "../../src/tools/dlq-cli.js";
import { type NatsServer, connectTo, startNatsServer } from "../helpers/nats.js";
import { orderPlacedEvents } from "../helpers/messaging.js";

const run = promisify(execFile);

describe("DLQ tool: arguments", () => {
  it("parses list, show, redrive and help", () => {
    assert.deepEqual(parseDlqArgs(["list"]), { name: "list", limit: 100, json: false });
    assert.deepEqual(parseDlqArgs(["list", "--consumer", "payments-orders", "--limit", "5", "--json"]), {
      name: "list",
      consumer: "payments-orders",
      limit: 5,
      json: true,
    });
    assert.deepEqual(parseDlqArgs(["show", "42"]), { name: "show", seq: 42 });
    assert.deepEqual(parseDlqArgs(["redrive", "3", "7"]), { name: "redrive", seqs: [3, 7] });
    assert.deepEqual(parseDlqArgs(["--help"]), { name: "help" });
  });

  it("refuses what it does not understand, saying why", () => {
    const cases: [string[], RegExp][] = [
      [[], /a command is required/],
      [["purge"], /unknown command "purge"/],
      [["show"], /one DLQ sequence/],
      [["show", "0"], /positive integer/],
      [["show", "1", "2"], /one DLQ sequence/],
      [["redrive"], /one or more/],
      [["redrive", "x"], /positive integer, got x/],
      [["list", "--limit", "-3"], /./],
      [["list", "extra"], /no argument/],
      [["show", "1", "--json"], /--json is not an option of show/],
      [["list", "--bogus"], /bogus/],
    ];
    for (const [argv, message] of cases) {
      assert.throws(
        () => parseDlqArgs(argv),
        (err: unknown) => err instanceof DlqUsageError && message.test(err.message),
        argv.join(" "),
      );
    }
  });
});

describe("DLQ tool against nats-server", () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let publisher: Publisher;

  /** Runs a command line through the tool and returns its exit code and output. */
  async function dlq(...argv: string[]): Promise<{ code: number; text: string }> {
    const lines: string[] = [];
    const cmd: DlqCommand = parseDlqArgs(argv);
    const code = await runDlqCommand(cmd, { jsm, publisher, out: (l) => lines.push(l) });
    return { code, text: lines.join("\n") };
  }

  before(async () => {
    server = await startNatsServer();
    nc = await connectTo(server);
    jsm = await jetstreamManager(nc);
    const js = jetstream(nc);
    publisher = new Publisher(js);
    for (const s of streamSpecs) await ensureStream(jsm, s);
    // Three OrderPlaced events, dead-lettered by two consumers the way the runner does it: copy, then term.
    for (const e of orderPlacedEvents(3, "dlqtool")) await publisher.publish(e);
    for (const [durable, code] of [
      ["inventory-orders", "EVENT_SCHEMA_INVALID"],
      ["payments-orders", "HANDLER_FAILED"],
    ] as const) {
      await ensureConsumer(jsm, { stream: Streams.ORDERS, durable, filterSubject: "orders.*" });
      const consumer = await js.consumers.get(Streams.ORDERS, durable);
      const batch = await consumer.fetch({
        max_messages: durable === "inventory-orders" ? 2 : 1,
        expires: 2_000,
      });
      for await (const m of batch) {
        await deadLetter(publisher, m, {
          consumer: durable,
          code,
          error: `boom at ${m.seq}\nsecond line`,
          attempts: 5,
        });
        m.term();
      }
    }
  });

  after(async () => {
    await nc?.close();
    await server?.cleanup();
  });

  it("lists dead letters as a table, oldest first, and by consumer", async () => {
    const all = await dlq("list");
    assert.equal(all.code, 0);
    const lines = all.text.split("\n");
    assert.match(lines[0]!, /^SEQ\s+AT\s+CONSUMER\s+CODE\s+ATTEMPTS\s+ORIGIN\s+TYPE\s+ERROR$/);
    assert.equal(lines.length, 4);
    assert.match(
      lines[1]!,
      /^1\s+\S+\s+inventory-orders\s+EVENT_SCHEMA_INVALID\s+5\s+ORDERS#1\s+OrderPlaced\s+boom at 1 second line$/,
    );
    assert.match(lines[3]!, /^3\s.*payments-orders\s+HANDLER_FAILED\s+5\s+ORDERS#1\s/);

    const one = await dlq("list", "--consumer", "payments-orders", "--json");
    const entries = JSON.parse(one.text) as {
      dlqSequence: number;
      consumer: string;
      event: { type: string };
    }[];
    assert.deepEqual(
      entries.map((e) => [e.dlqSequence, e.consumer, e.event.type]),
      [[3, "payments-orders", "OrderPlaced"]],
    );
    assert.equal((await dlq("list", "--limit", "1")).text.split("\n").length, 2);
    assert.equal((await dlq("list", "--consumer", "nobody")).text, "no dead letters");
  });

  it("shows one entry with its event decoded, and fails on a missing one", async () => {
    const shown = await dlq("show", "2");
    assert.equal(shown.code, 0);
    const entry = JSON.parse(shown.text) as Record<string, unknown> & {
      event: { id: string; aggregate_id: string; data: { email: string } };
    };
    assert.equal(entry["dlqSequence"], 2);
    assert.equal(entry["stream"], "ORDERS");
    assert.equal(entry["sequence"], 2);
    assert.equal(entry["subject"], "orders.dlqtool-00001");
    assert.equal(entry["bodyOmitted"], false);
    assert.equal(entry.event.id, "dlqtool-00001:OrderPlaced");
    // A plain e-mail address (these events predate sealing) is not shown.
    assert.equal(entry.event.data.email, "[redacted]");
    assert.doesNotMatch(shown.text, /@example\.com/);

    const missing = await dlq("show", "99");
    assert.deepEqual(missing, { code: 1, text: "no DLQ entry 99" });
  });

  it("redrives entries to their original subject and removes them from the DLQ", async () => {
    const before = (await jsm.streams.info(Streams.ORDERS)).state.last_seq;
    const r = await dlq("redrive", "1", "98");
    assert.equal(r.code, 1, "one of the two did not exist");
    const [ok, bad] = r.text.split("\n");
    assert.equal(ok, `redriven DLQ 1 -> orders.dlqtool-00000 (stream sequence ${before + 1})`);
    assert.match(bad!, /^DLQ 98 not redriven: /);

    const copy = await jsm.streams.getMessage(Streams.ORDERS, { seq: before + 1 });
    assert.equal(copy?.header.get(Hdr.Redrive), "1");
    assert.equal(copy?.header.get(Hdr.DlqCode), "", "the DLQ headers are not carried back");
    const left = JSON.parse((await dlq("list", "--json")).text) as { dlqSequence: number }[];
    assert.deepEqual(
      left.map((e) => e.dlqSequence),
      [2, 3],
    );
  });

  it("runs as a process: npm run dlq -- list", async () => {
    const env = { ...process.env, NATS_URL: server.url };
    const { stdout } = await run(process.execPath, ["--import", "tsx", "src/tools/dlq.ts", "list"], { env });
    assert.match(stdout, /^SEQ\s+AT/);
    assert.equal(stdout.trim().split("\n").length, 3);

    const usage = await run(process.execPath, ["--import", "tsx", "src/tools/dlq.ts", "drop", "1"], {
      env,
    }).then(
      () => assert.fail("a usage error exits non-zero"),
      (err: { code: number; stderr: string }) => err,
    );
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /unknown command "drop"[\s\S]*usage: npm run dlq/);
  });
});

describe("DLQ tool: table", () => {
  it("says so when there is nothing to list", () => {
    assert.equal(formatTable([]), "no dead letters");
  });
});
