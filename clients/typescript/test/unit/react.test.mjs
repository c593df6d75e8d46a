// useCollection's wiring, with "react" resolved to a stand-in that records what the hook
// hands to useSyncExternalStore (React itself is an optional peer, not installed here; the
// browser demo will run the real one).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as nodeModule from "node:module";
import { createClient } from "../../dist/index.js";
import { FakeRelay, until } from "../fake-relay.mjs";

const stub = "export function useSyncExternalStore(subscribe, getSnapshot, getServerSnapshot) {" +
  " globalThis.__uses = { subscribe, getSnapshot, getServerSnapshot }; return getSnapshot(); }";
const register = nodeModule.register; // Node >= 20.6
register?.(
  "data:text/javascript," + encodeURIComponent(
    `export async function resolve(s, c, next) { return s === "react" ? { url: ${JSON.stringify("data:text/javascript," + encodeURIComponent(stub))}, shortCircuit: true } : next(s, c); }`,
  ),
);
const { useCollection } = register ? await import("../../dist/react.js") : {};

test("useCollection hands useSyncExternalStore functions that work unbound", { skip: !register && "skipped: module.register needs Node >= 20.6" }, async (t) => {
  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "a" });
  const client = createClient({ url: "http://relay.test", fetch: relay.fetch, backoff: { base: 5, max: 20 } });
  t.after(() => client.close());
  const todos = client.collection("public.todos");
  const first = useCollection(todos);
  const { subscribe, getSnapshot, getServerSnapshot } = globalThis.__uses;
  assert.equal(first, todos.snapshot());
  let changes = 0;
  const off = subscribe(() => changes++);
  await until(() => getSnapshot().info.synced);
  assert.ok(changes > 0);
  assert.equal(getSnapshot(), getSnapshot(), "stable between changes");
  assert.equal(getServerSnapshot(), getSnapshot());
  assert.equal(getSnapshot().rows.get("1").title, "a");
  off();
  const seen = changes;
  relay.commit("insert", { id: 2, title: "b" });
  await until(() => todos.snapshot().rows.size === 2);
  assert.equal(changes, seen, "unsubscribed");
});
