//! The console's todo app (src/http/console-todos.js on the client library's committed bundle),
//! as a newcomer uses it after `./deploy/quickstart.sh`: the relay binary with the quick
//! start's table (deploy/quickstart.sql) and writes on, a private Postgres, headless Chromium
//! driven through the DevTools protocol. Adding, ticking and deleting a todo reach Postgres;
//! with the "offline" switch on, a new todo is shown and counted pending but is not in
//! Postgres until the switch is off again; a change made with psql shows in the app; a write
//! made with the network cut (DevTools protocol) or queued before a reload (IndexedDB) reaches
//! Postgres once. Without
//! `[writes]` the app says it is read-only and offers no writes.
//!
//! `DELTARELAY_UPDATE_SCREENSHOT=1` also writes the screenshot to docs/console.png.
//! Skipped (with a message) when `/usr/bin/chromium` is absent, unless `CI=true` (then it fails).

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::browser::{chromium_available, page_target, Browser, Cdp};
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::{postgres_config, start_ready_relay_with, RelayProcess};

const DEMO_SQL: &str = include_str!("../../deploy/quickstart.sql");
const WRITES: &str = "\n[writes]\nallow_unauthenticated = true\n\n\
                      [collections.\"public.todos\".write]\n\
                      columns = [\"title\", \"done\", \"created_at\"]\n";
const TODOS: &str = "[...document.querySelectorAll('#todos li .title')].map(e => e.textContent)";
const PENDING: &str = "document.getElementById('pending').textContent";
/// The titles of the unacknowledged writes in the app's IndexedDB queue, as the previous
/// evaluation read them (each evaluation starts a new read; poll it).
const QUEUED_IN_INDEXEDDB: &str = "(() => { const open = indexedDB.open('deltarelay-console'); \
    open.onsuccess = () => { const get = open.result.transaction('kv').objectStore('kv').get('queue'); \
    get.onsuccess = () => { window.queuedTitles = (get.result ?? []).filter(e => !e.ack) \
    .map(e => e.m.value?.title); open.result.close(); }; }; return window.queuedTitles ?? null; })()";

/// The relay (console on, `extra` appended to its config) on a fresh Postgres with the demo
/// table, and Chromium showing the console once the todo app has loaded.
struct Demo {
    pg: PgServer,
    relay: RelayProcess,
    page: Cdp,
    _browser: Browser,
    _dir: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

impl Demo {
    fn start(extra: &str) -> Demo {
        let pg = PgServer::start();
        pg.psql("app", DEMO_SQL);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = postgres_config(
            &pg.url("app"),
            &dir.path().join("log"),
            &["public.todos"],
            port,
        )
        .replace("[http]\n", "[http]\nconsole = true\n")
            + extra;
        let (relay, addr) = start_ready_relay_with(dir.path(), &config, port);
        let url = format!("http://{addr}/");
        let profile = tempfile::tempdir().unwrap();
        let browser = Browser::open(
            &url,
            profile.path(),
            &dir.path().join("chromium.log"),
            &["--window-size=1280,860"],
        );
        let mut page = Cdp::connect(&page_target(profile.path(), &url));
        page.eval_until("the todo app with the demo rows", TODOS, |v| {
            has(v, "Try deltarelay") && has(v, "Write the client")
        });
        page.eval_until(
            "the app to be synced",
            "document.getElementById('freshness').textContent",
            |v| v.as_str().is_some_and(|t| t.starts_with("synced")),
        );
        Demo {
            pg,
            relay,
            page,
            _browser: browser,
            _dir: dir,
            _profile: profile,
        }
    }

    /// Types `title` into the new-todo field and submits the form.
    fn add(&mut self, title: &str) {
        let script = format!(
            "(() => {{ document.getElementById('new-title').value = {}; \
             document.getElementById('add').requestSubmit(); return true; }})()",
            json!(title)
        );
        assert_eq!(self.page.eval(&script), json!(true));
    }

    /// Clicks `what` (a selector) inside the list item showing `title`.
    fn click_in(&mut self, title: &str, what: &str) {
        let script = format!(
            "(() => {{ const li = [...document.querySelectorAll('#todos li')]\
             .find(li => li.querySelector('.title')?.textContent === {}); \
             if (!li) return false; li.querySelector({}).click(); return true; }})()",
            json!(title),
            json!(what)
        );
        assert_eq!(self.page.eval(&script), json!(true), "no todo {title:?}");
    }

    /// `done` of the rows titled `title` in Postgres: `true`, `false` (comma-separated when
    /// several), or empty when there is none.
    fn done_in_pg(&self, title: &str) -> String {
        self.pg.psql(
            "app",
            &format!(
                "SELECT string_agg(done::text, ',') FROM todos WHERE title = '{}'",
                title.replace('\'', "''")
            ),
        )
    }

    /// Waits up to 30 s for `done_in_pg(title)` to be `expected`; on timeout the panic shows
    /// what the page shows.
    fn until_pg(&mut self, what: &str, title: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done_in_pg(title) != expected {
            if Instant::now() > deadline {
                let shown = self.page.eval(
                    "['writes', 'pending', 'freshness', 'app-message', 'todos']\
                     .map(id => id + ': ' + document.getElementById(id).innerText).join('\\n')",
                );
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `Network.emulateNetworkConditions` parameters: the page's network cut or restored.
fn network(offline: bool) -> Value {
    json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
}

fn has(v: &Value, title: &str) -> bool {
    v.as_array()
        .is_some_and(|items| items.iter().any(|i| i == title))
}

#[test]
fn the_console_todo_app_writes_through_the_library_and_queues_while_offline() {
    if !chromium_available() {
        return;
    }
    let started = Instant::now();
    let mut demo = Demo::start(WRITES);
    println!("todos: app synced after {:?}", started.elapsed());
    assert_eq!(
        demo.page.eval("document.getElementById('add').hidden"),
        json!(false),
        "writes are on: the form is shown"
    );

    // Add → the row is in Postgres, not done.
    demo.add("Added in the browser");
    demo.page
        .eval_until("the new todo on the page", TODOS, |v| {
            has(v, "Added in the browser")
        });
    demo.until_pg(
        "the browser's insert in Postgres",
        "Added in the browser",
        "false",
    );

    // Tick → done in Postgres; delete → gone from Postgres and from the page.
    demo.click_in("Added in the browser", "input[type=checkbox]");
    demo.until_pg("the tick in Postgres", "Added in the browser", "true");
    demo.click_in("Added in the browser", "button.delete");
    demo.until_pg("the delete in Postgres", "Added in the browser", "");
    demo.page
        .eval_until("the todo gone from the page", TODOS, |v| {
            v.is_array() && !has(v, "Added in the browser")
        });
    // The row is gone from Postgres before the relay's answer to the delete comes back.
    demo.page
        .eval_until("the delete acknowledged", PENDING, |v| v == "0 pending");

    // Offline: the todo shows at once and is counted pending, but does not reach Postgres.
    demo.page.eval("document.getElementById('offline').click()");
    assert_eq!(
        demo.page.eval("document.getElementById('offline').checked"),
        json!(true)
    );
    demo.add("Written offline");
    demo.page
        .eval_until("the offline todo on the page", TODOS, |v| {
            has(v, "Written offline")
        });
    demo.page
        .eval_until("the pending badge", PENDING, |v| v == "1 pending");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(demo.done_in_pg("Written offline"), "", "sent while offline");
    assert_eq!(demo.page.eval(PENDING), json!("1 pending"));
    assert_eq!(
        demo.page
            .eval("document.getElementById('freshness').textContent"),
        json!("offline: showing local state")
    );

    // Online again: sent, acknowledged, in Postgres once.
    demo.page.eval("document.getElementById('offline').click()");
    demo.page
        .eval_until("the badge back to 0", PENDING, |v| v == "0 pending");
    demo.until_pg("the offline write in Postgres", "Written offline", "false");

    // A change made in Postgres shows in the app.
    demo.pg.psql(
        "app",
        "UPDATE todos SET title = 'Renamed with psql', done = true WHERE title = 'Try deltarelay'",
    );
    demo.page
        .eval_until("the psql change in the app", TODOS, |v| {
            has(v, "Renamed with psql") && !has(v, "Try deltarelay")
        });
    let ticked = "[...document.querySelectorAll('#todos li.done .title')].map(e => e.textContent)";
    demo.page
        .eval_until("the psql tick in the app", ticked, |v| {
            has(v, "Renamed with psql")
        });

    // The network cut through the DevTools protocol (the app's switch still says online):
    // the write is queued and retried, and arrives once the network is back.
    demo.page.call("Network.enable", json!({}));
    demo.page
        .call("Network.emulateNetworkConditions", network(true));
    demo.add("Written with the network down");
    demo.page
        .eval_until("the pending badge, network down", PENDING, |v| {
            v == "1 pending"
        });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(demo.done_in_pg("Written with the network down"), "");
    demo.page
        .call("Network.emulateNetworkConditions", network(false));
    demo.until_pg(
        "the write queued while the network was down",
        "Written with the network down",
        "false",
    );
    demo.page
        .eval_until("the badge back to 0 after the network", PENDING, |v| {
            v == "0 pending"
        });

    // Queued offline, then the page reloads: the write waits in IndexedDB and the reloaded
    // app (online again) sends it, once.
    demo.page.eval("document.getElementById('offline').click()");
    demo.add("Queued across a reload");
    demo.page
        .eval_until("the pending badge before the reload", PENDING, |v| {
            v == "1 pending"
        });
    // The badge counts the write as soon as it is queued; reload only once IndexedDB has it.
    demo.page
        .eval_until("the queued write in IndexedDB", QUEUED_IN_INDEXEDDB, |v| {
            has(v, "Queued across a reload")
        });
    demo.page.call("Page.reload", json!({}));
    demo.until_pg(
        "the write queued before the reload",
        "Queued across a reload",
        "false",
    );
    demo.page
        .eval_until("the reloaded app with the queued todo", TODOS, |v| {
            has(v, "Queued across a reload") && has(v, "Written with the network down")
        });
    demo.page
        .eval_until("the badge at 0 after the reload", PENDING, |v| {
            v == "0 pending"
        });
    assert_eq!(
        demo.pg
            .psql("app", "SELECT count(*) FROM deltarelay.mutations"),
        "6",
        "insert, tick, delete and the three queued inserts: each applied once"
    );
    assert_eq!(
        demo.pg.psql(
            "app",
            "SELECT count(*) FROM todos WHERE title IN ('Written offline', \
             'Written with the network down', 'Queued across a reload')"
        ),
        "3"
    );

    let shot = demo
        .page
        .call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if std::env::var_os("DELTARELAY_UPDATE_SCREENSHOT").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
        std::fs::write(&path, &png).unwrap();
        println!("todos: wrote {}", path.display());
    }
    demo.relay.assert_running();
    println!("todos: total {:?}", started.elapsed());
}

#[test]
fn without_writes_the_console_todo_app_is_read_only() {
    if !chromium_available() {
        return;
    }
    let mut demo = Demo::start("");
    demo.page.eval_until(
        "the read-only notice",
        "document.getElementById('writes').textContent",
        |v| {
            v.as_str()
                .is_some_and(|t| t.starts_with("Writes are off, read-only"))
        },
    );
    assert_eq!(
        demo.page.eval("document.getElementById('add').hidden"),
        json!(true)
    );
    assert_eq!(
        demo.page
            .eval("[...document.querySelectorAll('#todos li input')].every(i => i.disabled)"),
        json!(true),
        "no ticking without writes"
    );
    // The app still follows the database.
    demo.pg.psql(
        "app",
        "INSERT INTO todos (title) VALUES ('Read-only but live')",
    );
    demo.page
        .eval_until("the psql insert in the app", TODOS, |v| {
            has(v, "Read-only but live")
        });
    demo.relay.assert_running();
}
