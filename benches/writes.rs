//! Writes: `POST /v1/mutations` throughput for batches of 1 and of 100 mutations, against a
//! baseline of the same inserts sent by `tokio-postgres` directly (each batch in one
//! transaction, the same concurrency), in one run; and the latency of a single mutation until
//! its response, without waiting for the log (`wait: 0`) and with read-your-writes (the
//! response comes once the write is in the log: write → visible).
//!
//! `cargo bench --bench writes`; `DELTARELAY_BENCH_SCALE=0.1` for a smoke run. It prints its
//! figures and never fails on timing.

use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::http::post;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;

/// Concurrent clients in the throughput phases (the relay's write pool has 8 connections).
const CLIENTS: usize = 8;

fn main() {
    heading("writes: POST /v1/mutations against the same inserts sent directly");
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL, version int NOT NULL DEFAULT 1);
         CREATE TABLE direct (id int PRIMARY KEY, body text NOT NULL, version int NOT NULL DEFAULT 1);",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.items"], port).replace(
        "[log]",
        "[writes]\nallow_unauthenticated = true\n[limits]\nrequests_per_second = 0\n\n[log]",
    ) + "\n[collections.\"public.items\".write]\n";
    let mut relay = start_relay(dir.path(), &config);
    wait_ready(&mut relay, addr, Duration::from_secs(60));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let url = pg.url("app");
    runtime.block_on(async {
        let mut next_id = 0i64;
        for batch in [1usize, 100] {
            let total = scaled(if batch == 1 { 4_000 } else { 40_000 }, batch as u64 * CLIENTS as u64) as usize;
            let requests = total / batch;
            let first = next_id;
            next_id += (requests * batch) as i64;
            let relay_rate = through_relay(addr, first, requests, batch).await;
            let direct_rate = direct(&url, first, requests, batch).await;
            println!(
                "batches of {batch:>3}: relay {relay_rate:>8.0} mutations/s   direct {direct_rate:>8.0} inserts/s   ratio {:.2}   ({} mutations, {CLIENTS} clients)",
                relay_rate / direct_rate,
                requests * batch
            );
        }
        let samples = scaled(500, 20) as usize;
        for (wait, what) in [(0, "write only (wait 0)     "), (5, "write → visible in log  ")] {
            let mut latencies = Vec::with_capacity(samples);
            let mut visible = 0;
            for _ in 0..samples {
                let body = json!({"wait": wait, "mutations": [{"id": format!("l{next_id}"), "collection": "public.items",
                    "op": "insert", "value": {"id": next_id, "body": "latency"}}]})
                .to_string();
                next_id += 1;
                let started = Instant::now();
                let response = post(addr, "/v1/mutations", &[], &body).await.expect("a response");
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(response.status, 200, "{}", response.body);
                visible += usize::from(response.json()["visible"] == true);
            }
            println!("single mutation, {what}: {}  visible {visible}/{samples}", latency_line(&mut latencies));
        }
    });
    if let Some(pid) = relay.pid() {
        println!(
            "relay CPU {:.1} s, peak RSS {} KiB",
            cpu_seconds(pid).unwrap_or(0.0),
            status_kib(pid, "VmHWM").unwrap_or(0)
        );
    }
}

/// Mutations per second through the relay: `requests` batches from CLIENTS clients.
async fn through_relay(addr: SocketAddr, first: i64, requests: usize, batch: usize) -> f64 {
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(async move {
            for r in (client..requests).step_by(CLIENTS) {
                let base = first + (r * batch) as i64;
                let mutations: Vec<_> = (0..batch as i64)
                    .map(|i| json!({"id": format!("m{}", base + i), "collection": "public.items", "op": "insert",
                        "value": {"id": base + i, "body": "benchmark row"}}))
                    .collect();
                let body = json!({"mutations": mutations, "wait": 0}).to_string();
                let response = post(addr, "/v1/mutations", &[], &body).await.expect("a response");
                assert_eq!(response.status, 200, "{}", response.body);
                assert!(!response.body.contains("\"rejected\""), "{}", response.body);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client");
    }
    (requests * batch) as f64 / started.elapsed().as_secs_f64()
}

/// The same inserts straight into Postgres, each batch in one transaction.
async fn direct(url: &str, first: i64, requests: usize, batch: usize) -> f64 {
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let url = url.to_string();
        clients.spawn(async move {
            let mut pg = pg_client(&url).await;
            for r in (client..requests).step_by(CLIENTS) {
                let base = first + (r * batch) as i64;
                let tx = pg.transaction().await.expect("begin");
                for i in 0..batch as i64 {
                    let id = (base + i) as i32;
                    tx.execute(
                        "INSERT INTO direct (id, body) VALUES ($1, $2)",
                        &[&id, &"benchmark row"],
                    )
                    .await
                    .expect("insert");
                }
                tx.commit().await.expect("commit");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client");
    }
    (requests * batch) as f64 / started.elapsed().as_secs_f64()
}
