//! Compaction of the shared NATS log by snapshots: with small snapshot settings, the active
//! ingest node snapshots its materialization and purges the stream several times while a
//! writer changes Postgres. A serve node started after the purges (from the newest snapshot
//! and the stream's tail) serves the very same log; a client's cursor from before the purges
//! goes on without gap or duplicate there; a node paused through the purges stops rather
//! than skip what was purged; the ingest node killed (-9) after a purge and restarted
//! delivers every change exactly once.

use super::nats_log::{
    assert_exactly_the_database, fixture_pg, seq, start_ready, whole_log, write_batch, MARKER,
};
use deltarelay::log::nats::cluster::{self, NatsSettings};
use deltarelay::log::nats::snapshot::SnapshotPolicy;
use deltarelay::record::ChangeRecord;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::http::get;
use testkit::nats::{log_section, NatsCluster};
use testkit::pg::PgServer;
use testkit::relay::{client_state, http_status, wait_until, RelayProcess, SLOT};

const STREAM: &str = "IT_SNAPSHOT";
/// Snapshot after this many stream messages (or every second with traffic).
const SNAPSHOT_AFTER: u64 = 20;

fn snapshot_settings() -> String {
    format!("snapshot_after = {SNAPSHOT_AFTER}\nsnapshot_every = \"1s\"\n")
}

fn ingest_config(pg: &PgServer, nats: &NatsCluster, dir: &Path, port: u16) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{log}{snap}\n[[sources]]\nname = \"app_pg\"\nkind = \"postgres\"\nurl = {url:?}\nslot = \"{SLOT}\"\npublication = \"{SLOT}\"\ntables = [\"public.events\", \"public.items\"]\n",
        log = log_section(nats, Some(&dir.join("log")), STREAM),
        snap = snapshot_settings(),
        url = pg.url("app"),
    )
}

fn serve_config(nats: &NatsCluster, port: u16) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}{}",
        log_section(nats, None, STREAM),
        snapshot_settings()
    )
}

/// The log stream's first sequence, last sequence and message count.
async fn stream_state(nats: &NatsCluster) -> (u64, u64, u64) {
    let settings = NatsSettings {
        urls: nats.urls(),
        stream: STREAM.into(),
        replicas: 3,
        snapshots: SnapshotPolicy::default(),
    };
    let js = cluster::connect(&settings).await.unwrap();
    let stream = cluster::log_stream(&js, &settings).await.unwrap();
    let state = stream.get_info().await.unwrap().state;
    (state.first_sequence, state.last_sequence, state.messages)
}

async fn role(addr: SocketAddr) -> String {
    let status: Value = get(addr, "/v1/status", &[]).await.json();
    status["role"].as_str().unwrap_or_default().to_string()
}

async fn wait_active(addr: SocketAddr, node: &RelayProcess) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while role(addr).await != "active" {
        assert!(
            Instant::now() < deadline,
            "the ingest node did not become active\n{}",
            node.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The log's entries after `since`, through `/v1/changes`.
async fn log_after(addr: SocketAddr, since: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut since = since.to_string();
    loop {
        let page = get(addr, &format!("/v1/changes?since={since}&limit=37"), &[])
            .await
            .json();
        records.extend(page["changes"].as_array().unwrap().iter().cloned());
        since = page["cursor"].as_str().unwrap().to_string();
        if !page["has_more"].as_bool().unwrap() {
            return records;
        }
    }
}

/// Waits until the node's log holds the marker row; returns its whole log.
async fn log_with_marker(addr: SocketAddr, node: &RelayProcess) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = whole_log(addr).await;
        let has_marker = log
            .iter()
            .any(|r| r["collection"] == "public.events" && r["key"]["id"] == MARKER);
        if has_marker {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no marker at {addr}\n{}",
            node.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `batches` batches of ten transactions from `first` on, each its own psql session
/// (so that the relay commits them as several blocks).
fn write_batches(pg: &PgServer, first: i64, batches: i64) {
    for b in 0..batches {
        write_batch(pg, first + b * 10, 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_compacted_by_snapshots_and_every_node_serves_the_same_log() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let pg = fixture_pg();
    let nats = NatsCluster::start(3);
    let ingest_dir = tempfile::tempdir().unwrap();
    let ingest_port = free_port();
    let (mut ingest, ingest_addr) = start_ready(
        ingest_dir.path(),
        &ingest_config(&pg, &nats, ingest_dir.path(), ingest_port),
        ingest_port,
    );
    wait_active(ingest_addr, &ingest).await;
    let early_dir = tempfile::tempdir().unwrap();
    let early_port = free_port();
    let (mut early, early_addr) = start_ready(
        early_dir.path(),
        &serve_config(&nats, early_port),
        early_port,
    );

    // A client reads a first page of the changes, before any purge.
    write_batches(&pg, 1, 5);
    let first_log = wait_for_events(early_addr, 50).await;
    let page = get(
        early_addr,
        &format!("/v1/changes?since=0&limit={}", first_log.len() / 2),
        &[],
    )
    .await
    .json();
    let first_page: Vec<Value> = page["changes"].as_array().unwrap().clone();
    let mid_cursor = page["cursor"].as_str().unwrap().to_string();

    // A serve node that is paused through the purges falls behind them.
    let stalled_dir = tempfile::tempdir().unwrap();
    let stalled_port = free_port();
    let (mut stalled, _) = start_ready(
        stalled_dir.path(),
        &serve_config(&nats, stalled_port),
        stalled_port,
    );
    signal(&stalled, "-STOP");

    // The writer goes on while the ingest node snapshots and purges several times.
    // Each round waits for the stream's first sequence to move (a purge) rather than for a
    // fixed time, so that a slow machine only makes the test slower. What the stream holds
    // right after a purge is bounded by what the last two snapshot intervals and the round
    // wrote (the writer pauses while the test waits).
    let mut firsts = vec![stream_state(&nats).await.0];
    let mut most_messages = 0;
    let mut most_written = 0;
    for round in 0..6 {
        let before = stream_state(&nats).await;
        write_batches(&pg, 51 + round * 50, 5);
        let deadline = Instant::now() + Duration::from_secs(60);
        let after = loop {
            let now = stream_state(&nats).await;
            if now.0 > before.0 {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "no purge after round {round}: the stream is {now:?}, was {before:?}\n{}",
                ingest.output()
            );
            // A snapshot (and so a purge) is taken after a commit, once a limit is reached:
            // a quiet source takes none, so keep committing small transactions.
            pg.psql("app", "UPDATE items SET qty = qty + 1 WHERE id = 1");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        firsts.push(after.0);
        most_messages = most_messages.max(after.2);
        most_written = most_written.max(after.1 - before.1);
    }
    let (first, last, messages) = stream_state(&nats).await;
    let purges = firsts.windows(2).filter(|w| w[1] > w[0]).count();
    eprintln!(
        "stream: {last} messages written, first sequence now {first}, {messages} held (at most {most_messages} after the first purge), the first sequence moved {purges} times"
    );
    assert!(
        purges >= 2,
        "the stream was not purged repeatedly: {firsts:?}"
    );
    assert!(
        messages < last / 2,
        "the stream holds {messages} of {last} messages"
    );
    // About two snapshot intervals stay in the stream (the previous snapshot's tail).
    assert!(
        most_messages <= 4 * SNAPSHOT_AFTER + 2 * most_written,
        "the stream grew to {most_messages} messages between purges"
    );

    // The paused node, resumed, finds its next message purged: it stops with that reason
    // rather than skip commands (restarted, it would load the newest snapshot).
    signal(&stalled, "-CONT");
    assert_ne!(stalled.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        stalled
            .output()
            .contains("compacted away before this node applied it"),
        "{}",
        stalled.output()
    );

    // A serve node started now loads the newest snapshot and follows the stream's tail.
    let late_dir = tempfile::tempdir().unwrap();
    let late_port = free_port();
    let started = Instant::now();
    let (mut late, late_addr) =
        start_ready(late_dir.path(), &serve_config(&nats, late_port), late_port);
    eprintln!(
        "a serve node started after the purges was ready in {:?}",
        started.elapsed()
    );

    // The ingest node dies (-9) after the purges; changes go on meanwhile; it comes back.
    ingest.kill();
    write_batches(&pg, 351, 5);
    ingest.spawn();
    wait_until(
        Duration::from_secs(60),
        "the restarted node to serve",
        || {
            ingest.assert_running();
            http_status(ingest_addr, "/readyz") == Some(200)
        },
    );
    wait_active(ingest_addr, &ingest).await;
    write_batches(&pg, 401, 5);
    pg.psql("app", &format!("INSERT INTO events VALUES ({MARKER}, -1)"));

    let reference = log_with_marker(early_addr, &early).await;
    for (addr, node) in [(late_addr, &late), (ingest_addr, &ingest)] {
        assert_eq!(
            log_with_marker(addr, node).await,
            reference,
            "a node serves another log"
        );
    }
    early.assert_running();
    late.assert_running();
    ingest.assert_running();
    // Both started from a snapshot (the stream's head was purged by then).
    for node in [&late, &ingest] {
        assert!(node.output().contains("loaded the log snapshot"));
    }

    // Every change once, in cursor order, and the state Postgres has.
    let records: Vec<ChangeRecord> = reference
        .iter()
        .map(|r| serde_json::from_value(r.clone()).unwrap())
        .collect();
    assert_exactly_the_database(&records, &pg, 450);

    // The cursor from before the purges goes on at the new node: no gap, no duplicate.
    let rest = log_after(late_addr, &mid_cursor).await;
    let after_mid: Vec<Value> = reference
        .iter()
        .filter(|r| seq(r["cursor"].as_str().unwrap()) > seq(&mid_cursor))
        .cloned()
        .collect();
    assert_eq!(rest, after_mid);
    let client: Vec<ChangeRecord> = first_page
        .into_iter()
        .chain(rest)
        .map(|r| serde_json::from_value(r).unwrap())
        .collect();
    let state = client_state(&client);
    assert_eq!(
        state["public.events"],
        pg.table_state("app", "events", &["id"])
    );
    assert_eq!(
        state["public.items"],
        pg.table_state("app", "items", &["id"])
    );
}

/// Sends a signal (`-STOP`, `-CONT`) to a relay this test started.
fn signal(node: &RelayProcess, which: &str) {
    let pid = node.pid().expect("the relay runs").to_string();
    let status = std::process::Command::new("kill")
        .args([which, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the node's log holds `events` events; returns the whole log.
async fn wait_for_events(addr: SocketAddr, events: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = whole_log(addr).await;
        if log
            .iter()
            .filter(|r| r["collection"] == "public.events")
            .count()
            >= events
        {
            return log;
        }
        assert!(Instant::now() < deadline, "the first events did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
