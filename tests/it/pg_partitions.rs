//! Partitioned tables sync as one collection named after their root, end to end: the copy
//! reads through the root, changes arrive under the root's name whatever partition a row is
//! in, partitions attached or detached while streaming (or while the relay is stopped) add
//! or delete their rows, and `tables = ["*"]` picks roots, not partitions.

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::pg::PgServer;
use testkit::relay::{client_state, read_log, start_ready_relay, RelayProcess};

const SCHEMA: &str = "
    CREATE TABLE events (id int, region text, v text, PRIMARY KEY (id, region))
        PARTITION BY LIST (region);
    CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
    CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
    CREATE TABLE events_asia PARTITION OF events FOR VALUES IN ('asia');
    INSERT INTO events SELECT g, (ARRAY['eu', 'us', 'asia'])[g % 3 + 1], 'v' || g
      FROM generate_series(1, 30) g;
    CREATE TABLE events_af (LIKE events INCLUDING ALL);
    INSERT INTO events_af SELECT g, 'af', 'af' || g FROM generate_series(100, 104) g;";

/// The log's `public.events` as a client sees it, and the database's.
fn states(
    pg: &PgServer,
    dir: &std::path::Path,
) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let log = client_state(&read_log(dir))
        .remove("public.events")
        .unwrap_or_default();
    (log, pg.table_state("app", "events", &["id", "region"]))
}

fn wait_in_step(pg: &PgServer, dir: &std::path::Path, relay: &mut RelayProcess, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        relay.assert_running();
        let (log, table) = states(pg, dir);
        if log == table {
            return;
        }
        if std::time::Instant::now() > deadline {
            let only_log: Vec<_> = log
                .iter()
                .filter(|(k, v)| table.get(*k) != Some(v))
                .collect();
            let only_table: Vec<_> = table
                .iter()
                .filter(|(k, v)| log.get(*k) != Some(v))
                .collect();
            panic!(
                "timed out waiting for {what}: log only {only_log:?}, table only {only_table:?}\n{}",
                relay.output()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_partitioned_table_is_one_collection_through_attach_and_detach() {
    let pg = PgServer::start();
    pg.psql("app", SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, _addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.events"]);
    let (log, table) = states(&pg, &dir.path().join("log"));
    assert_eq!(table.len(), 30);
    assert_eq!(
        log, table,
        "the copy reads every partition through the root"
    );

    // Changes in any partition arrive as the root's; a row moving to another partition
    // changes its key (the partition column is part of it): delete old, insert new.
    pg.psql(
        "app",
        "INSERT INTO events VALUES (31, 'eu', 'new'), (32, 'us', 'new');
         UPDATE events SET v = 'changed' WHERE id = 1;
         DELETE FROM events WHERE id = 2;
         UPDATE events SET region = 'eu' WHERE id = 3;",
    );
    let log_dir = dir.path().join("log");
    wait_in_step(&pg, &log_dir, &mut relay, "the streamed changes");
    let records = read_log(&log_dir);
    assert!(
        records.iter().all(|r| r.collection == "public.events"),
        "no partition's name appears"
    );

    // Attached while streaming: its rows appear; detached: its rows are deleted; both while
    // other writes go on.
    pg.psql(
        "app",
        "ALTER TABLE events ATTACH PARTITION events_af FOR VALUES IN ('af');
         INSERT INTO events VALUES (33, 'af', 'after attach');",
    );
    wait_in_step(&pg, &log_dir, &mut relay, "the attached partition's rows");
    pg.psql(
        "app",
        "ALTER TABLE events DETACH PARTITION events_asia;
         INSERT INTO events VALUES (34, 'eu', 'after detach');",
    );
    wait_in_step(
        &pg,
        &log_dir,
        &mut relay,
        "the detached partition's rows to go",
    );
    let (log, _) = states(&pg, &log_dir);
    assert!(!log.values().any(|row| row["region"] == "asia"));
    // The detached table is on its own now: not synced.
    pg.psql(
        "app",
        "INSERT INTO events_asia VALUES (200, 'asia', 'alone')",
    );

    // Attached and detached while the relay is stopped: found on the next start.
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    pg.psql(
        "app",
        "ALTER TABLE events DETACH PARTITION events_af;
         ALTER TABLE events ATTACH PARTITION events_asia FOR VALUES IN ('asia');",
    );
    relay.spawn();
    wait_in_step(&pg, &log_dir, &mut relay, "the changes made while stopped");
    let (log, _) = states(&pg, &log_dir);
    assert!(log.values().any(|row| row["id"] == 200));
    assert!(!log.values().any(|row| row["region"] == "af"));
    pg.psql("app", "INSERT INTO events VALUES (35, 'us', 'last')");
    wait_in_step(&pg, &log_dir, &mut relay, "streaming after the restart");
}

#[test]
fn every_table_means_roots_not_partitions() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        &format!("{SCHEMA} CREATE TABLE plain (id int PRIMARY KEY); INSERT INTO plain VALUES (1);"),
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, _addr) = start_ready_relay(&pg.url("app"), dir.path(), &["*"]);
    let log_dir = dir.path().join("log");
    pg.psql(
        "app",
        "INSERT INTO events VALUES (40, 'us', 'x'); INSERT INTO plain VALUES (2);",
    );
    wait_in_step(&pg, &log_dir, &mut relay, "the root's rows and changes");
    let collections: Vec<String> = client_state(&read_log(&log_dir)).into_keys().collect();
    // events_af is a table of its own (not attached), so it syncs too.
    assert_eq!(
        collections,
        vec!["public.events", "public.events_af", "public.plain"]
    );
}
