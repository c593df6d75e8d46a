//! A client that stops reading `/v1/stream` for a minute under a steady Postgres write load:
//! the relay's memory (VmRSS of the relay child process) stays bounded and the other clients are
//! not delayed. Long, so `#[ignore]`d; run it with
//! `cargo test --test it -- --ignored --nocapture http_pg_stall::`.
//!
//! - `STALL_SECS` (default 60): how long the client stalls while the writer writes;
//! - `STALL_RATE` (default 200): writer transactions per second (4 rows of ~500 bytes each).

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use testkit::http::*;
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;

const MARKER_ID: i64 = 1_000_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long (a minute of stall under load); prints the relay's RSS and the readers' latency"]
async fn a_client_stalled_for_a_minute_under_postgres_load() {
    let stall = Duration::from_secs(env_or("STALL_SECS", 60));
    let rate = env_or("STALL_RATE", 200);
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, payload text, sent_us bigint)",
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);
    let pid = relay.pid().unwrap();
    let epoch = Instant::now();

    // The stalled client: a small receive window, and it does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled_stream = socket.connect(addr).await.unwrap();
    let request = format!("GET /v1/stream?since=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stalled_stream, request.as_bytes())
        .await
        .unwrap();

    // Three reading clients measure commit → event latency (the row carries its send time).
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut client = SseClient::connect(addr, "/v1/stream?since=0", None).await;
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last = 0;
            loop {
                let event = client
                    .next_within(Duration::from_secs(30))
                    .await
                    .expect("stream ended");
                if event.event != "change" {
                    continue;
                }
                let record: Value = serde_json::from_str(&event.data).unwrap();
                let seq = seq_of(record["cursor"].as_str().unwrap());
                assert!(seq > last);
                last = seq;
                if let Some(sent) = record["after"]["sent_us"].as_u64() {
                    let now = epoch.elapsed().as_micros() as u64;
                    latencies.push(Duration::from_micros(now.saturating_sub(sent)));
                }
                if record["key"] == json!({ "id": MARKER_ID }) {
                    return latencies;
                }
            }
        }));
    }

    let db = testkit::pg::connect(&pg.url("app")).await.unwrap();
    let payload = "x".repeat(500);
    let rss_start = rss_kib(pid);
    let mut rss_middle = 0;
    let mut rss_max = rss_start;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut txs = 0u64;
    let mut last_sample = Instant::now();
    while started.elapsed() < stall {
        ticker.tick().await;
        let mut sql = String::from("BEGIN;");
        for k in 0..4 {
            let id = (txs * 4 + k) % 20_000;
            let sent = epoch.elapsed().as_micros() as u64;
            sql.push_str(&format!(
                "INSERT INTO items VALUES ({id}, '{payload}', {sent}) ON CONFLICT (id) DO UPDATE SET payload = excluded.payload, sent_us = excluded.sent_us;"
            ));
        }
        sql.push_str("COMMIT;");
        db.batch_execute(&sql).await.unwrap();
        txs += 1;
        if last_sample.elapsed() > Duration::from_secs(1) {
            last_sample = Instant::now();
            let rss = rss_kib(pid);
            rss_max = rss_max.max(rss);
            if rss_middle == 0 && started.elapsed() >= stall / 2 {
                rss_middle = rss;
            }
        }
    }
    let rss_end = rss_kib(pid);
    db.batch_execute(&format!(
        "INSERT INTO items VALUES ({MARKER_ID}, 'marker', {})",
        epoch.elapsed().as_micros()
    ))
    .await
    .unwrap();
    let elapsed = started.elapsed();

    let mut latencies = Vec::new();
    for reader in readers {
        latencies.extend(
            tokio::time::timeout(Duration::from_secs(60), reader)
                .await
                .expect("a reader did not reach the marker")
                .unwrap(),
        );
    }
    latencies.sort();
    let status = get(addr, "/v1/status", &[]).await.json();
    println!(
        "stall: {txs} transactions ({} rows, ~{} MB of payload) in {elapsed:?} ({:.0} tx/s) with one client stalled",
        txs * 4,
        txs * 4 * 500 / 1_000_000,
        txs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "stall: relay VmRSS {rss_start} KiB at start, {rss_middle} KiB in the middle, {rss_end} KiB at the end (max {rss_max} KiB); log {}",
        status["log"]
    );
    println!(
        "stall: other clients' commit→event latency over {} events: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    // The readers have hung up after the marker; the stalled client is still subscribed.
    assert!(status["subscribers"].as_u64().unwrap() >= 1, "{status}");

    // The stalled client now reads: it gets to the marker, in order.
    let mut stalled = SseClient::over(stalled_stream).await;
    let mut last = 0;
    let mut events = 0;
    loop {
        let event = stalled
            .next_within(Duration::from_secs(60))
            .await
            .expect("the stalled client's stream ended");
        if event.event != "change" {
            continue;
        }
        let record: Value = serde_json::from_str(&event.data).unwrap();
        let seq = seq_of(record["cursor"].as_str().unwrap());
        assert!(seq > last, "strictly increasing");
        last = seq;
        events += 1;
        if record["key"] == json!({ "id": MARKER_ID }) {
            break;
        }
    }
    println!("stall: the stalled client then read {events} events up to the marker");
    relay.assert_running();
    assert!(
        rss_end < rss_middle + 32 * 1024,
        "the relay's memory kept growing while a client was stalled"
    );
    assert!(percentile(&latencies, 0.99) < Duration::from_secs(1));
    drop(stalled);
    assert_eq!(relay.terminate(), Some(0));
}
