//! A Postgres and a MongoDB source in one relay, served through one `/v1/changes` and one
//! `/v1/stream`, filtered by `collections`.

use bson::doc;
use mongodb::Client;
use serde_json::Value;
use std::time::Duration;
use testkit::free_port;
use testkit::http::{get, record_of, SseClient};
use testkit::mongo_wire::MongoWire;
use testkit::pg::PgServer;
use testkit::relay::{mongo_source_toml, postgres_config, start_ready_relay_with};
use tokio::task::block_in_place;

fn collections_of(page: &Value) -> Vec<String> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["collection"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_mongodb_share_one_log_and_one_api() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, name text);");
    let mongo = MongoWire::start();
    let client = Client::with_uri_str(mongo.uri()).await.unwrap();
    let events = client.database("app").collection("events");
    events
        .insert_one(doc! {"_id": 1, "name": "mongo"})
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let source = mongo_source_toml(&mongo.uri(), "app", &["events"], "");
    let port = free_port();
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.items"],
        port,
    ) + &source;
    let (_relay, addr) = block_in_place(|| start_ready_relay_with(dir.path(), &config, port));

    // The Mongo document (copied) and a Postgres row (streamed) in the one log.
    pg.psql("app", "INSERT INTO items VALUES (1, 'pg');");
    let mut all = Value::Null;
    for _ in 0..100 {
        all = get(addr, "/v1/changes", &[]).await.json();
        if collections_of(&all).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut both = collections_of(&all);
    both.sort();
    assert_eq!(both, vec!["app.events", "public.items"], "{all}");
    for (filter, expected) in [("app.events", "app_mongo"), ("public.items", "app_pg")] {
        let page = get(addr, &format!("/v1/changes?collections={filter}"), &[])
            .await
            .json();
        assert_eq!(collections_of(&page), vec![filter.to_string()]);
        assert_eq!(page["changes"][0]["source"], expected);
    }

    // Live: a stream filtered to the Mongo collection sees only Mongo changes.
    let mut stream = SseClient::connect(addr, "/v1/stream?collections=app.events", None).await;
    let mut unfiltered = SseClient::connect(addr, "/v1/stream", None).await;
    for client in [&mut stream, &mut unfiltered] {
        loop {
            let event = client.next_within(Duration::from_secs(20)).await.unwrap();
            if event.event == "ready" {
                break;
            }
        }
    }
    pg.psql("app", "INSERT INTO items VALUES (2, 'pg live');");
    events
        .insert_one(doc! {"_id": 2, "name": "mongo live"})
        .await
        .unwrap();
    let live = record_of(&stream.next_within(Duration::from_secs(20)).await.unwrap());
    assert_eq!(live["collection"], "app.events");
    assert_eq!(live["after"]["name"], "mongo live");
    let mut seen = vec![];
    while seen.len() < 2 {
        let record = record_of(
            &unfiltered
                .next_within(Duration::from_secs(20))
                .await
                .unwrap(),
        );
        seen.push(record["after"]["name"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, vec!["mongo live", "pg live"]);
    // The Postgres row never reached the filtered stream: its next event is the next Mongo one.
    events
        .insert_one(doc! {"_id": 3, "name": "mongo again"})
        .await
        .unwrap();
    let next = record_of(&stream.next_within(Duration::from_secs(20)).await.unwrap());
    assert_eq!(next["after"]["name"], "mongo again");
}
