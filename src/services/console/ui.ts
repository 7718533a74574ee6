/**
 * The console's web UI: `index.html`, `app.js` and `app.css`, served from memory. Production serves what
 * `npm run build` bundled into `dist/console-ui/` (scripts/build-console-ui.ts); development (tsx, no build) bundles
 * `web/console/` with esbuild at start, so `npm start` on a fresh clone needs no extra step. Nothing comes from a CDN.
 */
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The bundled UI files by name. */
export type UiAssets = Map<string, { type: string; body: Buffer }>;

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** Where the UI's sources are. */
export const UI_SOURCE_DIR = join(ROOT, "web", "console");
/** Where `npm run build` puts the bundle. */
export const UI_DIST_DIR = join(ROOT, "dist", "console-ui");

const TYPES: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "app.js": "text/javascript; charset=utf-8",
  "app.css": "text/css; charset=utf-8",
};

/** Bundles `web/console` into `outDir` (or memory when omitted) with esbuild; returns the files. */
export async function bundleUi(outDir?: string): Promise<UiAssets> {
  const esbuild = await import("esbuild");
  const result = await esbuild.build({
    entryPoints: { app: join(UI_SOURCE_DIR, "main.ts") },
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    outdir: outDir ?? join(UI_DIST_DIR, ".mem"),
    write: outDir !== undefined,
    legalComments: "none",
    logLevel: "silent",
  });
  const files: UiAssets = new Map();
  const html = await readFile(join(UI_SOURCE_DIR, "index.html"));
  files.set("index.html", { type: TYPES["index.html"]!, body: html });
  for (const f of result.outputFiles ?? []) {
    const name = f.path.endsWith(".css") ? "app.css" : "app.js";
    files.set(name, { type: TYPES[name]!, body: Buffer.from(f.contents) });
  }
  if (outDir !== undefined) {
    for (const name of ["app.js", "app.css"]) {
      const body = await readFile(join(outDir, name));
      files.set(name, { type: TYPES[name]!, body });
    }
  }
  return files;
}

/** Reads a built UI from `dir`. */
async function readBuilt(dir: string): Promise<UiAssets> {
  const files: UiAssets = new Map();
  for (const name of Object.keys(TYPES))
    files.set(name, { type: TYPES[name]!, body: await readFile(join(dir, name)) });
  return files;
}

/**
 * The UI: from `dir` when given; compiled (this module is `.js`, under `dist/`) the one `npm run build` bundled; from
 * the sources (tsx, development) bundled now.
 */
export async function loadUi(dir?: string): Promise<UiAssets> {
  if (dir) return readBuilt(dir);
  if (import.meta.url.endsWith(".js")) return readBuilt(UI_DIST_DIR);
  return bundleUi();
}
