//! Chaos: a private Postgres, the relay as its own process reaching Postgres through a TCP
//! proxy, a writer committing a numbered history, an SSE subscriber connected (and
//! reconnecting with `Last-Event-ID`) throughout, and faults at random: `kill -9` of the relay,
//! Postgres restarts in fast and immediate mode, dropped connections, black-holed connections
//! and network partitions. Afterwards the log and the subscriber must hold every committed
//! change exactly once, in commit order, and the final state of the database. The `items` rows
//! carry a body stored out of line that most updates leave alone (unchanged TOAST), so that
//! state includes the large values the log stores once per row and splices back.
//!
//! `cargo test --test it chaos::` runs a short form (CHAOS_SECONDS, default 25 s of faults). The
//! long form is documented in docs/RELIABILITY.md:
//! `CHAOS_SECONDS=600 cargo test --release --test it -- --nocapture chaos::chaos_loses`.
//! CHAOS_SEED fixes the choice of faults and writes (timing still varies).

use super::chaos_history::{
    assert_state, check_history, create_schema, env_number, ground_truth, subscribe, write, Route,
    Seen, Written, TABLES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::measure::runtime;
use testkit::pg::{PgServer, StopMode};
use testkit::proxy::Proxy;
use testkit::relay::{
    assert_cursors_increase, postgres_config, read_log, wait_streaming, wait_until, RelayProcess,
};

/// The relay gives up on a silent replication connection after this long (the test setting
/// of the source's `replication_timeout`); Postgres on a silent walsender after
/// WAL_SENDER_TIMEOUT, which frees the slot for the relay's next connection.
const REPLICATION_TIMEOUT: &str = "4s";
const WAL_SENDER_TIMEOUT: &str = "8s";
/// A fault the relay has not recovered from after this long fails the run.
const RECOVERY_LIMIT: Duration = Duration::from_secs(150);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillRelay,
    RestartPostgresFast,
    RestartPostgresImmediate,
    DropConnections,
    BlackHole,
    Partition,
}

const FAULTS: [Fault; 6] = [
    Fault::KillRelay,
    Fault::RestartPostgresFast,
    Fault::RestartPostgresImmediate,
    Fault::DropConnections,
    Fault::BlackHole,
    Fault::Partition,
];

#[test]
fn chaos_loses_and_duplicates_nothing() {
    let seconds: u64 = env_number("CHAOS_SECONDS").unwrap_or(25);
    let seed: u64 = env_number("CHAOS_SEED").unwrap_or_else(rand::random);
    println!("chaos: {seconds} s of faults, CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = runtime(2);

    let pg = PgServer::start();
    create_schema(&pg, WAL_SENDER_TIMEOUT);
    let proxy = runtime.block_on(Proxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))));
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let config = format!(
        "{}replication_timeout = \"{REPLICATION_TIMEOUT}\"\n",
        postgres_config(&via_proxy, &dir.path().join("log"), &TABLES, http_port)
    );
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    let relay_addr = SocketAddr::from(([127, 0, 0, 1], http_port));

    let written = Arc::new(Written::default());
    let writer = runtime.spawn(write(pg.url("app"), written.clone(), rng.gen(), 0..8));
    let seen = Arc::new(Seen::default());
    let subscriber = runtime.spawn(subscribe(Route::one(relay_addr), seen.clone()));

    let mut injected: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut recoveries: Vec<(Fault, Duration)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..2500)));
        let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
        inject(fault, &mut rng, &pg, &proxy, &mut relay);
        *injected.entry(fault).or_default() += 1;
        // Recovered: the subscriber has everything committed before the fault was over.
        let over = Instant::now();
        let target = written.committed.load(Ordering::SeqCst);
        wait_until(RECOVERY_LIMIT, "the subscriber to catch up", || {
            relay.assert_running();
            seen.max_history.load(Ordering::SeqCst) >= target
        });
        recoveries.push((fault, over.elapsed()));
    }

    written.stop.store(true, Ordering::SeqCst);
    runtime.block_on(writer).unwrap();
    // The end marker: once the log and the subscriber have it, they have everything.
    pg.psql("app", "INSERT INTO history VALUES (0, 'end')");
    wait_until(Duration::from_secs(120), "the end marker", || {
        relay.assert_running();
        seen.has_end_marker()
    });
    let log = read_log(&dir.path().join("log"));
    subscriber.abort();
    let streamed = std::mem::take(&mut *seen.records.lock().unwrap());

    let truth = ground_truth(&pg);
    let in_log = check_history("log", &log, &truth.seqs);
    let in_stream = check_history("stream", &streamed, &truth.seqs);
    assert_cursors_increase(&log);
    assert_cursors_increase(&streamed);
    assert_state("log", &log, &truth);
    assert_state("stream", &streamed, &truth);

    let max_recovery = recoveries.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let slowest = recoveries.iter().max_by_key(|(_, d)| *d).map(|(f, _)| *f);
    println!(
        "chaos figures: {:.0} s, {} faults {:?}; writer committed {} transactions ({} history rows); \
         checked {} log records and {} streamed changes over {} SSE connections; \
         lost {} (log) / {} (stream), duplicated {} / {}; max recovery {:.1} s ({:?}), mean {:.1} s; seed {seed}",
        started.elapsed().as_secs_f64(),
        injected.values().sum::<u32>(),
        injected,
        written.transactions.load(Ordering::SeqCst),
        truth.seqs.len(),
        log.len(),
        streamed.len(),
        seen.connections.load(Ordering::SeqCst),
        in_log.lost,
        in_stream.lost,
        in_log.duplicated,
        in_stream.duplicated,
        max_recovery.as_secs_f64(),
        slowest,
        recoveries.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>() / recoveries.len().max(1) as f64,
    );
    assert_eq!((in_log.lost, in_log.duplicated), (0, 0), "log");
    assert_eq!((in_stream.lost, in_stream.duplicated), (0, 0), "stream");
    assert!(
        in_log.in_order && in_stream.in_order,
        "history out of commit order"
    );
    assert!(!recoveries.is_empty(), "no fault was injected");
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
}

/// A replication connection that the network silently drops (a black hole: no data, no reset)
/// is noticed by the relay's own timeout and replaced; nothing is lost.
#[test]
fn a_black_holed_replication_connection_is_replaced() {
    let runtime = runtime(1);
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, v text);");
    pg.psql("postgres", "ALTER SYSTEM SET wal_sender_timeout = '4s'");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let proxy = runtime.block_on(Proxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))));
    let dir = tempfile::tempdir().unwrap();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let config = format!(
        "{}replication_timeout = \"2s\"\n",
        postgres_config(&via_proxy, dir.path(), &["public.items"], free_port())
    );
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_streaming(&pg, &mut relay);
    let logged = |relay: &mut RelayProcess, id: i64| {
        wait_until(Duration::from_secs(40), "the row in the log", || {
            relay.assert_running();
            read_log(dir.path())
                .iter()
                .any(|r| r.key.as_ref().map(|k| json!(k)) == Some(json!({ "id": id })))
        })
    };
    pg.psql("app", "INSERT INTO items VALUES (1, 'before')");
    logged(&mut relay, 1);

    proxy.black_hole();
    pg.psql("app", "INSERT INTO items VALUES (2, 'during')");
    logged(&mut relay, 2);
    let output = relay.output();
    assert!(
        output.contains("the connection looks dead"),
        "the relay should say why it reconnected:\n{output}"
    );
    let records = read_log(dir.path());
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
}

fn inject(fault: Fault, rng: &mut StdRng, pg: &PgServer, proxy: &Proxy, relay: &mut RelayProcess) {
    match fault {
        Fault::KillRelay => {
            relay.kill();
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
            relay.spawn();
        }
        Fault::RestartPostgresFast => pg.restart(StopMode::Fast),
        Fault::RestartPostgresImmediate => pg.restart(StopMode::Immediate),
        Fault::DropConnections => proxy.drop_all(),
        Fault::BlackHole => proxy.black_hole(),
        Fault::Partition => {
            proxy.partition();
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..12_000)));
            proxy.heal();
        }
    }
}
