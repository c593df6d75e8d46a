//! A shape over a MongoDB collection (the wire test server, the relay binary): a quoted
//! dotted path and a number compared by their JSON kind, ObjectIds as text; random updates
//! move documents in and out while an SSE client follows, and `/v1/changes` from 0 agrees.

use bson::{doc, oid::ObjectId};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::http::*;
use testkit::mongo::Setup;

const WHERE: &str = "%22address.city%22%20%3D%20%27Oslo%27%20AND%20n%20%3E%202";

fn as_table(state: &State) -> BTreeMap<String, Value> {
    state
        .iter()
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_move_in_and_out_of_a_shape() {
    let s = Setup::start(&["events"], "").await;
    let ids: Vec<ObjectId> = (0..20).map(|_| ObjectId::new()).collect();
    for (i, id) in ids.iter().enumerate() {
        let city = if i % 2 == 0 { "Oslo" } else { "Bergen" };
        s.events()
            .insert_one(doc! {"_id": id, "title": format!("t{i}"), "n": (i % 5) as i32, "address": {"city": city}})
            .await
            .unwrap();
    }
    let shaped = format!("collections=app.events&where={WHERE}&columns=title");
    // Wait until the relay has the documents, then follow the shape live.
    let mut fresh = State::new();
    for _ in 0..300 {
        let body = get(s.addr, "/v1/changes?collections=app.events&since=0", &[])
            .await
            .json();
        if body["changes"].as_array().map_or(0, Vec::len) >= ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = SseClient::connect(s.addr, &format!("/v1/stream?{shaped}"), None).await;
    assert_eq!(client.status, 200);
    let mut state = State::new();
    loop {
        let event = client.next_within(Duration::from_secs(20)).await.unwrap();
        if event.event == "ready" {
            break;
        }
        apply(&mut state, &record_of(&event));
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for i in 0..150 {
        let id = ids[rng.gen_range(0..ids.len())];
        match rng.gen_range(0..4) {
            0 => {
                let city = ["Oslo", "Bergen"][rng.gen_range(0..2)];
                s.events()
                    .update_one(doc! {"_id": id}, doc! {"$set": {"address": {"city": city}}})
                    .await
                    .unwrap();
            }
            1 => {
                s.events()
                    .update_one(
                        doc! {"_id": id},
                        doc! {"$set": {"n": rng.gen_range(0..6), "title": format!("u{i}")}},
                    )
                    .await
                    .unwrap();
            }
            2 => {
                s.events().delete_one(doc! {"_id": id}).await.unwrap();
            }
            _ => {
                s.events()
                    .insert_one(doc! {"_id": id, "title": format!("i{i}"), "n": 3, "address": {"city": "Oslo"}})
                    .await
                    .ok();
            }
        }
    }
    // What the shape holds, from the server's documents.
    let want: BTreeMap<String, Value> = s
        .server()
        .documents("app.events")
        .iter()
        .filter(|d| {
            let city = d
                .get_document("address")
                .ok()
                .and_then(|a| a.get_str("city").ok());
            let n = d.get_i32("n").unwrap_or(0);
            city == Some("Oslo") && n > 2
        })
        .map(|d| {
            let id = d.get_object_id("_id").unwrap().to_hex();
            (
                json!({"_id": {"$oid": id}}).to_string(),
                json!({"_id": {"$oid": id}, "title": d.get_str("title").unwrap()}),
            )
        })
        .collect();
    while as_table(&state) != want {
        let Some(event) = client.next_within(Duration::from_secs(20)).await else {
            break;
        };
        if event.event == "change" {
            let record = record_of(&event);
            if record["op"] == "delete" {
                let id = ("app.events".to_string(), record["key"].to_string());
                assert!(
                    state.contains_key(&id),
                    "a live delete of a document never sent: {record}"
                );
            }
            apply(&mut state, &record);
        }
    }
    assert_eq!(as_table(&state), want, "the live client's shape");
    let mut since = "0".to_string();
    loop {
        let body = get(
            s.addr,
            &format!("/v1/changes?{shaped}&since={since}&limit=5"),
            &[],
        )
        .await
        .json();
        for record in body["changes"].as_array().unwrap() {
            apply(&mut fresh, record);
        }
        since = body["cursor"].as_str().unwrap().to_string();
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(as_table(&fresh), want, "/v1/changes from 0");
    let collections = get(s.addr, "/v1/collections", &[]).await.json();
    assert_eq!(collections["collections"][0]["columns"], Value::Null);
}
