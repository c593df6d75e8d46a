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

/// The next raw event of a stream.
async fn next_raw(stream: &mut mongodb::change_stream::ChangeStream<Document>) -> Document {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn events_have_the_shapes_of_a_real_server() {
    let server = MongoWire::start();
    let client = client(&server).await;
    let db = client.database("app");
    let coll = db.collection::<Document>("t");
    let mut stream = db
        .watch()
        .show_expanded_events(true)
        .await
        .unwrap()
        .with_type::<Document>();
    // A transaction: one clusterTime for all its events, `lsid` as {id, uid}.
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    for id in [1, 2] {
        coll.insert_one(
            doc! {"_id": id, "a": {"b": 0}, "tags": ["x", "y"], "list": [1, 2], "m": {}},
        )
        .session(&mut session)
        .await
        .unwrap();
    }
    session.commit_transaction().await.unwrap();
    let (one, two) = (next_raw(&mut stream).await, next_raw(&mut stream).await);
    assert_eq!(
        one.get_timestamp("clusterTime").unwrap(),
        two.get_timestamp("clusterTime").unwrap()
    );
    let lsid = one.get_document("lsid").unwrap();
    assert_eq!(lsid.keys().collect::<Vec<_>>(), ["id", "uid"]);
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        [
            "_id",
            "operationType",
            "clusterTime",
            "wallTime",
            "txnNumber",
            "lsid",
            "fullDocument",
            "ns",
            "documentKey"
        ]
    );
    // Dotted paths, an append, an array shortened, a numeric field name.
    coll.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"a.b": 1, "m.0": true}, "$push": {"tags": "z"}, "$pop": {"list": 1}},
    )
    .await
    .unwrap();
    let update = next_raw(&mut stream).await;
    assert_eq!(
        update.get_document("updateDescription").unwrap(),
        &doc! {
            "updatedFields": {"a.b": 1, "m.0": true, "tags.2": "z"},
            "removedFields": [],
            "truncatedArrays": [{"field": "list", "newSize": 1}],
            "disambiguatedPaths": {"m.0": ["m", "0"]},
        }
    );
    // Without showExpandedEvents there is no disambiguatedPaths.
    let mut plain = db.watch().await.unwrap().with_type::<Document>();
    coll.update_one(doc! {"_id": 2}, doc! {"$set": {"m.0": 1}})
        .await
        .unwrap();
    let update = next_raw(&mut plain).await;
    let description = update.get_document("updateDescription").unwrap();
    assert!(!description.contains_key("disambiguatedPaths"), "{update}");
}

#[tokio::test]
async fn list_collections_honours_its_filter() {
    let server = MongoWire::start();
    let client = client(&server).await;
    let db = client.database("app");
    for name in ["a", "b"] {
        db.create_collection(name).await.unwrap();
    }
    let names = db
        .list_collection_names()
        .filter(doc! {"name": "a"})
        .await
        .unwrap();
    assert_eq!(names, ["a"]);
    let names = db
        .list_collection_names()
        .filter(doc! {"name": {"$in": ["b", "c"]}, "type": "collection"})
        .await
        .unwrap();
    assert_eq!(names, ["b"]);
}

#[tokio::test]
async fn tokens_of_another_deployment_or_of_a_filtered_event_are_error_280() {
    let (one, two) = (MongoWire::start(), MongoWire::start());
    let (c1, c2) = (client(&one).await, client(&two).await);
    let mut stream = c1.database("app").watch().await.unwrap();
    c1.database("app")
        .collection::<Document>("t")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let event = stream.next().await.unwrap().unwrap();
    c2.database("app")
        .collection::<Document>("t")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let err = c2
        .database("app")
        .watch()
        .start_after(event.id.clone())
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(280), "{err}");
    // The same server, a stream whose $match leaves that event out.
    let err = c1
        .database("app")
        .watch()
        .pipeline([doc! {"$match": {"ns.coll": "other"}}])
        .start_after(event.id)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(280), "{err}");
}

#[tokio::test]
async fn idle_cursors_time_out_and_change_streams_resume_past_it() {
    let server = MongoWire::start();
    server.set_cursor_timeout(Duration::from_millis(300));
    let client = client(&server).await;
    let db = client.database("app");
    let coll = db.collection::<Document>("t");
    coll.insert_many((0..50).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let mut cursor = coll.find(doc! {}).batch_size(10).await.unwrap();
    for _ in 0..10 {
        cursor.next().await.unwrap().unwrap();
    }
    let mut stream = db
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let err = cursor.next().await.unwrap().unwrap_err();
    assert_eq!(code_of(&err), Some(43), "{err}");
    // CursorNotFound is resumable: the driver reopens the stream by itself.
    coll.insert_one(doc! {"_id": 100}).await.unwrap();
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!(event.document_key, Some(doc! {"_id": 100}));
}

#[tokio::test]
async fn an_idle_server_writes_no_ops_that_move_the_post_batch_token() {
    let server = MongoWire::start();
    server.set_noop_interval(Duration::from_millis(200));
    let client = client(&server).await;
    let mut stream = client
        .database("app")
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap();
    let first = stream.resume_token().unwrap();
    // A no-op every 200 ms: the token moves within a few getMores (waiting up to 30 s for a
    // loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut moved = false;
    while std::time::Instant::now() < deadline {
        assert!(stream.next_if_any().await.unwrap().is_none());
        if stream.resume_token().unwrap() != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "no write, yet the token moves");
}

#[tokio::test]
async fn a_step_down_refuses_writes_and_interrupts_change_streams() {
    let server = MongoWire::start();
    let client = client(&server).await;
    let db = client.database("app");
    let coll = db.collection::<Document>("t");
    let mut stream = db
        .watch()
        .max_await_time(Duration::from_millis(100))
        .await
        .unwrap();
    assert!(stream.next_if_any().await.unwrap().is_none());
    server.set_secondary(true);
    let err = coll.insert_one(doc! {"_id": 1}).await.unwrap_err();
    assert!(
        code_of(&err) == Some(10107) || err.to_string().contains("ReplicaSetNoPrimary"),
        "{err}"
    );
    // Elected again a moment later: the stream resumes (11602 is resumable) and goes on.
    let waiting = tokio::spawn(async move {
        let event = stream.next().await.unwrap().unwrap();
        event.document_key
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.set_secondary(false);
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    assert_eq!(waiting.await.unwrap(), Some(doc! {"_id": 2}));
}
