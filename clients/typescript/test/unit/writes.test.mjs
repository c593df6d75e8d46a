// The write path against a fake relay that follows the `POST /v1/mutations` contract.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { createClient, memoryStore } from "../../dist/index.js";
import { FakeRelay, until } from "../fake-relay.mjs";

const fast = { base: 5, max: 20 };
// Every client is closed at the end even when a test fails, so no retry loop keeps Node alive.
const clients = [];
after(() => Promise.all(clients.map((c) => c.close())));

function open(relay, opts = {}) {
  const client = createClient({ url: "http://relay.test", fetch: relay.fetch, backoff: fast, ...opts });
  clients.push(client);
  const todos = client.collection("public.todos");
  const seen = { rows: new Map(), info: null };
  todos.subscribe((rows, info) => Object.assign(seen, { rows, info }));
  return { client, todos, seen };
}

const posts = (relay) => relay.requests.filter((r) => r.path === "/v1/mutations").map((r) => JSON.parse(r.body));

test("an insert shows at once, is sent with a client id, and ends as the server's row", async (t) => {
  const relay = new FakeRelay();
  const { client, todos, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  relay.offline = true; // the POST fails: the write stays pending
  await todos.insert({ id: 1, title: "Buy milk" });
  assert.deepEqual(seen.rows.get("1"), { id: 1, title: "Buy milk" });
  assert.equal(seen.info.pending, 1);
  relay.offline = false;
  await client.flush();
  await until(() => seen.info.pending === 0 && seen.info.cursor === "7-1");
  assert.deepEqual(seen.rows.get("1"), { id: 1, title: "Buy milk" });
  const [body] = posts(relay).filter((b) => b.mutations.length);
  const [m] = body.mutations;
  assert.equal(m.collection, "public.todos");
  assert.equal(m.op, "insert");
  assert.match(m.id, /^[A-Za-z0-9_-]{1,128}$/);
  assert.ok(!Number.isNaN(Date.parse(m.at)));
  assert.equal(body.atomic, false);
});

test("offline writes survive a reload and are flushed in order, each applied once", async () => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a", done: false });
  const store = memoryStore();
  const first = open(relay, { store });
  await until(() => first.seen.info?.synced);
  first.client.setOnline(false);
  await first.todos.insert({ id: 2, title: "b", done: false });
  await first.todos.update({ id: 2 }, { done: true });
  await first.todos.update({ id: 1 }, { title: "A" });
  await first.todos.delete({ id: 1 });
  assert.deepEqual([...first.seen.rows.values()], [{ id: 2, title: "b", done: true }]);
  assert.equal(first.seen.info.pending, 4);
  assert.equal(posts(relay).length, 0, "nothing sent while offline");
  await first.client.close(); // a reload: a new client on the same store

  const second = open(relay, { store });
  await until(() => second.seen.info?.synced && second.seen.info.pending === 0, 3000, "flushed");
  const sent = posts(relay).flatMap((b) => b.mutations.map((m) => `${m.op}:${JSON.stringify(m.key ?? m.value)}`));
  assert.deepEqual(sent, ['insert:{"id":2,"title":"b","done":false}', 'update:{"id":2}', 'update:{"id":1}', 'delete:{"id":1}']);
  await until(() => second.seen.info.cursor === relay.head());
  assert.deepEqual([...second.seen.rows.values()], [{ id: 2, title: "b", done: true }]);
  assert.deepEqual([...relay.rows.values()], [{ id: 2, title: "b", done: true }]);
  second.client.close();
});

test("an answer lost after the relay applied the writes: the retry is a duplicate, applied once", async (t) => {
  const relay = new FakeRelay();
  const { client, todos, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  relay.failMutations = 1;
  await todos.insert({ id: 5, title: "once" });
  await until(() => seen.info.pending === 0, 3000, "acknowledged");
  const bodies = posts(relay);
  assert.equal(bodies.length, 2);
  assert.equal(bodies[0].mutations[0].id, bodies[1].mutations[0].id, "same id on retry");
  assert.equal(relay.seq, 1, "one change in the log");
});

test("a conflict goes to the callback and the optimistic change is rolled back", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a", version: 1 });
  const conflicts = [];
  const { client, todos, seen } = open(relay, { onConflict: (c) => conflicts.push(c) });
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  client.setOnline(false);
  await todos.update({ id: 1 }, { title: "mine" }, { if: { version: 1 } });
  assert.equal(seen.rows.get("1").title, "mine");
  relay.commit("update", { id: 1, title: "theirs", version: 2 }); // someone else, meanwhile
  client.setOnline(true);
  await until(() => conflicts.length === 1 && seen.info.pending === 0, 3000, "conflict");
  assert.equal(conflicts[0].result.status, "conflict");
  assert.deepEqual(conflicts[0].result.current, { id: 1, title: "theirs", version: 2 });
  assert.equal(conflicts[0].mutation.op, "update");
  await until(() => seen.rows.get("1").title === "theirs");
});

test("pending writes are rebased on the server's changes as they arrive", async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a", done: false });
  const { client, todos, seen } = open(relay);
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  relay.offline = true;
  await todos.update({ id: 1 }, { done: true });
  relay.offline = false;
  relay.commit("update", { id: 1, title: "renamed" });
  await until(() => seen.rows.get("1").title === "renamed");
  assert.equal(seen.rows.get("1").done, true, "the local write stays on top");
});

test("a request the relay refuses as a whole is narrowed to the write at fault", async (t) => {
  const relay = new FakeRelay();
  const conflicts = [];
  const fetch = async (url, init) => {
    if (url.endsWith("/v1/mutations")) {
      const { mutations } = JSON.parse(init.body);
      if (mutations.some((m) => m.value?.title === "bad")) {
        relay.requests.push({ path: "/v1/mutations", body: init.body, headers: new Headers() });
        return new Response(JSON.stringify({ error: "invalid_body", message: "mutations[0].value: no column" }), { status: 400 });
      }
    }
    return relay.fetch(url, init);
  };
  const { client, todos, seen } = open(relay, { fetch, onConflict: (c) => conflicts.push(c) });
  t.after(() => client.close());
  await until(() => seen.info?.synced);
  client.setOnline(false);
  await todos.insert({ id: 1, title: "good" });
  await todos.insert({ id: 2, title: "bad" });
  await todos.insert({ id: 3, title: "good too" });
  client.setOnline(true);
  await until(() => seen.info.pending === 0 && conflicts.length === 1, 3000, "settled");
  assert.equal(conflicts[0].result.status, "rejected");
  assert.equal(conflicts[0].result.error.message, "mutations[0].value: no column");
  await until(() => seen.rows.size === 2);
  assert.deepEqual([...relay.rows.values()].map((r) => r.id), [1, 3]);
});

test("key columns come from /v1/collections when no record told them yet; offline inserts need them", async () => {
  const relay = new FakeRelay({ key: "code" });
  const { client, todos, seen } = open(relay);
  await until(() => seen.info?.synced);
  await todos.insert({ code: "x1", title: "t" });
  assert.ok(seen.rows.has("x1"));
  client.close();

  const offline = createClient({ url: "http://relay.test", fetch: async () => { throw new TypeError("offline"); }, backoff: fast });
  await assert.rejects(offline.collection("public.todos").insert({ id: 1 }), /key columns of public.todos are unknown/);
  const keyed = offline.collection("public.todos", { key: ["id"] });
  await keyed.insert({ id: 1 });
  offline.close();
});

test("close waits until the queue's answers are stored: the next client on the store resends nothing", async () => {
  const relay = new FakeRelay();
  // A store whose writes land late, like a slow disk: the view shows a write acknowledged
  // before the queue's saved copy says so.
  const inner = memoryStore();
  const store = { get: (k) => inner.get(k), set: (k, v) => new Promise((r) => setTimeout(r, 200)).then(() => inner.set(k, v)) };
  const first = open(relay, { store });
  await until(() => first.seen.info?.synced, 3000, "synced");
  await first.todos.insert({ id: 9, title: "once" });
  await until(() => posts(relay).some((b) => b.mutations.length), 3000, "sent");
  await first.client.close();
  const second = open(relay, { store });
  await until(() => second.seen.info?.synced, 3000, "synced again");
  await second.client.flush();
  assert.equal(posts(relay).filter((b) => b.mutations.length).length, 1, "sent once, never resent");
  assert.equal(second.client.queue.entries.filter((e) => !e.ack).length, 0, "the reloaded queue knows the answer");
  await second.client.close();
});
