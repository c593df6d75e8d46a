import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay } from "../../dist/index.js";

test("delays double from base up to max, jittered between half and all", () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0), 250);
  assert.equal(backoffDelay(0, 500, 30000, () => 1), 500);
  assert.equal(backoffDelay(3, 500, 30000, () => 1), 4000);
  assert.equal(backoffDelay(3, 500, 30000, () => 0), 2000);
  assert.equal(backoffDelay(20, 500, 30000, () => 1), 30000);
  assert.equal(backoffDelay(1e6, 500, 30000, () => 0), 15000);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(i % 10);
    const full = Math.min(30000, 500 * 2 ** (i % 10));
    assert.ok(d >= full / 2 && d <= full, `${d} in [${full / 2}, ${full}]`);
  }
});

test("jitter spreads clients apart", () => {
  const delays = new Set(Array.from({ length: 20 }, () => backoffDelay(4)));
  assert.ok(delays.size > 10);
});
