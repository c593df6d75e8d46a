//! The Postgres source end to end: a private Postgres, the relay binary, and its log.

use deltarelay::record::{ChangeRecord, Op};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use testkit::free_port;
use testkit::pg::{PgServer, StopMode};
use testkit::relay::{
    assert_cursors_increase, client_state, postgres_config, read_log, wait_streaming, wait_until,
    RelayProcess, SLOT,
};

/// Waits until the log holds a row with `marker` as its `name` in `collection`.
fn wait_for_marker(
    dir: &Path,
    relay: &mut RelayProcess,
    collection: &str,
    id: i64,
) -> Vec<ChangeRecord> {
    let mut records = vec![];
    wait_until(Duration::from_secs(60), "the marker row in the log", || {
        relay.assert_running();
        records = read_log(dir);
        records.iter().any(|r| {
            r.collection == collection
                && r.key == Some(json!({"id": id}).as_object().unwrap().clone())
        })
    });
    records
}

fn row(value: Value) -> Option<serde_json::Map<String, Value>> {
    value.as_object().cloned()
}

#[test]
fn mixed_transactions_land_in_commit_order_with_their_values() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         CREATE TABLE tags (item_id int, tag text, note text, PRIMARY KEY (item_id, tag));
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE TABLE kinds (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, b bytea, big bigint,
                             arr int[], u uuid, f float8, flag bool, d date, m mood, p posint, txt text[]);",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(
        &pg.url("app"),
        dir.path(),
        &["public.items", "public.tags", "public.kinds"],
        free_port(),
    );
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);

    pg.psql(
        "app",
        "BEGIN; INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2); INSERT INTO tags VALUES (1, 'x', 'n1'); COMMIT;
         BEGIN; UPDATE items SET qty = 10 WHERE id = 1; DELETE FROM items WHERE id = 2; INSERT INTO tags VALUES (1, 'y', 'n2'); COMMIT;
         BEGIN; INSERT INTO items VALUES (3, 'rolled back', 3); ROLLBACK;
         BEGIN; UPDATE items SET id = 4 WHERE id = 1; COMMIT;
         BEGIN; INSERT INTO items VALUES (5, 'e', 5); TRUNCATE tags; INSERT INTO tags VALUES (5, 'z', 'n3'); COMMIT;
         INSERT INTO kinds VALUES (1, 12345678901234567890.123, '{\"a\": [1, {\"b\": null}]}', '2025-01-15 11:00:00.123456+00',
                                   '\\x00ff10', 9007199254740993, '{1,NULL,3}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                                   'NaN', true, '2025-01-15', 'happy', 7, '{\"a b\",NULL}');
         INSERT INTO items VALUES (999, 'marker', 0);",
    );
    let records = wait_for_marker(dir.path(), &mut relay, "public.items", 999);
    assert_cursors_increase(&records);

    // Commit order: the commit LSN never goes backwards along the log.
    let positions: Vec<u64> = records
        .iter()
        .map(|r| {
            r.tx.position
                .parse::<deltarelay::source::postgres::Lsn>()
                .unwrap()
                .0
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "log out of commit order: {positions:?}"
    );

    // Reading from the beginning gives exactly the current rows (plus tombstones).
    let state = client_state(&records);
    assert_eq!(
        state["public.items"],
        pg.table_state("app", "items", &["id"])
    );
    assert_eq!(
        state["public.tags"],
        pg.table_state("app", "tags", &["item_id", "tag"])
    );
    assert!(!serde_json::to_string(&records)
        .unwrap()
        .contains("rolled back"));

    // The key change is a delete of the old key and an insert of the new one.
    let find = |collection: &str, key: Value| {
        records
            .iter()
            .find(|r| r.collection == collection && r.key == row(key.clone()))
    };
    assert_eq!(
        find("public.items", json!({"id": 1})).unwrap().op,
        Op::Delete
    );
    assert_eq!(
        find("public.items", json!({"id": 2})).unwrap().op,
        Op::Delete
    );
    let moved = find("public.items", json!({"id": 4})).unwrap();
    assert_eq!(
        (moved.op, &moved.after),
        (Op::Insert, &row(json!({"id": 4, "name": "a", "qty": 10})))
    );
    // The truncate replaced the earlier tag entries and is followed by the new row.
    let tags: Vec<_> = records
        .iter()
        .filter(|r| r.collection == "public.tags")
        .map(|r| r.op)
        .collect();
    assert_eq!(tags, vec![Op::Truncate, Op::Insert]);

    let kinds = find("public.kinds", json!({"id": 1})).unwrap();
    assert_eq!(
        kinds.after,
        row(json!({
            "id": 1, "n": "12345678901234567890.123", "j": {"a": [1, {"b": null}]},
            "ts": "2025-01-15T11:00:00.123456Z", "b": "AP8Q", "big": "9007199254740993",
            "arr": [1, null, 3], "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "f": "NaN", "flag": true,
            "d": "2025-01-15", "m": "happy", "p": 7, "txt": ["a b", null]
        }))
    );
    assert_eq!(kinds.source, "app_pg");
    assert!(
        kinds.commit_time.ends_with('Z') && kinds.commit_time.len() == 27,
        "{}",
        kinds.commit_time
    );
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
}

#[test]
fn unchanged_toast_values_are_filled_from_the_log() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, meta jsonb);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs ALTER COLUMN meta SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT 1, 'before the relay', string_agg(md5(g::text), '') FROM generate_series(1, 320) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.docs"], free_port());
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    pg.psql(
        "app",
        "INSERT INTO docs SELECT 2, 'draft', string_agg(md5((g * 7)::text), ''),
           (SELECT jsonb_agg(jsonb_build_object('n', n, 'h', md5(n::text))) FROM generate_series(1, 100) n)
         FROM generate_series(1, 320) g;
         UPDATE docs SET title = 'final' WHERE id = 2;
         UPDATE docs SET title = 'seen' WHERE id = 1;
         INSERT INTO docs VALUES (999, 'marker', '');",
    );
    let records = wait_for_marker(dir.path(), &mut relay, "public.docs", 999);
    let body2 = pg.psql("app", "SELECT body FROM docs WHERE id = 2");
    let doc2 = records
        .iter()
        .find(|r| r.key == row(json!({"id": 2})))
        .unwrap();
    assert_eq!(doc2.op, Op::Update);
    assert_eq!(doc2.after.as_ref().unwrap()["title"], json!("final"));
    assert_eq!(doc2.after.as_ref().unwrap()["body"], json!(body2.trim()));
    assert_eq!(body2.trim().len(), 10_240);
    assert!(doc2.unchanged.is_empty());
    // Row 1 existed before the relay: its body comes from the initial copy. (A value the log
    // never saw is named in `unchanged` rather than invented: see the log's unit tests.)
    let body1 = pg.psql("app", "SELECT body FROM docs WHERE id = 1");
    let doc1 = records
        .iter()
        .find(|r| r.key == row(json!({"id": 1})))
        .unwrap();
    assert_eq!(doc1.op, Op::Update);
    assert!(doc1.unchanged.is_empty());
    assert_eq!(doc1.after.as_ref().unwrap()["body"], json!(body1.trim()));

    // The log stores each body once, whatever the number of updates that leave it unchanged,
    // and forgets it with its row.
    pg.psql(
        "app",
        "UPDATE docs SET title = 'again' WHERE id = 2;
         UPDATE docs SET title = 'and again' WHERE id = 2;
         DELETE FROM docs WHERE id = 1;
         INSERT INTO docs VALUES (998, 'marker', '');",
    );
    let records = wait_for_marker(dir.path(), &mut relay, "public.docs", 998);
    let doc2 = records
        .iter()
        .find(|r| r.key == row(json!({"id": 2})))
        .unwrap();
    assert_eq!(doc2.after.as_ref().unwrap()["title"], json!("and again"));
    assert_eq!(doc2.after.as_ref().unwrap()["body"], json!(body2.trim()));
    // A large jsonb document left unchanged is kept the same way.
    let meta2: Value =
        serde_json::from_str(pg.psql("app", "SELECT meta FROM docs WHERE id = 2").trim()).unwrap();
    assert_eq!(meta2.as_array().map(Vec::len), Some(100));
    assert_eq!(doc2.after.as_ref().unwrap()["meta"], meta2);
    assert!(doc2.unchanged.is_empty());
    let file = rusqlite::Connection::open(dir.path().join("changes.sqlite3")).unwrap();
    let (values, longest): (i64, i64) = file
        .query_row(
            "SELECT (SELECT count(*) FROM large_values), (SELECT max(length(record)) FROM entries)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        values, 2,
        "only row 2's body and meta are stored, once each"
    );
    assert!(longest < 1000, "no record holds a body: {longest} bytes");
}

#[test]
fn an_idle_slot_keeps_advancing_while_unpublished_tables_are_written() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, v text);");
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.items"], free_port());
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    for _ in 0..5 {
        pg.psql(
            "app",
            "INSERT INTO busy (v) SELECT md5(g::text) FROM generate_series(1, 2000) g;",
        );
    }
    let target = pg
        .psql("app", "SELECT pg_current_wal_lsn()")
        .trim()
        .to_string();
    wait_until(
        Duration::from_secs(40),
        "confirmed_flush_lsn to pass the busy writes",
        || {
            relay.assert_running();
            pg.psql(
            "app",
            &format!("SELECT confirmed_flush_lsn >= '{target}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
        )
        .trim()
            == "t"
        },
    );
    assert!(read_log(dir.path()).is_empty());
}

/// A writer that commits `count` numbered transactions, each inserting its number into
/// `history` and bumping one of ten counters; it reconnects and retries through outages.
async fn write_history(url: String, count: i64) {
    let mut next = 1;
    while next <= count {
        let client = match testkit::pg::connect(&url).await {
            Ok(client) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while next <= count {
            let sql = format!(
                "BEGIN; INSERT INTO history VALUES ({next}, md5('{next}')) ON CONFLICT DO NOTHING;
                 UPDATE counters SET n = n + 1 WHERE id = {}; COMMIT;",
                next % 10
            );
            match client.batch_execute(&sql).await {
                Ok(()) => next += 1,
                // The outcome of a commit cut off by an outage is unknown; the insert is
                // idempotent and the final check reads the database itself.
                Err(_) => break,
            }
        }
    }
}

fn history_schema(pg: &PgServer) {
    pg.psql(
        "app",
        "CREATE TABLE history (seq bigint PRIMARY KEY, payload text);
         CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(0, 9) g;",
    );
}

/// The history schema, and a relay streaming it into a new temp dir.
fn start_history_relay(pg: &PgServer) -> (tempfile::TempDir, RelayProcess) {
    history_schema(pg);
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(
        &pg.url("app"),
        dir.path(),
        &["public.history", "public.counters"],
        free_port(),
    );
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(pg, &mut relay);
    (dir, relay)
}

/// Every committed history row is in the log exactly once and in commit order.
fn assert_history_exact(pg: &PgServer, records: &[ChangeRecord], count: i64) {
    assert_cursors_increase(records);
    let history: Vec<i64> = records
        .iter()
        .filter(|r| r.collection == "public.history" && r.key != row(json!({"seq": 0})))
        .map(|r| r.key.as_ref().unwrap()["seq"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=count).collect();
    if history != expected {
        let first_bad = history.iter().zip(&expected).position(|(a, b)| a != b);
        panic!("history in the log is not 1..={count} once each in order; {} entries, first difference at {first_bad:?}", history.len());
    }
    let state = client_state(records);
    assert_eq!(
        state["public.counters"],
        pg.table_state("app", "counters", &["id"])
    );
    assert_eq!(state["public.history"].len() as i64, count + 1);
}

fn finish_history(pg: &PgServer, dir: &Path, relay: &mut RelayProcess, count: i64) {
    pg.psql("app", "INSERT INTO history VALUES (0, 'marker');");
    let mut records = vec![];
    wait_until(Duration::from_secs(90), "the marker row in the log", || {
        relay.assert_running();
        records = read_log(dir);
        records
            .last()
            .is_some_and(|r| r.key == row(json!({"seq": 0})))
    });
    assert_history_exact(pg, &records, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_restarts_with_every_change_exactly_once() {
    let pg = PgServer::start();
    let (dir, mut relay) = start_history_relay(&pg);

    const COUNT: i64 = 6000;
    let writer = tokio::spawn(write_history(pg.url("app"), COUNT));
    let mut kills = 0;
    while !writer.is_finished() || kills < 3 {
        tokio::time::sleep(Duration::from_millis(300 + rand::random::<u64>() % 900)).await;
        relay.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 300)).await;
        relay.spawn();
    }
    writer.await.unwrap();
    assert!(kills >= 3);
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        finish_history(&pg, &dir_path, &mut relay, COUNT);
        eprintln!("killed the relay {kills} times");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_lose_nothing() {
    let pg = std::sync::Arc::new(PgServer::start());
    let (dir, mut relay) = start_history_relay(&pg);

    const COUNT: i64 = 3000;
    let writer = tokio::spawn(write_history(pg.url("app"), COUNT));
    for mode in [StopMode::Fast, StopMode::Immediate, StopMode::Immediate] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.restart(mode))
            .await
            .unwrap();
    }
    writer.await.unwrap();
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        finish_history(&pg, &dir_path, &mut relay, COUNT);
        let output = relay.output();
        assert!(
            output.contains("reconnecting"),
            "the relay should say it reconnects:\n{output}"
        );
    })
    .await
    .unwrap();
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Bounded memory: a single upstream transaction of ROWS (default 1,000,000) row changes flows
/// through without being held in memory. Prints the relay's peak RSS. Run it with
/// `cargo test --release --test it -- --ignored --nocapture pg_source::a_huge`.
#[test]
#[ignore]
fn a_huge_transaction_flows_through_in_bounded_memory() {
    let rows: i64 = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE big (id bigint PRIMARY KEY, title text, n int, at timestamptz);",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.big"], free_port());
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    let started = std::time::Instant::now();
    pg.psql(
        "app",
        &format!(
            "INSERT INTO big SELECT g, md5(g::text), g % 1000, now() FROM generate_series(1, {rows}) g;
             INSERT INTO big VALUES (0, 'marker', 0, now());"
        ),
    );
    let pid = relay.pid().unwrap();
    let mut count = 0;
    wait_until(
        Duration::from_secs(1800),
        "the huge transaction in the log",
        || {
            relay.assert_running();
            let reader = deltarelay::log::LogReader::open(dir.path());
            count = reader.map(|r| r.entry_count().unwrap_or(0)).unwrap_or(0);
            count as i64 == rows + 1
        },
    );
    let peak = peak_rss_kib(pid);
    println!(
        "huge transaction: {rows} rows logged in {:.1} s; relay peak RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        peak as f64 / 1024.0
    );
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB is over 200 MB");
}
