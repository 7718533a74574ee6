/**
 * `npm run build` (after tsc): bundles the console's web UI (web/console, lit + uPlot) with esbuild into
 * dist/console-ui/ — index.html, app.js, app.css — which the compiled console serves. Nothing is fetched at run time.
 */
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { UI_DIST_DIR, UI_SOURCE_DIR, bundleUi } from "../src/services/console/ui.js";

await mkdir(UI_DIST_DIR, { recursive: true });
const files = await bundleUi(UI_DIST_DIR);
await copyFile(join(UI_SOURCE_DIR, "index.html"), join(UI_DIST_DIR, "index.html"));
for (const [name, f] of files) process.stdout.write(`dist/console-ui/${name}: ${f.body.length} bytes\n`);
