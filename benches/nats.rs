//! Ingest into the shared log on NATS JetStream as a ratio of the embedded SQLite log, in one
//! run: the same local transactions (100 row changes each) committed through the relay's
//! `Log` handle, in process. A commit returns once it is durable: fsynced in SQLite; for NATS,
//! acknowledged by the stream (3 replicas on a private 3-node `nats-server` cluster on
//! loopback) and applied to this node's materialization.
//!
//! `cargo bench --bench nats`; `DELTARELAY_BENCH_SCALE=0.01` for a smoke run. Serving from
//! NATS (fan-out over serve nodes) and the failover time are in `benches/nats_serve.rs`. It
//! prints its figures and never fails on timing.

use deltarelay::log::nats::cluster::NatsSettings;
use deltarelay::log::scope::ScopeColumns;
use deltarelay::log::Log;
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::http::{commit, tx, upsert};
use testkit::nats::NatsCluster;

const CHANGES_PER_COMMIT: i64 = 100;

/// Commits `commits` transactions of [`CHANGES_PER_COMMIT`] upserts; returns the time taken.
async fn ingest(log: &Log, commits: u64) -> Duration {
    let started = Instant::now();
    for c in 0..commits {
        let changes = (0..CHANGES_PER_COMMIT)
            .map(|i| {
                let id = (c as i64 * CHANGES_PER_COMMIT + i) % 50_000;
                upsert(
                    "public.items",
                    id,
                    json!({"id": id, "qty": c, "title": "an item of the benchmark"}),
                )
            })
            .collect();
        commit(log, vec![(tx(c + 1), changes)]).await;
    }
    started.elapsed()
}

fn main() {
    heading("nats");
    if !testkit::nats::available() {
        testkit::skip("nats-server is not installed");
        return;
    }
    let commits = scaled(2000, 20);
    let changes = commits * CHANGES_PER_COMMIT as u64;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite = runtime.block_on(async {
        let log = Log::open(sqlite_dir.path()).unwrap();
        ingest(&log, commits).await
    });
    let cluster = NatsCluster::start(3);
    let nats_dir = tempfile::tempdir().unwrap();
    let settings = NatsSettings {
        urls: cluster.urls(),
        stream: "BENCH".into(),
        replicas: 3,
        // The defaults a deployment gets (a snapshot every 10 min or 100,000 messages).
        snapshots: Default::default(),
    };
    let nats = runtime.block_on(async {
        let log = Log::open_nats(&settings, Some(nats_dir.path()), ScopeColumns::new(), true)
            .await
            .unwrap();
        ingest(&log, commits).await
    });
    let rate = |d: Duration| changes as f64 / d.as_secs_f64();
    println!(
        "ingest, {commits} commits of {CHANGES_PER_COMMIT} changes: SQLite {:.0} changes/s ({:.2} ms/commit), NATS (3 replicas) {:.0} changes/s ({:.2} ms/commit); NATS/SQLite = {:.2}",
        rate(sqlite),
        sqlite.as_secs_f64() * 1000.0 / commits as f64,
        rate(nats),
        nats.as_secs_f64() * 1000.0 / commits as f64,
        rate(nats) / rate(sqlite),
    );
}
