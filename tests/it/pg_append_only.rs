//! Insert-only tables without a key (`append_only = true`), end to end: they go into a second
//! publication that publishes only inserts and truncates (so the application's UPDATEs and
//! DELETEs on them keep working), and every inserted row is in the log exactly once under a
//! stable synthetic key, across kill -9, copies beside the stream and the upgrade path where
//! that publication is created after the slot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::{read_log, start_ready_relay_with, wait_until, RelayProcess};
use tokio::task::block_in_place;

fn config(pg: &PgServer, dir: &Path, port: u16, tables: &str) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:{port}"

[log]
dir = {log:?}

[[sources]]
name = "app_pg"
kind = "postgres"
url = {url:?}
slot = "deltarelay_test"
publication = "deltarelay_test"
tables = [{tables}]
"#,
        log = dir.join("log").display().to_string(),
        url = pg.url("app"),
    )
}

/// Inserts rows `n = next, next+1, …` into `table` (two per transaction) until stopped.
async fn insert_load(
    url: String,
    table: &'static str,
    next: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let client = testkit::pg::connect(&url).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(2, Ordering::SeqCst);
        client
            .batch_execute(&format!(
                "INSERT INTO {table} VALUES ({n}, 'm{n}'), ({}, 'm{}')",
                n + 1,
                n + 1
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How many times each `n` of `collection` is in the log.
fn logged(dir: &Path, collection: &str) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for record in read_log(&dir.join("log")) {
        if record.collection == collection {
            let n = record.after.as_ref().unwrap()["n"].as_i64().unwrap();
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

/// Every `n` in `1..next` exactly once.
fn wait_exactly_once(dir: &Path, relay: &mut RelayProcess, collection: &str, next: i64) {
    let mut seen = BTreeMap::new();
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_secs(60),
            "every inserted row in the log",
            || {
                relay.assert_running();
                seen = logged(dir, collection);
                seen.len() as i64 == next - 1
            },
        )
    }));
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "rows logged more than once: {twice:?}");
    let missing: Vec<i64> = (1..next).filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} rows missing, from {:?}:\n{}",
        missing.len(),
        missing.first(),
        relay.output()
    );
    done.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_only_table_syncs_every_insert_once_across_kill_9() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE audit (n bigint, msg text);
         INSERT INTO audit SELECT g, 'm' || g FROM generate_series(1, 100) g;
         CREATE TABLE items (id int PRIMARY KEY);",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let tables = r#"{ name = "public.audit", append_only = true }, "public.items""#;
    let (mut relay, _addr) = block_in_place(|| {
        start_ready_relay_with(dir.path(), &config(&pg, dir.path(), port, tables), port)
    });
    // Only in the insert-and-truncate publication: the application's UPDATE and DELETE work.
    pg.psql(
        "app",
        "UPDATE audit SET msg = 'edited' WHERE n = 1; DELETE FROM audit WHERE n = 2;",
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(pubname || ':' || pubupdate || pubdelete, ',' ORDER BY pubname)
               FROM pg_publication p
              WHERE EXISTS (SELECT 1 FROM pg_publication_tables t
                             WHERE t.pubname = p.pubname AND t.tablename = 'audit')"
        ),
        "deltarelay_test_append:falsefalse"
    );

    let next = Arc::new(AtomicI64::new(101));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(insert_load(
        pg.url("app"),
        "audit",
        next.clone(),
        stop.clone(),
    ));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        relay.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay.spawn();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let next = next.load(Ordering::SeqCst);
    assert!(next > 200, "the writer wrote while the relay was killed");
    block_in_place(|| wait_exactly_once(dir.path(), &mut relay, "public.audit", next));
    // Keys are synthetic and distinct.
    let keys: std::collections::BTreeSet<String> = read_log(&dir.path().join("log"))
        .iter()
        .filter(|r| r.collection == "public.audit")
        .map(|r| {
            r.key.as_ref().unwrap()["_row"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len() as i64, next - 1);

    // Uninstalling drops both publications.
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    let dropped = std::process::Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["slot", "drop", "--config"])
        .arg(dir.path().join("deltarelay.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&dropped.stdout);
    assert!(
        stdout.contains("dropped publication deltarelay_test_append"),
        "{stdout}"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'deltarelay_test%'"
        ),
        "0"
    );
}

/// The second publication is created when the first append-only table is configured, after
/// the slot: it joins the stream once the slot has passed it, and the table is copied beside
/// the stream while inserts go on, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_only_table_added_later_joins_through_a_new_publication() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE events_log (n bigint, msg text); CREATE TABLE items (id int PRIMARY KEY);",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut relay, _addr) = block_in_place(|| {
        start_ready_relay_with(
            dir.path(),
            &config(&pg, dir.path(), port, "\"public.items\""),
            port,
        )
    });
    let next = Arc::new(AtomicI64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(insert_load(
        pg.url("app"),
        "events_log",
        next.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_publication WHERE pubname = 'deltarelay_test_append'"
        ),
        "0",
        "created only when there are append-only tables"
    );
    let tables = r#""public.items", { name = "public.events_log", append_only = true }"#;
    std::fs::write(
        dir.path().join("deltarelay.toml"),
        config(&pg, dir.path(), port, tables),
    )
    .unwrap();
    relay.spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.kill();
    relay.spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let next = next.load(Ordering::SeqCst);
    block_in_place(|| wait_exactly_once(dir.path(), &mut relay, "public.events_log", next));
    pg.psql("app", "INSERT INTO events_log VALUES (-1, 'last')");
    block_in_place(|| {
        wait_until(Duration::from_secs(30), "streaming on", || {
            logged(dir.path(), "public.events_log").contains_key(&-1)
        })
    });
    assert!(
        relay.output().contains("join once the stream has passed"),
        "{}",
        relay.output()
    );
}
