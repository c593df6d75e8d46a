// The library in headless Chromium against the relay binary and a private Postgres: fetch
// streaming with headers, IndexedDB persistence across a reload (rows, cursor, write queue),
// and a write made while the DevTools protocol has the page offline, which reaches Postgres
// exactly once when the network is back. The DevTools protocol runs over
// --remote-debugging-pipe (file descriptors 3 and 4, NUL-terminated JSON), so no WebSocket
// client is needed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Pg, Relay, missingPrerequisite, freePort } from "./harness.mjs";

const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";
const missing = missingPrerequisite() ?? (existsSync(chromium) ? null : `${chromium} is missing (apt-get install chromium)`);
if (missing && process.env.CI === "true") throw new Error(`browser tests cannot run: ${missing}`);

test("in Chromium: sync through fetch streaming; IndexedDB keeps rows, cursor and queued writes across a reload; a write made offline (DevTools) reaches Postgres once", { skip: missing ? `skipped: ${missing}` : false, timeout: 180000 }, async (t) => {
  const pg = await Pg.start();
  t.after(() => pg.stopSync());
  pg.psql("postgres", "CREATE DATABASE web");
  pg.psql("web", `CREATE TABLE todos (id int PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false);
                  INSERT INTO todos SELECT i, 'todo ' || i, false FROM generate_series(1, 50) i`);
  const relay = await Relay.start(pg, "web", ["public.todos"],
    '[writes]\nallow_unauthenticated = true\n[collections."public.todos".write]\n');
  t.after(() => relay.stop());

  const bundle = await build({
    entryPoints: [fileURLToPath(new URL("./browser-page.mjs", import.meta.url))],
    bundle: true, format: "esm", platform: "browser", write: false,
  });
  const results = [];
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  const posts = [];
  const server = createServer((req, res) => {
    if (req.url.startsWith("/v1/")) {
      if (req.url === "/v1/mutations") posts.push(Date.now());
      // The page's API calls go to the relay unchanged (same origin for the page).
      const upstream = request({ host: "127.0.0.1", port: relay.port, path: req.url, method: req.method, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      });
      upstream.on("error", () => res.destroy());
      req.pipe(upstream);
      res.on("close", () => upstream.destroy());
    } else if (req.url === "/result") {
      let body = "";
      req.on("data", (c) => (body += c)).on("end", () => {
        const result = JSON.parse(body);
        results.push(result);
        // A change between the two page loads: the reloaded page must get it.
        const between = result.phase === "1" && !result.error;
        if (between) pg.psql("web", "UPDATE todos SET title = 'between loads' WHERE id = 7");
        // The page reloads when it gets the answer: answer once the relay has logged the change,
        // so the reloaded page's catch-up must include it (else the test races the ingest).
        (between ? untilLogged(relay, (c) => c.after?.title === "between loads") : Promise.resolve())
          .then(() => res.end("ok"), (e) => (results.push({ phase: "1", error: String(e) }), done()));
        if (result.phase === "2" || result.error) done();
      });
    } else if (req.url === "/page.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle.outputFiles[0].contents);
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end('<!doctype html><script type="module" src="/page.js"></script>');
    }
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  t.after(() => (server.close(), server.closeAllConnections()));

  const profile = mkdtempSync(join(tmpdir(), "deltarelay-chromium-"));
  const browser = spawn(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--remote-debugging-pipe", `--user-data-dir=${profile}`, `http://127.0.0.1:${port}/`],
    { detached: true, stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"] });
  const cdp = devTools(browser.stdio[3], browser.stdio[4]);
  const killBrowser = () => {
    try { process.kill(-browser.pid, "SIGKILL"); } catch {}
  };
  process.on("exit", killBrowser);
  t.after(() => (killBrowser(), rmSync(profile, { recursive: true, force: true })));

  let timer;
  const timeout = new Promise((_, fail) => (timer = setTimeout(() => fail(new Error(`no result from the page in 90 s: ${JSON.stringify(results)}`)), 90000)));
  await Promise.race([finished, timeout]).finally(() => clearTimeout(timer));
  for (const r of results) assert.equal(r.error, undefined, r.error);
  const [one, two] = results;
  const table = (rows) => [...rows].sort((a, b) => a.id - b.id);

  assert.deepEqual(one.first, { size: 0, synced: false, pending: 0, row: null }, "an empty IndexedDB at first");
  assert.equal(one.requests[0].lastEventId, null);
  assert.equal(one.rows.length, 50);
  assert.deepEqual(one.queuedFirst, { size: 0, synced: false, pending: 0, row: null });

  assert.equal(two.first.size, 50, "rows come back from IndexedDB before any network");
  assert.equal(two.first.synced, false);
  assert.equal(two.requests[0].lastEventId, one.cursor, "resumed from the stored cursor");
  assert.deepEqual(table(two.rows), pg.rows("web", "todos"));
  assert.equal(two.rows.find((r) => r.id === 7).title, "between loads");
  assert.equal(two.queuedFirst.pending, 1, "the queued write survived the reload");
  assert.deepEqual(two.queuedFirst.row, { id: 9001, title: "queued in the browser", done: false });

  // The network off through the DevTools protocol; a write queues, its sends fail.
  const { targetInfos } = await cdp.send("Target.getTargets");
  const target = targetInfos.find((i) => i.type === "page" && i.url.includes("phase=2"));
  assert.ok(target, `the page among ${JSON.stringify(targetInfos.map((i) => i.url))}`);
  const { sessionId } = await cdp.send("Target.attachToTarget", { targetId: target.targetId, flatten: true });
  const network = (offline) =>
    cdp.send("Network.emulateNetworkConditions", { offline, latency: 0, downloadThroughput: -1, uploadThroughput: -1 }, sessionId);
  const evaluate = async (expression) => {
    const r = await cdp.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true }, sessionId);
    if (r.exceptionDetails) throw new Error(`${expression}: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    return r.result.value;
  };
  await cdp.send("Network.enable", {}, sessionId);
  await network(true);
  const before = posts.length;
  const offline = await evaluate("writeWhileOffline()");
  assert.equal(offline.pending, 1);
  assert.ok(offline.failures >= 2, "sends failed while offline");
  assert.equal(offline.onLine, false, "navigator.onLine follows the emulation");
  assert.equal(posts.length, before, "no write left the browser while offline");
  assert.equal(pg.psql("web", "SELECT count(*) FROM todos WHERE id = 9002"), "0");

  await network(false);
  const sent = await evaluate("untilSent()");
  assert.deepEqual(sent.acked, [true]);
  assert.deepEqual(pg.rows("web", "todos").filter((r) => r.id > 9000), [{ id: 9002, title: "written while offline", done: false }],
    "the offline write reached Postgres; the one of the client kept offline did not");
  assert.equal(pg.psql("web", "SELECT count(*) FROM deltarelay.mutations"), "1", "applied exactly once");
  cdp.close();
});

/** A DevTools protocol connection over Chromium's --remote-debugging-pipe. */
function devTools(toBrowser, fromBrowser) {
  let next = 0;
  let buffered = "";
  const calls = new Map();
  fromBrowser.on("data", (chunk) => {
    const parts = (buffered + chunk.toString("utf8")).split("\0");
    buffered = parts.pop();
    for (const part of parts) {
      const msg = JSON.parse(part);
      const call = calls.get(msg.id);
      if (!call) continue;
      calls.delete(msg.id);
      if (msg.error) call.fail(new Error(`${call.method}: ${msg.error.message}`));
      else call.ok(msg.result);
    }
  });
  fromBrowser.on("error", () => {});
  toBrowser.on("error", () => {});
  return {
    send(method, params = {}, sessionId) {
      const id = ++next;
      return new Promise((ok, fail) => {
        calls.set(id, { ok, fail, method });
        toBrowser.write(JSON.stringify({ id, method, params, ...(sessionId && { sessionId }) }) + "\0");
      });
    },
    close() {
      fromBrowser.destroy();
      toBrowser.destroy();
    },
  };
}

/** Resolves once the relay's log holds a change for which `matches` is true (30 s at most). */
async function untilLogged(relay, matches) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const page = await (await fetch(`${relay.url}/v1/changes?since=0&limit=10000`)).json();
    if (page.changes.some(matches)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the relay did not log the change between the loads in 30 s");
}
