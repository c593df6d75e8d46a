// The library as one minified ES module for the relay's console (src/http/console-client.js,
// embedded in the binary with include_str!). Committed, so `cargo build` needs no Node; the
// unit test test/unit/bundle.test.mjs fails when it differs from what these sources give.
//
//   node scripts/bundle.mjs           # rewrites the committed file
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const BUNDLE_PATH = fileURLToPath(new URL("../../../src/http/console-client.js", import.meta.url));

/** The bundle's text, from src/index.ts (deterministic for the pinned esbuild). */
export async function consoleBundle() {
  const version = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")).version;
  const out = await build({
    entryPoints: [fileURLToPath(new URL("../src/index.ts", import.meta.url))],
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    legalComments: "none",
    banner: {
      js: `// @deltarelay/client ${version}: generated from clients/typescript/src by \`npm run bundle\`; do not edit.`,
    },
    write: false,
  });
  return out.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(BUNDLE_PATH, await consoleBundle());
  console.log(`wrote ${BUNDLE_PATH}`);
}
