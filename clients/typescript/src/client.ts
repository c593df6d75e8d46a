import { WriteQueue } from "./queue.js";
import { memoryStore } from "./stores.js";
import { syncLoop, type Core, type Sink } from "./transport.js";
import type {
  ChangeRecord, ClientEvents, ClientOptions, Conflict, Fetch, Listener, Mutation, Row, ShapeOptions, Store, SyncInfo,
} from "./types.js";
import { applyRecords, keyText, pick, rebase } from "./view.js";

export interface Snapshot {
  rows: Map<string, Row>;
  info: SyncInfo;
}

type Handler<T> = (event: T) => void;

export class Client implements Core {
  online = true;
  readonly store: Store;
  readonly queue: WriteQueue;
  readonly mode: "auto" | "stream" | "poll";
  readonly pollWait: number;
  readonly backoff: { base?: number; max?: number };
  private url: string;
  private fetcher: Fetch;
  private token?: Promise<string | null | undefined>;
  private collections = new Map<string, Collection>();
  private handlers = new Map<string, Set<Handler<never>>>();
  private waiting = new Set<() => void>();
  private keys?: Promise<Record<string, string[]>>;

  constructor(private opts: ClientOptions) {
    this.url = opts.url.replace(/\/+$/, "");
    this.fetcher = opts.fetch ?? ((i, init) => fetch(i, init));
    this.store = opts.store ?? memoryStore();
    this.mode = opts.transport ?? "auto";
    this.pollWait = opts.pollWait ?? 30;
    this.backoff = opts.backoff ?? {};
    this.queue = new WriteQueue(this);
    if (opts.onConflict) this.on("conflict", opts.onConflict);
    this.queue.loaded.then(() => this.queue.flush(), () => {});
  }

  /** A collection, or a shape of it (`where`/`params`/`columns`); the same object per shape. */
  collection(name: string, shape: ShapeOptions = {}): Collection {
    const id = JSON.stringify([name, shape.where, shape.params, shape.columns]);
    let c = this.collections.get(id);
    if (!c) this.collections.set(id, (c = new Collection(this, name, shape, "state:" + id)));
    c.keys ??= shape.key;
    return c;
  }

  /** Listens to `resync`, `conflict` or `error`; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(type: K, fn: Handler<ClientEvents[K]>): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(fn as Handler<never>);
    return () => set!.delete(fn as Handler<never>);
  }

  emit<K extends keyof ClientEvents>(type: K, event: ClientEvents[K]) {
    this.handlers.get(type)?.forEach((fn) => (fn as Handler<ClientEvents[K]>)(event));
  }

  /** Offline: connections close and writes stay queued; online: both resume. */
  setOnline(online: boolean) {
    this.online = online;
    if (online) {
      this.waiting.forEach((wake) => wake());
      void this.queue.flush();
    } else this.collections.forEach((c) => c.attempt?.abort());
  }

  /** Sends queued writes now (they are also sent on each write and reconnect). */
  flush(): Promise<void> {
    return this.queue.flush();
  }

  /** Stops every connection; resolves once each collection's state and the write queue are stored. */
  close(): Promise<void> {
    this.online = false;
    this.waiting.forEach((wake) => wake());
    return Promise.all([this.queue.close(), ...[...this.collections.values()].map((c) => c.close())]).then(() => {});
  }

  whenOnline(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => (this.waiting.delete(wake), signal.removeEventListener("abort", wake), resolve());
      this.waiting.add(wake);
      signal.addEventListener("abort", wake);
    });
  }

  /** A fetch with the bearer token; after a 401 it asks `getToken` again and retries once. */
  async request(path: string, init: RequestInit = {}): Promise<Response> {
    for (let retry = false; ; retry = true) {
      const getToken = this.opts.getToken;
      if (getToken && (retry || !this.token)) this.token = Promise.resolve(getToken());
      const token = await this.token;
      const headers = new Headers(init.headers);
      if (token) headers.set("authorization", "Bearer " + token);
      const res = await this.fetcher(this.url + path, { ...init, headers });
      if (res.status !== 401 || retry || !getToken) return res;
      await res.body?.cancel();
    }
  }

  async fail(collection: string, res: Response) {
    const body = await res.json().catch(() => ({}));
    this.emit("error", { collection, status: res.status, message: body.message ?? res.statusText });
  }

  changed(collection?: string) {
    this.collections.forEach((c) => (!collection || c.name === collection) && c.recompute());
  }

  conflict(c: Conflict) {
    this.emit("conflict", c);
  }

  /** Key columns by collection, from `GET /v1/collections` (once). */
  keyColumns(): Promise<Record<string, string[]>> {
    return (this.keys ??= this.request("/v1/collections")
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`GET /v1/collections: ${r.status}`))))
      .then((b: { collections: { name: string; key_columns: string[] }[] }) =>
        Object.fromEntries(b.collections.map((c) => [c.name, c.key_columns])),
      )
      .catch((e) => ((this.keys = undefined), Promise.reject(e))));
  }
}

interface Saved {
  cursor: string | null;
  key?: string[];
  rows: [string, Row][];
}

/** One collection (or shape of it) kept in sync: server rows plus local writes on top. */
export class Collection implements Sink {
  cursor: string | null = null;
  synced = false;
  attempt?: AbortController;
  readonly query: string;
  private server = new Map<string, Row>();
  /** During a resync after 410: the new state, shown once it has caught up. */
  private fresh?: Map<string, Row>;
  private lagMs: number | null = null;
  /** The key columns, once known. */
  keys?: string[];
  private listeners = new Set<() => void>();
  private snap: Snapshot = { rows: new Map(), info: { cursor: null, lagMs: null, synced: false, pending: 0 } };
  private loaded = false;
  private running?: AbortController;
  private saving: Promise<void> = Promise.resolve();
  private saveTimer?: ReturnType<typeof setTimeout>;

  constructor(private client: Client, readonly name: string, private shape: ShapeOptions, private id: string) {
    const q = new URLSearchParams({ collections: name });
    if (shape.where) q.set("where", shape.where);
    shape.params?.forEach((p, i) => q.set(`params[${i + 1}]`, typeof p === "string" ? p : JSON.stringify(p)));
    if (shape.columns) q.set("columns", shape.columns.join(","));
    this.query = q.toString();
    this.keys = shape.key;
  }

  /** Calls `fn(rows, info)` now (once loaded) and after every change; starts syncing. */
  subscribe(fn: Listener): () => void {
    const call = () => fn(this.snap.rows, this.snap.info);
    const off = this.listen(call);
    if (this.loaded) call();
    return off;
  }

  /** Calls `fn` after every change (for `useSyncExternalStore`); starts syncing. */
  listen = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    this.start();
    return () => void this.listeners.delete(fn);
  };

  /** The current rows and info; the same object until something changes. */
  snapshot = (): Snapshot => this.snap;

  /** Loads the stored state and starts syncing (subscribing does this). */
  start() {
    if (this.running) return;
    const ctl = (this.running = new AbortController());
    (async () => {
      const saved = (await this.client.store.get(this.id)) as Saved | undefined;
      // A state without a cursor is a resync that did not finish: it starts from nothing.
      if (saved?.cursor) {
        this.server = new Map(saved.rows);
        this.cursor = saved.cursor;
        this.keys ??= saved.key;
      }
      await this.client.queue.loaded;
      this.loaded = true;
      this.recompute();
      await syncLoop(this.client, this, ctl.signal);
    })().catch((e) => this.client.emit("error", { collection: this.name, message: String(e) }));
  }

  /** Stops syncing; resolves once the state reached is stored. */
  close(): Promise<void> {
    this.running?.abort();
    this.running = undefined;
    this.save();
    return this.saving.catch(() => {});
  }

  insert(row: Row): Promise<void> {
    return this.keyColumns(row, false).then((cols) => this.write({ op: "insert", value: row }, keyText(row, cols)));
  }

  update(key: Row, value: Row, options: { if?: Row } = {}): Promise<void> {
    return this.keyColumns(key).then((cols) => {
      const k = pick(key, cols);
      return this.write({ op: "update", key: k, value, ...(options.if && { if: options.if }) }, keyText(k, cols));
    });
  }

  delete(key: Row): Promise<void> {
    return this.keyColumns(key).then((cols) => {
      const k = pick(key, cols);
      return this.write({ op: "delete", key: k }, keyText(k, cols));
    });
  }

  private write(m: Pick<Mutation, "op" | "key" | "value" | "if">, k: string): Promise<void> {
    const id = globalThis.crypto?.randomUUID?.() ?? Date.now().toString(36) + Math.random().toString(36).slice(2);
    return this.client.queue.add({ m: { id, collection: this.name, at: new Date().toISOString(), ...m }, k });
  }

  /**
   * Key columns: given, learned from records, or from `/v1/collections`. Offline before any
   * of these, an update or delete keys on the columns of the key it was given.
   */
  private async keyColumns(row: Row, isKey = true): Promise<string[]> {
    if (!this.keys) {
      try {
        this.keys = (await this.client.keyColumns())[this.name];
      } catch {
        if (isKey) return Object.keys(row);
      }
    }
    if (this.keys) return this.keys;
    throw new Error(`the key columns of ${this.name} are unknown (offline?): pass { key: [...] } to collection()`);
  }

  apply(records: ChangeRecord[], ready?: string | null, lagMs?: number) {
    applyRecords(this.fresh ?? this.server, records);
    const last = records[records.length - 1];
    if (last) {
      this.cursor = last.cursor;
      if (!this.keys && last.key) this.keys = Object.keys(last.key);
    }
    if (lagMs !== undefined) this.lagMs = lagMs;
    if (ready !== undefined) {
      if (ready) this.cursor = ready;
      this.synced = true;
      if (this.fresh) (this.server = this.fresh), (this.fresh = undefined);
      this.save();
      void this.client.queue.flush();
      // Learn the key columns while online, so that inserts made offline later can be keyed.
      if (!this.keys) this.client.keyColumns().then((k) => (this.keys ??= k[this.name]), () => {});
    } else if (records.length) this.saveTimer ??= setTimeout(() => this.save(), 300);
    this.recompute();
  }

  expired() {
    this.client.emit("resync", { collection: this.name, reason: "cursor_expired" });
    this.fresh = new Map();
    this.cursor = null;
    this.synced = false;
    this.save();
    this.recompute();
  }

  /** Stores the state the stream has reached (the rows and their cursor, together). */
  private save() {
    clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
    if (!this.loaded) return;
    const write = () =>
      this.client.store.set(this.id, { cursor: this.cursor, key: this.keys, rows: [...(this.fresh ?? this.server)] });
    this.saving = this.saving.then(write, write);
    this.saving.catch((e) => this.client.emit("error", { collection: this.name, message: "store: " + e }));
  }

  recompute() {
    if (!this.loaded) return;
    const q = this.client.queue;
    this.snap = {
      rows: rebase(this.server, q.entries, this.name, this.cursor, this.keys, this.shape.columns),
      info: { cursor: this.cursor, lagMs: this.lagMs, synced: this.synced, pending: q.pending(this.name) },
    };
    this.listeners.forEach((fn) => fn());
  }
}

/** A client of the relay at `options.url`. */
export function createClient(options: ClientOptions): Client {
  return new Client(options);
}
