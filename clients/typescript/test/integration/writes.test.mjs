// The write path against the real relay binary and a private PostgreSQL: writes reach
// Postgres exactly once and come back through the stream; kill -9 of the relay and a client
// crash with writes queued lose none and apply none twice; two clients editing one row under
// each conflict policy.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "../../dist/index.js";
import { fileStore } from "../../dist/file-store.js";
import { Pg, Relay, WAIT, missingPrerequisite, until } from "./harness.mjs";

const missing = missingPrerequisite();
if (missing && process.env.CI === "true") throw new Error(`integration tests cannot run: ${missing}`);
const skip = missing ? `skipped: ${missing}` : false;
const opts = { skip, timeout: 600000 };
const backoff = { base: 100, max: 500 };

let pg;
let dbs = 0;
before(async () => {
  if (!skip) pg = await Pg.start();
});
after(() => pg?.stopSync());

// Writes without auth (loopback only), one collection per conflict policy.
const WRITES = `
[writes]
allow_unauthenticated = true
[collections."public.todos".write]
version_column = "version"
[collections."public.notes".write]
conflict = "last_write_wins"
lww_column = "updated_at"
[collections."public.cw".write]
conflict = "client_wins"
`;

/** A database with todos (reject + version), notes (last write wins) and cw (client wins), and its relay. */
async function writableRelay(t, n) {
  const db = `w${++dbs}`;
  pg.psql("postgres", `CREATE DATABASE ${db}`);
  pg.psql(db, `CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false,
                                    version int NOT NULL DEFAULT 1, made text NOT NULL DEFAULT 'by postgres');
               INSERT INTO todos (id, title) SELECT i, 'todo ' || i FROM generate_series(1, ${n}) i;
               CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, updated_at timestamptz);
               INSERT INTO notes VALUES (1, 'note 1', '2000-01-01Z'), (2, 'note 2', '2000-01-01Z');
               CREATE TABLE cw (id int PRIMARY KEY, title text NOT NULL);
               INSERT INTO cw VALUES (1, 'cw 1')`);
  const relay = await Relay.start(pg, db, ["public.todos", "public.notes", "public.cw"], WRITES);
  t.after(() => relay.stop());
  return { db, relay };
}

/** Subscribes to `name`; the returned object always holds the latest rows and info. */
function watch(client, name = "public.todos") {
  const seen = { rows: new Map(), info: null };
  client.collection(name).subscribe((rows, info) => Object.assign(seen, { rows, info }));
  return seen;
}

const sorted = (rows) => [...rows.values()].sort((a, b) => a.id - b.id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** How many mutation ids the relay recorded as applied upstream. */
const applied = (db) =>
  pg.psql(db, "SELECT to_regclass('deltarelay.mutations') IS NULL") === "t" ? 0 : Number(pg.psql(db, "SELECT count(*) FROM deltarelay.mutations"));
/** Timestamps as instants (the relay and row_to_json spell them differently). */
const instants = (rows) =>
  JSON.stringify(rows, (k, v) => (typeof v === "string" && /^\d{4}-\d\d-\d\d[ T]\d/.test(v) ? new Date(v).getTime() : v));
/** The client's view equals the table, with nothing pending. */
const converged = (seen, db, table = "todos") => () =>
  seen.info?.pending === 0 && instants(sorted(seen.rows)) === instants(pg.rows(db, table));
/** What `converged` saw when it timed out: what is pending and the rows that differ. */
const explain = (what, seen, db, table = "todos") => () => {
  const client = new Map(sorted(seen.rows).map((r) => [r.id, instants(r)]));
  const server = new Map(pg.rows(db, table).map((r) => [r.id, instants(r)]));
  const differ = [...new Set([...client.keys(), ...server.keys()])].filter((id) => client.get(id) !== server.get(id));
  const rows = differ.slice(0, 5).map((id) => `\n  ${id}: client ${client.get(id)} / db ${server.get(id)}`).join("");
  return `${what} (info ${JSON.stringify(seen.info)}, ${applied(db)} applied, ${differ.length} rows differ)${rows}`;
};

test("writes reach Postgres exactly once and come back through the stream in place of the optimistic rows", opts, async (t) => {
  const { db, relay } = await writableRelay(t, 10);
  const client = createClient({ url: relay.url, backoff });
  t.after(() => client.close());
  const seen = watch(client);
  await until(() => seen.info?.synced, WAIT, "initial sync");

  client.setOnline(false);
  const todos = client.collection("public.todos");
  await todos.insert({ id: 100, title: "written by the client" });
  await todos.update({ id: 2 }, { done: true });
  await todos.delete({ id: 3 });
  assert.deepEqual(seen.rows.get("100"), { id: 100, title: "written by the client" }, "the optimistic row");
  assert.equal(seen.rows.get("2").done, true);
  assert.equal(seen.rows.has("3"), false);
  assert.equal(seen.info.pending, 3);
  assert.equal(pg.psql(db, "SELECT count(*) FROM todos WHERE id = 100"), "0", "nothing is sent offline");

  client.setOnline(true);
  await until(converged(seen, db), WAIT, explain("the writes applied and streamed back", seen, db));
  // The server's rows replaced the optimistic ones (defaults and the version the relay set).
  assert.deepEqual(seen.rows.get("100"), { id: 100, title: "written by the client", done: false, version: 1, made: "by postgres" });
  assert.deepEqual(seen.rows.get("2"), { id: 2, title: "todo 2", done: true, version: 2, made: "by postgres" });
  assert.equal(applied(db), 3, "three mutations, each applied once");
  assert.ok(client.queue.entries.every((e) => e.ack), "every write acknowledged");
});

test("kill -9 of the relay and a client crash with writes queued: every write applied exactly once", opts, async (t) => {
  const { db, relay } = await writableRelay(t, 40);
  const dir = mkdtempSync(join(tmpdir(), "deltarelay-writes-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const conflicts = [];
  const onConflict = (c) => conflicts.push(c);
  const a = createClient({ url: relay.url, store: fileStore(dir), backoff, onConflict });
  t.after(() => a.close());
  const seenA = watch(a);
  await until(() => seenA.info?.synced, WAIT, "initial sync");

  // Queued offline, then the relay dies; the client comes online while it is down.
  a.setOnline(false);
  const todos = a.collection("public.todos");
  for (let i = 1; i <= 10; i++) {
    await todos.update({ id: i }, { title: `offline ${i}` });
    await todos.insert({ id: 100 + i, title: `inserted offline ${i}` });
  }
  await relay.kill();
  a.setOnline(true);
  // Written while the relay is down: they queue behind the others.
  for (let i = 11; i <= 15; i++) await todos.update({ id: i }, { title: `relay down ${i}` });
  await sleep(500);
  assert.equal(seenA.info.pending, 25, "nothing acknowledged while the relay is down");
  assert.equal(applied(db), 0);

  relay.spawn();
  await relay.waitReady();
  await until(converged(seenA, db), WAIT, explain("the queue flushed after the restart", seenA, db));
  assert.equal(applied(db), 25);
  // The version moves on every applied update: 2 means applied exactly once.
  assert.deepEqual(pg.rows(db, "todos").filter((r) => r.id <= 15).map((r) => [r.title, r.version]),
    Array.from({ length: 15 }, (_, i) => [i < 10 ? `offline ${i + 1}` : `relay down ${i + 1}`, 2]));
  assert.equal(pg.psql(db, "SELECT count(*) FROM todos WHERE id > 100"), "10");

  // A crash with writes queued: the client vanishes (no close); a new one on the same store
  // sends them.
  a.setOnline(false);
  for (let i = 16; i <= 20; i++) await todos.update({ id: i }, { title: `before the crash ${i}` });
  const b = createClient({ url: relay.url, store: fileStore(dir), backoff, onConflict });
  t.after(() => b.close());
  const seenB = watch(b);
  await until(converged(seenB, db), WAIT, explain("the reloaded client's queue flushed", seenB, db));
  assert.equal(applied(db), 30);

  // A crash after the relay applied a batch but before its answer was stored: the next client
  // sends the same ids again, and the relay answers `duplicate` instead of applying them twice.
  let lost = 0;
  const dying = async (url, init) => {
    const res = await fetch(url, init);
    if (!url.endsWith("/v1/mutations")) return res;
    await res.arrayBuffer();
    lost++;
    c.setOnline(false);
    throw new Error("crashed before storing the answer");
  };
  b.setOnline(false);
  await b.close();
  const c = createClient({ url: relay.url, store: fileStore(dir), backoff, onConflict, fetch: dying });
  t.after(() => c.close());
  c.setOnline(false);
  const todosC = c.collection("public.todos");
  for (let i = 21; i <= 25; i++) await todosC.update({ id: i }, { title: `answer lost ${i}` });
  c.setOnline(true);
  await until(() => lost === 1 && applied(db) === 35, WAIT, "the batch applied, its answer lost");
  assert.equal(c.queue.entries.filter((e) => !e.ack).length, 5, "the client never learned of it");
  // The crashed client is gone before the next one opens the store (two live clients on one
  // store would overwrite each other's saved state).
  await c.close();
  const d = createClient({ url: relay.url, store: fileStore(dir), backoff, onConflict });
  t.after(() => d.close());
  const seenD = watch(d);
  await until(converged(seenD, db), WAIT, explain("the replayed writes acknowledged", seenD, db));
  assert.equal(applied(db), 35, "no write applied twice");
  assert.deepEqual(pg.rows(db, "todos").filter((r) => r.id > 20 && r.id <= 25).map((r) => r.version), [2, 2, 2, 2, 2]);
  assert.deepEqual(conflicts, []);
});

test("two clients edit one row under each conflict policy", opts, async (t) => {
  const { db, relay } = await writableRelay(t, 3);
  const conflicts = { a: [], b: [] };
  const a = createClient({ url: relay.url, backoff, onConflict: (c) => conflicts.a.push(c) });
  const b = createClient({ url: relay.url, backoff, onConflict: (c) => conflicts.b.push(c) });
  t.after(() => Promise.all([a.close(), b.close()]));
  const seen = {};
  for (const [who, client] of Object.entries({ a, b }))
    for (const table of ["todos", "notes", "cw"]) seen[who + table] = watch(client, "public." + table);
  await until(() => Object.values(seen).every((s) => s.info?.synced), WAIT, "initial sync");
  const both = async (fn) => {
    a.setOnline(false);
    b.setOnline(false);
    await fn();
  };
  /** Brings `client` online and waits until its writes are answered. */
  const flush = async (client, who, table) => {
    client.setOnline(true);
    await until(() => seen[who + table].info.pending === 0, WAIT, `${who}'s writes to ${table} answered`);
  };

  // reject with version_column: the second write's `if` no longer holds.
  await both(async () => {
    await a.collection("public.todos").update({ id: 1 }, { title: "a's title" }, { if: { version: 1 } });
    await b.collection("public.todos").update({ id: 1 }, { title: "b's title" }, { if: { version: 1 } });
  });
  assert.equal(seen.btodos.rows.get("1").title, "b's title", "b sees its own write before it is sent");
  await flush(a, "a", "todos");
  await flush(b, "b", "todos");
  assert.equal(conflicts.b.length, 1);
  const [rejected] = conflicts.b;
  assert.equal(rejected.result.status, "conflict");
  assert.equal(rejected.mutation.value.title, "b's title");
  assert.deepEqual(rejected.result.current, { id: 1, title: "a's title", done: false, version: 2, made: "by postgres" }, "current: the row that won, mapped as the stream maps it");
  assert.deepEqual(conflicts.a, []);
  await until(converged(seen.btodos, db), WAIT, explain("b back on the server's row", seen.btodos, db));
  await until(converged(seen.atodos, db), WAIT, explain("a on the server's row", seen.atodos, db));
  assert.equal(pg.rows(db, "todos")[0].title, "a's title");

  // last_write_wins: the later `at` wins whichever arrives first.
  // Row 1: the later write arrives first; the earlier one is stale.
  await both(async () => {
    await a.collection("public.notes").update({ id: 1 }, { body: "a, earlier" });
    await sleep(20);
    await b.collection("public.notes").update({ id: 1 }, { body: "b, later" });
  });
  await flush(b, "b", "notes");
  await flush(a, "a", "notes");
  assert.deepEqual(conflicts.a.map((c) => [c.mutation.key, c.result.status]), [[{ id: 1 }, "stale"]]);
  assert.equal(conflicts.b.length, 1, "b got no new conflict");
  // Row 2: the earlier write arrives first; the later one applies over it.
  await both(async () => {
    await a.collection("public.notes").update({ id: 2 }, { body: "a, earlier" });
    await sleep(20);
    await b.collection("public.notes").update({ id: 2 }, { body: "b, later" });
  });
  await flush(a, "a", "notes");
  assert.equal(pg.rows(db, "notes")[1].body, "a, earlier");
  await flush(b, "b", "notes");
  assert.equal(conflicts.a.length, 1);
  assert.equal(conflicts.b.length, 1);
  const notes = pg.rows(db, "notes");
  assert.deepEqual(notes.map((r) => r.body), ["b, later", "b, later"]);
  const bAt = b.queue.entries.filter((e) => e.m.collection === "public.notes").map((e) => new Date(e.m.at).getTime());
  assert.deepEqual(notes.map((r) => new Date(r.updated_at).getTime()), bAt, "updated_at is the winner's at");
  await until(converged(seen.anotes, db, "notes"), WAIT, explain("a converged on notes", seen.anotes, db, "notes"));
  await until(converged(seen.bnotes, db, "notes"), WAIT, explain("b converged on notes", seen.bnotes, db, "notes"));

  // client_wins: both apply; the last applied stays.
  await both(async () => {
    await a.collection("public.cw").update({ id: 1 }, { title: "a's" });
    await b.collection("public.cw").update({ id: 1 }, { title: "b's" });
  });
  await flush(b, "b", "cw");
  assert.equal(pg.rows(db, "cw")[0].title, "b's");
  await flush(a, "a", "cw");
  assert.equal(pg.rows(db, "cw")[0].title, "a's", "the last applied wins");
  assert.equal(conflicts.a.length, 1, "no conflict under client_wins");
  assert.equal(conflicts.b.length, 1);
  await until(converged(seen.acw, db, "cw"), WAIT, explain("a converged on cw", seen.acw, db, "cw"));
  await until(converged(seen.bcw, db, "cw"), WAIT, explain("b converged on cw", seen.bcw, db, "cw"));
  assert.equal(applied(db), 1 + 1 + 2 + 2);
});
