//! Chaos on the shared log in NATS JetStream: a private Postgres, a 3-node NATS cluster, two
//! ingest nodes on the same source and slot (one active, one standby) reaching Postgres through
//! a TCP proxy, and two serve-only nodes. The writer of `chaos.rs` commits its numbered history
//! throughout, and an SSE subscriber reads from the serve nodes, moving from one to the other
//! with `Last-Event-ID` at every reconnection and now and then without a fault. Faults at
//! random: `kill -9` of the active ingest node (restarted a little later, as a standby), of a
//! serve node, of one NATS node at a time (so the three-replica stream keeps its quorum), a
//! fast Postgres restart and dropped Postgres connections. Afterwards the subscriber and every
//! node's log (read over HTTP) hold every committed change exactly once, in commit order, and
//! the database's final state; and all four nodes' logs are the same, cursor for cursor. The
//! ingest nodes snapshot every 30 s, so the stream is compacted during the run and restarted
//! nodes start from snapshots. docs/RELIABILITY.md has the figures.
//!
//! `cargo test --test it chaos_nats::` runs a short form (CHAOS_SECONDS, default 25 s of
//! faults); CHAOS_SEED fixes the choice of faults and writes (timing still varies). Longer:
//! `CHAOS_SECONDS=120 cargo test --test it -- --nocapture chaos_nats::`.

use super::chaos_history::{
    assert_state, check_history, create_schema, env_number, ground_truth, subscribe, write,
    HistoryCheck, Route, Seen, Written, TABLES,
};
use super::nats_log::{seq, whole_log};
use deltarelay::record::ChangeRecord;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::measure::runtime;
use testkit::nats::{ingest_config_via, serve_config, NatsCluster};
use testkit::pg::{PgServer, StopMode};
use testkit::proxy::Proxy;
use testkit::relay::{assert_cursors_increase, http_status, wait_until, RelayProcess};

const STREAM: &str = "IT_CHAOS";
/// As in `chaos.rs`: a dead replication connection is given up on within seconds.
const REPLICATION_TIMEOUT: &str = "4s";
const WAL_SENDER_TIMEOUT: &str = "8s";
/// A fault not recovered from after this long fails the run. A failover alone takes about
/// 10 s (the lease), and CI's machine is loaded.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);
/// The active ingest node snapshots its materialization and compacts the stream this often,
/// so that a run also compacts the stream and restarted nodes start from snapshots (the
/// default, 10 min, would not come round in a short run).
const SNAPSHOT_EVERY: &str = "30s";
/// How long a node may take to catch up once the writer stopped.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillActiveIngest,
    KillServe,
    KillNats,
    RestartPostgresFast,
    DropConnections,
}

const FAULTS: [Fault; 5] = [
    Fault::KillActiveIngest,
    Fault::KillServe,
    Fault::KillNats,
    Fault::RestartPostgresFast,
    Fault::DropConnections,
];

/// One relay process of the topology.
struct Node {
    name: &'static str,
    relay: RelayProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(name: &'static str, config: impl FnOnce(&std::path::Path, u16) -> String) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let relay = RelayProcess::start(dir.path(), &config(dir.path(), port));
        Node {
            name,
            relay,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }

    fn wait_ready(&mut self) {
        let addr = self.addr;
        wait_until(Duration::from_secs(90), "a node to be ready", || {
            self.relay.assert_running();
            http_status(addr, "/readyz") == Some(200)
        });
    }

    /// The node's role as `/v1/status` names it; `None` when it does not answer.
    fn role(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /v1/status HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let status: Value = serde_json::from_str(body).ok()?;
        status["role"].as_str().map(str::to_string)
    }

    fn tail(&self) -> String {
        let output = self.relay.output();
        let lines: Vec<&str> = output
            .lines()
            .filter(|l| !l.contains("async_nats"))
            .collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.addr,
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }
}

/// Everything the faults act on.
struct Topology {
    pg: PgServer,
    proxy: Proxy,
    nats: NatsCluster,
    ingest: Vec<Node>,
    serve: Vec<Node>,
}

impl Topology {
    fn nodes(&mut self) -> impl Iterator<Item = &mut Node> {
        self.ingest.iter_mut().chain(self.serve.iter_mut())
    }

    /// Fails the test if a node exited on its own, with every node's log.
    fn assert_running(&mut self) {
        let tails: Vec<String> = self.nodes().map(|n| n.tail()).collect();
        for node in self.nodes() {
            let name = node.name;
            let running = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                node.relay.assert_running()
            }));
            if running.is_err() {
                panic!("{name} exited on its own\n{}", tails.join("\n"));
            }
        }
    }

    /// The ingest node that is active now, waiting for one (a failover may be under way).
    fn active_ingest(&mut self) -> usize {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        loop {
            self.assert_running();
            if let Some(i) =
                (0..self.ingest.len()).find(|i| self.ingest[*i].role().as_deref() == Some("active"))
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no active ingest node\n{}",
                self.tails()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn tails(&mut self) -> String {
        let tails: Vec<String> = self.nodes().map(|n| n.tail()).collect();
        tails.join("\n")
    }

    /// Injects `fault`; returns the address of the relay node it restarted, if any.
    fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> Option<SocketAddr> {
        match fault {
            Fault::KillActiveIngest => {
                let active = self.active_ingest();
                self.ingest[active].relay.kill();
                // It comes back as a standby: the other node takes the lease meanwhile, or
                // its old self's lease must expire first either way.
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..3000)));
                self.ingest[active].relay.spawn();
                Some(self.ingest[active].addr)
            }
            Fault::KillServe => {
                let node = rng.gen_range(0..self.serve.len());
                self.serve[node].relay.kill();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
                self.serve[node].relay.spawn();
                Some(self.serve[node].addr)
            }
            Fault::KillNats => {
                let node = rng.gen_range(0..3);
                self.nats.kill_node(node);
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..8000)));
                self.nats.start_node(node);
                // Back in the cluster before the next fault may take another node down.
                self.nats.wait_jetstream_ready();
                None
            }
            Fault::RestartPostgresFast => {
                self.pg.restart(StopMode::Fast);
                None
            }
            Fault::DropConnections => {
                self.proxy.drop_all();
                None
            }
        }
    }
}

#[test]
fn nats_chaos_loses_and_duplicates_nothing() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let seconds: u64 = env_number("CHAOS_SECONDS").unwrap_or(25);
    let seed: u64 = env_number("CHAOS_SEED").unwrap_or_else(rand::random);
    println!("chaos on NATS: {seconds} s of faults, CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = runtime(2);

    let pg = PgServer::start();
    create_schema(&pg, WAL_SENDER_TIMEOUT);
    let proxy = runtime.block_on(Proxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))));
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let nats = NatsCluster::start(3);
    let ingest_node = |name| {
        Node::start(name, |dir, port| {
            let config = ingest_config_via(&via_proxy, &nats, dir, port, STREAM, &TABLES);
            assert!(config.contains("replicas = 3\n"), "{config}");
            format!(
                "{}replication_timeout = \"{REPLICATION_TIMEOUT}\"\n",
                config.replace(
                    "replicas = 3\n",
                    &format!("replicas = 3\nsnapshot_every = \"{SNAPSHOT_EVERY}\"\n")
                )
            )
        })
    };
    let mut ingest = vec![ingest_node("ingest-a")];
    ingest[0].wait_ready();
    ingest.push(ingest_node("ingest-b"));
    let serve_node = |name| Node::start(name, |_, port| serve_config(&nats, port, STREAM));
    let mut serve = vec![serve_node("serve-a"), serve_node("serve-b")];
    for node in ingest.iter_mut().chain(serve.iter_mut()) {
        node.wait_ready();
    }
    let mut topology = Topology {
        pg,
        proxy,
        nats,
        ingest,
        serve,
    };
    topology.active_ingest();

    let written = Arc::new(Written::default());
    let writer = runtime.spawn(write(
        topology.pg.url("app"),
        written.clone(),
        rng.gen(),
        0..8,
    ));
    let seen = Arc::new(Seen::default());
    let route = Route {
        nodes: topology.serve.iter().map(|n| n.addr).collect(),
        move_after: Some(1000..8000),
        seed: rng.gen(),
    };
    let subscriber = runtime.spawn(subscribe(route, seen.clone()));

    let mut injected: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut recoveries: Vec<(Fault, Duration)> = Vec::new();
    // How long each restarted serve node took to serve again.
    let mut serve_ready: Vec<Duration> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..2500)));
        let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
        let at = started.elapsed();
        let restarted = topology.inject(fault, &mut rng);
        *injected.entry(fault).or_default() += 1;
        // Recovered: the subscriber has everything committed before the fault was over, and
        // a restarted node serves again (a serve node rebuilds its materialization first).
        let over = Instant::now();
        let target = written.committed.load(Ordering::SeqCst);
        let mut ready_after = restarted.is_none().then_some(Duration::ZERO);
        while seen.max_history.load(Ordering::SeqCst) < target || ready_after.is_none() {
            if let (None, Some(addr)) = (ready_after, restarted) {
                if http_status(addr, "/readyz") == Some(200) {
                    ready_after = Some(over.elapsed());
                }
            }
            topology.assert_running();
            assert!(
                over.elapsed() < RECOVERY_LIMIT,
                "no recovery from {fault:?} within {RECOVERY_LIMIT:?}: the subscriber has \
                 history up to {}, {target} was committed; restarted node {restarted:?} ready \
                 after {ready_after:?}\n{}",
                seen.max_history.load(Ordering::SeqCst),
                topology.tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        recoveries.push((fault, over.elapsed()));
        let ready = restarted
            .map(|_| {
                format!(
                    ", restarted node ready after {:.1} s",
                    ready_after.unwrap_or_default().as_secs_f64()
                )
            })
            .unwrap_or_default();
        println!(
            "{:>6.1} s: {fault:?}, recovered in {:.1} s{ready}",
            at.as_secs_f64(),
            over.elapsed().as_secs_f64()
        );
        if fault == Fault::KillServe {
            serve_ready.push(ready_after.unwrap_or_default());
        }
    }

    written.stop.store(true, Ordering::SeqCst);
    runtime.block_on(writer).unwrap();
    // The end marker: once a log or the subscriber has it, it has everything.
    topology
        .pg
        .psql("app", "INSERT INTO history VALUES (0, 'end')");
    let end_wait = Instant::now();
    while !seen.has_end_marker() {
        topology.assert_running();
        assert!(
            end_wait.elapsed() < CATCH_UP_LIMIT,
            "no end marker in the stream\n{}",
            topology.tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let end_took = end_wait.elapsed();
    subscriber.abort();
    let streamed = std::mem::take(&mut *seen.records.lock().unwrap());
    let end_cursor = streamed.last().unwrap().cursor.clone();
    let logs = caught_up_logs(&mut topology, &runtime, &end_cursor);

    let truth = ground_truth(&topology.pg);
    let mut checks: Vec<(String, HistoryCheck)> = Vec::new();
    for (name, records) in logs
        .iter()
        .map(|(name, records)| (format!("log of {name}"), records))
        .chain([("stream".to_string(), &streamed)])
    {
        checks.push((name.clone(), check_history(&name, records, &truth.seqs)));
        assert_cursors_increase(records);
        assert_state(&name, records, &truth);
    }
    let roles: Vec<Option<String>> = topology.nodes().map(|n| n.role()).collect();
    let logged = |topology: &mut Topology, what: &str| -> usize {
        topology
            .nodes()
            .map(|n| n.relay.output().matches(what).count())
            .sum()
    };
    let snapshots = logged(&mut topology, "stored a log snapshot");
    let loaded = logged(&mut topology, "loaded the log snapshot");
    let refused = seen.refused.lock().unwrap().clone();

    let max_recovery = recoveries.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let slowest = recoveries.iter().max_by_key(|(_, d)| *d).map(|(f, _)| *f);
    let mut max_by_kind: BTreeMap<Fault, f64> = BTreeMap::new();
    for (fault, took) in &recoveries {
        let max = max_by_kind.entry(*fault).or_default();
        *max = max.max(took.as_secs_f64());
    }
    let max_by_kind: Vec<String> = max_by_kind
        .iter()
        .map(|(f, s)| format!("{f:?} {s:.1} s"))
        .collect();
    println!(
        "chaos figures: {:.0} s, {} faults {:?}; writer committed {} transactions ({} history rows); \
         checked {} log records on each of {} nodes and {} streamed changes over {} SSE connections \
         ({} moves without a fault, {} refused); lost {:?}, duplicated {:?}; \
         max recovery {:.1} s ({:?}), by kind [{}], mean {:.1} s; a restarted serve node served \
         again after {:.1} s at most; end marker streamed after {:.1} s; {snapshots} snapshots stored, \
         {loaded} node starts from a snapshot; seed {seed}",
        started.elapsed().as_secs_f64(),
        injected.values().sum::<u32>(),
        injected,
        written.transactions.load(Ordering::SeqCst),
        truth.seqs.len(),
        logs[0].1.len(),
        logs.len(),
        streamed.len(),
        seen.connections.load(Ordering::SeqCst),
        seen.moves.load(Ordering::SeqCst),
        refused.len(),
        checks.iter().map(|(_, c)| c.lost).collect::<Vec<_>>(),
        checks.iter().map(|(_, c)| c.duplicated).collect::<Vec<_>>(),
        max_recovery.as_secs_f64(),
        slowest,
        max_by_kind.join(", "),
        recoveries.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>() / recoveries.len().max(1) as f64,
        serve_ready.iter().max().copied().unwrap_or_default().as_secs_f64(),
        end_took.as_secs_f64(),
    );
    for (name, check) in &checks {
        assert_eq!((check.lost, check.duplicated), (0, 0), "{name}");
        assert!(check.in_order, "{name}: history out of commit order");
    }
    assert!(!recoveries.is_empty(), "no fault was injected");
    let mut roles_sorted = roles.clone();
    roles_sorted.sort();
    assert_eq!(
        roles_sorted,
        ["active", "serve", "serve", "standby"].map(|r| Some(r.to_string())),
        "one active ingest node, one standby, two serve nodes: {roles:?}"
    );
    assert!(
        refused.is_empty(),
        "stream requests refused (node, status, Last-Event-ID): {refused:?}\n{}",
        topology.tails()
    );
    for node in topology.nodes() {
        assert_eq!(node.relay.terminate(), Some(0), "{}", node.tail());
    }
}

/// Every node's whole log once it holds `end_cursor`: the same on every node, cursor for
/// cursor. A node that has not reached it answers a read after it with 410 (ahead of its log).
fn caught_up_logs(
    topology: &mut Topology,
    runtime: &tokio::runtime::Runtime,
    end_cursor: &str,
) -> Vec<(&'static str, Vec<ChangeRecord>)> {
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    let path = format!("/v1/changes?since={end_cursor}&limit=1");
    let addrs: Vec<(&'static str, SocketAddr)> =
        topology.nodes().map(|n| (n.name, n.addr)).collect();
    for (name, addr) in &addrs {
        while http_status(*addr, &path) != Some(200) {
            topology.assert_running();
            assert!(
                Instant::now() < deadline,
                "{name} did not catch up to {end_cursor}\n{}",
                topology.tails()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let logs: Vec<(&'static str, Vec<Value>)> = addrs
        .iter()
        .map(|(name, addr)| (*name, runtime.block_on(whole_log(*addr))))
        .collect();
    for (name, log) in &logs[1..] {
        if *log != logs[0].1 {
            let first = log
                .iter()
                .zip(&logs[0].1)
                .position(|(a, b)| a != b)
                .unwrap_or(log.len().min(logs[0].1.len()));
            panic!(
                "the log of {name} differs from {}'s: {} and {} entries, first difference at \
                 entry {first}: {:?} / {:?}",
                logs[0].0,
                log.len(),
                logs[0].1.len(),
                log.get(first),
                logs[0].1.get(first)
            );
        }
    }
    let end = seq(end_cursor);
    logs.into_iter()
        .map(|(name, log)| {
            let records: Vec<ChangeRecord> = log
                .into_iter()
                .map(|r| serde_json::from_value(r).unwrap())
                .collect();
            assert_eq!(
                records.last().map(|r| seq(&r.cursor)),
                Some(end),
                "{name}: the end marker is the last entry"
            );
            (name, records)
        })
        .collect()
}
