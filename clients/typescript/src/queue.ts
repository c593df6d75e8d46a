import { backoffDelay } from "./backoff.js";
import type { QueueEntry } from "./view.js";
import type { Conflict, MutationResult, Store } from "./types.js";

/** What the queue needs from the client. */
export interface QueueCore {
  store: Store;
  online: boolean;
  backoff: { base?: number; max?: number };
  request(path: string, init?: RequestInit): Promise<Response>;
  /** Local state of `collection` (all when omitted) changed: recompute the views. */
  changed(collection?: string): void;
  conflict(c: Conflict): void;
}

const KEY = "queue";
/** Applied writes are kept (and replayed over the server state) until the stream shows them. */
const KEEP_ACKED_MS = 5 * 60 * 1000;
const BATCH = 100;

/**
 * The durable write queue: every local write until the relay has answered for it, flushed
 * in order with `POST /v1/mutations`. A write keeps its id across retries and reloads, so
 * the relay applies it once (a retried id answers `duplicate`).
 */
export class WriteQueue {
  entries: QueueEntry[] = [];
  readonly loaded: Promise<void>;
  private saving: Promise<void> = Promise.resolve();
  private flushing = false;
  /** The flush in progress (or the last one): what `close` waits for. */
  private running: Promise<void> = Promise.resolve();
  private attempt = 0;
  private timer?: ReturnType<typeof setTimeout>;

  constructor(private core: QueueCore) {
    this.loaded = core.store.get(KEY).then((v) => {
      if (Array.isArray(v)) this.entries = v as QueueEntry[];
    });
  }

  pending(collection: string): number {
    return this.entries.filter((e) => !e.ack && e.m.collection === collection).length;
  }

  /** Queues a write; resolves once it is stored durably. */
  async add(entry: QueueEntry): Promise<void> {
    await this.loaded;
    this.entries.push(entry);
    this.core.changed(entry.m.collection);
    await this.save();
    void this.flush();
  }

  private save(): Promise<void> {
    const now = Date.now();
    this.entries = this.entries.filter((e) => !e.t || now - e.t < KEEP_ACKED_MS);
    // Serialized, and each write takes the entries as they are when it runs: the last one wins.
    return (this.saving = this.saving.then(
      () => this.core.store.set(KEY, this.entries),
      () => this.core.store.set(KEY, this.entries),
    ));
  }

  /**
   * Sends unacknowledged writes in order until none is left or the relay cannot be reached;
   * while a flush runs, another call joins it.
   */
  flush(): Promise<void> {
    if (this.flushing || !this.core.online) return this.running;
    this.flushing = true;
    return (this.running = this.drain());
  }

  private async drain(): Promise<void> {
    clearTimeout(this.timer);
    let size = BATCH;
    try {
      await this.loaded;
      for (;;) {
        const batch = this.entries.filter((e) => !e.ack).slice(0, size);
        if (!batch.length || !this.core.online) return;
        let res: Response;
        try {
          res = await this.core.request("/v1/mutations", {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ mutations: batch.map((e) => e.m), atomic: false }),
          });
        } catch {
          return this.later();
        }
        if ([400, 403, 404, 413].includes(res.status)) {
          // The request as a whole was refused: send one at a time to find the write to drop.
          if (size > 1) {
            await res.body?.cancel();
            size = 1;
            continue;
          }
          const error = await res.json().catch(() => null);
          this.settle({ mutation: batch[0].m, result: { id: batch[0].m.id, status: res.status === 403 ? "forbidden" : "rejected", error } });
        } else if (!res.ok) {
          await res.body?.cancel();
          return this.later();
        } else {
          const body: { results: MutationResult[]; cursor: string } = await res.json();
          for (const result of body.results) {
            const e = batch.find((e) => e.m.id === result.id);
            if (!e) continue;
            if (result.status === "applied" || result.status === "duplicate") {
              e.ack = body.cursor;
              e.t = Date.now();
            } else this.settle({ mutation: e.m, result });
          }
          size = BATCH;
        }
        this.attempt = 0;
        await this.save();
        this.core.changed();
      }
    } finally {
      this.flushing = false;
    }
  }

  /**
   * The client is closing (it is offline by now): cancels a scheduled retry and resolves once
   * the flush in progress has ended and every answer it got is stored, so that a client
   * opened next on the same store starts from what this one knew.
   */
  async close(): Promise<void> {
    clearTimeout(this.timer);
    await this.running;
    clearTimeout(this.timer);
    await this.saving.catch(() => {});
  }

  /** A write the relay did not apply leaves the queue (the server's state wins) and is reported. */
  private settle(c: Conflict) {
    this.entries = this.entries.filter((e) => e.m.id !== c.mutation.id);
    this.core.conflict(c);
  }

  private later() {
    this.timer = setTimeout(() => void this.flush(), backoffDelay(this.attempt++, this.core.backoff.base, this.core.backoff.max));
  }
}
