import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { memoryStore } from "../../dist/index.js";
import { fileStore } from "../../dist/file-store.js";

async function roundTrip(store) {
  assert.equal(await store.get("missing"), undefined);
  const value = { cursor: "1-2", rows: [["1", { id: 1, t: "a/b" }]] };
  await store.set("state:[\"public.todos\"]", value);
  value.rows[0][1].t = "changed after set";
  assert.deepEqual(await store.get("state:[\"public.todos\"]"), { cursor: "1-2", rows: [["1", { id: 1, t: "a/b" }]] });
  const got = await store.get("state:[\"public.todos\"]");
  got.cursor = "mutated";
  assert.equal((await store.get("state:[\"public.todos\"]")).cursor, "1-2", "get returns a copy");
  await store.set("queue", [1]);
  await store.set("queue", [1, 2]);
  assert.deepEqual(await store.get("queue"), [1, 2]);
}

test("memory store keeps copies", () => roundTrip(memoryStore()));

test("file store: values survive a new store on the same directory; no temporary files left", async () => {
  const dir = await mkdtemp(join(tmpdir(), "deltarelay-store-"));
  try {
    await roundTrip(fileStore(join(dir, "nested")));
    const again = fileStore(join(dir, "nested"));
    assert.deepEqual(await again.get("queue"), [1, 2]);
    assert.deepEqual((await readdir(join(dir, "nested"))).sort(), ["queue.json", "state%3A%5B%22public.todos%22%5D.json"]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("file store: concurrent writes of one key land in call order", async () => {
  const dir = await mkdtemp(join(tmpdir(), "deltarelay-store-"));
  try {
    const store = fileStore(dir);
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.set("k", { i })));
    assert.deepEqual(await store.get("k"), { i: 19 });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
