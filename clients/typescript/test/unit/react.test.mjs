// useCollection with real React (react-dom's client renderer on a happy-dom document) against
// the fake relay: a component re-renders on live changes and on optimistic writes, and
// unmounting it unsubscribes from the collection.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Window } from "happy-dom";
import { createClient } from "../../dist/index.js";
import { FakeRelay, until } from "../fake-relay.mjs";

// happy-dom needs Node >= 20 (its engines field).
const major = Number(process.versions.node.split(".")[0]);
const missing = major < 20 ? `Node ${process.versions.node}: happy-dom needs Node >= 20` : null;
if (missing && process.env.CI === "true") throw new Error(`the React test cannot run: ${missing}`);

test("useCollection with real React: re-renders on live changes and optimistic writes, unsubscribes on unmount", { skip: missing ? `skipped: ${missing}` : false }, async (t) => {
  const window = new Window({ url: "http://localhost/" });
  t.after(() => window.happyDOM.close());
  // The globals react-dom's client reads (Node 21+ has its own navigator: shadowed for the test).
  const globals = { window, document: window.document, navigator: window.navigator, IS_REACT_ACT_ENVIRONMENT: false };
  const saved = Object.fromEntries(Object.keys(globals).map((k) => [k, Object.getOwnPropertyDescriptor(globalThis, k)]));
  for (const [k, value] of Object.entries(globals)) Object.defineProperty(globalThis, k, { value, configurable: true, writable: true });
  t.after(() => {
    for (const [k, d] of Object.entries(saved)) d ? Object.defineProperty(globalThis, k, d) : delete globalThis[k];
  });
  const React = await import("react");
  const { createRoot } = await import("react-dom/client");
  const { useCollection } = await import("../../dist/react.js");
  const h = React.createElement;

  const relay = new FakeRelay();
  relay.commit("insert", { id: 1, title: "from the server" });
  const client = createClient({ url: "http://relay.test", fetch: relay.fetch, backoff: { base: 5, max: 20 } });
  t.after(() => client.close());
  const todos = client.collection("public.todos", { key: ["id"] });

  // Count the component's live subscriptions: useCollection hands collection.listen to React.
  const listen = todos.listen;
  let subscribed = 0;
  todos.listen = (fn) => {
    subscribed++;
    const off = listen(fn);
    return () => (subscribed--, off());
  };

  let renders = 0;
  function Todos() {
    const { rows, info } = useCollection(todos);
    renders++;
    return h("div", null,
      h("ul", null, [...rows.values()].map((r) => h("li", { key: String(r.id) }, r.title))),
      h("span", { id: "pending" }, `${info.pending} pending`),
      h("span", { id: "synced" }, info.synced ? "synced" : "syncing"));
  }
  const container = document.createElement("div");
  document.body.append(container);
  const root = createRoot(container);
  root.render(h(Todos));
  const text = () => container.textContent;
  const items = () => [...container.querySelectorAll("li")].map((li) => li.textContent);

  await until(() => text().includes("synced") && !text().includes("syncing"), 3000, "the first sync on the page");
  assert.deepEqual(items(), ["from the server"]);
  assert.equal(subscribed, 1, "one subscription while mounted");

  // A live change from the relay re-renders the component.
  let before = renders;
  relay.commit("insert", { id: 2, title: "live from the relay" });
  await until(() => items().includes("live from the relay"), 3000, "the live change on the page");
  assert.ok(renders > before, "re-rendered for the live change");

  // An optimistic write shows at once, with its pending count, while nothing reached the relay.
  client.setOnline(false);
  before = renders;
  await todos.insert({ id: 3, title: "written locally" });
  await until(() => items().includes("written locally"), 3000, "the optimistic row on the page");
  assert.ok(renders > before, "re-rendered for the optimistic write");
  assert.match(text(), /1 pending/);
  assert.equal(relay.rows.has(JSON.stringify({ id: 3 })), false, "not at the relay while offline");
  await todos.update({ id: 1 }, { title: "edited locally" });
  await until(() => items().includes("edited locally"), 3000, "the optimistic update on the page");
  assert.match(text(), /2 pending/);

  // Back online: the writes are sent, acknowledged, and the badge goes back to 0.
  client.setOnline(true);
  await until(() => text().includes("0 pending"), 3000, "the writes acknowledged");
  assert.equal(relay.rows.get(JSON.stringify({ id: 3 }))?.title, "written locally");
  assert.deepEqual(items().sort(), ["edited locally", "live from the relay", "written locally"]);

  // Unmounted: the subscription is gone, and later changes render nothing.
  root.unmount();
  assert.equal(subscribed, 0, "unsubscribed on unmount");
  before = renders;
  relay.commit("insert", { id: 4, title: "after unmount" });
  await until(() => todos.snapshot().rows.has("4"), 3000, "the change in the collection");
  assert.equal(renders, before, "no render after unmount");
  assert.equal(container.textContent, "");
});
