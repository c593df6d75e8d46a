import { after, test } from "node:test";
import assert from "node:assert/strict";
import { createClient, memoryStore } from "../../dist/index.js";
import { FakeRelay, until } from "../fake-relay.mjs";

const fast = { base: 5, max: 20 };
// Every client is closed at the end even when a test fails, so no retry loop keeps Node alive.
const clients = [];
after(() => Promise.all(clients.map((c) => c.close())));

function open(relay, opts = {}) {
  const client = createClient({ url: "http://relay.test/", fetch: relay.fetch, backoff: fast, ...opts });
  clients.push(client);
  const todos = client.collection("public.todos", opts.shape);
  const seen = { rows: new Map(), info: null, calls: 0 };
  todos.subscribe((rows, info) => Object.assign(seen, { rows, info, calls: seen.calls + 1 }));
  return { client, todos, seen };
}

test("initial sync, then live changes; info says synced and the cursor", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  relay.commit("insert", { id: 2, title: "b" });
  const { client, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced, 3000, "synced");
  assert.deepEqual([...seen.rows.values()], [{ id: 1, title: "a" }, { id: 2, title: "b" }]);
  assert.deepEqual(seen.info, { cursor: "7-2", lagMs: null, synced: true, pending: 0 });
  relay.commit("update", { id: 1, title: "A" });
  relay.commit("delete", { id: 2 });
  await until(() => seen.info.cursor === "7-4");
  assert.deepEqual([...seen.rows.values()], [{ id: 1, title: "A" }]);
  const req = relay.requests[0];
  assert.equal(req.path, "/v1/stream");
  assert.equal(req.query.get("collections"), "public.todos");
  assert.equal(req.headers.get("last-event-id"), null, "from the beginning");
});

test("shape options go out as where / params[n] / columns", async (t) => {
  const relay = new FakeRelay();
  const { client, seen } = open(relay, { shape: { where: "done = $1 AND title LIKE $2", params: [false, "a%"], columns: ["id", "title"] } });
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  const q = relay.requests[0].query;
  assert.equal(q.get("where"), "done = $1 AND title LIKE $2");
  assert.equal(q.get("params[1]"), "false");
  assert.equal(q.get("params[2]"), "a%");
  assert.equal(q.get("columns"), "id,title");
});

test("a dropped stream resumes with Last-Event-ID: nothing lost, nothing twice", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  const { client, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  relay.dropStreams();
  relay.commit("insert", { id: 2, title: "b" }); // while disconnected
  await until(() => seen.rows.size === 2, 3000, "row 2");
  const resumed = relay.requests.filter((r) => r.path === "/v1/stream")[1];
  assert.equal(resumed.headers.get("last-event-id"), "7-1");
  relay.commit("insert", { id: 3, title: "c" });
  await until(() => seen.rows.size === 3);
});

test("a reload resumes from the stored cursor without downloading again", async () => {
  const relay = new FakeRelay();
  const store = memoryStore();
  relay.commit("insert", { id: 1, title: "a" });
  const first = open(relay, { store });
  await until(() => first.seen.info?.synced);
  await first.client.close();
  relay.requests.length = 0;
  const second = open(relay, { store });
  await until(() => second.seen.rows.size === 1, 3000, "stored rows before any request");
  await until(() => second.seen.info?.synced);
  assert.equal(relay.requests[0].headers.get("last-event-id"), "7-1");
  second.client.close();
});

test("410: local state dropped, synced again from the beginning, with a resync event", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  relay.commit("insert", { id: 2, title: "b" });
  const store = memoryStore();
  const { client, seen } = open(relay, { store });
  t.after(() => client.close());
  const resyncs = [];
  client.on("resync", (e) => resyncs.push(e));
  await until(() => seen.info?.synced);
  // The log is rebuilt while row 2 disappears: the old cursor is from another epoch.
  relay.rows.delete(JSON.stringify({ id: 2 }));
  relay.reset("8");
  await until(() => seen.info.cursor?.startsWith("8-") && seen.info.synced, 3000, "resync");
  assert.deepEqual(resyncs, [{ collection: "public.todos", reason: "cursor_expired" }]);
  assert.deepEqual([...seen.rows.values()], [{ id: 1, title: "a" }], "no ghost of row 2");
  const streams = relay.requests.filter((r) => r.path === "/v1/stream");
  assert.equal(streams.at(-1).headers.get("last-event-id"), null, "from the beginning");
  await new Promise((r) => setTimeout(r, 350));
  const saved = await store.get('state:["public.todos",null,null,null]');
  assert.equal(saved.cursor, seen.info.cursor);
  assert.deepEqual(saved.rows, [["1", { id: 1, title: "a" }]]);
});

test("during a resync the old rows stay visible until the new state has caught up", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  const { client, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  const snapshots = [];
  client.collection("public.todos").listen(() => snapshots.push(client.collection("public.todos").snapshot()));
  relay.reset("9");
  await until(() => seen.info.cursor?.startsWith("9-") && seen.info.synced);
  assert.ok(snapshots.every((s) => s.rows.size === 1), "never empty in between");
});

test("401: the token is asked for again and the request retried", async (t) => {
  const relay = new FakeRelay({ token: "fresh" });
  relay.commit("insert", { id: 1, title: "a" });
  const tokens = ["stale", "fresh"];
  let asked = 0;
  const { client, seen } = open(relay, { getToken: async () => tokens[Math.min(asked++, 1)] });
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  assert.equal(asked, 2);
  assert.deepEqual(relay.requests.map((r) => r.headers.get("authorization")), ["Bearer stale", "Bearer fresh"]);
});

test("streaming unavailable: falls back to long polling of /v1/changes", async (t) => {
  const relay = new FakeRelay();
  relay.noStreamBody = true;
  relay.commit("insert", { id: 1, title: "a" });
  const { client, seen } = open(relay, { pollWait: 1 });
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  relay.commit("insert", { id: 2, title: "b" });
  await until(() => seen.rows.size === 2);
  const polls = relay.requests.filter((r) => r.path === "/v1/changes");
  assert.equal(polls[0].query.get("since"), "0");
  assert.equal(polls[0].query.get("wait"), "0", "no waiting before caught up");
  assert.equal(polls.at(-1).query.get("wait"), "1");
  assert.equal(polls.at(-1).query.get("collections"), "public.todos");
});

test("poll mode handles 410 like the stream", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  const { client, seen } = open(relay, { transport: "poll", pollWait: 1 });
  t.after(() => client.close());
  const resyncs = [];
  client.on("resync", (e) => resyncs.push(e));
  await until(() => seen.info?.synced);
  relay.reset("3");
  await until(() => resyncs.length === 1 && seen.info.cursor?.startsWith("3-") && seen.info.synced);
  assert.deepEqual([...seen.rows.values()], [{ id: 1, title: "a" }]);
});

test("HTTP errors are reported and retried with backoff", async (t) => {
  const relay = new FakeRelay();
  let failures = 3;
  const fetch = async (url, init) =>
    failures-- > 0
      ? new Response(JSON.stringify({ error: "bad_where", message: "no column x" }), { status: 400 })
      : relay.fetch(url, init);
  const { client, seen } = open(relay, { fetch });
  t.after(() => client.close());
  const errors = [];
  client.on("error", (e) => errors.push(e));
  await until(() => seen.info?.synced);
  assert.equal(errors.length, 3);
  assert.deepEqual(errors[0], { collection: "public.todos", status: 400, message: "no column x" });
});

test("offline closes the stream; online reconnects from the cursor", async (t) => {
  const relay = new FakeRelay();
  const { client, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  client.setOnline(false);
  await until(() => relay.streams.size === 0, 3000, "stream closed");
  relay.commit("insert", { id: 1, title: "a" });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(seen.rows.size, 0);
  client.setOnline(true);
  await until(() => seen.rows.size === 1);
});

test("lag comes from ready and heartbeat events; a heartbeat does not move the cursor", async (t) => {
  const relay = new FakeRelay();
  relay.readyLag = 1200;
  relay.commit("insert", { id: 1, title: "a" });
  const { client, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  assert.equal(seen.info.lagMs, 1200);
  relay.seq += 5; // changes of other collections move the head
  relay.heartbeat(0);
  await until(() => seen.info.lagMs === 0);
  assert.equal(seen.info.cursor, "7-1");
});

test("snapshots for useSyncExternalStore: the same object until something changes", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  const { client, todos, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  let calls = 0;
  const off = todos.listen(() => calls++);
  const before = todos.snapshot();
  assert.equal(todos.snapshot(), before);
  assert.equal(before.rows, seen.rows);
  relay.commit("insert", { id: 2, title: "b" });
  await until(() => calls > 0);
  const now = todos.snapshot();
  assert.notEqual(now, before);
  assert.equal(before.rows.size, 1, "an old snapshot is never changed in place");
  assert.equal(now.rows.size, 2);
  off();
  relay.commit("insert", { id: 3, title: "c" });
  await until(() => seen.rows.size === 3);
  assert.equal(calls, 1, "no calls after unsubscribing");
  assert.equal(client.collection("public.todos"), todos, "one object per shape");
});

test("a 410 even from the beginning backs off instead of looping", async (t) => {
  let calls = 0;
  const fetch = async () => (calls++, new Response('{"error":"cursor_expired","message":"x"}', { status: 410 }));
  const client = createClient({ url: "http://relay.test", fetch, backoff: { base: 50, max: 50 } });
  clients.push(client);
  t.after(() => client.close());
  client.collection("public.todos").subscribe(() => {});
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(calls >= 2 && calls <= 12, `${calls} requests in 300 ms`);
});
