/**
 * Event schema versions (src/lib/events/versions.ts and the codec): upcasting what older producers wrote,
 * downcasting what a pinned producer writes, the version a process writes and reads (EVENT_VERSIONS,
 * EVENT_READ_VERSIONS), future and unsupported versions, and the check that keeps the version history whole.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError } from "../../src/lib/errors.js";
import { previousVersions, type PreviousVersion } from "../../src/lib/events/catalog.js";
import {
  DecodeErrorCode,
  decodeEvent,
  decodePublished,
  encodeEvent,
  isVersionAhead,
  type EventDecodeError,
} from "../../src/lib/events/codec.js";
import { makeEvent, type Envelope } from "../../src/lib/events/envelope.js";
import {
  EventVersions,
  checkVersionHistory,
  currentVersion,
  downcast,
  oldestVersion,
  upcast,
} from "../../src/lib/events/versions.js";

const ORDER = "ord_versions_1";
const EXPIRES = "2030-01-02T03:04:05.000Z";
const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const dec = (b: Uint8Array) => JSON.parse(new TextDecoder().decode(b)) as Record<string, unknown>;

const reserved = (expiresAt: string | null = EXPIRES): Envelope<"StockReserved"> =>
  makeEvent(
    "StockReserved",
    {
      orderId: ORDER,
      customerId: "cus_1",
      items: [{ sku: "SKU-A", quantity: 2 }],
      total: 2500,
      currency: "EUR",
      expiresAt,
    },
    { aggregateId: ORDER, source: "inventory" },
  );

/** StockReserved as a release before version 2 wrote it. */
const reservedV1 = (data: Record<string, unknown> = {}) => {
  const sent = reserved();
  const { expiresAt: _lapses, ...v1 } = sent.data;
  return { ...sent, version: 1, data: { ...v1, ...data } };
};

function decodeFails(bytes: Uint8Array, versions?: EventVersions): EventDecodeError {
  try {
    decodeEvent(bytes, versions);
  } catch (err) {
    return err as EventDecodeError;
  }
  assert.fail("decoded");
}

void describe("event versions: upcasting", () => {
  void it("StockReserved version 1 is read as version 2 with expiresAt null (no expiry known)", () => {
    const e = decodeEvent(enc(reservedV1()));
    assert.equal(e.type, "StockReserved");
    assert.equal(e.version, 2);
    assert.deepEqual(e.data, { ...reserved().data, expiresAt: null });
    // Everything but version and data stays as published.
    assert.equal(e.id, `${ORDER}:StockReserved`);
  });

  void it("version 2 is read as it is", () => {
    const sent = reserved();
    assert.deepEqual(decodeEvent(encodeEvent(sent)), sent);
  });

  void it("the audit's reading keeps what was published: version 1 stays version 1, not upcast", () => {
    const published = decodePublished(enc(reservedV1()));
    assert.equal(published.version, 1);
    assert.equal("expiresAt" in (published.data as object), false);
  });

  void it("a malformed version 1 is refused against the version 1 schema (EVENT_SCHEMA_INVALID), never upcast", () => {
    const bad = decodeFails(enc(reservedV1({ total: -1 })));
    assert.equal(bad.code, DecodeErrorCode.SchemaInvalid);
    assert.match(bad.message, /StockReserved \(version 1\) data \/total/);
    // A version 1 with version 2's field is not version 1 (no other fields are allowed).
    const mixed = decodeFails(enc(reservedV1({ expiresAt: EXPIRES })));
    assert.equal(mixed.code, DecodeErrorCode.SchemaInvalid);
    // Nor is a version 2 without it.
    const { expiresAt: _lapses, ...noExpiry } = reserved().data;
    assert.equal(decodeFails(enc({ ...reserved(), data: noExpiry })).code, DecodeErrorCode.SchemaInvalid);
  });

  void it("upcast and downcast are inverse on the data version 1 can carry", () => {
    const v1 = reservedV1().data;
    assert.deepEqual(downcast("StockReserved", 2, 1, upcast("StockReserved", 1, 2, v1)), v1);
    assert.deepEqual(upcast("StockReserved", 1, 1, v1), v1);
  });
});

void describe("event versions: what a producer writes", () => {
  void it("by default the current version, as built", () => {
    const wire = dec(encodeEvent(reserved()));
    assert.equal(wire["version"], 2);
    assert.equal((wire["data"] as { expiresAt: string }).expiresAt, EXPIRES);
  });

  void it("EVENT_VERSIONS=StockReserved=1: downcast to version 1, which a version 1 reader accepts", () => {
    const pinned = EventVersions.parse("StockReserved=1", undefined);
    assert.equal(pinned.writeVersion("StockReserved"), 1);
    assert.equal(pinned.writeVersion("OrderPlaced"), 1);
    const bytes = encodeEvent(reserved(), pinned);
    const wire = dec(bytes);
    assert.equal(wire["version"], 1);
    assert.deepEqual(wire["data"], reservedV1().data);
    // A release that reads only version 1 reads it; the current release upcasts it.
    const v1Reader = EventVersions.parse(undefined, "StockReserved=1");
    assert.equal(decodeEvent(bytes, v1Reader).version, 2);
    assert.equal((decodeEvent(bytes).data as { expiresAt: unknown }).expiresAt, null);
    // Other types are untouched by the pin.
    const confirmed = makeEvent(
      "OrderConfirmed",
      { orderId: ORDER, paymentId: "ch_1", total: 2500, currency: "EUR" },
      { aggregateId: ORDER, source: "orders" },
    );
    assert.equal(dec(encodeEvent(confirmed, pinned))["version"], 1);
  });

  void it("a downcast event is still checked: a bad event is refused before it leaves", () => {
    const pinned = EventVersions.parse("StockReserved=1", undefined);
    const bad = { ...reserved(), data: { ...reserved().data, total: -5 } };
    assert.throws(() => encodeEvent(bad, pinned), { code: DecodeErrorCode.SchemaInvalid });
  });
});

void describe("event versions: future and unsupported versions", () => {
  void it("a version newer than the current one is EVENT_VERSION_AHEAD, not a schema error", () => {
    const err = decodeFails(enc({ ...reserved(), version: 3 }));
    assert.equal(err.code, DecodeErrorCode.VersionAhead);
    assert.ok(isVersionAhead(err));
    assert.match(err.message, /StockReserved version 3 is newer than this release reads \(up to 2\)/);
  });

  void it("EVENT_READ_VERSIONS=StockReserved=1 reads like the release before version 2: version 2 is ahead", () => {
    const v1Reader = EventVersions.parse(undefined, "StockReserved=1");
    assert.equal(v1Reader.readVersion("StockReserved"), 1);
    const err = decodeFails(encodeEvent(reserved()), v1Reader);
    assert.equal(err.code, DecodeErrorCode.VersionAhead);
    // Ahead is not a reason to skip the checks below the version: version 1 garbage is still refused.
    assert.equal(
      decodeFails(enc(reservedV1({ total: "lots" })), v1Reader).code,
      DecodeErrorCode.SchemaInvalid,
    );
  });

  void it("a version older than any kept is EVENT_VERSION_UNSUPPORTED", () => {
    const saved = previousVersions.StockReserved;
    try {
      // As if version 1 had been dropped from the history.
      delete previousVersions.StockReserved;
      assert.equal(oldestVersion("StockReserved"), 2);
      const err = decodeFails(enc(reservedV1()));
      assert.equal(err.code, DecodeErrorCode.UnsupportedVersion);
      assert.match(err.message, /StockReserved version 1 is not supported/);
    } finally {
      previousVersions.StockReserved = saved!;
    }
  });
});

void describe("event versions: EVENT_VERSIONS and EVENT_READ_VERSIONS", () => {
  void it("parses Type=version pairs, with spaces and empty items", () => {
    const v = EventVersions.parse(" StockReserved = 1 ,", "StockReserved=2");
    assert.equal(v.writeVersion("StockReserved"), 1);
    assert.equal(v.readVersion("StockReserved"), 2);
    assert.equal(v.isCurrent, false);
    assert.deepEqual(v.describe(), { write: { StockReserved: 1 }, read: { StockReserved: 2 } });
    assert.equal(EventVersions.parse(undefined, "").isCurrent, true);
    assert.equal(EventVersions.CURRENT.readVersion("StockReserved"), currentVersion("StockReserved"));
  });

  void it("refuses, naming the variable: bad syntax, unknown type, a type twice, versions that do not exist, writing what is not read", () => {
    const bad: [string | undefined, string | undefined, RegExp][] = [
      ["StockReserved", undefined, /EVENT_VERSIONS: expected "Type=version,…"; got "StockReserved"/],
      ["StockReserved=one", undefined, /EVENT_VERSIONS/],
      ["OrderTeleported=1", undefined, /"OrderTeleported" is not an event type/],
      ["StockReserved=1,StockReserved=2", undefined, /StockReserved is named twice/],
      [undefined, "StockReserved=1;OrderPlaced=1", /EVENT_READ_VERSIONS/],
      [
        "StockReserved=3",
        undefined,
        /StockReserved cannot be written at version 3 \(versions 1 to 2 exist\)/,
      ],
      ["StockReserved=0", undefined, /cannot be written at version 0/],
      ["OrderPlaced=2", undefined, /OrderPlaced cannot be written at version 2 \(only version 1 exists\)/],
      [undefined, "StockReserved=3", /StockReserved cannot be read up to version 3/],
      ["StockReserved=2", "StockReserved=1", /written at version 2 but read only up to 1/],
    ];
    for (const [write, read, message] of bad)
      assert.throws(
        () => EventVersions.parse(write, read),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError, `${write} / ${read}: ${String(err)}`);
          assert.match(err.message, message);
          return true;
        },
      );
  });
});

void describe("event versions: the history check", () => {
  void it("passes on the catalog, and fails on a gap or a version that does not lead to the current one", () => {
    checkVersionHistory();
    const saved = previousVersions.StockReserved!;
    const v1 = saved[0]!;
    const broken: PreviousVersion[][] = [
      [{ ...v1, version: 0 }],
      [v1, { ...v1, version: 2 }],
      [{ ...v1, version: 0 }, v1],
    ];
    try {
      for (const history of broken) {
        previousVersions.StockReserved = history;
        assert.throws(
          () => checkVersionHistory(),
          /previousVersions\.StockReserved: version \d at position \d/,
        );
      }
    } finally {
      previousVersions.StockReserved = saved;
    }
    checkVersionHistory();
  });
});
