//! The shared log on NATS JetStream end to end: a private 3-node `nats-server` cluster, one
//! ingest node (a Postgres source) and two serve-only, stateless nodes. A writer changes
//! Postgres while an SSE client reads from one serve node; the ingest node is killed (-9) and
//! restarted; then the serve node under the client is killed (-9), the client moves to the
//! other with its `Last-Event-ID`, and the killed node comes back (stateless) and catches up.

use deltarelay::record::ChangeRecord;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use testkit::http::{get, record_of, SseClient};
use testkit::nats::{serve_config, NatsCluster};
use testkit::pg::PgServer;
use testkit::relay::{client_state, wait_streaming, wait_until, RelayProcess};
use testkit::{free_port, relay::http_status};

pub(crate) const MARKER: i64 = 1_000_000;

/// The tables the NATS tests replicate.
const TABLES: &[&str] = &["public.events", "public.items"];

pub(crate) fn ingest_config(
    pg: &PgServer,
    nats: &NatsCluster,
    dir: &Path,
    port: u16,
    stream: &str,
) -> String {
    testkit::nats::ingest_config(pg, nats, dir, port, stream, TABLES)
}

/// Starts a relay and waits until it serves reads.
pub(crate) fn start_ready(dir: &Path, config: &str, port: u16) -> (RelayProcess, SocketAddr) {
    let mut relay = RelayProcess::start(dir, config);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(60), "the node to be ready", || {
        relay.assert_running();
        http_status(addr, "/readyz") == Some(200)
    });
    (relay, addr)
}

/// `count` transactions from `first` on: each inserts one event and bumps one item.
pub(crate) fn write_batch(pg: &PgServer, first: i64, count: i64) {
    let sql: String = (first..first + count)
        .map(|id| {
            format!(
                "BEGIN; INSERT INTO events VALUES ({id}, {first}); UPDATE items SET qty = qty + 1 WHERE id = {}; COMMIT;\n",
                id % 20 + 1
            )
        })
        .collect();
    pg.psql("app", &sql);
}

/// Every entry of the node's log, through `/v1/changes`.
pub(crate) async fn whole_log(addr: SocketAddr) -> Vec<Value> {
    let mut records = Vec::new();
    let mut since = "0".to_string();
    loop {
        let page = get(addr, &format!("/v1/changes?since={since}&limit=10000"), &[])
            .await
            .json();
        records.extend(page["changes"].as_array().unwrap().iter().cloned());
        since = page["cursor"].as_str().unwrap().to_string();
        if !page["has_more"].as_bool().unwrap() {
            return records;
        }
    }
}

/// Reads change events until the marker row arrives; returns their records.
pub(crate) async fn read_until_marker(client: &mut SseClient, into: &mut Vec<ChangeRecord>) {
    loop {
        let event = client
            .next_within(Duration::from_secs(90))
            .await
            .expect("the stream ended before the marker");
        if event.event != "change" {
            continue;
        }
        let record: ChangeRecord = serde_json::from_value(record_of(&event)).unwrap();
        let marker = record.collection == "public.events"
            && record.key.as_ref().and_then(|k| k["id"].as_i64()) == Some(MARKER);
        into.push(record);
        if marker {
            return;
        }
    }
}

/// Reads whatever change events arrive within `quiet` of each other.
pub(crate) async fn read_for_a_while(
    client: &mut SseClient,
    into: &mut Vec<ChangeRecord>,
    quiet: Duration,
) {
    while let Ok(Some(event)) = tokio::time::timeout(quiet, client.next()).await {
        if event.event == "change" {
            into.push(serde_json::from_value(record_of(&event)).unwrap());
        }
    }
}

/// A private Postgres with the NATS tests' tables: `events` (a row per transaction) and
/// `items` (20 counters the transactions bump).
pub(crate) fn fixture_pg() -> PgServer {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE events (id bigint PRIMARY KEY, batch bigint);
         CREATE TABLE items (id int PRIMARY KEY, qty int);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g;",
    );
    pg
}

pub(crate) fn seq(cursor: &str) -> u64 {
    cursor.split_once('-').unwrap().1.parse().unwrap()
}

/// What a client (or a node's log) read holds: cursors only growing, every event row
/// `1..=events` and the marker exactly once, and the state of both tables as Postgres has it.
pub(crate) fn assert_exactly_the_database(records: &[ChangeRecord], pg: &PgServer, events: i64) {
    let seqs: Vec<u64> = records.iter().map(|r| seq(&r.cursor)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "cursors went backwards or repeated"
    );
    let mut event_ids: Vec<i64> = records
        .iter()
        .filter(|r| r.collection == "public.events")
        .map(|r| r.key.as_ref().unwrap()["id"].as_i64().unwrap())
        .collect();
    event_ids.sort_unstable();
    let mut expected: Vec<i64> = (1..=events).collect();
    expected.push(MARKER);
    assert_eq!(event_ids, expected, "every event once");
    let state = client_state(records);
    assert_eq!(
        state["public.events"],
        pg.table_state("app", "events", &["id"])
    );
    assert_eq!(
        state["public.items"],
        pg.table_state("app", "items", &["id"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_once_across_an_ingest_crash_and_a_serve_node_crash_under_a_client() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let pg = fixture_pg();
    let nats = NatsCluster::start(3);
    let stream = "IT_LOG";
    let ingest_dir = tempfile::tempdir().unwrap();
    let ingest_port = free_port();
    let mut ingest = RelayProcess::start(
        ingest_dir.path(),
        &ingest_config(&pg, &nats, ingest_dir.path(), ingest_port, stream),
    );
    wait_streaming(&pg, &mut ingest);
    let serve_dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let (mut serve_a, addr_a) = start_ready(
        serve_dirs[0].path(),
        &serve_config(&nats, ports[0], stream),
        ports[0],
    );
    let (mut serve_b, addr_b) = start_ready(
        serve_dirs[1].path(),
        &serve_config(&nats, ports[1], stream),
        ports[1],
    );

    let ingest_addr = SocketAddr::from(([127, 0, 0, 1], ingest_port));
    for (addr, role) in [
        (ingest_addr, "active"),
        (addr_a, "serve"),
        (addr_b, "serve"),
    ] {
        let status = get(addr, "/v1/status", &[]).await.json();
        assert_eq!(status["role"], role, "{status}");
    }

    let mut seen = Vec::new();
    let mut client = SseClient::connect(addr_a, "/v1/stream", None).await;
    assert_eq!(client.status, 200);
    write_batch(&pg, 1, 100);
    read_for_a_while(&mut client, &mut seen, Duration::from_secs(2)).await;

    // The ingest node dies without a word; the writer goes on; a new ingest process resumes.
    ingest.kill();
    write_batch(&pg, 101, 100);
    ingest.spawn();
    wait_streaming(&pg, &mut ingest);
    write_batch(&pg, 201, 100);
    read_for_a_while(&mut client, &mut seen, Duration::from_secs(1)).await;

    // The serve node under the client dies without a word: the client moves to the other one
    // with the last cursor it saw, and the dead node starts again from the shared log.
    serve_a.kill();
    drop(client);
    let last = seen.last().expect("events before the move").cursor.clone();
    let mut client = SseClient::connect(addr_b, "/v1/stream", Some(&last)).await;
    assert_eq!(client.status, 200);
    write_batch(&pg, 301, 50);
    serve_a.spawn();
    wait_until(
        Duration::from_secs(60),
        "the killed serve node back",
        || {
            serve_a.assert_running();
            http_status(addr_a, "/readyz") == Some(200)
        },
    );
    write_batch(&pg, 351, 50);
    pg.psql("app", &format!("INSERT INTO events VALUES ({MARKER}, -1)"));
    read_until_marker(&mut client, &mut seen).await;
    ingest.assert_running();
    serve_a.assert_running();
    serve_b.assert_running();

    // No gap, no duplicate: cursors only grow, and every event row arrived exactly once.
    assert_exactly_the_database(&seen, &pg, 400);

    // Every node holds the same log, cursor for cursor (the restarted one too, once it caught
    // up), and it equals the database.
    let log_b = whole_log(addr_b).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (log_a, log_ingest) = loop {
        let (a, i) = (whole_log(addr_a).await, whole_log(ingest_addr).await);
        if (a.len() == log_b.len() && i.len() == log_b.len())
            || std::time::Instant::now() > deadline
        {
            break (a, i);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(log_a, log_b);
    assert_eq!(log_a, log_ingest);
    let records: Vec<ChangeRecord> = log_a
        .into_iter()
        .map(|r| serde_json::from_value(r).unwrap())
        .collect();
    assert_exactly_the_database(&records, &pg, 400);
}

/// `deltarelay check` for the shared log, run as the binary an operator runs.
fn check(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code(), stdout)
}

#[test]
fn check_reports_the_nats_cluster_and_what_to_fix() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let nats = NatsCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(&nats, free_port(), "IT_CHECK");
    let (code, out) = check(dir.path(), &config);
    assert_eq!(code, Some(0), "{out}");
    for name in ["connect", "jetstream", "replicas", "max_payload", "stream"] {
        assert!(out.contains(&format!("PASS nats {name}")), "{name}: {out}");
    }
    assert!(out.contains("on a cluster of 3"), "{out}");
    assert!(out.contains("PASS nats account"), "{out}");
    assert!(out.contains("(no account limit)"), "{out}");

    let (code, out) = check(dir.path(), &config.replace("replicas = 3", "replicas = 5"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL nats replicas"), "{out}");
    assert!(out.contains("but the cluster has 3 node(s)"), "{out}");

    let nobody = format!("urls = [\"nats://127.0.0.1:{}\"]", free_port());
    let unreachable = config
        .lines()
        .map(|line| {
            if line.starts_with("urls = ") {
                nobody.clone()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (code, out) = check(dir.path(), &unreachable);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL nats connect"), "{out}");
}

#[test]
fn check_fails_when_the_account_cannot_hold_the_relays_streams() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    // An account limited to two streams (the relay needs three) and no stream byte limit
    // required; clients without credentials land in it.
    let nats = NatsCluster::start_with(
        3,
        "accounts { APP { jetstream { max_file: 64MB, max_mem: 8MB, max_streams: 2, max_consumers: 100 }, \
         users: [{ user: app, password: app }] } }\nno_auth_user: app",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(&nats, free_port(), "IT_LIMITS");
    let (code, out) = check(dir.path(), &config);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL nats account"), "{out}");
    assert!(
        out.contains("may hold 2 stream(s), holds 0, and the relay needs 3 more"),
        "{out}"
    );
    assert!(out.contains("raise max_streams"), "{out}");
}
