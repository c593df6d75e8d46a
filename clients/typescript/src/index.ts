export { createClient, Client, Collection, type Snapshot } from "./client.js";
export { memoryStore, indexedDbStore } from "./stores.js";
export { SseParser, type SseEvent } from "./sse.js";
export { backoffDelay } from "./backoff.js";
export { keyText, cursorReached, applyRecords, rebase, type QueueEntry } from "./view.js";
export type * from "./types.js";
