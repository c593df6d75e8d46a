//! Writes under faults and contention: a relay killed between the upstream commit and the
//! response (the retry is a duplicate, never a second application), `auth.mode = "none"`
//! refusing writes unless allowed, and 50 concurrent clients updating the same rows under
//! `reject` + `version_column` (no lost update).

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::free_port;
use testkit::http::{get, post};
use testkit::pg::PgServer;
use testkit::relay::{postgres_config, start_ready_relay_with, wait_until};
use testkit::writes::{post_with_the_answer_lost, statuses, token, SECRET};

fn pg() -> Option<PgServer> {
    testkit::require(
        testkit::runs("initdb", &["--version"]),
        "initdb (PostgreSQL) is not installed",
    )
    .then(PgServer::start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_after_the_upstream_commit_answers_the_retry_with_duplicate() {
    let Some(pg) = pg() else { return };
    pg.psql(
        "app",
        "CREATE TABLE items (id serial PRIMARY KEY, body text NOT NULL)",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.items"],
        port,
    ) + "\n[collections.\"public.items\".write]\n";
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let batch = json!({"atomic": false, "mutations": [
        {"id": "k1", "collection": "public.items", "op": "insert", "value": {"body": "once"}},
        {"id": "k2", "collection": "public.items", "op": "insert", "value": {"body": "twice"}}]})
    .to_string();

    // auth.mode = "none" refuses writes unless writes.allow_unauthenticated is set.
    {
        let (_relay, addr) = start_ready_relay_with(dir.path(), &base, port);
        let refused = post(addr, "/v1/mutations", &[], &batch).await.unwrap();
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(refused.body.contains("allow_unauthenticated"));
    }
    let allowed = base.replace("[log]", "[writes]\nallow_unauthenticated = true\n\n[log]");

    // The relay dies right after the first mutation's commit: the client hears nothing.
    post_with_the_answer_lost(dir.path(), &allowed, addr, &batch).await;
    assert_eq!(
        pg.psql("app", "SELECT string_agg(body, ',') FROM items"),
        "once"
    );

    // The client replays its whole queue against the restarted relay.
    let (_relay, addr) = start_ready_relay_with(dir.path(), &allowed, port);
    let replay = post(addr, "/v1/mutations", &[], &batch).await.unwrap();
    assert_eq!(replay.status, 200, "{}", replay.body);
    let body = replay.json();
    assert_eq!(statuses(&body), ["duplicate", "applied"]);
    assert_eq!(body["results"][0]["key"], json!({"id": 1}));
    assert_eq!(body["visible"], true);
    assert_eq!(
        pg.psql("app", "SELECT string_agg(body, ',' ORDER BY id) FROM items"),
        "once,twice"
    );
    // And once more: nothing is applied twice.
    let again = post(addr, "/v1/mutations", &[], &batch)
        .await
        .unwrap()
        .json();
    assert_eq!(statuses(&again), ["duplicate", "duplicate"]);
    // Nothing new upstream: the position Postgres reports when idle makes it visible.
    assert_eq!(again["visible"], true, "{again}");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM items"), "2");
    // The log holds each row once, and the relay's own ledger is not synced.
    let changes = get(addr, "/v1/changes?since=0", &[]).await.json();
    let bodies: Vec<&Value> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["after"]["body"])
        .collect();
    assert_eq!(bodies, [&json!("once"), &json!("twice")], "{changes}");
}

const CLIENTS: usize = 50;
const ROWS: i64 = 5;
const INCREMENTS: i64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_lose_no_update_under_reject_and_version_column() {
    let Some(pg) = pg() else { return };
    pg.psql(
        "app",
        &format!("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL, version int NOT NULL DEFAULT 1);
                  INSERT INTO counters (id, n) SELECT g, 0 FROM generate_series(1, {ROWS}) g"),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = postgres_config(&pg.url("app"), &dir.path().join("log"), &["public.counters"], port)
        .replace("[log]", &format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n[limits]\nrequests_per_second = 0\n\n[log]"))
        + "\n[collections.\"public.counters\".write]\nclaims = { role = [\"user\"] }\nversion_column = \"version\"\n";
    let (_relay, addr) = start_ready_relay_with(dir.path(), &config, port);

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(async move {
            let auth = format!("Bearer {}", token(&format!("client{client}"), "user"));
            let id = client as i64 % ROWS + 1;
            let (mut n, mut version) = (0i64, 1i64);
            let (mut applied, mut attempt) = (0, 0);
            while applied < INCREMENTS {
                attempt += 1;
                let body = json!({"mutations": [{"id": format!("c{client}-{attempt}"), "collection": "public.counters",
                    "op": "update", "key": {"id": id}, "value": {"n": n + 1}, "if": {"version": version}}]});
                let response = post(addr, "/v1/mutations", &[("Authorization", &auth)], &body.to_string())
                    .await
                    .expect("a response");
                assert_eq!(response.status, 200, "{}", response.body);
                let result = response.json()["results"][0].clone();
                match result["status"].as_str().unwrap() {
                    "applied" => {
                        applied += 1;
                        n += 1;
                        version += 1;
                    }
                    "conflict" => {
                        n = result["current"]["n"].as_i64().unwrap();
                        version = result["current"]["version"].as_i64().unwrap();
                    }
                    other => panic!("{other}: {result}"),
                }
            }
            attempt
        });
    }
    let mut attempts = 0;
    while let Some(done) = clients.join_next().await {
        attempts += done.unwrap();
    }
    let per_row = CLIENTS as i64 / ROWS * INCREMENTS;
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(n || '/' || version, ',' ORDER BY id) FROM counters"
        ),
        vec![format!("{per_row}/{}", per_row + 1); ROWS as usize].join(","),
    );
    assert!(
        attempts > CLIENTS as i64 * INCREMENTS,
        "no contention happened ({attempts} attempts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_ids_are_kept_for_the_retention_then_forgotten() {
    let Some(pg) = pg() else { return };
    pg.psql(
        "app",
        "CREATE TABLE items (id serial PRIMARY KEY, body text NOT NULL)",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.items"],
        port,
    )
    .replace(
        "[log]",
        "[writes]\nallow_unauthenticated = true\nidempotency_retention = \"2s\"\n\n[log]",
    ) + "\n[collections.\"public.items\".write]\n";
    let (_relay, addr) = start_ready_relay_with(dir.path(), &config, port);
    let body = json!({"mutations": [{"id": "r1", "collection": "public.items", "op": "insert", "value": {"body": "x"}}]}).to_string();
    let send = || async {
        post(addr, "/v1/mutations", &[], &body)
            .await
            .unwrap()
            .json()
    };
    assert_eq!(statuses(&send().await), ["applied"]);
    assert_eq!(statuses(&send().await), ["duplicate"]);
    wait_until(Duration::from_secs(20), "the id to be purged", || {
        pg.psql("app", "SELECT count(*) FROM deltarelay.mutations") == "0"
    });
    assert_eq!(
        statuses(&send().await),
        ["applied"],
        "a forgotten id is new again"
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM items"), "2");
}
