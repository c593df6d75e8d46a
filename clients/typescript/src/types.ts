/** A row as the relay maps it: column name → JSON value. */
export type Row = Record<string, unknown>;

/** One change as `/v1/changes` and `/v1/stream` send it (docs/DESIGN.md, "Unified change record"). */
export interface ChangeRecord {
  cursor: string;
  source: string;
  collection: string;
  op: "insert" | "update" | "delete" | "truncate";
  key: Row | null;
  after: Row | null;
  before?: Row | null;
  changed?: string[] | null;
  unchanged?: string[];
  commit_time?: string;
  tx?: { id: string; position: string };
}

/** How current a collection's local state is. */
export interface SyncInfo {
  /** The cursor of the last change applied (null before the first sync). */
  cursor: string | null;
  /** How far the relay's log is behind its slowest source, when the relay tells (else null). */
  lagMs: number | null;
  /** True once the local state has caught up with the log (after `ready`). */
  synced: boolean;
  /** Local writes of this collection not yet acknowledged by the relay. */
  pending: number;
}

/** A write as `POST /v1/mutations` takes it. */
export interface Mutation {
  id: string;
  collection: string;
  op: "insert" | "update" | "delete";
  key?: Row;
  value?: Row;
  if?: Row;
  at: string;
}

/** One entry of a `POST /v1/mutations` response. */
export interface MutationResult {
  id: string;
  status: "applied" | "duplicate" | "conflict" | "stale" | "rejected" | "forbidden" | "rolled_back";
  key?: Row;
  current?: Row | null;
  error?: unknown;
}

/** A write the relay did not apply, handed to `onConflict` / the `conflict` event. */
export interface Conflict {
  mutation: Mutation;
  result: MutationResult;
}

/**
 * Durable key → JSON value storage. Values are plain JSON-compatible data; `set` must not
 * resolve before the value would survive a crash (as far as the medium allows).
 */
export interface Store {
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
}

export type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

export interface ClientOptions {
  /** The relay's base URL, e.g. `https://sync.example.com`. */
  url: string;
  /** Returns the bearer token; called again after a 401, so it should refresh then. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Where state, cursors and the write queue persist (default: memory only). */
  store?: Store;
  /** `auto` (default): streaming, falling back to long polling when streaming does not work. */
  transport?: "auto" | "stream" | "poll";
  /** Called for each write the relay did not apply (conflict, stale, rejected, forbidden). */
  onConflict?: (conflict: Conflict) => void;
  /** Reconnect delays: `base` doubling up to `max` (ms), jittered. Default 500 / 30000. */
  backoff?: { base?: number; max?: number };
  /** Long-poll hold time in seconds (default 30). */
  pollWait?: number;
  /** Replaces the global `fetch` (tests, custom agents). */
  fetch?: Fetch;
}

export interface ShapeOptions {
  /** SQL boolean filter over the collection's columns (the relay's Shapes grammar). */
  where?: string;
  /** Values of `$1…$n` in `where`. */
  params?: unknown[];
  /** Projection; key columns are always included by the relay. */
  columns?: string[];
  /** The key columns, when the app knows them (else learned from records or /v1/collections). */
  key?: string[];
}

export type Listener = (rows: Map<string, Row>, info: SyncInfo) => void;

export interface ClientEvents {
  resync: { collection: string; reason: string };
  conflict: Conflict;
  error: { collection?: string; status?: number; message: string };
}
