//! The MongoDB source end to end: the relay binary, through the real driver, against the test
//! wire-protocol server (testkit/src/mongo_wire).

use bson::{doc, oid::ObjectId, Document};
use deltarelay::record::Op;
use mongodb::Client;
use serde_json::json;
use std::time::Duration;
use testkit::http::row;
use testkit::mongo::{assert_exactly_once_in_order, of, write_load, Setup};
use testkit::mongo_wire::MongoWire;
use testkit::relay::{
    http_status, mongo_config, mongo_source_toml, start_ready_relay_with, wait_until,
};
use tokio::task::block_in_place;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_maps_to_an_insert_in_relaxed_extended_json() {
    let mut s = Setup::start(&["events"], "").await;
    let id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
    let at = bson::DateTime::from_millis(1_736_938_800_123);
    s.events()
        .insert_one(doc! {"_id": id, "title": "Standup", "n": 5, "big": 1i64 << 40, "at": at, "tags": ["a"]})
        .await
        .unwrap();
    let records = s.wait_for("the insert", |r| r.op == Op::Insert);
    let r = &of(&records, "app.events")[0];
    assert_eq!(r.source, "app_mongo");
    assert_eq!(
        r.key,
        Some(row(json!({"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}})))
    );
    assert_eq!(
        r.after,
        Some(row(json!({
            "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "title": "Standup", "n": 5,
            "big": 1i64 << 40, "at": {"$date": "2025-01-15T11:00:00.123Z"}, "tags": ["a"],
        })))
    );
    assert_eq!((r.before.clone(), r.changed.clone()), (None, None));
    assert!(r.tx.position.starts_with("82"), "{:?}", r.tx);
    assert_eq!(r.commit_time.len(), "2025-01-15T11:00:00.123456Z".len());
    // The position stored with it is the stream's resume token.
    let status = testkit::http::get(s.addr, "/v1/status", &[]).await.json();
    assert!(
        status.to_string().contains("_data"),
        "the status shows the resume token: {status}"
    );
    let metrics = testkit::http::get(s.addr, "/metrics", &[]).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("deltarelay_changes_ingested_total")
                && l.contains(r#"collection="app.events""#)
                && l.contains(r#"source="app_mongo""#)),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_carries_changed_fields_and_the_looked_up_document() {
    let mut s = Setup::start(&["events"], "").await;
    s.events()
        .insert_one(doc! {"_id": 1, "status": "open", "n": 1, "gone": true})
        .await
        .unwrap();
    s.events()
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"status": "done"}, "$inc": {"n": 2}, "$unset": {"gone": ""}},
        )
        .await
        .unwrap();
    let records = s.wait_for("the update", |r| r.op == Op::Update);
    let r = &records[0];
    assert_eq!(r.key, Some(row(json!({"_id": 1}))));
    assert_eq!(
        r.after,
        Some(row(json!({"_id": 1, "status": "done", "n": 3})))
    );
    let mut changed = r.changed.clone().unwrap();
    changed.sort();
    assert_eq!(changed, vec!["gone", "n", "status"]);
    assert_eq!(r.before, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_is_an_update_without_changed_fields() {
    let mut s = Setup::start(&["events"], "").await;
    s.events()
        .insert_one(doc! {"_id": "a", "v": 1})
        .await
        .unwrap();
    s.events()
        .replace_one(doc! {"_id": "a"}, doc! {"w": 2})
        .await
        .unwrap();
    let records = s.wait_for("the replace", |r| r.op == Op::Update);
    assert_eq!(records[0].after, Some(row(json!({"_id": "a", "w": 2}))));
    assert_eq!(records[0].changed, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_a_delete_with_the_pre_image_when_asked() {
    let mut s = Setup::start(&["events"], "pre_images = true").await;
    s.db.run_command(doc! {"create": "events", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    s.events()
        .insert_one(doc! {"_id": 7, "v": "x"})
        .await
        .unwrap();
    s.events()
        .update_one(doc! {"_id": 7}, doc! {"$set": {"v": "y"}})
        .await
        .unwrap();
    s.events().delete_one(doc! {"_id": 7}).await.unwrap();
    let records = s.wait_for("the delete", |r| r.op == Op::Delete);
    let r = &records[0];
    assert_eq!(
        (r.key.clone(), r.after.clone()),
        (Some(row(json!({"_id": 7}))), None)
    );
    assert_eq!(r.before, Some(row(json!({"_id": 7, "v": "y"}))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_before_comes_from_the_pre_image() {
    let mut s = Setup::start(
        &["events"],
        "pre_images = true\nfull_document = \"required\"",
    )
    .await;
    s.db.run_command(doc! {"collMod": "events", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    s.events()
        .insert_one(doc! {"_id": 1, "v": 1})
        .await
        .unwrap();
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    let records = s.wait_for("the update", |r| r.op == Op::Update);
    assert_eq!(records[0].before, Some(row(json!({"_id": 1, "v": 1}))));
    assert_eq!(records[0].after, Some(row(json!({"_id": 1, "v": 2}))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_is_a_truncate_of_that_collection() {
    let mut s = Setup::start(&["events", "users"], "").await;
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.db.collection::<Document>("users")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    s.events().drop().await.unwrap();
    let records = s.wait_for("the truncate", |r| r.op == Op::Truncate);
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.collection.as_str(), r.op, r.key.is_none()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("app.users", Op::Insert, false),
            ("app.events", Op::Truncate, true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_truncates_the_old_name_and_copies_the_new_one() {
    let mut s = Setup::start(&["*"], "").await;
    s.events()
        .insert_many((0..5).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    s.db.client()
        .database("admin")
        .run_command(doc! {"renameCollection": "app.events", "to": "app.archive"})
        .await
        .unwrap();
    s.db.collection::<Document>("archive")
        .insert_one(doc! {"_id": 5})
        .await
        .unwrap();
    let records = s.wait_for_state("archive");
    let archive: Vec<Op> = of(&records, "app.archive").iter().map(|r| r.op).collect();
    assert_eq!(archive[0], Op::Truncate, "{archive:?}");
    assert_eq!(archive[1..], [Op::Insert; 6]);
    let events = of(&records, "app.events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].op, Op::Truncate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_invalidates_and_the_stream_reopens() {
    let mut s = Setup::start(&["events"], "").await;
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.db.drop().await.unwrap();
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    let records = s.wait_for("the insert after the dropDatabase", |r| {
        r.key == Some(row(json!({"_id": 2})))
    });
    let summary: Vec<_> = records.iter().map(|r| (r.op, r.key.clone())).collect();
    assert_eq!(
        summary,
        vec![
            (Op::Truncate, None),
            (Op::Insert, Some(row(json!({"_id": 2}))))
        ]
    );
    assert!(s.relay.output().contains("invalidated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_one_log_transaction() {
    let mut s = Setup::start(&["events"], "").await;
    s.events().insert_one(doc! {"_id": 0}).await.unwrap();
    let mut session = s.db.client().start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    for i in 1..=3 {
        s.events()
            .insert_one(doc! {"_id": i})
            .session(&mut session)
            .await
            .unwrap();
    }
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    let records = s.wait_for("the transaction", |r| r.op == Op::Update);
    let ids: Vec<&str> = records.iter().map(|r| r.tx.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(!ids[0].contains(':'), "{ids:?}");
    assert!(
        ids[1..].iter().all(|id| *id == ids[1] && id.contains(':')),
        "{ids:?}"
    );
    // A page does not split it: with room for three, the first page holds only the insert
    // before it.
    let page = testkit::http::get(s.addr, "/v1/changes?limit=3", &[])
        .await
        .json();
    assert_eq!(page["changes"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_16_mib_are_reassembled() {
    let mut s = Setup::start(&["events"], "").await;
    let big = "x".repeat(8 << 20);
    s.events()
        .insert_one(doc! {"_id": 1, "a": &big})
        .await
        .unwrap();
    // The update event holds the 15 MiB document and the 7 MiB change: over 16 MiB.
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"b": "y".repeat(7 << 20)}})
        .await
        .unwrap();
    let records = s.wait_for("the large update", |r| r.op == Op::Update);
    let after = records[0].after.as_ref().unwrap();
    assert_eq!(after["a"].as_str().unwrap().len(), 8 << 20);
    assert_eq!(after["b"].as_str().unwrap().len(), 7 << 20);
    assert_eq!(records[0].changed.as_deref(), Some(&["b".to_string()][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_restarts_with_every_change_exactly_once() {
    let mut s = Setup::start(&["events"], "").await;
    const COUNT: i64 = 2000;
    let writer = tokio::spawn(write_load(s.events(), 0, COUNT));
    let mut kills = 0;
    while !writer.is_finished() || kills < 3 {
        tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 600)).await;
        s.relay.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 300)).await;
        s.relay.spawn();
    }
    writer.await.unwrap();
    let records = s.wait_for_state("events");
    assert_exactly_once_in_order(&records, "app.events", COUNT);
    eprintln!("killed the relay {kills} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sockets_and_resumable_errors_lose_nothing() {
    let mut s = Setup::start(&["events"], "").await;
    const COUNT: i64 = 1500;
    let writer = tokio::spawn(write_load(s.events(), 0, COUNT));
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if round % 2 == 0 {
            s.server().drop_connections();
        } else {
            s.server().fail_change_stream_getmores(2);
        }
    }
    // The writer's own connections were dropped too; it retries writes once by itself, so
    // finish its range again where it stopped.
    let written = writer.await;
    if written.is_err() {
        let have = s.server().documents("app.events").len() as i64;
        write_load(s.events(), have, COUNT).await;
    }
    let records = s.wait_for_state("events");
    assert_exactly_once_in_order(&records, "app.events", COUNT);
}

/// How the relay misses more changes than the oplog keeps.
enum Gap {
    /// Stopped (SIGTERM) meanwhile: the stored token is gone when it starts again.
    Stopped,
    /// Frozen (SIGSTOP) under its open cursor: the next `getMore` finds the history gone.
    Frozen,
}

/// History lost: the relay says so, re-copies, expires old cursors and ends exact.
async fn history_lost(gap: Gap) {
    let mut s = Setup::start_on(MongoWire::start_with_window(100), &["events"], "").await;
    write_load(s.events(), 0, 50).await;
    let records = s.wait_for_state("events");
    let old_cursor = records.last().unwrap().cursor.clone();
    let pid = s.relay.pid().unwrap().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    match gap {
        Gap::Stopped => drop(block_in_place(|| s.relay.terminate())),
        Gap::Frozen => drop(signal("-STOP")),
    }
    write_load(s.events(), 50, 400).await;
    s.events().delete_one(doc! {"_id": 3}).await.unwrap();
    match gap {
        Gap::Stopped => s.relay.spawn(),
        Gap::Frozen => drop(signal("-CONT")),
    }
    let records = s.wait_for_state("events");
    let output = s.relay.output();
    assert!(output.contains("UPSTREAM HISTORY LOST"), "{output}");
    // Each way of losing it is named: a resume past the window, or a live cursor overtaken.
    let why = match gap {
        Gap::Stopped => "286 ChangeStreamHistoryLost",
        Gap::Frozen => {
            "fell behind the oplog, which overwrote its next entry (136 CappedPositionLost"
        }
    };
    assert!(output.contains(why), "{output}");
    assert!(records
        .iter()
        .all(|r| r.op == Op::Insert || r.op == Op::Update));
    let addr = s.addr;
    let status = block_in_place(|| {
        wait_until(Duration::from_secs(30), "readyz after the re-copy", || {
            http_status(addr, "/readyz") == Some(200)
        });
        http_status(addr, &format!("/v1/changes?since={old_cursor}"))
    });
    assert_eq!(status, Some(410), "the old cursor expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_history_recopies_in_a_new_epoch() {
    history_lost(Gap::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_out_of_the_oplog_recopies() {
    history_lost(Gap::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_copies_50000_documents_while_writes_continue() {
    first_start_while_writes_continue(50_000).await;
}

/// The first start over `MONGO_COPY_DOCS` (default 500,000) documents, printing the time to
/// copy and catch up: `cargo test --release --test it -- --ignored --nocapture mongo_source::a_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_large_first_copy() {
    let docs = std::env::var("MONGO_COPY_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    first_start_while_writes_continue(docs).await;
}

async fn first_start_while_writes_continue(existing: i64) {
    let server = MongoWire::start();
    let client = Client::with_uri_str(server.uri()).await.unwrap();
    let coll = client.database("app").collection::<Document>("events");
    for chunk in 0..(existing / 5000) {
        let docs = (chunk * 5000..(chunk + 1) * 5000)
            .map(|i| doc! {"_id": i, "v": 0, "pad": "p".repeat(50)});
        coll.insert_many(docs).await.unwrap();
    }
    let started = std::time::Instant::now();
    let writes = tokio::spawn({
        let coll = coll.clone();
        async move {
            for i in 0..600i64 {
                let id = (i * 7919) % existing;
                match i % 3 {
                    0 => drop(
                        coll.update_one(doc! {"_id": id}, doc! {"$inc": {"v": 1}})
                            .await
                            .unwrap(),
                    ),
                    1 => drop(coll.delete_one(doc! {"_id": id}).await.unwrap()),
                    _ => drop(coll.insert_one(doc! {"_id": existing + i}).await.unwrap()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let source = mongo_source_toml(&server.uri(), "app", &["events"], "");
    let log_dir = dir.path().join("log");
    let port = testkit::free_port();
    let (relay, addr) = block_in_place(|| {
        start_ready_relay_with(dir.path(), &mongo_config(&log_dir, port, &source), port)
    });
    writes.await.unwrap();
    let mut s = Setup::adopt(server, &client, dir, relay, addr);
    s.wait_for_state("events");
    eprintln!(
        "copy and catch-up of {existing} documents: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_added_to_the_config_are_copied_and_removed_ones_dropped() {
    let mut s = Setup::start(&["events"], "").await;
    let users = s.db.collection::<Document>("users");
    users
        .insert_many((0..20).map(|i| doc! {"_id": i, "name": format!("u{i}")}))
        .await
        .unwrap();
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.wait_for_state("events");
    block_in_place(|| s.relay.terminate());
    let config_path = s.dir.path().join("deltarelay.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace(r#"collections = ["events"]"#, r#"collections = ["users"]"#),
    )
    .unwrap();
    s.relay.spawn();
    users.delete_one(doc! {"_id": 0}).await.unwrap();
    let records = s.wait_for_state("users");
    assert!(of(&records, "app.events").is_empty(), "events left the log");
    let output = s.relay.output();
    assert!(
        output.contains("the configured collections changed"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_keeps_a_fresh_token() {
    // An oplog of 400 entries, overrun by 600 writes (at least 12 s) to a collection the
    // relay does not sync: the token stored with the first insert falls out of it, one stored
    // at most 5 s ago (at most 250 writes) does not.
    let mut s = Setup::start_on(MongoWire::start_with_window(400), &["events"], "").await;
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.wait_for("the first insert", |r| r.op == Op::Insert);
    let other = s.db.collection::<Document>("other");
    for i in 0..600 {
        other.insert_one(doc! {"_id": i}).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A crash: only what the idle stream stored counts.
    s.relay.kill();
    s.relay.spawn();
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    s.wait_for_state("events");
    let output = s.relay.output();
    assert!(!output.contains("HISTORY LOST"), "{output}");
    // The 600 events of the unsynced collection never left the server.
    let sent = s.server().events_sent();
    assert!(sent < 10, "{sent} events sent");
}

/// `deltarelay check` on a config with the source `app_mongo` at `uri`: exit code, stdout.
fn run_check(uri: &str, extra: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let source = mongo_source_toml(uri, "app", &["events"], extra);
    std::fs::write(&path, mongo_config(dir.path(), 1, &source)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_replica_set_oplog_window_and_pre_images() {
    let server = MongoWire::start();
    let client = Client::with_uri_str(server.uri()).await.unwrap();
    client
        .database("app")
        .collection::<Document>("events")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let uri = server.uri();
    let (code, out) = block_in_place(|| run_check(&uri, "pre_images = true"));
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        lines.contains(&"PASS app_mongo connect: connected"),
        "{out}"
    );
    assert!(
        lines.contains(&"PASS app_mongo replica set: replica set \"rs0\""),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("WARN app_mongo oplog window: the oplog holds 0.0 hours")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("WARN app_mongo pre-images:") && l.contains("events")),
        "{out}"
    );
    assert!(
        out.contains("fix: for each: db.runCommand({collMod"),
        "{out}"
    );

    // With post-images required, the missing images fail the check.
    let (code, out) = block_in_place(|| run_check(&uri, "full_document = \"required\""));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL app_mongo pre-images:"), "{out}");

    let unreachable = format!(
        "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=300",
        testkit::free_port()
    );
    let (code, out) = block_in_place(|| run_check(&unreachable, ""));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL app_mongo connect: cannot reach the server"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_staging_collection_over_a_synced_one_replaces_it() {
    // Like `$out` or a bulk load: fill an unsynced collection, rename it into place.
    let mut s = Setup::start(&["events"], "").await;
    s.events().insert_one(doc! {"_id": "old"}).await.unwrap();
    let staging = s.db.collection::<Document>("staging");
    staging
        .insert_many((0..5).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    s.db.client()
        .database("admin")
        .run_command(
            doc! {"renameCollection": "app.staging", "to": "app.events", "dropTarget": true},
        )
        .await
        .unwrap();
    let records = s.wait_for_state("events");
    let ops: Vec<Op> = records.iter().map(|r| r.op).collect();
    assert_eq!(ops[0], Op::Truncate, "{ops:?}");
    assert_eq!(ops[1..], [Op::Insert; 5]);
    assert!(of(&records, "app.staging").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_during_its_first_copy_copies_again_without_stale_rows() {
    const EXISTING: i64 = 30_000;
    let server = MongoWire::start();
    let client = Client::with_uri_str(server.uri()).await.unwrap();
    let coll = client.database("app").collection::<Document>("events");
    for chunk in 0..(EXISTING / 5000) {
        let docs = (chunk * 5000..(chunk + 1) * 5000).map(|i| doc! {"_id": i, "v": 0});
        coll.insert_many(docs).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let source = mongo_source_toml(&server.uri(), "app", &["events"], "");
    let mut relay = testkit::relay::RelayProcess::start(
        dir.path(),
        &mongo_config(&dir.path().join("log"), port, &source),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Kill it once part of the copy is in the log.
    let mut copied = 0;
    for _ in 0..600 {
        if block_in_place(|| http_status(addr, "/healthz")) != Some(200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if let Some(status) = tokio::time::timeout(
            Duration::from_secs(2),
            testkit::http::get(addr, "/v1/status", &[]),
        )
        .await
        .ok()
        .filter(|r| r.status == 200)
        {
            copied = status.json()["sources"][0]["initial_copy"]["rows_copied"]
                .as_u64()
                .unwrap_or(0);
            if copied > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill();
    assert!(
        (1..EXISTING as u64).contains(&copied),
        "killed after {copied} copied rows"
    );
    // Rows the first copy took are deleted meanwhile: the second run must not keep them.
    coll.delete_many(doc! {"v": 0}).await.unwrap();
    coll.insert_one(doc! {"_id": -1, "v": 1}).await.unwrap();
    relay.spawn();
    let mut s = Setup::adopt(server, &client, dir, relay, addr);
    let records = s.wait_for_state("events");
    assert!(
        !records
            .iter()
            .any(|r| r.op == Op::Insert
                && r.key.as_ref().and_then(|k| k["_id"].as_i64()) != Some(-1)),
        "a stale copied row survived"
    );
}

#[test]
fn a_malformed_url_stops_the_relay_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let source = mongo_source_toml(
        "mongodb://h/?replicaSet=rs0&w=many&nope=1",
        "app",
        &["e"],
        "",
    );
    let config = mongo_config(&dir.path().join("log"), testkit::free_port(), &source);
    let mut relay = testkit::relay::RelayProcess::start(dir.path(), &config);
    wait_until(Duration::from_secs(20), "the relay to exit", || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| relay.assert_running())).is_err()
    });
    assert!(
        relay.output().contains("invalid MongoDB URL"),
        "{}",
        relay.output()
    );
}

/// What arrived is logged while the stream waits for more: with the `getMore` after an event
/// held (as a server with nothing new holds it for `maxAwaitTimeMS`), the event is in the log
/// and a write through the relay would be visible, without waiting for that `getMore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_logged_while_the_next_get_more_waits() {
    let mut s = Setup::start(&["events"], "").await;
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.wait_for("the first insert", |r| r.op == Op::Insert);
    s.server()
        .hold_change_streams(testkit::mongo_wire::Hold::AfterEvents);
    s.events()
        .insert_one(doc! {"_id": 2, "note": "held after"})
        .await
        .unwrap();
    let server = s.server();
    block_in_place(|| {
        wait_until(Duration::from_secs(30), "the next getMore held", || {
            server.held_getmores() > 0
        })
    });
    s.wait_for("the event, with its getMore still held", |r| {
        r.key == Some(row(json!({"_id": 2})))
    });
    assert!(s.server().held_getmores() > 0, "the getMore was released");
    s.server()
        .hold_change_streams(testkit::mongo_wire::Hold::Never);
    s.events().insert_one(doc! {"_id": 3}).await.unwrap();
    let records = s.wait_for_state("events");
    assert_exactly_once_in_order(&records, &s.ns("events"), 3);
}
