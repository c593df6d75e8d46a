import { test } from "node:test";
import assert from "node:assert/strict";
import { coreSize } from "../size.mjs";

test("the core is under 10 KB min+gzip", async () => {
  const { min, gzip } = await coreSize();
  console.log(`core: ${min} B minified, ${gzip} B min+gzip`);
  assert.ok(gzip < 10 * 1024, `${gzip} bytes`);
});
