import { test } from "node:test";
import assert from "node:assert/strict";
import { applyRecords, cursorReached, keyText, rebase } from "../../dist/index.js";

const rec = (cursor, op, id, after) => ({ cursor, source: "s", collection: "public.todos", op, key: id === null ? null : { id }, after });

test("key text: single string/number keys as text, others as JSON arrays in key order", () => {
  assert.equal(keyText({ id: 12 }), "12");
  assert.equal(keyText({ id: "a" }), "a");
  assert.equal(keyText({ a: 1, b: "x" }), '[1,"x"]');
  assert.equal(keyText({ b: "x", a: 1 }, ["a", "b"]), '[1,"x"]');
  assert.equal(keyText({ _id: { $oid: "65a" } }), '[{"$oid":"65a"}]');
});

test("records apply as upserts/deletes by key; truncate empties; unchanged columns keep their value", () => {
  const rows = new Map();
  applyRecords(rows, [
    rec("1-1", "insert", 1, { id: 1, t: "a", body: "long" }),
    rec("1-2", "insert", 2, { id: 2, t: "b" }),
    rec("1-3", "delete", 2, null),
    { ...rec("1-4", "update", 1, { id: 1, t: "A" }), unchanged: ["body"] },
  ]);
  assert.deepEqual([...rows], [["1", { id: 1, t: "A", body: "long" }]]);
  applyRecords(rows, [rec("1-5", "update", 1, { id: 1, t: "B" })]);
  assert.deepEqual(rows.get("1"), { id: 1, t: "B" }, "a full image replaces the row");
  applyRecords(rows, [rec("1-6", "truncate", null, null), rec("1-7", "insert", 3, { id: 3 })]);
  assert.deepEqual([...rows.keys()], ["3"]);
});

test("cursors compare by seq within an epoch; another epoch counts as passed", () => {
  assert.ok(cursorReached("5-10", "5-9"));
  assert.ok(cursorReached("5-10", "5-10"));
  assert.ok(!cursorReached("5-9", "5-10"));
  assert.ok(!cursorReached("5-9", "5-100"), "numeric, not text order");
  assert.ok(cursorReached("6-1", "5-100"));
  assert.ok(!cursorReached(null, "5-1"));
  assert.ok(!cursorReached("0", "5-1"), "the beginning reaches nothing");
});

const m = (id, op, k, fields) => ({ m: { id, collection: "public.todos", op, at: "t", ...fields }, k });

test("rebase: local writes replay over the server's rows in order", () => {
  const server = new Map([["1", { id: 1, title: "a", done: false }], ["2", { id: 2, title: "b", done: false }]]);
  const queue = [
    m("m1", "update", "1", { key: { id: 1 }, value: { done: true } }),
    m("m2", "insert", "3", { value: { id: 3, title: "c", done: false } }),
    m("m3", "delete", "2", { key: { id: 2 } }),
    m("m4", "update", "9", { key: { id: 9 }, value: { done: true } }),
    { m: { ...m("x", "delete", "1", {}).m, collection: "other.table", key: { id: 1 } }, k: "1" },
  ];
  const view = rebase(server, queue, "public.todos", "1-5", ["id"]);
  assert.deepEqual([...view], [
    ["1", { id: 1, title: "a", done: true }],
    ["3", { id: 3, title: "c", done: false }],
  ]);
  assert.equal(server.size, 2, "the server's rows are untouched");

  // A server change to another column of row 1 arrives: the pending write stays on top.
  server.set("1", { id: 1, title: "renamed", done: false });
  assert.deepEqual(rebase(server, queue, "public.todos", "1-6", ["id"]).get("1"), { id: 1, title: "renamed", done: true });
  // The row is deleted upstream: the pending update has nothing to apply to.
  server.delete("1");
  assert.equal(rebase(server, queue, "public.todos", "1-7", ["id"]).has("1"), false);
});

test("rebase: an applied write is replayed until the stream reaches its cursor", () => {
  const server = new Map([["1", { id: 1, done: false }]]);
  const queue = [{ ...m("m1", "update", "1", { key: { id: 1 }, value: { done: true } }), ack: "4-20" }];
  assert.equal(rebase(server, queue, "public.todos", "4-19", ["id"]).get("1").done, true);
  assert.equal(rebase(server, queue, "public.todos", "4-20", ["id"]).get("1").done, false, "server state wins from the cursor on");
});

test("rebase: an optimistic insert into a projected shape keeps key and projected columns only", () => {
  const view = rebase(new Map(), [m("m1", "insert", "5", { value: { id: 5, title: "t", secret: "s" } })], "public.todos", null, ["id"], ["title"]);
  assert.deepEqual(view.get("5"), { id: 5, title: "t" });
});
