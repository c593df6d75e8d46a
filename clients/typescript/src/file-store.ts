import { mkdir, open, readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import type { Store } from "./types.js";

/**
 * Persists each key as a JSON file in `dir` (Node). A write goes to a temporary file that is
 * fsynced and renamed over the old one, so a crash leaves either the old or the new value.
 */
export function fileStore(dir: string): Store {
  const ready = mkdir(dir, { recursive: true });
  const path = (key: string) => join(dir, encodeURIComponent(key) + ".json");
  // Writes of one key are serialized so that an older value never lands after a newer one.
  const chains = new Map<string, Promise<void>>();
  return {
    async get(key) {
      await ready;
      try {
        return JSON.parse(await readFile(path(key), "utf8"));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw e;
      }
    },
    set(key, value) {
      const text = JSON.stringify(value);
      const write = async () => {
        await ready;
        const tmp = path(key) + ".tmp";
        const file = await open(tmp, "w");
        try {
          await file.writeFile(text);
          await file.sync();
        } finally {
          await file.close();
        }
        await rename(tmp, path(key));
      };
      const next = (chains.get(key) ?? Promise.resolve()).then(write, write);
      chains.set(key, next);
      return next;
    },
  };
}
