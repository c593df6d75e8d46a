// The read side against the real relay binary and a private PostgreSQL: initial sync, live
// changes, a reload from the file store, kill -9 of the relay, and a 410 resync.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, SseParser } from "../../dist/index.js";
import { fileStore } from "../../dist/file-store.js";
import { Pg, Relay, WAIT, missingPrerequisite, until } from "./harness.mjs";

const missing = missingPrerequisite();
if (missing && process.env.CI === "true") throw new Error(`integration tests cannot run: ${missing}`);
const skip = missing ? `skipped: ${missing}` : false;
const opts = { skip, timeout: 600000 };
const backoff = { base: 100, max: 1000 };

let pg;
let dbs = 0;
before(async () => {
  if (!skip) pg = await Pg.start();
});
after(() => pg?.stopSync());

/** A database with `todos (id, title, done)` holding `n` rows. */
function todosDb(n) {
  const db = `app${++dbs}`;
  pg.psql("postgres", `CREATE DATABASE ${db}`);
  pg.psql(db, `CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false);
               INSERT INTO todos SELECT i, 'todo ' || i, i % 3 = 0 FROM generate_series(1, ${n}) i`);
  return db;
}

/** fetch that also records, per /v1/stream connection, its Last-Event-ID and every event. */
function tappedFetch() {
  const connections = [];
  const tap = async (url, init) => {
    const res = await fetch(url, init);
    if (!url.includes("/v1/stream") || !res.body) return res;
    const conn = { lastEventId: new Headers(init?.headers).get("last-event-id"), status: res.status, events: [] };
    connections.push(conn);
    const [mine, theirs] = res.body.tee();
    (async () => {
      const sse = new SseParser();
      const text = new TextDecoder();
      const reader = theirs.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        for (const ev of sse.push(text.decode(value, { stream: true }))) conn.events.push(ev);
      }
    })().catch(() => {});
    return new Response(mine, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  return { fetch: tap, connections };
}

function watch(client, name = "public.todos") {
  const seen = { rows: new Map(), info: null };
  client.collection(name).subscribe((rows, info) => Object.assign(seen, { rows, info }));
  return seen;
}

const sorted = (rows) => [...rows.values()].sort((a, b) => a.id - b.id);
const seq = (cursor) => Number(cursor.split("-")[1]);

test("initial sync, live changes, a reload from the file store, and long polling", opts, async (t) => {
  const db = todosDb(200);
  const relay = await Relay.start(pg, db, ["public.todos"]);
  const dir = mkdtempSync(join(tmpdir(), "deltarelay-client-"));
  t.after(async () => (await relay.stop(), rmSync(dir, { recursive: true, force: true })));

  const tap = tappedFetch();
  const client = createClient({ url: relay.url, store: fileStore(dir), fetch: tap.fetch, backoff });
  t.after(() => client.close());
  const seen = watch(client);
  await until(() => seen.info?.synced, WAIT, "initial sync");
  assert.deepEqual(sorted(seen.rows), pg.rows(db, "todos"));
  assert.equal(seen.rows.get("7").title, "todo 7", "rows are keyed by the id's text");

  pg.psql(db, `INSERT INTO todos VALUES (1000, 'new', false);
               UPDATE todos SET done = true, title = 'edited' WHERE id <= 10;
               DELETE FROM todos WHERE id BETWEEN 11 AND 20`);
  await until(() => seen.rows.size === 191 && seen.rows.get("1000") && seen.rows.get("1").title === "edited", WAIT, "live changes");
  assert.deepEqual(sorted(seen.rows), pg.rows(db, "todos"));
  const cursor = seen.info.cursor;
  await client.close();

  // A reload resumes from the stored cursor: no change is downloaded again.
  const again = tappedFetch();
  const reloaded = createClient({ url: relay.url, store: fileStore(dir), fetch: again.fetch, backoff });
  t.after(() => reloaded.close());
  const seen2 = watch(reloaded);
  await until(() => seen2.info?.synced, WAIT, "reloaded and synced");
  assert.equal(again.connections[0].lastEventId, cursor);
  assert.deepEqual(again.connections[0].events.filter((e) => e.event === "change"), []);
  assert.deepEqual(sorted(seen2.rows), pg.rows(db, "todos"));

  // Long polling over /v1/changes gives the same state and follows live changes.
  const poller = createClient({ url: relay.url, transport: "poll", pollWait: 2, backoff });
  t.after(() => poller.close());
  const seen3 = watch(poller);
  await until(() => seen3.info?.synced, WAIT, "long-poll sync");
  assert.deepEqual(sorted(seen3.rows), pg.rows(db, "todos"));
  pg.psql(db, "UPDATE todos SET title = 'polled' WHERE id = 2");
  await until(() => seen3.rows.get("2")?.title === "polled", WAIT, "long-poll live change");
});

test("kill -9 of the relay: the client resumes with Last-Event-ID, nothing lost or twice", opts, async (t) => {
  const db = todosDb(100);
  const relay = await Relay.start(pg, db, ["public.todos"]);
  t.after(() => relay.stop());
  const tap = tappedFetch();
  const client = createClient({ url: relay.url, fetch: tap.fetch, backoff });
  t.after(() => client.close());
  const seen = watch(client);
  await until(() => seen.info?.synced, WAIT, "initial sync");

  for (let i = 1; i <= 20; i++) pg.psql(db, `UPDATE todos SET title = 'before kill ${i}' WHERE id = ${i}`);
  await until(() => seen.rows.get("20").title === "before kill 20", WAIT, "changes before the kill");
  await relay.kill();
  // Committed while the relay is down: the slot keeps them.
  pg.psql(db, `UPDATE todos SET title = 'while down' WHERE id BETWEEN 21 AND 40;
               DELETE FROM todos WHERE id BETWEEN 41 AND 45;
               INSERT INTO todos VALUES (500, 'while down', false)`);
  relay.spawn();
  await relay.waitReady();
  pg.psql(db, "UPDATE todos SET title = 'after restart' WHERE id = 46");
  await until(() => seen.rows.get("46")?.title === "after restart" && seen.rows.get("500"), 60000, "changes after the restart");
  assert.deepEqual(sorted(seen.rows), pg.rows(db, "todos"));

  const [first, ...later] = tap.connections.filter((c) => c.status === 200);
  assert.ok(later.length >= 1, "reconnected");
  const lastId = (c) => c.events.filter((e) => e.id).at(-1)?.id ?? c.lastEventId;
  let previous = first;
  for (const conn of later) {
    assert.equal(conn.lastEventId, lastId(previous), "each reconnect resumes from the last event received");
    previous = conn;
  }
  // Across all connections, change events only move forward: no record arrives twice.
  const changes = tap.connections.flatMap((c) => c.events.filter((e) => e.event === "change"));
  for (let i = 1; i < changes.length; i++) assert.ok(seq(changes[i].id) > seq(changes[i - 1].id), `${changes[i - 1].id} then ${changes[i].id}`);
  const resumed = later.flatMap((c) => c.events.filter((e) => e.event === "change").map((e) => JSON.parse(e.data)));
  const keys = new Set(resumed.map((r) => r.key.id));
  for (const id of [21, 40, 41, 45, 46, 500]) assert.ok(keys.has(id), `change of row ${id} received after the restart`);
  assert.ok(!keys.has(1), "nothing from before the kill is sent again");
});

test("410: a relay that lost its slot expires the cursor; the client resyncs from nothing, exact", opts, async (t) => {
  const db = todosDb(100);
  const relay = await Relay.start(pg, db, ["public.todos"]);
  t.after(() => relay.stop());
  const tap = tappedFetch();
  const client = createClient({ url: relay.url, fetch: tap.fetch, backoff });
  t.after(() => client.close());
  const resyncs = [];
  client.on("resync", (e) => resyncs.push(e));
  const seen = watch(client);
  await until(() => seen.info?.synced, WAIT, "initial sync");
  const oldCursor = seen.info.cursor;

  await relay.kill();
  pg.psql(db, `SELECT pg_drop_replication_slot('${relay.slot}');
               DELETE FROM todos WHERE id <= 10;
               UPDATE todos SET title = 'while away' WHERE id BETWEEN 11 AND 20`);
  relay.spawn();
  await relay.waitReady();
  await until(() => resyncs.length === 1 && seen.info?.synced && seen.rows.get("11")?.title === "while away", 60000, "resync");
  assert.deepEqual(resyncs, [{ collection: "public.todos", reason: "cursor_expired" }]);
  assert.ok(tap.connections.some((c) => c.status === 410 && c.lastEventId === oldCursor), "the old cursor got 410");
  assert.equal(tap.connections.at(-1).lastEventId, null, "then from the beginning");
  assert.equal(seen.rows.has("1"), false, "no ghost of a row deleted while the relay was away");
  assert.deepEqual(sorted(seen.rows), pg.rows(db, "todos"));
});
