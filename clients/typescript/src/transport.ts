import { backoffDelay } from "./backoff.js";
import { SseParser } from "./sse.js";
import type { ChangeRecord } from "./types.js";

/** What a transport needs from the client (auth, online state, options, error events). */
export interface Core {
  request(path: string, init?: RequestInit): Promise<Response>;
  online: boolean;
  whenOnline(signal: AbortSignal): Promise<void>;
  mode: "auto" | "stream" | "poll";
  pollWait: number;
  backoff: { base?: number; max?: number };
  fail(collection: string, res: Response): Promise<void>;
}

/** The collection side: where the changes go. */
export interface Sink {
  name: string;
  query: string;
  cursor: string | null;
  synced: boolean;
  attempt?: AbortController;
  /** Applies one batch; then marks the state caught up at `ready` (a cursor) when given. */
  apply(records: ChangeRecord[], ready?: string | null, lagMs?: number): void;
  /** The relay answered 410: start again from nothing. */
  expired(): void;
}

/**
 * How one connection ended: `now` reconnect at once; `fresh` it had caught up, so the
 * backoff starts over; `retry` back off; `nostream` streaming does not work here.
 */
type Outcome = "now" | "fresh" | "retry" | "nostream";

/** With `auto`, a 200 stream that sends no byte in this time is taken as buffered by a proxy. */
const FIRST_BYTE_MS = 10000;

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });

/** Keeps `sink` in sync until `signal` aborts: stream (or long poll), reconnect, back off. */
export async function syncLoop(core: Core, sink: Sink, signal: AbortSignal): Promise<void> {
  let attempt = 0;
  let poll = core.mode === "poll";
  while (!signal.aborted) {
    if (!core.online) {
      await core.whenOnline(signal);
      continue;
    }
    const ctl = (sink.attempt = new AbortController());
    const stop = () => ctl.abort();
    signal.addEventListener("abort", stop);
    let outcome: Outcome;
    try {
      outcome = await (poll ? pollOnce : streamOnce)(core, sink, ctl);
    } catch {
      outcome = "retry";
    } finally {
      signal.removeEventListener("abort", stop);
    }
    if (outcome === "nostream") poll = true;
    else if (outcome !== "now") {
      if (outcome === "fresh") attempt = 0;
      await sleep(backoffDelay(attempt++, core.backoff.base, core.backoff.max), signal);
    } else attempt = 0;
  }
}

function streamOnce(core: Core, sink: Sink, ctl: AbortController): Promise<Outcome> {
  const headers: Record<string, string> = { accept: "text/event-stream" };
  if (sink.cursor) headers["last-event-id"] = sink.cursor;
  return core.request("/v1/stream?" + sink.query, { headers, signal: ctl.signal }).then(async (res) => {
    if (res.status === 410) return expire(sink, res);
    if (!res.ok) return core.fail(sink.name, res).then(() => "retry");
    const auto = core.mode === "auto";
    if (!res.body || !res.headers.get("content-type")?.includes("text/event-stream")) {
      await res.body?.cancel();
      return auto ? "nostream" : "retry";
    }
    let silent = false;
    const timer = auto ? setTimeout(() => ((silent = true), ctl.abort()), FIRST_BYTE_MS) : undefined;
    const reader = res.body.getReader();
    const text = new TextDecoder();
    const sse = new SseParser();
    let caughtUp = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        clearTimeout(timer);
        if (done) return caughtUp ? "fresh" : "retry";
        let batch: ChangeRecord[] = [];
        for (const ev of sse.push(text.decode(value, { stream: true }))) {
          if (ev.event === "change") batch.push(JSON.parse(ev.data));
          else if (ev.event === "ready" || ev.event === "heartbeat") {
            const info = JSON.parse(ev.data || "{}");
            const ready = ev.event === "ready";
            if (ready) caughtUp = true;
            sink.apply(batch, ready ? (ev.id ?? info.cursor) : undefined, info.lag_ms);
            batch = [];
          }
        }
        if (batch.length) sink.apply(batch);
      }
    } catch (e) {
      if (silent) return "nostream";
      throw e;
    } finally {
      clearTimeout(timer);
      ctl.abort();
    }
  });
}

async function pollOnce(core: Core, sink: Sink, ctl: AbortController): Promise<Outcome> {
  const wait = sink.synced ? core.pollWait : 0;
  const res = await core.request(
    `/v1/changes?${sink.query}&since=${encodeURIComponent(sink.cursor ?? "0")}&limit=1000&wait=${wait}`,
    { signal: ctl.signal },
  );
  if (res.status === 410) return expire(sink, res);
  if (!res.ok) return core.fail(sink.name, res).then(() => "retry");
  const page = await res.json();
  // An empty log answers with the `since` it was given: `0` is no cursor.
  sink.apply(page.changes, page.has_more ? undefined : page.cursor === "0" ? null : page.cursor, page.lag_ms);
  return "now";
}

async function expire(sink: Sink, res: Response): Promise<Outcome> {
  await res.body?.cancel();
  // A 410 for a request from the beginning cannot be cured by starting over: back off.
  const from = sink.cursor;
  sink.expired();
  return from ? "now" : "retry";
}
