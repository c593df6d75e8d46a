//! The test MongoDB server against the real driver: what the relay's tests rely on.

use bson::{doc, Document};
use futures_util::StreamExt;
use mongodb::change_stream::event::OperationType;
use mongodb::options::FullDocumentType;
use mongodb::Client;
use std::time::Duration;
use testkit::mongo_wire::MongoWire;

async fn client(server: &MongoWire) -> Client {
    Client::with_uri_str(server.uri()).await.unwrap()
}

#[tokio::test]
async fn crud_and_find_in_id_order() {
    let server = MongoWire::start();
    let client = client(&server).await;
    let coll = client.database("app").collection::<Document>("events");
    coll.insert_many((0..250).rev().map(|i| doc! {"_id": i, "n": i}))
        .await
        .unwrap();
    coll.update_one(
        doc! {"_id": 3},
        doc! {"$set": {"s": "x"}, "$inc": {"n": 10}},
    )
    .await
    .unwrap();
    coll.delete_one(doc! {"_id": 4}).await.unwrap();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .batch_size(100)
        .await
        .unwrap()
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(docs.len(), 249);
    assert_eq!(docs[0].get_i32("_id").unwrap(), 0);
    assert_eq!(docs[3], doc! {"_id": 3, "n": 13, "s": "x"});
    assert_eq!(docs[4].get_i32("_id").unwrap(), 5);
    assert_eq!(server.open_cursors(), 0);
}

#[tokio::test]
async fn change_stream_resumes_after_faults() {
    let server = MongoWire::start();
    let client = client(&server).await;
    let db = client.database("app");
    let coll = db.collection::<Document>("events");
    let mut stream = db
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap();
    let start = stream
        .resume_token()
        .expect("a token before the first event");
    coll.insert_one(doc! {"_id": 1, "v": 1}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_ne!(first.id, start);
    server.drop_connections();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(
        second.full_document,
        Some(doc! {"_id": 1, "v": 2}),
        "{second:?}"
    );
    server.fail_change_stream_getmores(2);
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    let third = stream.next().await.unwrap().unwrap();
    assert_eq!(
        third.operation_type,
        mongodb::change_stream::event::OperationType::Delete
    );
    // Resuming from the first event's token replays what came after it.
    let mut again = db.watch().resume_after(first.id).await.unwrap();
    let replay = again.next().await.unwrap().unwrap();
    assert_eq!(replay.id, second.id);
}

#[tokio::test]
async fn history_lost_is_error_286() {
    let server = MongoWire::start_with_window(5);
    let client = client(&server).await;
    let db = client.database("app");
    let stream = db.watch().await.unwrap();
    let token = stream.resume_token().unwrap();
    let coll = db.collection::<Document>("t");
    for i in 0..10 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let err = db.watch().resume_after(token).await.unwrap_err();
    assert_eq!(code_of(&err), Some(286), "{err}");
}

fn code_of(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Serves for `MONGO_WIRE_SECONDS` (default 120) and prints its URI, for manual runs of other
/// clients such as the `mongo_real` tests:
/// `cargo test --test it -- --ignored --nocapture mongo_wire_driver::serve`.
#[test]
#[ignore]
fn serve_for_manual_runs() {
    let server = MongoWire::start();
    println!("{}", server.uri());
    std::thread::sleep(Duration::from_secs(
        std::env::var("MONGO_WIRE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    ));
}

#[tokio::test]
async fn start_at_operation_time_start_after_invalidate_and_await_time() {
    let server = MongoWire::start();
    let client = client(&server).await;
    let db = client.database("app");
    let coll = db.collection::<Document>("t");
    let mut on_coll = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let first = on_coll.next().await.unwrap().unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();

    // startAtOperationTime: from the first event's cluster time on, both events again.
    let at = first.cluster_time.unwrap();
    let mut from_time = db.watch().start_at_operation_time(at).await.unwrap();
    for id in [1, 2] {
        let event = from_time.next().await.unwrap().unwrap();
        assert_eq!(event.document_key, Some(doc! {"_id": id}));
    }

    // A collection stream ends with invalidate after a drop; only startAfter passes it.
    coll.drop().await.unwrap();
    let mut kinds = vec![];
    let mut invalidate = None;
    while let Some(event) = on_coll.next().await {
        let event = event.unwrap();
        kinds.push(event.operation_type.clone());
        if event.operation_type == OperationType::Invalidate {
            invalidate = Some(event.id);
            break;
        }
    }
    assert_eq!(
        kinds,
        vec![
            OperationType::Insert,
            OperationType::Drop,
            OperationType::Invalidate
        ]
    );
    let token = invalidate.unwrap();
    assert!(coll.watch().resume_after(token.clone()).await.is_err());
    let mut after = coll.watch().start_after(token).await.unwrap();
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    let event = after.next().await.unwrap().unwrap();
    assert_eq!(event.document_key, Some(doc! {"_id": 3}));

    // An idle getMore waits for maxTimeMS, then answers with an empty batch.
    let mut idle = db
        .watch()
        .max_await_time(Duration::from_millis(300))
        .await
        .unwrap();
    // The first call only looks at the aggregate's (empty) first batch.
    assert!(idle.next_if_any().await.unwrap().is_none());
    let started = std::time::Instant::now();
    assert!(idle.next_if_any().await.unwrap().is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "{:?}",
        started.elapsed()
    );
}
