//! SIGTERM under load: with 500 open SSE streams and a writer committing, the relay exits 0
//! within 5 s, every stream ends cleanly with a prefix of the log, the slot is acknowledged up
//! to what the log holds, and after a restart the log catches up on what was committed while
//! the relay was down and clients resume from their Last-Event-ID with no gap and no duplicate.
//!
//! `SHUTDOWN_STREAMS` (default 500) sets the number of streams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::http::{get, record_of, SseClient};
use testkit::pg::PgServer;
use testkit::relay::{http_status, read_log, start_ready_relay, wait_until};

/// Reads a stream to its end; returns the cursors of its changes. Counts `ready` in `ready`.
async fn follow(mut client: SseClient, ready: Arc<AtomicUsize>) -> Vec<String> {
    assert_eq!(client.status, 200);
    let mut cursors = Vec::new();
    while let Some(event) = client.next().await {
        match event.event.as_str() {
            "ready" => {
                ready.fetch_add(1, Ordering::Relaxed);
            }
            "change" => cursors.push(record_of(&event)["cursor"].as_str().unwrap().to_string()),
            other => panic!("unexpected event {other}"),
        }
    }
    cursors
}

/// Connects `n` streams from the beginning and waits until every one has replayed the log.
async fn open_streams(addr: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    let ready = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let client = SseClient::connect(addr, "/v1/stream?since=0", None).await;
        streams.push(tokio::spawn(follow(client, ready.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "streams did not all catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    streams
}

/// Inserts one row per transaction until `stop`; returns the ids committed.
async fn writer(url: String, stop: Arc<AtomicBool>) -> Vec<i32> {
    let client = testkit::pg::connect(&url).await.unwrap();
    let mut committed = Vec::new();
    let mut id = 1_000;
    while !stop.load(Ordering::Relaxed) {
        client
            .execute("INSERT INTO items VALUES ($1, 1)", &[&id])
            .await
            .unwrap();
        committed.push(id);
        id += 1;
    }
    committed
}

fn cursors_of_log(dir: &std::path::Path) -> Vec<String> {
    read_log(dir).into_iter().map(|r| r.cursor).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_many_open_streams_exits_0_quickly_and_loses_nothing() {
    let streams_wanted: usize = std::env::var("SHUTDOWN_STREAMS")
        .ok()
        .map(|v| v.parse().expect("SHUTDOWN_STREAMS"))
        .unwrap_or(500);
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, n int)");
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (mut relay, addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);
    pg.psql(
        "app",
        "INSERT INTO items SELECT g, 0 FROM generate_series(1, 200) g",
    );
    wait_until(Duration::from_secs(30), "the first rows in the log", || {
        read_log(&log_dir).len() == 200
    });

    let opened = Instant::now();
    let streams = open_streams(addr, streams_wanted).await;
    println!(
        "{streams_wanted} streams caught up in {:?}",
        opened.elapsed()
    );
    let status = get(addr, "/v1/status", &[]).await.json();
    assert_eq!(status["subscribers"], streams_wanted);

    let stop_writing = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(pg.url("app"), stop_writing.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let signalled = Instant::now();
    let (code, mut relay) = tokio::task::spawn_blocking(move || (relay.terminate(), relay))
        .await
        .unwrap();
    let exited = signalled.elapsed();
    println!("SIGTERM with {streams_wanted} open streams: exit {code:?} after {exited:?}");
    assert_eq!(code, Some(0), "{}", relay.output());
    assert!(exited < Duration::from_secs(5), "took {exited:?}");

    // Every stream ended, having received a prefix of the log, in order.
    let log = cursors_of_log(&log_dir);
    let mut seen_by = Vec::new();
    for stream in streams {
        let seen = tokio::time::timeout(Duration::from_secs(5), stream)
            .await
            .expect("a stream stayed open after the relay exited")
            .unwrap();
        assert!(seen.len() >= 200);
        assert_eq!(
            seen[..],
            log[..seen.len()],
            "a stream is not a prefix of the log"
        );
        seen_by.push(seen);
    }

    // What the log holds was acknowledged upstream before the exit.
    let last = read_log(&log_dir).pop().unwrap();
    let acked = pg.psql(
        "app",
        &format!(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '{}') > 0 FROM pg_replication_slots WHERE slot_name = 'deltarelay_test'",
            last.tx.position
        ),
    );
    assert_eq!(
        acked, "t",
        "the slot was not acknowledged past the last logged commit"
    );

    // Keep writing while the relay is down, then restart it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writing.store(true, Ordering::Relaxed);
    let committed = writing.await.unwrap();
    println!("writer committed {} rows", committed.len());
    relay.spawn();
    let expected = 200 + committed.len();
    wait_until(Duration::from_secs(60), "the log to catch up", || {
        relay.assert_running();
        http_status(addr, "/readyz") == Some(200) && read_log(&log_dir).len() >= expected
    });
    let records = read_log(&log_dir);
    assert_eq!(records.len(), expected, "a row is missing or doubled");
    let mut ids: Vec<i64> = records
        .iter()
        .map(|r| r.key.as_ref().unwrap()["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<i64> = (1..=200)
        .chain(committed.iter().map(|&i| i as i64))
        .collect();
    want.sort_unstable();
    assert_eq!(ids, want);

    // Clients resume from their Last-Event-ID: each gets exactly the rest of the log.
    let ready = Arc::new(AtomicUsize::new(0));
    let mut resumed = Vec::new();
    for seen in seen_by.into_iter().step_by(25) {
        let client = SseClient::connect(addr, "/v1/stream", seen.last().map(String::as_str)).await;
        resumed.push((seen, tokio::spawn(follow(client, ready.clone()))));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::Relaxed) < resumed.len() {
        assert!(
            Instant::now() < deadline,
            "resumed streams did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, relay) = tokio::task::spawn_blocking(move || (relay.terminate(), relay))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", relay.output());
    let log = cursors_of_log(&log_dir);
    for (mut seen, follower) in resumed {
        seen.extend(follower.await.unwrap());
        assert_eq!(seen, log, "a resumed client has a gap or a duplicate");
    }
}
