//! Initial copy, tables added and removed, schema changes, keyless tables, tombstone retention
//! and a lost slot, end to end: a private Postgres, the relay binary, its log and its HTTP API.

use deltarelay::log::LogReader;
use deltarelay::record::{ChangeRecord, Op};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::free_port;
use testkit::http::get;
use testkit::pg::PgServer;
use testkit::relay::{
    assert_cursors_increase, client_state, postgres_config, read_log, wait_streaming, wait_until,
    RelayProcess, SLOT,
};

const MARKER: i64 = -1;

/// Random small transactions on `tables` (each `(id bigint PRIMARY KEY, v int, note text)`)
/// until `stop` is set: inserts of new ids, updates and deletes of ids below `max_id`.
/// Returns how many transactions committed.
async fn write_load(
    url: String,
    tables: Vec<&'static str>,
    max_id: i64,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> u64 {
    let client = testkit::pg::connect(&url).await.unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut committed = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.gen_range(1..5) {
            let table = tables[rng.gen_range(0..tables.len())];
            let id = rng.gen_range(1..max_id + 1000);
            sql.push_str(&match rng.gen_range(0..10) {
                0..=3 => format!(
                    "INSERT INTO {table} VALUES ({id}, {}, 'new') ON CONFLICT (id) DO UPDATE SET v = excluded.v;",
                    rng.gen_range(0..1000)
                ),
                4..=7 => format!(
                    "UPDATE {table} SET v = v + 1, note = 'updated' WHERE id = {id};"
                ),
                _ => format!("DELETE FROM {table} WHERE id = {id};"),
            });
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.unwrap();
        committed += 1;
        // A steady load, not a CPU hog: the relay shares two cores with it.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    committed
}

fn create_filled_table(pg: &PgServer, table: &str, rows: i64) {
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO {table} SELECT g, g % 1000, md5(g::text) FROM generate_series(1, {rows}) g;"
        ),
    );
}

fn log_entries(dir: &Path) -> u64 {
    LogReader::open(dir)
        .and_then(|r| r.entry_count())
        .unwrap_or(0)
}

async fn status(addr: SocketAddr) -> Value {
    get(addr, "/v1/status", &[]).await.json()
}

async fn wait_ready(addr: SocketAddr, relay: &mut RelayProcess, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        relay.assert_running();
        if testkit::relay::http_status(addr, "/readyz") == Some(200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay was not ready in time:\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Inserts the marker row into `table` and waits until the log has it: everything committed
/// before it is in the log then.
fn wait_for_marker(
    pg: &PgServer,
    dir: &Path,
    relay: &mut RelayProcess,
    table: &str,
) -> Vec<ChangeRecord> {
    pg.psql(
        "app",
        &format!("INSERT INTO {table} VALUES ({MARKER}, 0, 'marker')"),
    );
    let collection = format!("public.{table}");
    let mut records = vec![];
    wait_until(
        Duration::from_secs(120),
        "the marker row in the log",
        || {
            relay.assert_running();
            records = read_log(dir);
            records.iter().any(|r| {
                r.collection == collection
                    && r.key.as_ref().is_some_and(|k| k["id"] == json!(MARKER))
            })
        },
    );
    records
}

fn assert_table_exact(pg: &PgServer, records: &[ChangeRecord], table: &str) {
    let state = client_state(records);
    let expected = pg.table_state("app", table, &["id"]);
    let got = state
        .get(&format!("public.{table}"))
        .cloned()
        .unwrap_or_default();
    if got != expected {
        let missing = expected.keys().filter(|k| !got.contains_key(*k)).count();
        let extra = got.keys().filter(|k| !expected.contains_key(*k)).count();
        let differ = expected
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .count();
        panic!(
            "{table}: the log differs from the database: {missing} rows missing, {extra} extra, {differ} different (of {})",
            expected.len()
        );
    }
}

/// 200,000 rows exist before the first start while a writer keeps changing them; optionally the
/// relay is killed in the middle of the copy and restarted. Reading the log from the beginning
/// then equals the table, key by key.
async fn copy_under_write_load(kill_midway: bool) {
    const ROWS: i64 = 200_000;
    let pg = Arc::new(PgServer::start());
    create_filled_table(&pg, "items", ROWS);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.items"], port);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(
        pg.url("app"),
        vec!["items"],
        ROWS,
        stop.clone(),
        7,
    ));
    let mut relay = RelayProcess::start(dir.path(), &config);
    let mut saw_progress = false;
    if kill_midway {
        let log_dir = dir.path().to_path_buf();
        let copied = move || log_entries(&log_dir);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while copied() < ROWS as u64 / 4 {
            relay.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "the copy did not progress"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(testkit::relay::http_status(addr, "/readyz"), Some(503));
        let copy = &status(addr).await["sources"][0]["initial_copy"];
        assert_eq!(copy["state"], "copying", "{copy}");
        saw_progress = copy["rows_copied"].as_u64().unwrap() > 0;
        relay.kill();
        eprintln!("killed the relay with {} log entries", copied());
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay.spawn();
    } else {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !saw_progress {
            relay.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "no copy progress in /v1/status"
            );
            if testkit::relay::http_status(addr, "/healthz").is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if let Ok(body) = tokio::time::timeout(Duration::from_secs(2), status(addr)).await {
                let copy = &body["sources"][0]["initial_copy"];
                saw_progress = copy["state"] == "copying"
                    && copy["rows_copied"].as_u64().unwrap_or(0) > 0
                    && copy["rows_estimated"].as_u64() == Some(ROWS as u64)
                    || copy["state"] == "done";
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(saw_progress);
    wait_ready(addr, &mut relay, Duration::from_secs(300)).await;
    let copy = &status(addr).await["sources"][0]["initial_copy"];
    assert_eq!(copy["state"], "done", "{copy}");
    // Keep writing a little after the copy, then settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.unwrap();
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let records = wait_for_marker(&pg, &dir_path, &mut relay, "items");
        assert_cursors_increase(&records);
        let copied = records
            .iter()
            .filter(|r| r.tx.id == "initial-copy")
            .count();
        eprintln!(
            "{transactions} writer transactions during the copy; {} records, {copied} of them from the copy",
            records.len()
        );
        assert_table_exact(&pg, &records, "items");
        assert!(copied > 50_000, "most rows should come from the copy");
        assert!(records.iter().all(|r| r.source == "app_pg"));
        let output = relay.output();
        assert!(output.contains("initial copy finished"), "{output}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_copies_existing_rows_while_they_change() {
    copy_under_write_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cut_short_by_a_kill_ends_exact_after_restart() {
    copy_under_write_load(true).await;
}

/// A table added to the config is copied beside the running stream under write load; a table
/// removed from it stops being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_added_to_the_config_are_copied_and_removed_ones_dropped() {
    let pg = Arc::new(PgServer::start());
    create_filled_table(&pg, "first", 1_000);
    create_filled_table(&pg, "added", 30_000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let only_first = postgres_config(&pg.url("app"), dir.path(), &["public.first"], port);
    let mut relay = RelayProcess::start(dir.path(), &only_first);
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(
        pg.url("app"),
        vec!["first", "added"],
        30_000,
        stop.clone(),
        11,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Add the table: the relay restarts with the new config while the writer keeps going.
    let both = postgres_config(
        &pg.url("app"),
        dir.path(),
        &["public.first", "public.added"],
        port,
    );
    std::fs::write(dir.path().join("deltarelay.toml"), &both).unwrap();
    assert_eq!(relay.terminate(), Some(0));
    let before_restart = log_entries(dir.path());
    relay.spawn();
    wait_ready(addr, &mut relay, Duration::from_secs(120)).await;
    assert!(log_entries(dir.path()) > before_restart + 20_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let dir_path = dir.path().to_path_buf();
    let pg2 = pg.clone();
    let mut relay = tokio::task::spawn_blocking(move || {
        wait_for_marker(&pg2, &dir_path, &mut relay, "first");
        let records = wait_for_marker(&pg2, &dir_path, &mut relay, "added");
        assert_table_exact(&pg2, &records, "first");
        assert_table_exact(&pg2, &records, "added");
        let output = relay.output();
        assert!(output.contains("every table is copied"), "{output}");
        relay
    })
    .await
    .unwrap();

    // Remove `first`: its entries leave the log and the publication.
    let only_added = postgres_config(&pg.url("app"), dir.path(), &["public.added"], port);
    std::fs::write(dir.path().join("deltarelay.toml"), &only_added).unwrap();
    assert_eq!(relay.terminate(), Some(0));
    relay.spawn();
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;
    let records = read_log(dir.path());
    assert!(records.iter().all(|r| r.collection == "public.added"));
    assert_table_exact(&pg, &records, "added");
    let published = pg.psql(
        "app",
        &format!(
            "SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = '{SLOT}'"
        ),
    );
    assert_eq!(published.trim(), "added");
    let response = get(addr, "/v1/changes?collections=public.first", &[]).await;
    assert_eq!(response.status, 404);
}

fn after_of(records: &[ChangeRecord], id: i64) -> serde_json::Map<String, Value> {
    records
        .iter()
        .rev()
        .find(|r| r.key.as_ref().is_some_and(|k| k["id"] == json!(id)))
        .and_then(|r| r.after.clone())
        .unwrap_or_else(|| panic!("no record of id {id}"))
}

/// `ADD`, `DROP`, `RENAME COLUMN` and a type change mid-stream: each record has the shape of the
/// table as of its own transaction.
#[test]
fn schema_changes_reshape_records_from_their_transaction_on() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE shapes (id int PRIMARY KEY, a text)");
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.shapes"], free_port());
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    pg.psql(
        "app",
        "INSERT INTO shapes VALUES (1, 'one');
         ALTER TABLE shapes ADD COLUMN b int DEFAULT 5;
         INSERT INTO shapes VALUES (2, 'two', 7);
         BEGIN; ALTER TABLE shapes DROP COLUMN a; INSERT INTO shapes VALUES (3, 8); COMMIT;
         ALTER TABLE shapes RENAME COLUMN b TO c;
         INSERT INTO shapes VALUES (4, 9);
         ALTER TABLE shapes ALTER COLUMN c TYPE text USING 'c' || c::text;
         INSERT INTO shapes VALUES (5, 'five');
         UPDATE shapes SET c = 'updated' WHERE id = 1;
         INSERT INTO shapes VALUES (100, 'marker');",
    );
    let mut records = vec![];
    wait_until(Duration::from_secs(60), "the marker", || {
        relay.assert_running();
        records = read_log(dir.path());
        records
            .iter()
            .any(|r| r.key.as_ref().is_some_and(|k| k["id"] == json!(100)))
    });
    let row = |value: Value| value.as_object().unwrap().clone();
    assert_eq!(
        after_of(&records, 2),
        row(json!({"id": 2, "a": "two", "b": 7}))
    );
    assert_eq!(after_of(&records, 3), row(json!({"id": 3, "b": 8})));
    assert_eq!(after_of(&records, 4), row(json!({"id": 4, "c": 9})));
    assert_eq!(after_of(&records, 5), row(json!({"id": 5, "c": "five"})));
    // Row 1 was last changed after every DDL: it has the final shape (rewritten by the type
    // change, then updated).
    assert_eq!(after_of(&records, 1), row(json!({"id": 1, "c": "updated"})));
}

/// `tables = ["*"]`: every keyed table, including one created while streaming; keyless ones are
/// skipped with a warning.
#[test]
fn all_tables_picks_up_new_tables_and_skips_keyless_ones() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE early (id int PRIMARY KEY, v text);
         INSERT INTO early VALUES (1, 'copied');
         CREATE TABLE loose (v text);
         INSERT INTO loose VALUES ('no key');",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg.url("app"), dir.path(), &["*"], free_port());
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    pg.psql(
        "app",
        "CREATE TABLE late (id int PRIMARY KEY, v text);
         INSERT INTO late VALUES (1, 'streamed');
         INSERT INTO loose VALUES ('still no key');
         INSERT INTO early VALUES (2, 'streamed');",
    );
    let mut records = vec![];
    wait_until(Duration::from_secs(60), "both tables in the log", || {
        relay.assert_running();
        records = read_log(dir.path());
        records.len() >= 3
    });
    let state = client_state(&records);
    assert_eq!(state["public.early"].len(), 2);
    assert_eq!(state["public.late"].len(), 1);
    assert!(!state.contains_key("public.loose"));
    assert!(
        relay.output().contains("without a primary key"),
        "{}",
        relay.output()
    );
}

/// One table the relay cannot sync (no key, or missing) never stops the others: it is named
/// with its fix in the log output, `/v1/status`, `/metrics` and `deltarelay check`, it is kept
/// out of the publication (so the application's UPDATEs on it keep working), and the other
/// tables flow. With `REPLICA IDENTITY FULL` and a restart it syncs, the whole row its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_sync_is_reported_while_the_others_flow() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE notes (owner text, body text); INSERT INTO notes VALUES ('ann', 'hi');
         CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(
        &pg.url("app"),
        dir.path(),
        &["public.notes", "public.items", "public.nosuch"],
        port,
    );
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;
    let status = get(addr, "/v1/status", &[]).await.json();
    let unsynced = status["sources"][0]["unsynced_tables"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(unsynced.len(), 2, "{status}");
    assert_eq!(unsynced[0]["table"], "public.notes");
    assert!(unsynced[0]["problem"]
        .as_str()
        .unwrap()
        .contains("no primary key"));
    assert!(unsynced[0]["fix"]
        .as_str()
        .unwrap()
        .contains("REPLICA IDENTITY FULL"));
    assert_eq!(unsynced[1]["table"], "public.nosuch");
    assert!(unsynced[1]["problem"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let metrics = get(addr, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("deltarelay_tables_unsynced{source=\"app_pg\"} 2"),
        "{metrics}"
    );
    let output = relay.output();
    assert!(
        output.contains("TABLE NOT SYNCED") && output.contains("public.notes has no primary key"),
        "{output}"
    );
    // Not published, so the application's UPDATE of the keyless table still works.
    pg.psql("app", "UPDATE notes SET body = 'hi' WHERE owner = 'ann'");
    pg.psql("app", "INSERT INTO items VALUES (2, 'b')");
    wait_until(Duration::from_secs(30), "the other table to flow", || {
        client_state(&read_log(dir.path()))
            .get("public.items")
            .is_some_and(|items| items.len() == 2)
    });
    assert!(!client_state(&read_log(dir.path())).contains_key("public.notes"));

    // `deltarelay check` names both, each with its fix.
    let check_path = dir.path().join("check.toml");
    std::fs::write(&check_path, &config).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["check", "--config"])
        .arg(&check_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL app_pg table public.notes")
            && stdout.contains("FAIL app_pg table public.nosuch"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PASS app_pg table public.items"),
        "{stdout}"
    );

    pg.psql("app", "ALTER TABLE notes REPLICA IDENTITY FULL");
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    relay.spawn();
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;
    let status = get(addr, "/v1/status", &[]).await.json();
    let unsynced = status["sources"][0]["unsynced_tables"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        unsynced.len(),
        1,
        "only the missing table is left: {status}"
    );
    pg.psql(
        "app",
        "UPDATE notes SET body = 'hello' WHERE owner = 'ann';
         INSERT INTO notes VALUES ('bob', 'x');
         DELETE FROM notes WHERE owner = 'bob';",
    );
    let mut records = vec![];
    wait_until(Duration::from_secs(60), "the delete of bob", || {
        records = read_log(dir.path());
        records.iter().any(|r| r.op == Op::Delete)
    });
    let state = client_state(&records);
    let notes: Vec<&Value> = state["public.notes"].values().collect();
    assert_eq!(notes, vec![&json!({"owner": "ann", "body": "hello"})]);
    // The whole row is the key: an update is a delete of the old row and an insert of the new.
    let deleted: Vec<Value> = records
        .iter()
        .filter(|r| r.op == Op::Delete)
        .map(|r| Value::Object(r.key.clone().unwrap()))
        .collect();
    assert!(
        deleted.contains(&json!({"owner": "ann", "body": "hi"})),
        "{deleted:?}"
    );
    assert!(
        deleted.contains(&json!({"owner": "bob", "body": "x"})),
        "{deleted:?}"
    );
}

/// Tombstones older than `log.tombstone_retention` are purged: a cursor from before them gets
/// 410, a later one still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_tombstones_expire_older_cursors() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL, note text); INSERT INTO items VALUES (1, 1, 'a'), (2, 2, 'b');");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.items"], port)
        .replace("[log]\n", "[log]\ntombstone_retention = \"3s\"\n");
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;
    let before = get(addr, "/v1/changes", &[]).await.json()["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    pg.psql("app", "DELETE FROM items WHERE id = 1");
    let page = get(addr, &format!("/v1/changes?since={before}&wait=10"), &[])
        .await
        .json();
    assert_eq!(page["changes"][0]["op"], "delete", "{page}");
    let after = page["cursor"].as_str().unwrap().to_string();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status(addr).await["log"]["purged_seq"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tombstone was not purged"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired = get(addr, &format!("/v1/changes?since={before}"), &[]).await;
    assert_eq!(expired.status, 410);
    assert_eq!(expired.json()["error"], "cursor_expired");
    let fine = get(addr, &format!("/v1/changes?since={after}"), &[]).await;
    assert_eq!(fine.status, 200);
    let everything = get(addr, "/v1/changes", &[]).await.json();
    let ops: Vec<&Value> = everything["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["op"])
        .collect();
    assert_eq!(ops, vec!["insert"], "only row 2 is left: {everything}");
}

/// The slot disappears while the relay is down (and rows change meanwhile): the relay says so,
/// forgets the source's entries, expires every cursor (410), copies again and ends exact, with
/// no ghost of a row deleted while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_means_a_fresh_copy_and_expired_cursors() {
    let pg = PgServer::start();
    create_filled_table(&pg, "items", 500);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.items"], port);
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;
    pg.psql("app", "UPDATE items SET note = 'streamed' WHERE id <= 10");
    let page = get(addr, "/v1/changes?limit=10000&wait=5", &[])
        .await
        .json();
    let old_cursor = page["cursor"].as_str().unwrap().to_string();

    relay.kill();
    pg.psql(
        "app",
        &format!(
            "SELECT pg_drop_replication_slot('{SLOT}');
             DELETE FROM items WHERE id <= 5;
             UPDATE items SET note = 'while away' WHERE id BETWEEN 6 AND 20;"
        ),
    );
    relay.spawn();
    wait_ready(addr, &mut relay, Duration::from_secs(60)).await;
    let output = relay.output();
    assert!(
        output.contains("is missing") && output.contains("starting over"),
        "{output}"
    );
    let expired = get(addr, &format!("/v1/changes?since={old_cursor}"), &[]).await;
    assert_eq!(expired.status, 410, "{:?}", expired.json());
    let status = status(addr).await;
    assert_eq!(status["sources"][0]["initial_copy"]["state"], "done");

    tokio::task::spawn_blocking(move || {
        let records = wait_for_marker(&pg, dir.path(), &mut relay, "items");
        assert_table_exact(&pg, &records, "items");
        assert!(
            records.iter().all(|r| r.op != Op::Delete),
            "no tombstones needed from scratch"
        );
    })
    .await
    .unwrap();
}

/// `REPLICA IDENTITY USING INDEX`: copied rows and streamed changes key on the index columns.
#[test]
fn a_using_index_identity_keys_copied_and_streamed_rows_alike() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE people (email text NOT NULL, name text, age int);
         CREATE UNIQUE INDEX people_email ON people (email);
         ALTER TABLE people REPLICA IDENTITY USING INDEX people_email;
         INSERT INTO people VALUES ('ann@example.com', 'Ann', 30), ('bob@example.com', 'Bob', 40),
                                   ('cy@example.com', 'Cy', 50);",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.people"], free_port());
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    pg.psql(
        "app",
        "UPDATE people SET age = 31 WHERE email = 'ann@example.com';
         DELETE FROM people WHERE email = 'bob@example.com';",
    );
    let mut records = vec![];
    wait_until(Duration::from_secs(60), "the delete of bob", || {
        relay.assert_running();
        records = read_log(dir.path());
        records.iter().any(|r| r.op == Op::Delete)
    });
    let copied = records
        .iter()
        .find(|r| r.tx.id == "initial-copy")
        .expect("copied rows");
    assert_eq!(
        Value::Object(copied.key.clone().unwrap()),
        json!({"email": "cy@example.com"})
    );
    let state = client_state(&records);
    let people: Vec<&Value> = state["public.people"].values().collect();
    assert_eq!(
        people,
        vec![
            &json!({"email": "ann@example.com", "name": "Ann", "age": 31}),
            &json!({"email": "cy@example.com", "name": "Cy", "age": 50})
        ]
    );
}
