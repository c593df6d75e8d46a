//! Serving from the shared log on NATS JetStream (a private 3-node `nats-server` cluster on
//! loopback, 3 replicas), in one run:
//!
//! 1. SSE fan-out with the same clients spread over 1, 2 and 3 serve-only nodes while one
//!    ingest node (a private Postgres source) takes a paced writer: events delivered per
//!    second against those asked for (clients × changes/s), and delivery latency (commit
//!    acknowledged → event read, on a sample of clients). The 1-node figure is the baseline
//!    the others are ratios of.
//! 2. Failover: two ingest nodes on one source; the active one is killed (-9) while a writer
//!    keeps committing; the time from the kill to the first change committed after it being
//!    read by an SSE client of a serve node. The killed node comes back as the standby and the
//!    next round kills the new active. Ten rounds (one at `DELTARELAY_BENCH_SCALE` < 0.1).
//!
//! `cargo bench --bench nats_serve`; `DELTARELAY_BENCH_SCALE=0.01` for a smoke run. It prints
//! its figures and never fails on timing. All nodes share this machine's cores, so more serve
//! nodes here show the cost of the extra NATS consumers, not the gain of more machines.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::http::{get, record_of, SseClient};
use testkit::nats::NatsCluster;
use testkit::pg::PgServer;
use testkit::relay::{RelayProcess, SLOT};
use testkit::sse_clients::SseClients;

/// Clients whose every event is timed (the others only count theirs).
const SAMPLED: usize = 12;
/// Rows per second are committed in ticks of this length.
const TICK: Duration = Duration::from_millis(10);
/// Every change must reach every client; no progress for this long is an error.
const STALL: Duration = Duration::from_secs(60);
/// Changes per second during the fan-out phases.
const RATE: f64 = 100.0;
/// A failover taking longer than this is an error (the lease expires after ~10 s).
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    heading("nats_serve: SSE from serve-only nodes of a NATS log; ingest failover");
    if !testkit::nats::available() {
        testkit::skip("nats-server is not installed");
        return;
    }
    let pg = PgServer::start();
    pg.psql("app", EVENTS);
    let nats = NatsCluster::start(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut fanout = runtime.block_on(fan_out(&pg, &nats));
    let failovers = runtime.block_on(failover(&pg, &nats));

    println!("(load now {})", load());
    let clients = fanout[0].clients;
    println!(
        "fan-out: {clients} SSE clients at {RATE:.0} changes/s (committed every {} ms), spread over serve-only nodes",
        TICK.as_millis()
    );
    let base = fanout[0].delivered();
    for f in &mut fanout {
        println!(
            "  {} serve node(s): {} rows → {} events in {:.1} s: {:>9.0} events/s delivered, {:>9.0} asked (ratio {:.2}); vs 1 node {:.2}",
            f.nodes,
            f.rows,
            f.events(),
            f.took.as_secs_f64(),
            f.delivered(),
            f.asked(),
            f.delivered() / f.asked(),
            f.delivered() / base,
        );
        println!(
            "      delivery latency (sampled clients): {}",
            latency_line(&mut f.latency)
        );
    }
    let mut ms: Vec<f64> = failovers.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    println!(
        "failover, kill -9 of the active ingest node → first change committed after it read on a serve node, {} round(s): p50 {:.0} ms, max {:.0} ms",
        ms.len(),
        percentile(&mut ms, 50.0),
        ms.last().copied().unwrap_or(0.0)
    );
}

/// A serve-only node with no limit on streams or requests (the clients come from one address).
fn serve_config(nats: &NatsCluster, port: u16, stream: &str) -> String {
    testkit::nats::serve_config(nats, port, stream)
        + "\n[limits]\nmax_streams = 100000\nrequests_per_second = 0\n"
}

fn ingest_config(pg: &PgServer, nats: &NatsCluster, dir: &Path, port: u16, stream: &str) -> String {
    testkit::nats::ingest_config(pg, nats, dir, port, stream, &["public.events"])
}

/// A relay started from `config` in a new temp dir, ready to serve reads.
struct Node {
    relay: RelayProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(config: impl FnOnce(&Path, u16) -> String) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut relay = start_relay(dir.path(), &config(dir.path(), port));
        wait_ready(&mut relay, addr, Duration::from_secs(60));
        Node {
            relay,
            addr,
            _dir: dir,
        }
    }
}

async fn status(addr: SocketAddr) -> Value {
    get(addr, "/v1/status", &[]).await.json()
}

async fn role(addr: SocketAddr) -> String {
    status(addr).await["role"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_role(node: &mut Node, wanted: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while role(node.addr).await != wanted {
        node.relay.assert_running();
        assert!(
            Instant::now() < deadline,
            "no {wanted} role within {limit:?}\n{}",
            node.relay.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One fan-out configuration's figures.
struct Spread {
    nodes: usize,
    clients: usize,
    rows: u64,
    took: Duration,
    phase: Duration,
    latency: Vec<f64>,
}

impl Spread {
    fn events(&self) -> u64 {
        self.rows * self.clients as u64
    }
    fn delivered(&self) -> f64 {
        self.events() as f64 / self.took.as_secs_f64()
    }
    fn asked(&self) -> f64 {
        self.events() as f64 / self.phase.as_secs_f64()
    }
}

async fn fan_out(pg: &PgServer, nats: &NatsCluster) -> Vec<Spread> {
    let stream = "BENCH_FANOUT";
    let clients = scaled(300, 6) as usize;
    let phase = scaled_secs(10.0, 1.0);
    let mut ingest = Node::start(|dir, port| ingest_config(pg, nats, dir, port, stream));
    wait_role(&mut ingest, "active", Duration::from_secs(30)).await;
    let mut serve: Vec<Node> = (0..3)
        .map(|_| Node::start(|_, port| serve_config(nats, port, stream)))
        .collect();
    let writer = pg_client(&pg.url("app")).await;
    let warm = write_paced(&writer, 1, RATE, TICK, Duration::from_millis(300)).await;
    let mut next_id = 1 + rows_of(&warm) as i64;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut results = Vec::new();
    for nodes in 1..=3 {
        let addrs: Vec<SocketAddr> = serve[..nodes].iter().map(|n| n.addr).collect();
        let mut group = SseClients::new(SAMPLED);
        group.grow_to(&addrs, clients).await;
        let started = Instant::now();
        let acks = write_paced(&writer, next_id, RATE, TICK, phase).await;
        let rows = rows_of(&acks);
        next_id += rows as i64;
        group.wait_for(rows * clients as u64, STALL).await;
        let took = started.elapsed();
        let latency = group.latencies(&acks);
        drop(group);
        eprintln!("{nodes} serve node(s): done in {:.1} s", took.as_secs_f64());
        results.push(Spread {
            nodes,
            clients,
            rows,
            took,
            phase,
            latency,
        });
    }
    for node in &mut serve {
        node.relay.assert_running();
        node.relay.terminate();
    }
    ingest.relay.terminate();
    results
}

/// Kills the active ingest node `rounds` times; returns each kill's time to the first change
/// committed after it read on a serve node.
async fn failover(pg: &PgServer, nats: &NatsCluster) -> Vec<Duration> {
    let stream = "BENCH_FAILOVER";
    let rounds = if scale() < 0.1 { 1 } else { 10 };
    // The fan-out phase left its slot behind (its ingest node stopped); this stream starts over.
    pg.psql(
        "app",
        &format!("SELECT pg_drop_replication_slot('{SLOT}') FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    );
    let mut ingest = [
        Node::start(|dir, port| ingest_config(pg, nats, dir, port, stream)),
        Node::start(|dir, port| ingest_config(pg, nats, dir, port, stream)),
    ];
    let mut serve = Node::start(|_, port| serve_config(nats, port, stream));
    let mut active = if role(ingest[0].addr).await == "active" {
        0
    } else {
        1
    };
    wait_role(&mut ingest[active], "active", Duration::from_secs(30)).await;

    // The writer: one row every 20 ms; `committed` holds the last acknowledged id.
    let committed = Arc::new(AtomicI64::new(0));
    let writer = {
        let client = pg_client(&pg.url("app")).await;
        let committed = committed.clone();
        let first = 1_000_000_000i64;
        tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO events (id, payload) VALUES ($1, 'failover')")
                .await
                .expect("prepare");
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            for id in first.. {
                ticker.tick().await;
                client.execute(&insert, &[&id]).await.expect("insert");
                committed.store(id, Ordering::SeqCst);
            }
        })
    };
    let mut client = SseClient::connect(serve.addr, "/v1/stream", None).await;
    assert_eq!(client.status, 200);
    let mut times = Vec::new();
    for round in 0..rounds {
        // Flowing before the kill: a change committed now arrives.
        let now = committed.load(Ordering::SeqCst);
        read_past(&mut client, now, &serve).await;
        let killed = Instant::now();
        ingest[active].relay.kill();
        let after = committed.load(Ordering::SeqCst);
        read_past(&mut client, after, &serve).await;
        let took = killed.elapsed();
        eprintln!("failover {}: {:.2} s", round + 1, took.as_secs_f64());
        times.push(took);
        let standby = 1 - active;
        wait_role(&mut ingest[standby], "active", Duration::from_secs(5)).await;
        if round + 1 < rounds {
            // The killed node comes back as the standby.
            let old = &mut ingest[active];
            old.relay.spawn();
            wait_ready(&mut old.relay, old.addr, Duration::from_secs(60));
            wait_role(old, "standby", Duration::from_secs(30)).await;
        }
        active = standby;
    }
    writer.abort();
    serve.relay.assert_running();
    serve.relay.terminate();
    for node in &mut ingest {
        node.relay.terminate();
    }
    times
}

/// Reads change events until one of a row with an id above `id` arrives.
async fn read_past(client: &mut SseClient, id: i64, serve: &Node) {
    let deadline = Instant::now() + FAILOVER_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = client.next_within(left).await.unwrap_or_else(|| {
            panic!(
                "no change past id {id} within {FAILOVER_LIMIT:?}\n{}",
                serve.relay.output()
            )
        });
        if event.event != "change" {
            continue;
        }
        let record = record_of(&event);
        if record["key"]["id"].as_i64().is_some_and(|got| got > id) {
            return;
        }
    }
}
