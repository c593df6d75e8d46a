//! The MongoDB source against a real `mongod` replica set. These run only when
//! `DELTARELAY_TEST_MONGODB_URI` is set (e.g. `mongodb://127.0.0.1:27017/?replicaSet=rs0`); each
//! test uses its own database `deltarelay_test_<pid>_<n>` and drops it at the end.
//!
//! `DELTARELAY_TEST_MONGODB_URI=mongodb://127.0.0.1:27017/?replicaSet=rs0 cargo test --test it mongo_real::`

use bson::doc;
use deltarelay::record::Op;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::http::row;
use testkit::mongo::{assert_exactly_once_in_order, of, write_load, Setup};

const URI_VAR: &str = "DELTARELAY_TEST_MONGODB_URI";

/// The real deployment's URI, or `None` (test skipped, even under `CI=true`: CI has no
/// mongod). With the URI set, an unreachable server fails the test.
fn uri() -> Option<String> {
    let uri = std::env::var(URI_VAR).ok();
    if uri.is_none() {
        testkit::skip(&format!(
            "set {URI_VAR} to run the tests against a real mongod"
        ));
    }
    uri
}

/// The relay on a fresh database of the real deployment, or `None` (test skipped).
async fn start(collections: &[&str], extra: &str) -> Option<Setup> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let uri = uri()?;
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
    let Some(uri) = uri() else {
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
