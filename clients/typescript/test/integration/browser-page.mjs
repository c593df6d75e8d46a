// Runs in headless Chromium (bundled by browser.test.mjs): the library against the real relay
// (through the test server's proxy) with IndexedDB stores, across a reload of the page.
import { createClient, indexedDbStore } from "../../src/index.ts";

const phase = new URL(location.href).searchParams.get("phase") ?? "1";
const report = (body) => fetch("/result", { method: "POST", body: JSON.stringify({ phase, ...body }) });
const requests = [];
const tap = (url, init) => {
  if (url.includes("/v1/stream")) requests.push({ url, lastEventId: new Headers(init?.headers).get("last-event-id") });
  return fetch(url, init);
};
const firstCall = (collection) =>
  new Promise((resolve) => {
    const off = collection.subscribe((rows, info) => {
      queueMicrotask(() => off());
      resolve({ size: rows.size, synced: info.synced, pending: info.pending, row: rows.get("9001") ?? null });
    });
  });

try {
  const reads = createClient({ url: location.origin, store: indexedDbStore("dr-reads"), fetch: tap, backoff: { base: 100, max: 1000 } });
  const todos = reads.collection("public.todos");
  const first = await firstCall(todos);
  await new Promise((resolve) => todos.subscribe((rows, info) => info.synced && resolve()));
  const { rows, info } = todos.snapshot();

  // Writes stay offline here (the relay on this branch has no /v1/mutations yet): the queue
  // and the optimistic row must come back from IndexedDB after the reload.
  const writes = createClient({ url: location.origin, store: indexedDbStore("dr-writes") });
  writes.setOnline(false);
  const queued = writes.collection("public.todos", { key: ["id"] });
  const queuedFirst = await firstCall(queued);
  if (phase === "1") await queued.insert({ id: 9001, title: "queued in the browser", done: false });

  await Promise.all([reads.close(), writes.close()]);
  await report({ first, rows: [...rows.values()], cursor: info.cursor, requests, queuedFirst });
  if (phase === "1") location.href = "/?phase=2";
} catch (e) {
  await report({ error: String(e?.stack ?? e) });
}
