// The console's todo app: `public.todos` (the quick start's demo table: id uuid, title, done,
// created_at) through the client library the relay serves beside this file. It shows the
// library's local state (optimistic writes included) next to the raw change feed, an
// "offline" switch (client.setOnline), the pending-writes badge (info.pending) and the
// freshness figure (info.lagMs). Shown only when the relay has `public.todos`; read-only when
// the relay refuses writes. Values are shown with textContent, never parsed as HTML.
import { createClient, indexedDbStore, memoryStore } from "/console/deltarelay-client.js";

const COLLECTION = "public.todos";
const NEEDED = ["id", "title", "done"];
const TOKEN = new URLSearchParams(location.search).get("access_token");
const $ = (id) => document.getElementById(id);
const authHeaders = TOKEN ? { authorization: "Bearer " + TOKEN } : {};

/** The collection's entry in `/v1/collections` once it is listed (checked every 2 s). */
async function listedTodos() {
  for (;;) {
    try {
      const response = await fetch("/v1/collections", { headers: authHeaders });
      if (response.ok) {
        const found = (await response.json()).collections.find((c) => c.name === COLLECTION);
        if (found) return found;
      }
    } catch {
      // The relay is down or restarting: try again.
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

/** Whether `POST /v1/mutations` is open to this page: an empty batch is a 400 then, else 401/403. */
async function writesAllowed() {
  try {
    const response = await fetch("/v1/mutations", {
      method: "POST",
      headers: { ...authHeaders, "content-type": "application/json" },
      body: '{"mutations":[]}',
    });
    if (response.status === 400) return { allowed: true };
    const body = await response.json().catch(() => ({}));
    return { allowed: false, why: body.message ?? "HTTP " + response.status };
  } catch (err) {
    return { allowed: false, why: String(err) };
  }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function freshness(info, online) {
  if (!online) return "offline: showing local state";
  if (!info.synced) return "syncing…";
  if (info.lagMs === null) return "synced";
  return "synced · " + (info.lagMs < 1000 ? info.lagMs + " ms" : (info.lagMs / 1000).toFixed(1) + " s") + " behind Postgres";
}

/** A random UUID; `crypto.randomUUID` exists only on secure origins (https, localhost). */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function byCreation(a, b) {
  return String(a.created_at ?? "").localeCompare(String(b.created_at ?? "")) || String(a.id).localeCompare(String(b.id));
}

async function main() {
  const listed = await listedTodos();
  // `columns` lists {name, type}; a table of that name with other columns, or keys the page
  // cannot make (not UUIDs or text), is left alone.
  const types = new Map((listed.columns ?? []).map((c) => [c.name, c.type]));
  const columns = [...types.keys()];
  if (!NEEDED.every((c) => types.has(c))) return;
  if (!["uuid", "text", "varchar"].includes(types.get("id"))) return;
  $("todo-app").hidden = false;
  document.querySelector("main").classList.add("has-app");

  const message = $("app-message");
  const client = createClient({
    url: location.origin,
    getToken: TOKEN ? () => TOKEN : undefined,
    store: globalThis.indexedDB ? indexedDbStore("deltarelay-console") : memoryStore(),
    onConflict: ({ mutation, result }) => {
      const detail = result.error?.message ?? (result.current === null ? "the row is gone" : "");
      message.textContent = `not saved: ${mutation.op} → ${result.status}${detail ? " (" + detail + ")" : ""}`;
    },
  });
  const todos = client.collection(COLLECTION, { key: listed.key_columns?.length ? listed.key_columns : ["id"] });
  let online = true;
  let writable = false;
  let last = { rows: new Map(), info: { synced: false, lagMs: null, pending: 0 } };

  function render() {
    const { rows, info } = last;
    $("pending").textContent = info.pending + " pending";
    $("pending").classList.toggle("zero", info.pending === 0);
    $("freshness").textContent = freshness(info, online);
    const list = $("todos");
    list.replaceChildren();
    for (const row of [...rows.values()].sort(byCreation)) {
      const li = el("li", row.done ? "done" : "");
      li.dataset.id = String(row.id);
      const tick = el("input");
      tick.type = "checkbox";
      tick.checked = Boolean(row.done);
      tick.disabled = !writable;
      tick.title = row.done ? "mark as not done" : "mark as done";
      tick.addEventListener("change", () => todos.update({ id: row.id }, { done: tick.checked }));
      const remove = el("button", "delete", "×");
      remove.title = "delete";
      remove.hidden = !writable;
      remove.addEventListener("click", () => todos.delete({ id: row.id }));
      li.append(tick, el("span", "title", String(row.title ?? "")), remove);
      list.append(li);
    }
    if (!rows.size) list.append(el("li", "hint", info.synced ? "nothing to do" : "loading…"));
  }

  todos.subscribe((rows, info) => {
    last = { rows, info };
    render();
  });

  $("offline").addEventListener("change", (e) => {
    online = !e.target.checked;
    client.setOnline(online);
    render();
  });

  const writes = await writesAllowed();
  writable = writes.allowed;
  $("writes").textContent = writable
    ? "Add, tick and delete: changes show at once and are sent with POST /v1/mutations (queued while offline)."
    : "Writes are off, read-only: " + writes.why;
  $("add").hidden = !writable;
  render();

  $("add").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("new-title");
    const title = input.value.trim();
    if (!title) return;
    input.value = "";
    message.textContent = "";
    const row = { id: uuid(), title, done: false };
    if (columns.includes("created_at")) row.created_at = new Date().toISOString();
    await todos.insert(row);
  });
}

main().catch((err) => {
  $("app-message").textContent = "the todo app failed: " + err;
});
