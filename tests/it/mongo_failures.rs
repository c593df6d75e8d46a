//! The MongoDB source against the failures a real replica set produces (issue 18), on the wire
//! test server: a stop between the fragments of a split event, a fault during a renamed
//! collection's copy, the server errors retrying cannot fix, the value mapping through the copy
//! and the stream, and `whenAvailable` without a post-image.

use bson::{doc, Document};
use deltarelay::record::{ChangeRecord, Op};
use serde_json::{json, Value};
use std::time::Duration;
use testkit::http::row;
use testkit::mongo::{of, values_document, Setup};
use testkit::mongo_wire::{Hold, MongoWire};
use testkit::relay::wait_until;
use tokio::task::block_in_place;

/// Waits until `check` holds, on a blocking thread.
fn wait(what: &str, check: impl FnMut() -> bool) {
    block_in_place(|| wait_until(Duration::from_secs(30), what, check));
}

/// Replaces `from` by `to` in the relay's config (it takes effect on the next start).
fn edit_config(s: &Setup, from: &str, to: &str) {
    let path = s.dir.path().join("deltarelay.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains(from), "{config}");
    std::fs::write(&path, config.replace(from, to)).unwrap();
}

/// The source's entry of `/v1/status`.
async fn source_status(s: &Setup) -> Value {
    let status = testkit::http::get(s.addr, "/v1/status", &[]).await.json();
    status["sources"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_between_split_fragments_resumes_with_the_whole_event_once() {
    let mut s = Setup::start(&["events"], "").await;
    s.server().hold_change_streams(Hold::BetweenFragments);
    let big = "x".repeat(8 << 20);
    s.events()
        .insert_one(doc! {"_id": 1, "a": &big})
        .await
        .unwrap();
    // Over 16 MiB with the looked-up document: two fragments.
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"b": "y".repeat(7 << 20)}})
        .await
        .unwrap();
    let server = s.server();
    wait("the relay to wait for the second fragment", || {
        server.held_getmores() > 0
    });
    // SIGTERM between the fragments, then a normal start.
    assert_eq!(block_in_place(|| s.relay.terminate()), Some(0));
    s.server().hold_change_streams(Hold::Never);
    s.relay.spawn();
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    let records = s.wait_for("the insert after the split event", |r| {
        r.key == Some(row(json!({"_id": 2})))
    });
    let updates: Vec<&ChangeRecord> = records.iter().filter(|r| r.op == Op::Update).collect();
    assert_eq!(updates.len(), 1, "the split event exactly once");
    let after = updates[0].after.as_ref().unwrap();
    assert_eq!(after["a"].as_str().unwrap().len(), 8 << 20);
    assert_eq!(after["b"].as_str().unwrap().len(), 7 << 20);
    s.wait_for_state("events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_during_a_renamed_collections_copy_copies_it_again() {
    let mut s = Setup::start(&["events"], "").await;
    s.events().insert_one(doc! {"_id": "old"}).await.unwrap();
    let staging = s.db.collection::<Document>("staging");
    staging
        .insert_many((0..5000).map(|i| doc! {"_id": i, "v": "staged"}))
        .await
        .unwrap();
    s.wait_for("the first insert", |r| r.op == Op::Insert);
    // The copy's first getMore (after a find batch of 2,000) fails.
    s.server().fail_find_getmores(1);
    s.db.client()
        .database("admin")
        .run_command(
            doc! {"renameCollection": "app.staging", "to": "app.events", "dropTarget": true},
        )
        .await
        .unwrap();
    let server = s.server();
    wait("the relay's copy to meet the fault", || {
        server.find_getmore_faults_left() == 0
    });
    let records = s.wait_for_state("events");
    assert_eq!(records.iter().filter(|r| r.op == Op::Truncate).count(), 1);
    let output = s.relay.output();
    assert!(
        output.contains("copying renamed collections again"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_token_of_a_collection_removed_from_the_config_recopies_loudly() {
    let mut s = Setup::start(&["events", "users"], "").await;
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.wait_for("the events insert", |r| r.op == Op::Insert);
    // Stopped right after an event of `users`: its token is the stored position.
    s.server().hold_change_streams(Hold::AfterEvents);
    s.db.collection::<Document>("users")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let server = s.server();
    wait("the relay to hold the users event", || {
        server.held_getmores() > 0
    });
    assert_eq!(block_in_place(|| s.relay.terminate()), Some(0));
    s.server().hold_change_streams(Hold::Never);
    edit_config(
        &s,
        r#"collections = ["events", "users"]"#,
        r#"collections = ["events"]"#,
    );
    s.relay.spawn();
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    s.wait_for_state("events");
    let output = s.relay.output();
    assert!(output.contains("UPSTREAM HISTORY LOST"), "{output}");
    assert!(output.contains("280 ChangeStreamFatalError"), "{output}");
    assert!(output.contains("a collection removed from the config"));
}

/// A source that cannot pass an event says so in `/v1/status` (kind `blocked`, with the fix)
/// and in the log, rather than retrying silently.
async fn assert_blocked(s: &Setup, fix: &str) {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = source_status(s).await;
        if last["last_error_kind"] == "blocked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["last_error_kind"], "blocked", "{last}");
    let message = last["last_error"].as_str().unwrap_or_default();
    assert!(message.contains(fix), "{message}");
    let output = s.relay.output();
    assert!(output.contains("SOURCE BLOCKED"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_16_mib_on_a_server_that_cannot_split_is_reported() {
    let server = MongoWire::start();
    server.set_version([6, 0, 5]);
    let s = Setup::start_on(server, &["events"], "").await;
    s.events()
        .insert_one(doc! {"_id": 1, "a": "x".repeat(8 << 20)})
        .await
        .unwrap();
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"b": "y".repeat(9 << 20)}})
        .await
        .unwrap();
    assert_blocked(&s, "upgrade MongoDB to 6.0.9+").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_too_large_to_split_is_reported() {
    let s = Setup::start(&["events"], "").await;
    // The document alone nearly fills 16 MiB: its event's fullDocument cannot be split.
    s.events()
        .insert_one(doc! {"_id": 1, "a": "x".repeat((16 << 20) - 60)})
        .await
        .unwrap();
    assert_blocked(&s, "7182500").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_post_image_that_is_missing_is_reported() {
    let s = Setup::start(&["events"], "full_document = \"required\"").await;
    s.events()
        .insert_one(doc! {"_id": 1, "v": 1})
        .await
        .unwrap();
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    assert_blocked(&s, "set full_document = \"whenAvailable\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_available_without_a_post_image_looks_the_document_up() {
    let mut s = Setup::start(&["events"], "full_document = \"whenAvailable\"").await;
    s.events()
        .insert_one(doc! {"_id": 1, "v": 1})
        .await
        .unwrap();
    s.events()
        .update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    let records = s.wait_for("the update", |r| r.op == Op::Update);
    let update = of(&records, "app.events")
        .into_iter()
        .find(|r| r.op == Op::Update)
        .unwrap();
    assert_eq!(update.after, Some(row(json!({"_id": 1, "v": 2}))));
    assert_eq!(update.changed.as_deref(), Some(&["v".to_string()][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_map_to_the_documented_json_through_the_copy_and_the_stream() {
    let server = MongoWire::start();
    let client = mongodb::Client::with_uri_str(server.uri()).await.unwrap();
    let events = client.database("app").collection::<Document>("events");
    let (copied, copied_json) = values_document(1);
    events.insert_one(copied).await.unwrap();
    // A key beyond 2^53 too.
    events
        .insert_one(doc! {"_id": 9_007_199_254_740_993i64})
        .await
        .unwrap();
    let mut s = Setup::start_on(server, &["events"], "").await;
    let (streamed, streamed_json) = values_document(2);
    s.events().insert_one(streamed).await.unwrap();
    let records = s.wait_for("the streamed insert", |r| {
        r.key == Some(row(json!({"_id": 2})))
    });
    let after = |id: Value| {
        records
            .iter()
            .find(|r| r.key == Some(row(json!({"_id": id}))))
            .and_then(|r| r.after.clone())
            .map(Value::Object)
    };
    assert_eq!(after(json!(1)), Some(copied_json));
    assert_eq!(after(json!(2)), Some(streamed_json));
    assert_eq!(
        after(json!({"$numberLong": "9007199254740993"})),
        Some(json!({"_id": {"$numberLong": "9007199254740993"}}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_down_and_an_idle_cursor_timeout_lose_nothing() {
    let server = MongoWire::start();
    server.set_cursor_timeout(Duration::from_millis(500));
    let mut s = Setup::start_on(server, &["events"], "").await;
    s.events().insert_one(doc! {"_id": 1}).await.unwrap();
    s.wait_for("the first insert", |r| r.op == Op::Insert);
    // A step-down: the open getMore fails with 11602, writes are refused, then elected again.
    s.server().set_secondary(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.server().set_secondary(false);
    s.events().insert_one(doc! {"_id": 2}).await.unwrap();
    s.wait_for_state("events");
    // Frozen past the cursor timeout: its next getMore finds the cursor gone (43).
    let pid = s.relay.pid().unwrap().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    signal("-STOP");
    s.events().insert_one(doc! {"_id": 3}).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal("-CONT");
    s.events().insert_one(doc! {"_id": 4}).await.unwrap();
    let records = s.wait_for_state("events");
    assert_eq!(records.len(), 4);
    assert!(!s.relay.output().contains("HISTORY LOST"));
}
