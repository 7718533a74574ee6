/**
 * `npm run docs:nats`: rewrites the permission matrix in docs/security-nats.md (between its markers) from
 * src/lib/messaging/permissions.ts. test/unit/nats-permissions.test.ts fails when the two differ.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { format } from "prettier";
import { permissionMatrix } from "../src/lib/messaging/permissions.js";

const FILE = new URL("../docs/security-nats.md", import.meta.url);
const START = "<!-- permission-matrix:start -->";
const END = "<!-- permission-matrix:end -->";
const doc = readFileSync(FILE, "utf8");
const a = doc.indexOf(START);
const b = doc.indexOf(END);
if (a < 0 || b < a) throw new Error(`docs/security-nats.md lacks the markers ${START} … ${END}`);
const next = `${doc.slice(0, a + START.length)}\n\n${permissionMatrix()}\n${doc.slice(b)}`;
// Formatted as `npm run lint` expects (prettier aligns the table's columns).
writeFileSync(FILE, await format(next, { parser: "markdown", filepath: "docs/security-nats.md" }));
process.stdout.write("docs/security-nats.md: permission matrix rewritten\n");
