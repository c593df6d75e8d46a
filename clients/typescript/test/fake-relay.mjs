// A relay in memory that follows the HTTP contract closely enough for unit tests: a compacted
// log with `<epoch>-<seq>` cursors, /v1/stream (replay, `ready`, live), /v1/changes,
// /v1/collections, /v1/mutations (ids applied once, `if` checks, missing rows conflict).
export class FakeRelay {
  constructor({ epoch = "7", key = "id", token } = {}) {
    Object.assign(this, { epoch, key, token, seq: 0, purged: 0 });
    this.log = []; // compacted: the latest record per key, in seq order
    this.rows = new Map();
    this.streams = new Set();
    this.requests = [];
    this.applied = new Map(); // mutation id → result
    this.failMutations = 0; // the next n POSTs are applied but their answer is lost
    this.noStreamBody = false;
  }

  head() {
    return `${this.epoch}-${this.seq}`;
  }

  commit(op, row) {
    const key = { [this.key]: row[this.key] };
    const k = JSON.stringify(key);
    if (op === "delete") this.rows.delete(k);
    else this.rows.set(k, { ...(this.rows.get(k) ?? {}), ...row });
    const rec = {
      cursor: `${this.epoch}-${++this.seq}`, source: "fake", collection: "public.todos", op, key,
      after: op === "delete" ? null : this.rows.get(k), before: null, changed: null,
    };
    this.log = this.log.filter((r) => JSON.stringify(r.key) !== k).concat(rec);
    for (const s of this.streams) s.send(rec);
    return rec;
  }

  /** A new log: every cursor handed out so far is from another epoch (410). */
  reset(epoch) {
    this.epoch = epoch;
    this.seq = 0;
    this.log = [];
    for (const [, row] of this.rows) this.commitCopy(row);
    for (const s of [...this.streams]) s.end();
  }

  commitCopy(row) {
    const key = { [this.key]: row[this.key] };
    this.log.push({ cursor: `${this.epoch}-${++this.seq}`, source: "fake", collection: "public.todos", op: "insert", key, after: row });
  }

  /** `event: heartbeat` on every live stream (the Freshness contract). */
  heartbeat(lagMs) {
    for (const s of this.streams) s.raw(`event: heartbeat\ndata: {"cursor":"${this.head()}","lag_ms":${lagMs}}\n\n`);
  }

  /** Ends every live stream, as a relay restart would. */
  dropStreams() {
    for (const s of [...this.streams]) s.end();
  }

  since(cursor) {
    if (!cursor || cursor === "0") return 0;
    const [epoch, seq] = cursor.split("-");
    if (epoch !== this.epoch || Number(seq) > this.seq || Number(seq) < this.purged) return null;
    return Number(seq);
  }

  fetch = async (url, init = {}) => {
    const u = new URL(url);
    const headers = new Headers(init.headers);
    this.requests.push({ method: init.method ?? "GET", path: u.pathname, query: u.searchParams, headers, body: init.body });
    if (this.offline) throw new TypeError("fetch failed");
    const json = (status, body) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
    if (this.token && headers.get("authorization") !== `Bearer ${this.token}`) {
      return json(401, { error: "unauthorized", message: "bad token" });
    }
    if (u.pathname === "/v1/collections") {
      return json(200, { collections: [{ name: "public.todos", source: "fake", key_columns: [this.key] }] });
    }
    if (u.pathname === "/v1/mutations") return this.mutations(JSON.parse(init.body), json);
    const from = this.since(headers.get("last-event-id") ?? u.searchParams.get("since"));
    if (from === null) return json(410, { error: "cursor_expired", message: "expired" });
    const after = this.log.filter((r) => Number(r.cursor.split("-")[1]) > from);
    if (u.pathname === "/v1/changes") {
      if (!after.length && Number(u.searchParams.get("wait"))) await new Promise((r) => setTimeout(r, 20));
      const cursor = after.length ? after.at(-1).cursor : (u.searchParams.get("since") ?? "0");
      return json(200, { changes: after, cursor, has_more: false });
    }
    if (u.pathname !== "/v1/stream") return json(404, { error: "not_found", message: u.pathname });
    if (this.noStreamBody) return new Response(null, { status: 200, headers: { "content-type": "text/event-stream" } });
    const enc = new TextEncoder();
    const streams = this.streams;
    let stream;
    const body = new ReadableStream({
      start: (ctl) => {
        stream = {
          raw: (text) => ctl.enqueue(enc.encode(text)),
          send: (rec) => ctl.enqueue(enc.encode(`id: ${rec.cursor}\nevent: change\ndata: ${JSON.stringify(rec)}\n\n`)),
          end: () => {
            streams.delete(stream);
            try { ctl.close(); } catch {}
          },
        };
        ctl.enqueue(enc.encode("retry: 2000\n\n"));
        for (const r of after) stream.send(r);
        ctl.enqueue(enc.encode(`id: ${this.head()}\nevent: ready\ndata: {"cursor":"${this.head()}"${this.readyLag === undefined ? "" : `,"lag_ms":${this.readyLag}`}}\n\n`));
        streams.add(stream);
        init.signal?.addEventListener("abort", () => {
          streams.delete(stream);
          try { ctl.error(new DOMException("aborted", "AbortError")); } catch {}
        });
      },
      cancel: () => streams.delete(stream),
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
  };

  mutations(body, json) {
    const results = body.mutations.map((m) => {
      if (this.applied.has(m.id)) return { ...this.applied.get(m.id), status: "duplicate" };
      const key = m.op === "insert" ? { [this.key]: m.value[this.key] } : m.key;
      const current = this.rows.get(JSON.stringify(key)) ?? null;
      let result;
      if (m.op !== "insert" && !current) result = { id: m.id, status: "conflict", key, current: null };
      else if (m.op === "insert" && current) result = { id: m.id, status: "rejected", key, error: { code: "23505" } };
      else if (m.if && Object.entries(m.if).some(([c, v]) => current[c] !== v)) result = { id: m.id, status: "conflict", key, current };
      else {
        this.commit(m.op, m.op === "delete" ? key : { ...key, ...m.value });
        result = { id: m.id, status: "applied", key };
        this.applied.set(m.id, result);
      }
      return result;
    });
    if (this.failMutations > 0) {
      this.failMutations--;
      throw new TypeError("connection reset after the relay applied the writes");
    }
    return json(200, { results, cursor: this.head(), visible: true });
  }
}

/** Resolves once `check()` holds (polled every 5 ms), or rejects after `ms`. */
export async function until(check, ms = 3000, what = "condition") {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
