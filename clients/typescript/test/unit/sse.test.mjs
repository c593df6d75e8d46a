import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser } from "../../dist/index.js";

test("events split anywhere, CRLF/CR/LF, comments and multi-line data", () => {
  const text = "retry: 2000\r\n\r\n: keep-alive\nid: 1-5\nevent: change\ndata: {\"a\":1}\n\nid: 1-6\r\nevent: ready\rdata: x\ndata: y\n\n";
  for (let cut = 0; cut <= text.length; cut++) {
    const p = new SseParser();
    const events = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
    assert.deepEqual(events, [
      { id: "1-5", event: "change", data: '{"a":1}' },
      { id: "1-6", event: "ready", data: "x\ny" },
    ], `cut at ${cut}`);
    assert.equal(p.retry, 2000);
  }
});

test("a CRLF split between chunks is one line end, not two", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("data: a\r"), []);
  assert.deepEqual(p.push("\n\r\n"), [{ id: null, event: "message", data: "a" }]);
});

test("the id is kept across events, ids with NUL are ignored, events without data are not dispatched", () => {
  const p = new SseParser();
  const events = p.push("id: 3-1\ndata: a\n\nevent: change\n\nid: bad\0\ndata: b\n\ndata\n\n");
  assert.deepEqual(events, [
    { id: "3-1", event: "message", data: "a" },
    { id: "3-1", event: "message", data: "b" },
    { id: "3-1", event: "message", data: "" },
  ]);
});

test("an unfinished event waits for its blank line", () => {
  const p = new SseParser();
  assert.deepEqual(p.push("id: 1-1\nevent: change\ndata: {}\n"), []);
  assert.equal(p.push("\n").length, 1);
});
