// The console's copy of the library (src/http/console-client.js, served by the relay at
// /console/deltarelay-client.js) must be what the sources build to today.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { BUNDLE_PATH, consoleBundle } from "../../scripts/bundle.mjs";

test("the relay console's bundle of the library is up to date with src/ (else: npm run bundle)", async () => {
  const committed = readFileSync(BUNDLE_PATH, "utf8");
  const fresh = await consoleBundle();
  assert.ok(fresh.includes("createClient"), "the bundle exports createClient");
  assert.ok(committed === fresh, "src/http/console-client.js is stale: run `npm run bundle` in clients/typescript and commit it");
});
