//! Freshness for clients (DESIGN.md, "Freshness"): `lag_ms` in the `ready` event, in
//! `event: heartbeat` (with the log head's cursor, whatever the stream's filter) and in
//! `/v1/changes` responses; 0 while the log holds everything upstream committed, growing while
//! a source cannot be read, and back to 0 once it is caught up again. For both source kinds.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::http::{get, SseClient};
use testkit::pg::{PgServer, StopMode};
use testkit::relay::{postgres_config, wait_until, RelayProcess};
use tokio::task::block_in_place;

async fn changes_lag(addr: SocketAddr) -> Option<u64> {
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        get(addr, "/v1/changes?limit=1", &[]),
    )
    .await
    .ok()?;
    response.json()["lag_ms"].as_u64()
}

/// Polls `/v1/changes` until its `lag_ms` satisfies `done`.
async fn wait_lag(addr: SocketAddr, what: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(lag) = changes_lag(addr).await {
            if done(lag) {
                return lag;
            }
            assert!(Instant::now() < deadline, "{what}: lag_ms is still {lag}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lag_in_ready_heartbeat_and_changes() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a VALUES (1);",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.a", "public.b"], port);
    let mut relay = RelayProcess::start_with_env(
        dir.path(),
        &config,
        &[("DELTARELAY_TEST_HEARTBEAT_MS", "300")],
    );
    block_in_place(|| {
        wait_until(Duration::from_secs(60), "the relay to be ready", || {
            relay.assert_running();
            testkit::relay::http_status(addr, "/readyz") == Some(200)
        })
    });
    wait_lag(addr, "caught up", |lag| lag == 0).await;

    // A stream of `a` only: ready carries lag_ms; heartbeats carry the head's cursor, which
    // moves with writes to `b` that this stream never sees.
    let mut sse = SseClient::connect(addr, "/v1/stream?since=0&collections=public.a", None).await;
    sse.keep_heartbeats = true;
    let mut ready = None;
    while ready.is_none() {
        let event = sse
            .next_within(Duration::from_secs(10))
            .await
            .expect("ready");
        if event.event == "ready" {
            ready = Some(event);
        }
    }
    let ready: Value = serde_json::from_str(&ready.unwrap().data).unwrap();
    assert!(ready["lag_ms"].is_u64(), "{ready}");
    pg.psql("app", "INSERT INTO b VALUES (1), (2)");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let event = sse
            .next_within(Duration::from_secs(5))
            .await
            .expect("a heartbeat");
        assert_eq!(event.event, "heartbeat", "{event:?}");
        assert_eq!(event.id, None, "a heartbeat moves no client position");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert!(data["lag_ms"].is_u64(), "{data}");
        let status = get(addr, "/v1/status", &[]).await.json();
        if data["cursor"] == status["log"]["head_cursor"] && data["cursor"] != ready["cursor"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the heartbeat never showed the new head: {data}"
        );
    }

    // Postgres gone: the log falls behind, and says so; back, it catches up.
    pg.stop(StopMode::Fast);
    let lag = wait_lag(addr, "lag while Postgres is down", |lag| lag >= 1500).await;
    let status = get(addr, "/v1/status", &[]).await.json();
    assert!(
        status["sources"][0]["lag_ms"].as_u64().unwrap() >= lag,
        "{status}"
    );
    assert!(status["log"]["lag_ms"].as_u64().unwrap() >= lag, "{status}");
    pg.start_again();
    wait_lag(addr, "caught up after Postgres is back", |lag| lag == 0).await;
    relay.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_lag_in_ready_and_changes() {
    let mut s = testkit::mongo::Setup::start(&["events"], "").await;
    s.events()
        .insert_one(bson::doc! {"_id": 1, "v": 1})
        .await
        .unwrap();
    wait_lag(s.addr, "caught up", |lag| lag == 0).await;
    let mut sse = SseClient::connect(s.addr, "/v1/stream?since=0", None).await;
    loop {
        let event = sse
            .next_within(Duration::from_secs(10))
            .await
            .expect("ready");
        if event.event == "ready" {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            assert!(data["lag_ms"].is_u64(), "{data}");
            break;
        }
    }
    // The server gone: the relay cannot know what it misses, and says how long.
    drop(s.server.take());
    wait_lag(s.addr, "lag while MongoDB is down", |lag| lag >= 1500).await;
}
