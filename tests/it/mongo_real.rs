//! The MongoDB source against a real `mongod` replica set. These run only when
//! `DELTARELAY_TEST_MONGODB_URI` is set (e.g. `mongodb://127.0.0.1:27017/?replicaSet=rs0`); each
//! test uses its own database `deltarelay_test_<pid>_<n>` and drops it at the end. The tests
//! of issue 18 (split fragments, faults, oplog rollover) want a 3-node MongoDB 7.0 replica
//! set started with `--setParameter enableTestCommands=1` (for `failCommand`); README.md,
//! "Tests against a real MongoDB", says how to start one.
//!
//! `DELTARELAY_TEST_MONGODB_URI=mongodb://127.0.0.1:27017/?replicaSet=rs0 cargo test --test it mongo_real::`

use bson::{doc, Document};
use deltarelay::record::{ChangeRecord, Op};
use mongodb::Client;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::http::row;
use testkit::mongo::{assert_exactly_once_in_order, of, values_document, write_load, Setup};
use testkit::relay::wait_until;
use tokio::task::block_in_place;

const URI_VAR: &str = "DELTARELAY_TEST_MONGODB_URI";

/// The real deployment's URI, or `None` (test skipped, even under `CI=true`: CI has no
/// mongod). With the URI set, a server that does not answer a `ping` within 10 s fails the
/// test, under `CI=true` or not: a set URI means the tests are meant to run.
async fn uri() -> Option<String> {
    let Ok(uri) = std::env::var(URI_VAR) else {
        testkit::skip(&format!(
            "set {URI_VAR} to run the tests against a real mongod"
        ));
        return None;
    };
    let mut options = mongodb::options::ClientOptions::parse(&uri)
        .await
        .unwrap_or_else(|e| panic!("{URI_VAR} is not a MongoDB URL: {e}"));
    options.server_selection_timeout = Some(Duration::from_secs(10));
    let client = Client::with_options(options).unwrap();
    if let Err(e) = client.database("admin").run_command(doc! {"ping": 1}).await {
        panic!("{URI_VAR} is set but the server does not answer: {e}");
    }
    Some(uri)
}

/// The relay on a fresh database of the real deployment, or `None` (test skipped).
async fn start(collections: &[&str], extra: &str) -> Option<Setup> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let uri = uri().await?;
    let database = format!(
        "deltarelay_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    client.database(&database).drop().await.unwrap();
    Some(Setup::start_at(&uri, &database, None, collections, extra).await)
}

async fn finish(s: Setup) {
    s.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mongod_maps_every_event_type() {
    let Some(mut s) = start(&["events"], "").await else {
        return;
    };
    let events = s.events();
    events
        .insert_one(doc! {"_id": 1, "v": 1, "gone": true})
        .await
        .unwrap();
    events
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"v": 2}, "$unset": {"gone": ""}},
        )
        .await
        .unwrap();
    events.insert_one(doc! {"_id": 2, "v": 1}).await.unwrap();
    events
        .replace_one(doc! {"_id": 2}, doc! {"w": 1})
        .await
        .unwrap();
    events.delete_one(doc! {"_id": 2}).await.unwrap();
    let records = s.wait_for("the delete", |r| r.op == Op::Delete);
    let ns = s.ns("events");
    let mine = of(&records, &ns);
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0].op, Op::Update);
    assert_eq!(mine[0].after, Some(row(json!({"_id": 1, "v": 2}))));
    let mut changed = mine[0].changed.clone().unwrap();
    changed.sort();
    assert_eq!(changed, vec!["gone", "v"]);
    assert_eq!(mine[1].key, Some(row(json!({"_id": 2}))));

    events.drop().await.unwrap();
    let records = s.wait_for("the truncate", |r| r.op == Op::Truncate);
    assert_eq!(of(&records, &ns).len(), 1);
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mongod_copies_then_streams_and_survives_kills() {
    let Some(mut s) = start(&["events"], "").await else {
        return;
    };
    write_load(s.events(), 0, 300).await;
    s.wait_for_state("events");
    let writer = tokio::spawn(write_load(s.events(), 300, 1500));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.relay.kill();
        s.relay.spawn();
    }
    writer.await.unwrap();
    let records = s.wait_for_state("events");
    assert_exactly_once_in_order(&records, &s.ns("events"), 1500);
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mongod_passes_the_check() {
    let Some(uri) = uri().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = testkit::relay::mongo_config(
        dir.path(),
        1,
        &testkit::relay::mongo_source_toml(&uri, "deltarelay_check", &["events"], ""),
    );
    std::fs::write(&path, text).unwrap();
    let config = deltarelay::config::Config::load(&path).unwrap();
    let spec = deltarelay::source::SourceSpec::parse(&config.sources[0]).unwrap();
    let results = spec.check().await;
    for result in &results {
        eprintln!("{result}");
    }
    assert!(results
        .iter()
        .all(|r| r.status != deltarelay::check::Status::Fail));
}

// ---------------------------------------------------------------------------------------------
// Issue 18: the failures a real replica set produces. They need `enableTestCommands=1`
// (failCommand) and, for the oplog tests, a few GiB of disk and some minutes.

/// Sets the `failCommand` fail point for the relay's connections (appName `deltarelay`).
async fn fail_command(s: &Setup, mode: bson::Bson, data: Document) {
    let mut data = data;
    data.insert("appName", "deltarelay");
    s.db.client()
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
        .await
        .expect("failCommand needs a server started with --setParameter enableTestCommands=1");
}

async fn fail_command_off(s: &Setup) {
    s.db.client()
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .unwrap();
}

/// Waits until the relay's output contains `text`.
fn wait_for_output(s: &mut Setup, text: &str, within: Duration) {
    let relay = &mut s.relay;
    block_in_place(|| {
        wait_until(within, text, || {
            relay.assert_running();
            relay.output().contains(text)
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sigterm_between_split_fragments_yields_the_event_once() {
    let Some(mut s) = start(&["events"], "").await else {
        return;
    };
    let big = "x".repeat(8 << 20);
    s.events()
        .insert_one(doc! {"_id": 1, "a": &big})
        .await
        .unwrap();
    s.wait_for("the large insert", |r| r.op == Op::Insert);
    // Every getMore of the relay waits 5 s first: the one after the first fragment too.
    fail_command(
        &s,
        "alwaysOn".into(),
        doc! {"failCommands": ["getMore"], "blockConnection": true, "blockTimeMS": 5000},
    )
    .await;
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"b": "y".repeat(7 << 20)}})
        .await
        .unwrap();
    wait_for_output(
        &mut s,
        "receiving a change event split into fragments",
        Duration::from_secs(60),
    );
    assert_eq!(block_in_place(|| s.relay.terminate()), Some(0));
    fail_command_off(&s).await;
    s.relay.spawn();
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    let records = s.wait_for("the insert after the split event", |r| {
        r.key == Some(row(json!({"_id": 2})))
    });
    let updates: Vec<&ChangeRecord> = records.iter().filter(|r| r.op == Op::Update).collect();
    assert_eq!(updates.len(), 1, "the split event exactly once");
    let after = updates[0].after.as_ref().unwrap();
    assert_eq!(after["b"].as_str().unwrap().len(), 7 << 20);
    s.wait_for_state("events");
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rename_with_a_fault_during_the_copy_copies_it_again() {
    let Some(mut s) = start(&["events"], "").await else {
        return;
    };
    s.events().insert_one(doc! {"_id": "old"}).await.unwrap();
    s.wait_for("the first insert", |r| r.op == Op::Insert);
    let staging = s.db.collection::<Document>("staging");
    staging
        .insert_many((0..5000).map(|i| doc! {"_id": i, "v": "staged"}))
        .await
        .unwrap();
    // The copy's first getMore on the renamed collection fails (the change stream's getMores
    // are on `<db>.$cmd.aggregate`, not on this namespace).
    fail_command(
        &s,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "namespace": s.ns("events"), "errorCode": 6},
    )
    .await;
    let (from, to) = (s.ns("staging"), s.ns("events"));
    s.db.client()
        .database("admin")
        .run_command(doc! {"renameCollection": from, "to": to, "dropTarget": true})
        .await
        .unwrap();
    wait_for_output(
        &mut s,
        "copying renamed collections again",
        Duration::from_secs(60),
    );
    fail_command_off(&s).await;
    s.wait_for_state("events");
    finish(s).await;
}

/// Writes 15 MiB documents into an unsynced collection until the oplog's oldest entry is
/// newer than it was: the oplog (990 MiB at the least) rolled over.
async fn roll_the_oplog_over(s: &Setup) {
    let oplog =
        s.db.client()
            .database("local")
            .collection::<Document>("oplog.rs");
    let oldest = || async {
        oplog
            .find_one(doc! {})
            .sort(doc! {"$natural": 1})
            .await
            .unwrap()
            .and_then(|e| e.get_timestamp("ts").ok())
            .unwrap()
    };
    let first = oldest().await;
    let filler = s.db.collection::<Document>("filler");
    let pad = "f".repeat(15 << 20);
    for i in 0..1000 {
        filler
            .insert_one(doc! {"_id": i, "pad": &pad})
            .await
            .unwrap();
        filler.delete_one(doc! {"_id": i}).await.unwrap();
        if i % 10 == 9 && oldest().await > first {
            return;
        }
    }
    panic!("the oplog did not roll over after 15 GiB of writes");
}

/// How the relay misses the oplog's window.
enum Gap {
    Stopped,
    Frozen,
}

async fn real_history_lost(gap: Gap) {
    let Some(mut s) = start(&["events"], "").await else {
        return;
    };
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
    s.events().delete_one(doc! {"_id": 3}).await.unwrap();
    roll_the_oplog_over(&s).await;
    write_load(s.events(), 50, 100).await;
    match gap {
        Gap::Stopped => s.relay.spawn(),
        Gap::Frozen => drop(signal("-CONT")),
    }
    let records = s.wait_for_state("events");
    let output = s.relay.output();
    assert!(output.contains("UPSTREAM HISTORY LOST"), "{output}");
    assert!(records.iter().all(|r| r.op != Op::Delete));
    let addr = s.addr;
    let status = block_in_place(|| {
        testkit::relay::http_status(addr, &format!("/v1/changes?since={old_cursor}"))
    });
    assert_eq!(status, Some(410), "the old cursor expired");
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_oplog_rollover_on_a_stopped_relay_recopies() {
    real_history_lost(Gap::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_oplog_rollover_under_a_live_cursor_recopies() {
    real_history_lost(Gap::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_restart_with_a_token_of_a_removed_collection() {
    let Some(mut s) = start(&["events", "users"], "").await else {
        return;
    };
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.wait_for("the events insert", |r| r.op == Op::Insert);
    // Every getMore of the relay waits 5 s, so that the stop falls after the `users` event
    // arrived and before the next batch: the stored position is that event's token.
    fail_command(
        &s,
        "alwaysOn".into(),
        doc! {"failCommands": ["getMore"], "blockConnection": true, "blockTimeMS": 5000},
    )
    .await;
    s.db.collection::<Document>("users")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(block_in_place(|| s.relay.terminate()), Some(0));
    fail_command_off(&s).await;
    let path = s.dir.path().join("deltarelay.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace(
            r#"collections = ["events", "users"]"#,
            r#"collections = ["events"]"#,
        ),
    )
    .unwrap();
    s.relay.spawn();
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    s.wait_for_state("events");
    let output = s.relay.output();
    // Either the server resumed (a high-water-mark token was stored) or it refused the token
    // and the relay said so and copied again; never a silent retry loop.
    if output.contains("280") {
        assert!(output.contains("UPSTREAM HISTORY LOST"), "{output}");
    }
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_values_and_keys_map_to_the_documented_json() {
    let Some(uri) = uri().await else {
        return;
    };
    // Copied: written before the relay starts.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let database = format!(
        "deltarelay_values_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let client = Client::with_uri_str(&uri).await.unwrap();
    let db = client.database(&database);
    db.drop().await.unwrap();
    let (copied, copied_json) = values_document(1);
    let events = db.collection::<Document>("events");
    events.insert_one(copied).await.unwrap();
    events
        .insert_one(doc! {"_id": 9_007_199_254_740_993i64})
        .await
        .unwrap();
    let mut s = Setup::start_at(&uri, &database, None, &["events"], "").await;
    // Streamed.
    let (streamed, streamed_json) = values_document(2);
    s.events().insert_one(streamed).await.unwrap();
    let records = s.wait_for("the streamed insert", |r| {
        r.key == Some(row(json!({"_id": 2})))
    });
    let after = |id: serde_json::Value| {
        records
            .iter()
            .find(|r| r.key == Some(row(json!({"_id": id}))))
            .and_then(|r| r.after.clone())
            .map(serde_json::Value::Object)
    };
    assert_eq!(after(json!(1)), Some(copied_json));
    assert_eq!(after(json!(2)), Some(streamed_json));
    assert_eq!(
        after(json!({"$numberLong": "9007199254740993"})),
        Some(json!({"_id": {"$numberLong": "9007199254740993"}}))
    );
    finish(s).await;
}

/// Writes (`POST /v1/mutations`) against a real server's transactions: applied and visible at
/// the returned cursor, duplicate ids, a conflict with the current document, an atomic batch
/// that a duplicate key (11000) rolls back leaving nothing, and the Extended JSON round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_writes_in_transactions() {
    let uri = match uri().await {
        Some(uri) => uri,
        None => return,
    };
    static NEXT: AtomicU32 = AtomicU32::new(100);
    let database = format!(
        "deltarelay_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let extra = format!(
        "\n[writes]\nallow_unauthenticated = true\n[collections.\"{database}.items\".write]\nversion_column = \"v\"\n"
    );
    let s = Setup::start_at(&uri, &database, None, &["items"], &extra).await;
    let items = format!("{database}.items");
    let send = |body: serde_json::Value| {
        let addr = s.addr;
        async move {
            let response = testkit::http::post(addr, "/v1/mutations", &[], &body.to_string())
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{}", response.body);
            response.json()
        }
    };
    let statuses = |body: &serde_json::Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    };
    let insert = json!({"mutations": [{"id": "a", "collection": items, "op": "insert",
        "value": {"_id": 1, "v": 1, "big": {"$numberLong": "9007199254740993"},
                  "at": {"$date": "2025-01-15T11:00:00.123Z"}, "d": {"$numberDecimal": "1.10"}}}],
        "since": "0"});
    let body = send(insert.clone()).await;
    assert_eq!(statuses(&body), ["applied"]);
    assert_eq!(body["visible"], true, "{body}");
    assert!(
        body["changes"].to_string().contains("9007199254740993"),
        "read-your-writes: {body}"
    );
    assert_eq!(statuses(&send(insert).await), ["duplicate"]);
    let stored =
        s.db.collection::<Document>("items")
            .find_one(doc! {"_id": 1})
            .await
            .unwrap()
            .unwrap();
    assert_eq!(stored.get_i64("big"), Ok(9_007_199_254_740_993));
    assert!(matches!(stored.get("d"), Some(bson::Bson::Decimal128(_))));

    let update = |id: &str, v: i64| {
        json!({"mutations": [{"id": id, "collection": items, "op": "update", "key": {"_id": 1},
            "value": {"note": id}, "if": {"v": v}}]})
    };
    assert_eq!(statuses(&send(update("u1", 1)).await), ["applied"]);
    let conflict = send(update("u2", 1)).await;
    assert_eq!(statuses(&conflict), ["conflict"]);
    assert_eq!(conflict["results"][0]["current"]["v"], 2);

    let atomic = json!({"atomic": true, "mutations": [
        {"id": "x1", "collection": items, "op": "insert", "value": {"_id": 2}},
        {"id": "x2", "collection": items, "op": "insert", "value": {"_id": 1}}]});
    let body = send(atomic).await;
    assert_eq!(statuses(&body), ["rolled_back", "rejected"]);
    assert_eq!(body["results"][1]["error"]["code"], 11000);
    let count =
        s.db.collection::<Document>("items")
            .count_documents(doc! {})
            .await
            .unwrap();
    assert_eq!(count, 1);
    finish(s).await;
}
