import type { ChangeRecord, Mutation, Row } from "./types.js";

/** A queued write: `k` is its row's Map key; `ack` the relay's cursor once applied, `t` when (ms). */
export interface QueueEntry {
  m: Mutation;
  k: string;
  ack?: string;
  t?: number;
}

/**
 * The Map key of a row: a single string or number key column as its text, any other key as
 * the JSON array of its values in key-column order.
 */
export function keyText(key: Row, columns: string[] = Object.keys(key)): string {
  const values = columns.map((c) => key[c]);
  const v = values[0];
  return values.length === 1 && (typeof v === "string" || typeof v === "number") ? String(v) : JSON.stringify(values);
}

export function pick(row: Row, columns: string[]): Row {
  const out: Row = {};
  for (const c of columns) if (c in row) out[c] = row[c];
  return out;
}

/**
 * Whether the log position `cursor` is at or past `target`. Cursors are `<epoch>-<seq>`
 * (docs/DESIGN.md; `0`, the beginning, reaches nothing); one from another epoch means the log was recreated, so `target` can no
 * longer be waited for and counts as passed.
 */
export function cursorReached(cursor: string | null, target: string): boolean {
  const a = cursor?.lastIndexOf("-") ?? -1;
  if (!cursor || a < 0) return false;
  const b = target.lastIndexOf("-");
  if (cursor.slice(0, a) !== target.slice(0, b)) return true;
  return Number(cursor.slice(a + 1)) >= Number(target.slice(b + 1));
}

/** Applies the relay's records (latest version per key; upsert/delete by key) to `rows`. */
export function applyRecords(rows: Map<string, Row>, records: ChangeRecord[]): void {
  for (const r of records) {
    if (r.op === "truncate") rows.clear();
    else if (!r.key) continue;
    else if (r.op === "delete") rows.delete(keyText(r.key));
    else if (r.after) {
      const k = keyText(r.key);
      const old = rows.get(k);
      // Unchanged TOAST values the relay could not fill keep the version we have.
      rows.set(k, r.unchanged?.length && old ? { ...old, ...r.after } : r.after);
    }
  }
}

/**
 * The state the app sees: the server's rows with this collection's local writes replayed on
 * top, in queue order (a rebase). A write the relay applied stops being replayed once the
 * stream has reached the cursor at which it is in the log.
 */
export function rebase(
  server: Map<string, Row>,
  queue: QueueEntry[],
  collection: string,
  cursor: string | null,
  keyColumns: string[] | undefined,
  columns?: string[],
): Map<string, Row> {
  const rows = new Map(server);
  for (const { m, k, ack } of queue) {
    if (m.collection !== collection || (ack && cursorReached(cursor, ack))) continue;
    const old = rows.get(k);
    if (m.op === "delete") rows.delete(k);
    else if (m.op === "insert") {
      const row = { ...old, ...m.value };
      rows.set(k, columns ? pick(row, [...(keyColumns ?? []), ...columns]) : row);
    } else if (old) rows.set(k, { ...old, ...(columns ? pick(m.value ?? {}, columns) : m.value) });
  }
  return rows;
}
