//! The built-in console page, as a user sees it: the relay (with `[http] console = true`) on a
//! private Postgres serves `/`; headless Chromium opens it; a row inserted after the page went
//! live must appear in the page's feed. The test reads the page through the DevTools protocol
//! (a minimal WebSocket client below) and takes a screenshot.
//!
//! (docs/console.png comes from the todo app's test, tests/it/console_todos.rs.)
//! Skipped (with a message) when `/usr/bin/chromium` is absent, unless `CI=true` (then it fails).

use serde_json::json;
use std::time::{Duration, Instant};
use testkit::browser::{chromium_available, page_target, Browser, Cdp};
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::{http_status, postgres_config, read_log, start_ready_relay_with, wait_until};

const FEED: &str = "document.getElementById('feed').innerText";

#[test]
fn the_console_shows_a_row_inserted_after_the_page_went_live() {
    if !chromium_available() {
        return;
    }
    let started = Instant::now();
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE todos (id int PRIMARY KEY, title text, done bool, tags text[])",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.todos"],
        port,
    )
    .replace("[http]\n", "[http]\nconsole = true\n");
    let (mut relay, addr) = start_ready_relay_with(dir.path(), &config, port);
    assert_eq!(http_status(addr, "/"), Some(200));
    pg.psql(
        "app",
        "INSERT INTO todos VALUES (1, 'Written before the page opened', false, '{demo}')",
    );
    wait_until(Duration::from_secs(30), "the first row in the log", || {
        read_log(&dir.path().join("log")).len() == 1
    });

    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().unwrap();
    let browser_log = dir.path().join("chromium.log");
    let browser = Browser::open(
        &url,
        profile.path(),
        &browser_log,
        &["--window-size=1280,860"],
    );
    let mut page = Cdp::connect(&page_target(profile.path(), &url));

    page.eval_until(
        "the stream to go live",
        "document.getElementById('state').textContent",
        |v| v == "live",
    );
    page.eval_until(
        "the collection list",
        "document.getElementById('collections').innerText",
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("public.todos") && t.contains("key id"))
        },
    );
    page.eval_until("the earlier row, replayed", FEED, |v| {
        v.as_str()
            .is_some_and(|t| t.contains("Written before the page opened"))
    });
    println!("console: page live after {:?}", started.elapsed());

    let committed = Instant::now();
    pg.psql(
        "app",
        "INSERT INTO todos VALUES (2, 'Inserted after the page went live', false, '{live,browser}')",
    );
    page.eval_until("the new row on the page", FEED, |v| {
        v.as_str()
            .is_some_and(|t| t.contains("Inserted after the page went live"))
    });
    println!(
        "console: the insert appeared {:?} after the commit",
        committed.elapsed()
    );
    // The newest card is the insert, readable: op, collection, key and the row.
    let card = page.eval("document.querySelector('#feed li').innerText");
    let card = card.as_str().unwrap().to_lowercase();
    for part in [
        "insert",
        "public.todos",
        "{\"id\":2}",
        "\"title\": \"inserted after the page went live\"",
        "\"live\"",
    ] {
        assert!(card.contains(part), "card lacks {part:?}:\n{card}");
    }

    // A few more kinds of change; the page still renders (a screenshot is taken).
    pg.psql(
        "app",
        "ALTER TABLE todos REPLICA IDENTITY FULL;
         UPDATE todos SET done = true WHERE id = 1;
         INSERT INTO todos VALUES (3, 'Removed again', false, '{}');
         DELETE FROM todos WHERE id = 3;",
    );
    page.eval_until(
        "the delete on the page",
        "document.querySelector('#feed li').className",
        |v| v == "delete",
    );
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    drop(page);
    drop(browser);
    relay.assert_running();
    assert_eq!(relay.terminate(), Some(0));
    println!("console: total {:?}", started.elapsed());
}
