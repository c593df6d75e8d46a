//! `POST /v1/mutations` for a MongoDB source end to end: the relay binary with JWT auth, the
//! official driver in it, and the wire-protocol test server (testkit/src/mongo_wire) with
//! multi-document transactions. Every status, every conflict policy, atomic and non-atomic
//! batches (an aborted batch leaves nothing, in the collection or in the oplog), row scopes with
//! two users, read-your-writes, bad input, the Extended JSON value round trip, and a relay
//! killed between the upstream commit and the response.

use bson::{doc, oid::ObjectId, Bson, Document};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::free_port;
use testkit::http::{get, post, seq_of};
use testkit::mongo_wire::MongoWire;
use testkit::relay::{mongo_source_toml, start_ready_relay_with, RelayProcess};
use testkit::writes::{post_with_the_answer_lost, status, statuses, MutationClient, SECRET};

fn config(uri: &str, dir: &std::path::Path, port: u16) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
[log]
dir = {log:?}
[auth]
mode = "jwt"
jwt_secret = "{SECRET}"
{source}
[collections."app.todos"]
scope = {{ column = "owner", claim = "sub" }}
[collections."app.todos".write]
claims = {{ role = ["user"] }}
columns = ["title", "done", "code"]
version_column = "version"
[collections."app.notes".write]
claims = {{ role = ["user"] }}
conflict = "last_write_wins"
lww_column = "updated_at"
[collections."app.cw".write]
claims = {{ role = ["user"] }}
conflict = "client_wins"
version_column = "version"
[collections."app.types".write]
claims = {{ role = ["user"] }}
conflict = "client_wins"
[collections."app.ro"]
"#,
        log = dir.join("log").display().to_string(),
        source = mongo_source_toml(uri, "app", &["todos", "notes", "cw", "types", "ro"], ""),
    )
}

fn doc_with_id(wire: &MongoWire, ns: &str, id: impl Into<Bson>) -> Option<Document> {
    let id = id.into();
    wire.documents(ns)
        .into_iter()
        .find(|d| d.get("_id") == Some(&id))
}

struct Setup {
    wire: MongoWire,
    _dir: tempfile::TempDir,
    _relay: RelayProcess,
    alice: MutationClient,
    bob: MutationClient,
}

fn setup() -> Setup {
    let wire = MongoWire::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (relay, addr) =
        start_ready_relay_with(dir.path(), &config(&wire.uri(), dir.path(), port), port);
    Setup {
        wire,
        _dir: dir,
        _relay: relay,
        alice: MutationClient::new(addr, "alice", "user"),
        bob: MutationClient::new(addr, "bob", "user"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_policies_scopes_and_read_your_writes() {
    let s = setup();
    let (alice, bob, wire) = (&s.alice, &s.bob, &s.wire);

    // Applied, scoped to the caller, with a generated ObjectId, and in the log at the returned
    // cursor (read-your-writes).
    let before = alice.changes("since=0").await["cursor"].clone();
    let response = alice
        .send(
            &json!({"mutations": [{"id": "t1", "collection": "app.todos", "op": "insert",
            "value": {"title": "milk", "version": 1}}], "since": before}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    let result = &body["results"][0];
    assert_eq!(status(result), "applied", "{body}");
    let oid = result["key"]["_id"]["$oid"].as_str().unwrap().to_string();
    let key = json!({"_id": {"$oid": oid}});
    let stored = doc_with_id(wire, "app.todos", ObjectId::parse_str(&oid).unwrap()).unwrap();
    assert_eq!(stored.get_str("owner"), Ok("alice"));
    assert_eq!(body["visible"], true);
    let cursor = body["cursor"].as_str().unwrap().to_string();
    assert!(
        body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["key"] == key),
        "the pull sees the write: {body}"
    );
    let logged = alice.changes("since=0&collections=app.todos").await;
    let record = logged["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
        .unwrap()
        .clone();
    assert!(seq_of(record["cursor"].as_str().unwrap()) <= seq_of(&cursor));
    assert_eq!(record["after"]["title"], "milk");

    // Duplicate: the same id again is not applied again and returns the first key.
    let again = alice
        .one(json!({"id": "t1", "collection": "app.todos", "op": "insert", "value": {"title": "milk"}}))
        .await;
    assert_eq!(status(&again), "duplicate");
    assert_eq!(again["key"], key);
    assert_eq!(wire.documents("app.todos").len(), 1);
    // Ids are per caller: bob's "t1" is his own.
    let bobs = bob
        .one(
            json!({"id": "t1", "collection": "app.todos", "op": "insert",
            "value": {"_id": 2, "title": "bread", "version": 1}}),
        )
        .await;
    assert_eq!(status(&bobs), "applied");
    assert_eq!(bobs["key"], json!({"_id": 2}));

    // reject + version_column: the `if` must hold; the version moves on every update.
    let update = |mid: &str, version: i64, title: &str| {
        json!({"id": mid, "collection": "app.todos", "op": "update", "key": key,
            "value": {"title": title}, "if": {"version": version}})
    };
    assert_eq!(
        status(&alice.one(update("u1", 1, "oat milk")).await),
        "applied"
    );
    let conflict = alice.one(update("u2", 1, "soy milk")).await;
    assert_eq!(status(&conflict), "conflict");
    assert_eq!(conflict["current"]["version"], 2);
    assert_eq!(conflict["current"]["title"], "oat milk");
    assert_eq!(conflict["current"]["_id"], key["_id"]);
    let missing = alice
        .one(
            json!({"id": "u3", "collection": "app.todos", "op": "update",
            "key": {"_id": 9999}, "value": {"title": "x"}}),
        )
        .await;
    assert_eq!(status(&missing), "conflict");
    assert_eq!(missing["current"], Value::Null);

    // Scopes: bob's documents look missing to alice; no insert or move into another scope,
    // no field outside write.columns.
    for op in [
        json!({"id": "s1", "collection": "app.todos", "op": "update", "key": {"_id": 2}, "value": {"title": "mine"}}),
        json!({"id": "s2", "collection": "app.todos", "op": "delete", "key": {"_id": 2}}),
    ] {
        let result = alice.one(op).await;
        assert_eq!(status(&result), "conflict", "{result}");
        assert_eq!(result["current"], Value::Null);
    }
    for op in [
        json!({"id": "s3", "collection": "app.todos", "op": "insert", "value": {"title": "x", "owner": "bob"}}),
        json!({"id": "s4", "collection": "app.todos", "op": "update", "key": key, "value": {"owner": "bob"}}),
        json!({"id": "s5", "collection": "app.todos", "op": "update", "key": key, "value": {"secret": "x"}}),
    ] {
        let result = alice.one(op).await;
        assert_eq!(status(&result), "forbidden", "{result}");
    }
    let bobs_doc = doc_with_id(wire, "app.todos", 2).unwrap();
    assert_eq!(
        (bobs_doc.get_str("owner"), bobs_doc.get_str("title")),
        (Ok("bob"), Ok("bread"))
    );
    let bobs_view = bob.changes("since=0&collections=app.todos").await;
    assert!(
        bobs_view["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["key"] == json!({"_id": 2})),
        "{bobs_view}"
    );
    // Collections without write rules take no writes.
    let read_only = alice
        .one(json!({"id": "r1", "collection": "app.ro", "op": "insert", "value": {"_id": 1}}))
        .await;
    assert_eq!(status(&read_only), "forbidden");

    // Rejected: a taken _id is the server's duplicate key error 11000.
    let rejected = bob
        .one(json!({"id": "c1", "collection": "app.todos", "op": "insert", "value": {"_id": 2, "title": "x"}}))
        .await;
    assert_eq!(status(&rejected), "rejected");
    assert_eq!(rejected["error"]["code"], 11000, "{rejected}");

    // last_write_wins: an older change is stale (with the current document), a newer applies.
    let note = |mid: &str, op: &str, at: &str, body: &str| {
        json!({"id": mid, "collection": "app.notes", "op": op, "key": {"_id": 1},
            "value": {"_id": 1, "body": body}, "at": at})
    };
    assert_eq!(
        status(
            &alice
                .one(note("n1", "insert", "2025-01-15T11:00:00Z", "first"))
                .await
        ),
        "applied"
    );
    let stale = alice
        .one(note("n2", "update", "2025-01-15T10:00:00Z", "older"))
        .await;
    assert_eq!(status(&stale), "stale");
    assert_eq!(stale["current"]["body"], "first");
    assert_eq!(
        stale["current"]["updated_at"],
        json!({"$date": "2025-01-15T11:00:00Z"})
    );
    assert_eq!(
        status(
            &alice
                .one(note("n3", "update", "2025-01-15T12:00:00Z", "newer"))
                .await
        ),
        "applied"
    );
    let note_doc = doc_with_id(wire, "app.notes", 1).unwrap();
    assert_eq!(note_doc.get_str("body"), Ok("newer"));
    let no_at = alice
        .send(
            &json!({"mutations": [{"id": "n4", "collection": "app.notes", "op": "update",
            "key": {"_id": 1}, "value": {"body": "x"}}]}),
        )
        .await;
    assert_eq!(no_at.status, 400, "{}", no_at.body);
    assert!(no_at.body.contains("mutations[0].at"), "{}", no_at.body);

    // client_wins: `if` is ignored, the version still moves; delete wins over a later update.
    let cw = |mid: &str, op: &str, value: Value| {
        json!({"id": mid, "collection": "app.cw", "op": op, "key": {"_id": 1}, "value": value,
            "if": {"version": 42}})
    };
    assert_eq!(
        status(
            &alice
                .one(cw(
                    "w1",
                    "insert",
                    json!({"_id": 1, "version": 1, "body": "a"})
                ))
                .await
        ),
        "applied"
    );
    assert_eq!(
        status(&alice.one(cw("w2", "update", json!({"body": "b"}))).await),
        "applied"
    );
    let cw_doc = doc_with_id(wire, "app.cw", 1).unwrap();
    assert_eq!(
        (cw_doc.get_str("body"), cw_doc.get_i32("version")),
        (Ok("b"), Ok(2))
    );
    assert_eq!(
        status(
            &alice
                .one(json!({"id": "w3", "collection": "app.cw", "op": "delete", "key": {"_id": 1}}))
                .await
        ),
        "applied"
    );
    let after_delete = alice.one(cw("w4", "update", json!({"body": "c"}))).await;
    assert_eq!(status(&after_delete), "conflict");
    assert_eq!(after_delete["current"], Value::Null);
    assert!(doc_with_id(wire, "app.cw", 1).is_none());

    // The relay's own ledger is not synced.
    let everything = alice.changes("since=0").await.to_string();
    assert!(!everything.contains("deltarelay_mutations"), "{everything}");
    assert!(!wire.documents("app.deltarelay_mutations").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_batches_are_all_or_nothing_and_others_apply_one_by_one() {
    let s = setup();
    let (alice, wire) = (&s.alice, &s.wire);
    let seeded = alice
        .one(json!({"id": "seed", "collection": "app.cw", "op": "insert", "value": {"_id": 1, "body": "seed", "version": 1}}))
        .await;
    assert_eq!(status(&seeded), "applied");
    let batch = |prefix: &str, atomic: bool| {
        json!({"atomic": atomic, "mutations": [
            {"id": format!("{prefix}a"), "collection": "app.cw", "op": "insert", "value": {"_id": format!("{prefix}-ok"), "body": "x"}},
            {"id": format!("{prefix}b"), "collection": "app.cw", "op": "update", "key": {"_id": 1}, "value": {"body": format!("{prefix} changed")}},
            {"id": format!("{prefix}c"), "collection": "app.cw", "op": "insert", "value": {"_id": 1, "body": "taken"}},
            {"id": format!("{prefix}d"), "collection": "app.cw", "op": "insert", "value": {"_id": format!("{prefix}-late")}}]})
    };
    let documents_before = wire.documents("app.cw");
    let head_before = wire.oplog_head();
    let response = alice.send(&batch("at", true)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(
        statuses(&body),
        ["rolled_back", "rolled_back", "rejected", "rolled_back"]
    );
    assert_eq!(body["results"][2]["error"]["code"], 11000);
    // Nothing happened upstream: the documents as they were, no oplog entry.
    assert_eq!(wire.documents("app.cw"), documents_before);
    assert_eq!(wire.oplog_head(), head_before);
    // The rolled-back ids were not recorded: sent again (fixed), they apply.
    let fixed = json!({"atomic": true, "mutations": [
        {"id": "ata", "collection": "app.cw", "op": "insert", "value": {"_id": "at-ok", "body": "x"}},
        {"id": "atb", "collection": "app.cw", "op": "update", "key": {"_id": 1}, "value": {"body": "at changed"}}]});
    let response = alice.send(&fixed).await.json();
    assert_eq!(statuses(&response), ["applied", "applied"]);
    assert_eq!(response["visible"], true);

    let response = alice.send(&batch("no", false)).await.json();
    assert_eq!(
        statuses(&response),
        ["applied", "applied", "rejected", "applied"]
    );
    assert_eq!(response["visible"], true);
    let ids: Vec<Bson> = wire
        .documents("app.cw")
        .iter()
        .map(|d| d.get("_id").unwrap().clone())
        .collect();
    for id in ["at-ok", "no-ok", "no-late"] {
        assert!(ids.contains(&Bson::String(id.into())), "{id}: {ids:?}");
    }
    assert!(!ids.contains(&Bson::String("at-late".into())));
    // The log: the aborted batch's documents never appear.
    let changes = alice
        .changes("since=0&collections=app.cw")
        .await
        .to_string();
    assert!(
        !changes.contains("at-late") && !changes.contains("taken"),
        "{changes}"
    );
    assert!(changes.contains("no-late"), "{changes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_naming_the_field() {
    let s = setup();
    let alice = &s.alice;
    let cases = [
        (
            json!({"id": "b1", "collection": "app.cw", "op": "update", "key": {"_id": {"$oid": "zz"}}, "value": {"body": "x"}}),
            400,
            "mutations[0].key._id",
        ),
        (
            json!({"id": "b2", "collection": "app.cw", "op": "update", "key": {"id": 1}, "value": {"body": "x"}}),
            400,
            "mutations[0].key.id",
        ),
        (
            json!({"id": "b3", "collection": "app.cw", "op": "insert", "value": {"$where": "sleep(1000)"}}),
            400,
            "mutations[0].value.$where",
        ),
        (
            json!({"id": "b4", "collection": "app.cw", "op": "insert", "value": {"a.b": 1}}),
            400,
            "mutations[0].value.a.b",
        ),
        (
            json!({"id": "b5", "collection": "app.cw", "op": "insert", "value": {"nested": {"$set": {"x": 1}}}}),
            400,
            "mutations[0].value.nested",
        ),
        (
            json!({"id": "b6", "collection": "app.cw", "op": "update", "key": {"_id": 1}, "value": {"body": "x"}, "if": {"$ne": 1}}),
            400,
            "mutations[0].if.$ne",
        ),
        (
            json!({"id": "b7", "collection": "app.nope", "op": "insert", "value": {"x": 1}}),
            404,
            "app.nope",
        ),
        (
            json!({"id": "b8", "collection": "app.deltarelay_mutations", "op": "insert", "value": {"x": 1}}),
            404,
            "deltarelay_mutations",
        ),
    ];
    for (mutation, code, names) in cases {
        let response = alice.send(&json!({"mutations": [mutation]})).await;
        assert_eq!(response.status, code, "{mutation}: {}", response.body);
        assert!(
            response.body.contains(names),
            "{mutation}: {}",
            response.body
        );
    }
    // Under `reject` too.
    let response = alice
        .send(
            &json!({"mutations": [{"id": "b9", "collection": "app.todos", "op": "update",
            "key": {"_id": 1}, "value": {"title": "x"}, "if": {"$where": "1"}}]}),
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(
        response.body.contains("mutations[0].if.$where"),
        "{}",
        response.body
    );
    assert!(s.wire.documents("app.cw").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_read_from_changes_written_back_is_unchanged() {
    let s = setup();
    let (alice, wire) = (&s.alice, &s.wire);
    let client = mongodb::Client::with_uri_str(wire.uri()).await.unwrap();
    let original = doc! {
        "_id": ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(),
        "n": 5, "big": 9_007_199_254_740_993i64, "f": 1.5, "whole": 2.0, "s": "é\"x", "b": true,
        "none": Bson::Null, "at": bson::DateTime::from_millis(1_736_938_800_123),
        "dec": Bson::Decimal128("12345.678901".parse().unwrap()),
        "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0, 1, 255] },
        "uuid": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] },
        "list": [1, "a", {"k": [2.5, Bson::Null]}], "sub": {"k": {"deep": 1, "when": bson::DateTime::from_millis(0)}},
    };
    client
        .database("app")
        .collection::<Document>("types")
        .insert_one(original.clone())
        .await
        .unwrap();
    let mut after = Value::Null;
    for _ in 0..100 {
        // 404 until the collection's first change is in the log.
        let auth = format!("Bearer {}", alice.token);
        let response = get(
            alice.addr,
            "/v1/changes?since=0&collections=app.types",
            &[("Authorization", &auth)],
        )
        .await;
        let changes = if response.status == 200 {
            response.json()
        } else {
            json!({"changes": []})
        };
        if let Some(c) = changes["changes"].as_array().unwrap().first() {
            after = c["after"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(after.is_object(), "the insert reached the log");
    let key = json!({"_id": after["_id"].clone()});
    // As update (every field) and as insert (after a delete): the document is the same BSON.
    let result = alice
        .one(json!({"id": "rt1", "collection": "app.types", "op": "update", "key": key, "value": after}))
        .await;
    assert_eq!(status(&result), "applied", "{result}");
    assert_eq!(result["key"], key);
    assert_eq!(wire.documents("app.types"), vec![original.clone()]);
    for mutation in [
        json!({"id": "rt2", "collection": "app.types", "op": "delete", "key": key}),
        json!({"id": "rt3", "collection": "app.types", "op": "insert", "value": after}),
    ] {
        let result = alice.one(mutation).await;
        assert_eq!(status(&result), "applied", "{result}");
    }
    assert_eq!(wire.documents("app.types"), vec![original]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_after_the_upstream_commit_answers_the_retry_with_duplicate() {
    let wire = MongoWire::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[writes]\nallow_unauthenticated = true\n[log]\ndir = {:?}\n{}\n[collections.\"app.items\".write]\n",
        dir.path().join("log").display().to_string(),
        mongo_source_toml(&wire.uri(), "app", &["items"], ""),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let batch = json!({"atomic": false, "mutations": [
        {"id": "k1", "collection": "app.items", "op": "insert", "value": {"_id": 1, "body": "once"}},
        {"id": "k2", "collection": "app.items", "op": "insert", "value": {"body": "twice"}}]})
    .to_string();

    post_with_the_answer_lost(dir.path(), &config, addr, &batch).await;
    assert_eq!(
        wire.documents("app.items"),
        vec![doc! {"_id": 1, "body": "once"}]
    );

    // The client replays its whole queue against the restarted relay.
    let (_relay, addr) = start_ready_relay_with(dir.path(), &config, port);
    let replay = post(addr, "/v1/mutations", &[], &batch).await.unwrap();
    assert_eq!(replay.status, 200, "{}", replay.body);
    let body = replay.json();
    assert_eq!(statuses(&body), ["duplicate", "applied"]);
    assert_eq!(body["results"][0]["key"], json!({"_id": 1}));
    assert!(
        body["results"][1]["key"]["_id"]["$oid"].is_string(),
        "{body}"
    );
    assert_eq!(body["visible"], true);
    let again = post(addr, "/v1/mutations", &[], &batch)
        .await
        .unwrap()
        .json();
    assert_eq!(statuses(&again), ["duplicate", "duplicate"]);
    assert_eq!(again["results"][1]["key"], body["results"][1]["key"]);
    assert_eq!(again["visible"], true, "{again}");
    assert_eq!(wire.documents("app.items").len(), 2);
    // The log holds each document once.
    let changes = get(addr, "/v1/changes?since=0", &[]).await.json();
    let bodies: Vec<&Value> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["after"]["body"])
        .collect();
    assert_eq!(bodies, [&json!("once"), &json!("twice")], "{changes}");
}
