import { gzipSync } from "node:zlib";
import { consoleBundle } from "../scripts/bundle.mjs";

/** The core as an app ships it: src/index.ts bundled and minified (ESM), as the console's bundle, then gzipped. */
export async function coreSize() {
  const code = Buffer.from(await consoleBundle());
  return { min: code.length, gzip: gzipSync(code, { level: 9 }).length };
}
