import { useSyncExternalStore } from "react";
import type { Collection, Snapshot } from "./client.js";

/**
 * The rows and sync info of `collection`, re-rendering on every change:
 * `const { rows, info } = useCollection(relay.collection("public.todos"))`.
 * `relay.collection(...)` returns the same object for the same shape, so it may be called in
 * render.
 */
export function useCollection(collection: Collection): Snapshot {
  return useSyncExternalStore(collection.listen, collection.snapshot, collection.snapshot);
}
