/**
 * Event schema versions: which versions of each type exist, how data moves between them (the upcasts and
 * downcasts of `previousVersions` in the catalog), and which version a process writes and reads at most
 * ({@link EventVersions}, from `EVENT_VERSIONS` and `EVENT_READ_VERSIONS`). See docs/events.md#versions.
 */
import type { TObject } from "@sinclair/typebox";
import { ConfigError } from "../errors.js";
import {
  catalog,
  eventTypes,
  isEventType,
  previousVersions,
  type EventType,
  type PreviousVersion,
} from "./catalog.js";

/** The current (newest) version of `type`: what the catalog's schema describes. */
export function currentVersion(type: EventType): number {
  return catalog[type].version;
}

/** The oldest version of `type` still read (1 unless old versions were dropped from `previousVersions`). */
export function oldestVersion(type: EventType): number {
  return previousVersions[type]?.[0]?.version ?? currentVersion(type);
}

/** The `data` schema of `version` of `type`, or undefined when that version is not known. */
export function schemaOf(type: EventType, version: number): TObject | undefined {
  if (version === currentVersion(type)) return catalog[type].data;
  return previousOf(type, version)?.data;
}

function previousOf(type: EventType, version: number): PreviousVersion | undefined {
  return previousVersions[type]?.find((p) => p.version === version);
}

/** Data of `type` at version `from` (valid for it) as data of version `to` (≥ `from`), through each upcast. */
export function upcast(type: EventType, from: number, to: number, data: unknown): unknown {
  let out = data as Record<string, unknown>;
  for (let v = from; v < to; v++) out = previousOf(type, v)!.upcast(out);
  return out;
}

/** Data of `type` at version `from` as data of the older version `to`, through each downcast. */
export function downcast(type: EventType, from: number, to: number, data: unknown): unknown {
  let out = data as Record<string, unknown>;
  for (let v = from - 1; v >= to; v--) out = previousOf(type, v)!.downcast(out);
  return out;
}

/**
 * Checks `previousVersions` against the catalog: oldest first, consecutive, ending at the current version − 1.
 * Run at load: a gap would leave a version without a way up.
 */
export function checkVersionHistory(): void {
  for (const type of eventTypes) {
    const list = previousVersions[type] ?? [];
    const current = currentVersion(type);
    list.forEach((p, i) => {
      const expected = current - list.length + i;
      if (p.version !== expected || expected < 1)
        throw new Error(
          `previousVersions.${type}: version ${p.version} at position ${i}; expected ${expected} (consecutive, up to ${current - 1})`,
        );
    });
  }
}
checkVersionHistory();

/** Per event type, a version number (only the types named). */
export type VersionMap = Partial<Record<EventType, number>>;

/**
 * Which version of each event type a process writes and reads at most. Unnamed types: the current version.
 *
 * `write`: during a rollout producers are told to keep writing the previous version (`EVENT_VERSIONS`) until every
 * reader runs a release that reads the new one; events are built at the current version and downcast on publish.
 * `read`: the newest version this process reads; a newer one is a future version, waited for (redelivered) and
 * never dead-lettered at once. Lowering it (`EVENT_READ_VERSIONS`) makes a process read like the release before
 * the new version: used to rehearse a rollout (the chaos scenario `rolling-upgrade`).
 */
export class EventVersions {
  /** Every type at its current version, for writing and reading. */
  static readonly CURRENT = new EventVersions({}, {});

  readonly #write: VersionMap;
  readonly #read: VersionMap;

  constructor(write: VersionMap = {}, read: VersionMap = {}) {
    for (const [type, v] of Object.entries(write) as [EventType, number][]) {
      if (v < oldestVersion(type) || v > currentVersion(type))
        throw new ConfigError(`${type} cannot be written at version ${v} (${describeVersions(type)})`);
      const reads = read[type] ?? currentVersion(type);
      if (v > reads) throw new ConfigError(`${type} is written at version ${v} but read only up to ${reads}`);
    }
    for (const [type, v] of Object.entries(read) as [EventType, number][]) {
      if (v < oldestVersion(type) || v > currentVersion(type))
        throw new ConfigError(`${type} cannot be read up to version ${v} (${describeVersions(type)})`);
    }
    this.#write = { ...write };
    this.#read = { ...read };
  }

  /**
   * Parses `EVENT_VERSIONS` and `EVENT_READ_VERSIONS`: comma-separated `Type=version` pairs, e.g.
   * `StockReserved=1`. @throws ConfigError naming the variable and what is wrong.
   */
  static parse(write: string | undefined, read: string | undefined): EventVersions {
    const w = parseMap("EVENT_VERSIONS", write);
    const r = parseMap("EVENT_READ_VERSIONS", read);
    try {
      return new EventVersions(w, r);
    } catch (err) {
      throw new ConfigError(
        `invalid configuration:\n  EVENT_VERSIONS / EVENT_READ_VERSIONS: ${(err as Error).message}`,
      );
    }
  }

  /** The version events of `type` are written at. */
  writeVersion(type: EventType): number {
    return this.#write[type] ?? currentVersion(type);
  }

  /** The newest version of `type` read; newer ones are future versions. */
  readVersion(type: EventType): number {
    return this.#read[type] ?? currentVersion(type);
  }

  /** True when nothing differs from the current versions (the common case: no downcast, no read limit). */
  get isCurrent(): boolean {
    return Object.keys(this.#write).length === 0 && Object.keys(this.#read).length === 0;
  }

  /** The pinned versions, for a start-up log line: `{ write: {...}, read: {...} }`. */
  describe(): { write: VersionMap; read: VersionMap } {
    return { write: { ...this.#write }, read: { ...this.#read } };
  }
}

function describeVersions(type: EventType): string {
  const oldest = oldestVersion(type);
  const current = currentVersion(type);
  return oldest === current ? `only version ${current} exists` : `versions ${oldest} to ${current} exist`;
}

function parseMap(name: string, text: string | undefined): VersionMap {
  const out: VersionMap = {};
  for (const part of (text ?? "").split(",")) {
    const item = part.trim();
    if (item === "") continue;
    const m = /^([A-Za-z]+)\s*=\s*([0-9]{1,4})$/.exec(item);
    const fail = (why: string) =>
      new ConfigError(`invalid configuration:\n  ${name}: expected "Type=version,…"; ${why}`);
    if (!m) throw fail(`got ${JSON.stringify(item)}`);
    const [, type, v] = m;
    if (!isEventType(type)) throw fail(`${JSON.stringify(type)} is not an event type`);
    if (out[type] !== undefined) throw fail(`${type} is named twice`);
    out[type] = Number(v);
  }
  return out;
}
