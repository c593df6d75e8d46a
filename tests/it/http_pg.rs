//! End to end over HTTP: a private Postgres, the relay binary, `/v1/stream` and `/v1/changes`.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::http::*;
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;

/// `public.items` as `key text → row`, via Postgres's own row_to_json.
fn table_state(pg: &PgServer) -> BTreeMap<String, Value> {
    let text = pg.psql(
        "app",
        "SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM items t",
    );
    let rows: Vec<Value> = serde_json::from_str(text.trim()).unwrap();
    rows.into_iter()
        .map(|row| (json!({"id": row["id"]}).to_string(), row))
        .collect()
}

fn as_table(state: &State) -> BTreeMap<String, Value> {
    state
        .iter()
        .map(|((collection, key), row)| {
            assert_eq!(collection, "public.items");
            (key.clone(), row.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_reach_sse_and_delta_clients() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int)",
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);

    // A live client from the beginning, while Postgres commits 300 transactions.
    let mut client = SseClient::connect(addr, "/v1/stream", None).await;
    assert_eq!(client.status, 200);
    assert_eq!(
        client
            .next_within(Duration::from_secs(20))
            .await
            .unwrap()
            .event,
        "ready"
    );
    let mut script = String::new();
    for i in 0..300 {
        let id = i % 60;
        script.push_str(&match i % 5 {
            0 | 1 => format!("INSERT INTO items VALUES ({id}, 'n{i}', {i}) ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty;\n"),
            2 => format!("UPDATE items SET qty = qty + 1 WHERE id = {id};\n"),
            3 => format!("DELETE FROM items WHERE id = {};\n", (id + 7) % 60),
            _ => format!("BEGIN; INSERT INTO items VALUES ({}, 'a', 1) ON CONFLICT DO NOTHING; UPDATE items SET name = 'b{i}' WHERE id = {id}; COMMIT;\n", id + 100),
        });
    }
    script.push_str("INSERT INTO items VALUES (999999, 'marker', 0);\n");
    // Each statement is its own transaction; the client's socket holds what it does not read yet.
    tokio::task::block_in_place(|| pg.psql("app", &script));

    let mut state = State::new();
    let mut last = 0;
    loop {
        let event = client
            .next_within(Duration::from_secs(60))
            .await
            .expect("stream ended");
        assert_eq!(event.event, "change");
        let record: Value = serde_json::from_str(&event.data).unwrap();
        let seq = seq_of(record["cursor"].as_str().unwrap());
        assert!(seq > last, "strictly increasing cursors");
        last = seq;
        apply(&mut state, &record);
        if record["key"] == json!({"id": 999999}) {
            break;
        }
    }
    let table = table_state(&pg);
    assert_eq!(
        as_table(&state),
        table,
        "the SSE client's state is the table's"
    );

    // A delta client walking /v1/changes from 0 gets the same state.
    let mut delta = State::new();
    let mut since = "0".to_string();
    loop {
        let body = get(addr, &format!("/v1/changes?since={since}&limit=37"), &[])
            .await
            .json();
        for record in body["changes"].as_array().unwrap() {
            apply(&mut delta, record);
        }
        since = body["cursor"].as_str().unwrap().to_string();
        if !body["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(
        as_table(&delta),
        table,
        "the delta client's state is the table's"
    );

    let status = get(addr, "/v1/status", &[]).await.json();
    assert_eq!(status["sources"][0]["name"], "app_pg");
    assert_eq!(status["sources"][0]["connected"], true);
    assert_eq!(status["subscribers"], 1);
    let collections = get(addr, "/v1/collections", &[]).await.json();
    assert_eq!(
        collections["collections"],
        json!([{"name": "public.items", "source": "app_pg", "key_columns": ["id"], "columns": [
            {"name": "id", "type": "int4"}, {"name": "name", "type": "text"}, {"name": "qty", "type": "int4"}
        ]}])
    );
    // The source's own metrics: ingest per collection, commit latency, replication lag.
    let metrics = get(addr, "/metrics", &[]).await.body;
    let ingested = metrics
        .lines()
        .find(|l| {
            l.starts_with("deltarelay_changes_ingested_total{")
                && l.contains("collection=\"public.items\"")
                && l.contains("source=\"app_pg\"")
        })
        .unwrap_or_else(|| panic!("no ingest counter in:\n{metrics}"));
    let count: f64 = ingested.rsplit(' ').next().unwrap().parse().unwrap();
    let entries = status["log"]["entries"].as_f64().unwrap();
    assert!(
        entries > 0.0 && count >= entries,
        "{ingested} vs {entries} log entries"
    );
    assert!(
        metrics.contains("deltarelay_log_commit_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("deltarelay_replication_lag_bytes{source=\"app_pg\"}"),
        "{metrics}"
    );
    drop(client);
    assert_eq!(relay.terminate(), Some(0));
}

/// The binary turns transparent huge pages off for itself: with them, mimalloc's arenas made an
/// idle SSE connection cost ~29 KiB of resident memory instead of ~17 KiB (docs/BENCHMARKS.md).
#[test]
fn the_running_relay_has_transparent_huge_pages_off() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let (relay, _) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);
    let pid = relay.pid().expect("the relay runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("this kernel reports THP_enabled");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
