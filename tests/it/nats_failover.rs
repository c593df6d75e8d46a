//! Ingest roles on the shared NATS log: two ingest nodes on one Postgres source, one active
//! (the lease in the meta bucket), one standby. A NATS node dies (and comes back) and the
//! active ingest node is killed (-9) while a writer runs: the standby takes over, and a
//! client reading a serve node sees every change exactly once.

use super::nats_log::{
    assert_exactly_the_database, fixture_pg, ingest_config, read_for_a_while, read_until_marker,
    start_ready, whole_log, write_batch, MARKER,
};
use deltarelay::record::ChangeRecord;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::http::{get, SseClient};
use testkit::nats::{serve_config, NatsCluster};
use testkit::relay::{http_status, wait_until, RelayProcess};

async fn status(addr: SocketAddr) -> Value {
    get(addr, "/v1/status", &[]).await.json()
}

async fn role(addr: SocketAddr) -> String {
    status(addr).await["role"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits (polling `/v1/status`) until the node at `addr` has `wanted` as its role.
async fn wait_role(addr: SocketAddr, wanted: &str, limit: Duration, node: &RelayProcess) {
    let deadline = Instant::now() + limit;
    while role(addr).await != wanted {
        assert!(
            Instant::now() < deadline,
            "no {wanted} role at {addr} within {limit:?}\n{}",
            tail(node.output())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last lines of a node's own log, without debug lines.
fn tail(text: String) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("async_nats")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Two ingest nodes of `stream` on the fixture's source: the first waited for as `active`,
/// the second found `standby`. Returns their directories, addresses and processes.
async fn active_and_standby(
    pg: &testkit::pg::PgServer,
    nats: &NatsCluster,
    stream: &str,
) -> (
    [tempfile::TempDir; 2],
    [SocketAddr; 2],
    RelayProcess,
    RelayProcess,
) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let addrs = ports.map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
    let (first, _) = start_ready(
        dirs[0].path(),
        &ingest_config(pg, nats, dirs[0].path(), ports[0], stream),
        ports[0],
    );
    wait_role(addrs[0], "active", Duration::from_secs(30), &first).await;
    // The second ingest node waits as a standby and serves reads meanwhile.
    let (second, _) = start_ready(
        dirs[1].path(),
        &ingest_config(pg, nats, dirs[1].path(), ports[1], stream),
        ports[1],
    );
    assert_eq!(role(addrs[1]).await, "standby");
    (dirs, addrs, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_active_and_nothing_is_lost_or_doubled() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let pg = fixture_pg();
    let mut nats = NatsCluster::start(3);
    let stream = "IT_FAILOVER";
    let (_dirs, addrs, mut first, mut second) = active_and_standby(&pg, &nats, stream).await;
    let view = status(addrs[1]).await["cluster"].clone();
    assert_eq!(view["stream"], stream);
    assert_eq!(view["connected"], true);
    let serve_dir = tempfile::tempdir().unwrap();
    let serve_port = free_port();
    let (mut serve, serve_addr) = start_ready(
        serve_dir.path(),
        &serve_config(&nats, serve_port, stream),
        serve_port,
    );
    assert_eq!(role(serve_addr).await, "serve");
    let metrics = get(serve_addr, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("deltarelay_node_role{role=\"serve\"} 1"),
        "{metrics}"
    );

    let mut seen: Vec<ChangeRecord> = Vec::new();
    let mut client = SseClient::connect(serve_addr, "/v1/stream", None).await;
    write_batch(&pg, 1, 100);
    // One NATS node of three dies: the stream (3 replicas) keeps a quorum.
    nats.kill_node(2);
    write_batch(&pg, 101, 100);
    read_for_a_while(&mut client, &mut seen, Duration::from_secs(2)).await;

    // The active ingest node dies; the writer goes on; the standby takes over.
    let killed = Instant::now();
    first.kill();
    write_batch(&pg, 201, 100);
    wait_role(addrs[1], "active", Duration::from_secs(30), &second).await;
    let took_over = killed.elapsed();
    loop {
        read_for_a_while(&mut client, &mut seen, Duration::from_millis(200)).await;
        let last_event = seen
            .iter()
            .filter(|r| r.collection == "public.events")
            .filter_map(|r| r.key.as_ref()?["id"].as_i64())
            .max();
        if last_event == Some(300) {
            break;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            panic!(
                "no change after the failover\n--- new active ---\n{}\n--- serve ---\n{}",
                tail(second.output()),
                tail(serve.output())
            );
        }
    }
    let delivered = killed.elapsed();
    eprintln!(
        "failover: standby active after {took_over:?}, next changes delivered after {delivered:?}"
    );
    // Loosely: the contract says 15 s; the benchmark measures it.
    assert!(delivered < Duration::from_secs(30), "{delivered:?}");

    nats.start_node(2);
    // The restarted node comes back as a standby (its old self's lease has been taken).
    first.spawn();
    wait_until(
        Duration::from_secs(60),
        "the restarted node to serve",
        || http_status(addrs[0], "/readyz") == Some(200),
    );
    assert_eq!(role(addrs[0]).await, "standby");
    write_batch(&pg, 301, 100);
    pg.psql("app", &format!("INSERT INTO events VALUES ({MARKER}, -1)"));
    read_until_marker(&mut client, &mut seen).await;
    first.assert_running();
    second.assert_running();
    serve.assert_running();

    assert_exactly_the_database(&seen, &pg, 400);

    // The standby's and the serve node's logs are the same, cursor for cursor.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (whole_log(serve_addr).await, whole_log(addrs[0]).await);
        if a == b {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes' logs differ");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A standby stops when told to (its sources, which never started, hung the shutdown).
    assert_eq!(first.terminate(), Some(0), "{}", tail(first.output()));
}

/// A NATS node that was killed and started again answers reads of the meta bucket from its
/// own copy, which can lag for minutes. The standby reads the lease from the bucket's leader,
/// so after every NATS node was restarted once, the failover still takes about 10 s (it
/// stalled for 40 s and more in the chaos run when the standby's reads of the lease met an
/// old revision now and then: the revision never held still for the lease's 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_after_the_nats_nodes_were_restarted() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let pg = fixture_pg();
    let mut nats = NatsCluster::start(3);
    let stream = "IT_FAILOVER_RESTARTED";
    let (_dirs, addrs, mut first, second) = active_and_standby(&pg, &nats, stream).await;
    // One at a time, so that the bucket keeps its quorum; the active renews its lease
    // meanwhile.
    for node in 0..3 {
        nats.kill_node(node);
        tokio::time::sleep(Duration::from_secs(1)).await;
        nats.start_node(node);
        nats.wait_jetstream_ready();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    write_batch(&pg, 1, 10);

    let killed = Instant::now();
    first.kill();
    wait_role(addrs[1], "active", Duration::from_secs(90), &second).await;
    let took_over = killed.elapsed();
    eprintln!("failover after NATS restarts: standby active after {took_over:?}");
    // 10 s by the lease, plus NATS leader elections after the restarts (13-18 s seen); with
    // reads from any replica it took over 90 s or never.
    assert!(took_over < Duration::from_secs(35), "{took_over:?}");
}
