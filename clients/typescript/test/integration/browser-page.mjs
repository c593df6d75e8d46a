// Runs in headless Chromium (bundled by browser.test.mjs): the library against the real relay
// (through the test server's proxy) with IndexedDB stores, across a reload of the page; then
// a write queued while the test has the page's network switched off.
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

/** Polls `check` every 50 ms for up to 30 s. */
async function until(check, what) {
  for (const end = Date.now() + 30000; !check(); await new Promise((r) => setTimeout(r, 50)))
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
}

// Driven by the test through the DevTools protocol while it switches the page's network off
// and on: a write made while the network is down is queued (its sends fail) and reaches the
// relay once the network is back.
let offlineClient;
const sendFailures = [];
globalThis.writeWhileOffline = async () => {
  const failing = (url, init) =>
    fetch(url, init).catch((e) => {
      if (url.endsWith("/v1/mutations")) sendFailures.push(String(e));
      throw e;
    });
  offlineClient = createClient({ url: location.origin, store: indexedDbStore("dr-offline"), fetch: failing, backoff: { base: 100, max: 300 } });
  await offlineClient.collection("public.todos", { key: ["id"] }).insert({ id: 9002, title: "written while offline", done: false });
  await until(() => sendFailures.length >= 2, "two failed sends");
  return { pending: offlineClient.queue.pending("public.todos"), failures: sendFailures.length, onLine: navigator.onLine };
};
globalThis.untilSent = async () => {
  await until(() => offlineClient.queue.pending("public.todos") === 0, "the queued write to be sent");
  await offlineClient.close();
  return { acked: offlineClient.queue.entries.map((e) => Boolean(e.ack)) };
};

try {
  const reads = createClient({ url: location.origin, store: indexedDbStore("dr-reads"), fetch: tap, backoff: { base: 100, max: 1000 } });
  const todos = reads.collection("public.todos");
  const first = await firstCall(todos);
  await new Promise((resolve) => todos.subscribe((rows, info) => info.synced && resolve()));
  const { rows, info } = todos.snapshot();

  // This client stays offline (setOnline(false)): the queue and the optimistic row must come
  // back from IndexedDB after the reload.
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
