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

use deltarelay::record::ChangeRecord;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::http::SseClient;
use testkit::measure::runtime;
use testkit::pg::{PgServer, StopMode};
use testkit::proxy::Proxy;
use testkit::relay::{
    assert_cursors_increase, client_state, postgres_config, read_log, wait_streaming, wait_until,
    RelayProcess,
};
use tokio::io::AsyncWriteExt;

const TABLES: [&str; 3] = ["public.history", "public.counters", "public.items"];
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

/// What the writer has committed, for recovery measurements.
#[derive(Default)]
struct Written {
    /// The highest history seq whose transaction is known to have committed.
    committed: AtomicI64,
    transactions: AtomicU64,
    stop: AtomicBool,
}

/// What the SSE subscriber has seen.
#[derive(Default)]
struct Seen {
    records: Mutex<Vec<ChangeRecord>>,
    max_history: AtomicI64,
    connections: AtomicU64,
}

#[test]
fn chaos_loses_and_duplicates_nothing() {
    let seconds: u64 = env_number("CHAOS_SECONDS").unwrap_or(25);
    let seed: u64 = env_number("CHAOS_SEED").unwrap_or_else(rand::random);
    println!("chaos: {seconds} s of faults, CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let runtime = runtime(2);

    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE history (seq bigint PRIMARY KEY, payload text);
         CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(0, 9) g;
         CREATE TABLE items (id int PRIMARY KEY, v text, n int NOT NULL, body text);
         ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;",
    );
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET wal_sender_timeout = '{WAL_SENDER_TIMEOUT}'"),
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
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
    let writer = runtime.spawn(write(pg.url("app"), written.clone(), rng.gen()));
    let seen = Arc::new(Seen::default());
    let subscriber = runtime.spawn(subscribe(relay_addr, seen.clone()));

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
    let end_key = json!({"seq": 0});
    wait_until(Duration::from_secs(120), "the end marker", || {
        relay.assert_running();
        let records = seen.records.lock().unwrap();
        records
            .iter()
            .any(|r| r.key.as_ref().map(|k| json!(k)) == Some(end_key.clone()))
    });
    let log = read_log(&dir.path().join("log"));
    subscriber.abort();
    let streamed = std::mem::take(&mut *seen.records.lock().unwrap());

    let truth = ground_truth(&pg);
    let in_log = check_history("log", &log, &truth.seqs);
    let in_stream = check_history("stream", &streamed, &truth.seqs);
    assert_cursors_increase(&log);
    assert_cursors_increase(&streamed);
    for (name, records) in [("log", &log), ("stream", &streamed)] {
        let state = client_state(records);
        for (table, rows) in &truth.tables {
            assert_eq!(
                state.get(*table).cloned().unwrap_or_default(),
                *rows,
                "{name}: the state of {table} differs from the database"
            );
        }
    }

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

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
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

/// Commits transactions until told to stop, each inserting the next history seqs (usually
/// one to three, now and then a few hundred), bumping a counter and upserting or deleting an
/// item. A transaction cut off by an outage is retried with the same seqs: its outcome is
/// unknown, the inserts are idempotent, and the final check reads the database itself.
async fn write(url: String, written: Arc<Written>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 1i64;
    let mut pending: Option<String> = None;
    let mut last = 0;
    while !written.stop.load(Ordering::SeqCst) {
        let client = match testkit::pg::connect(&url).await {
            Ok(client) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while !written.stop.load(Ordering::SeqCst) {
            let sql = match &pending {
                Some(sql) => sql.clone(),
                None => {
                    let rows = if rng.gen_ratio(1, 150) {
                        rng.gen_range(200..800)
                    } else {
                        rng.gen_range(1..=3)
                    };
                    last = next + rows - 1;
                    let item = rng.gen_range(0..40);
                    let item_change = if rng.gen_ratio(1, 4) {
                        format!("DELETE FROM items WHERE id = {item};")
                    } else {
                        // A 3.2 KB body stored out of line, left alone by the update: Postgres
                        // sends it as unchanged TOAST and the log fills it from its stored copy.
                        format!(
                            "INSERT INTO items VALUES ({item}, md5(random()::text), 1, repeat(md5(random()::text), 100))
                             ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = items.n + 1;"
                        )
                    };
                    let sql = format!(
                        "BEGIN;
                         INSERT INTO history SELECT g, md5(g::text) FROM generate_series({next}, {last}) g
                           ON CONFLICT DO NOTHING;
                         UPDATE counters SET n = n + 1 WHERE id = {};
                         {item_change}
                         COMMIT;",
                        rng.gen_range(0..10)
                    );
                    pending = Some(sql.clone());
                    sql
                }
            };
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    pending = None;
                    next = last + 1;
                    written.committed.store(last, Ordering::SeqCst);
                    written.transactions.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..8))).await;
        }
    }
}

/// Follows `/v1/stream` for as long as it runs, reconnecting with `Last-Event-ID` whenever the
/// connection ends (the relay was killed) or cannot be made.
async fn subscribe(addr: SocketAddr, seen: Arc<Seen>) {
    let mut last_id: Option<String> = None;
    loop {
        let Some(mut client) = open_stream(addr, last_id.as_deref()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections.fetch_add(1, Ordering::SeqCst);
        while let Some(event) = client.next().await {
            if event.event != "change" {
                continue;
            }
            let record: ChangeRecord = serde_json::from_str(&event.data).unwrap();
            assert_eq!(event.id.as_deref(), Some(record.cursor.as_str()));
            last_id = event.id;
            if let Some(seq) = history_seq(&record) {
                seen.max_history.fetch_max(seq, Ordering::SeqCst);
            }
            seen.records.lock().unwrap().push(record);
        }
    }
}

async fn open_stream(addr: SocketAddr, last_id: Option<&str>) -> Option<SseClient> {
    let connect = tokio::net::TcpStream::connect(addr);
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let mut request = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
    );
    if let Some(id) = last_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let client = tokio::time::timeout(Duration::from_secs(10), SseClient::try_over(stream))
        .await
        .ok()??;
    (client.status == 200).then_some(client)
}

fn history_seq(record: &ChangeRecord) -> Option<i64> {
    if record.collection != "public.history" {
        return None;
    }
    record.key.as_ref()?.get("seq")?.as_i64()
}

struct Truth {
    /// The committed history seqs, in commit order (the writer is sequential).
    seqs: Vec<i64>,
    tables: Vec<(&'static str, BTreeMap<String, Value>)>,
}

fn ground_truth(pg: &PgServer) -> Truth {
    let seqs: Vec<i64> = pg
        .psql("app", "SELECT seq FROM history WHERE seq > 0 ORDER BY seq")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    // Gapless: a transaction's outcome may be unknown to the writer, but it retries the same
    // seqs until one attempt is known to have committed.
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as i64 + 1),
        "the database's history has gaps"
    );
    Truth {
        seqs,
        tables: vec![
            ("public.history", pg.table_state("app", "history", &["seq"])),
            (
                "public.counters",
                pg.table_state("app", "counters", &["id"]),
            ),
            ("public.items", pg.table_state("app", "items", &["id"])),
        ],
    }
}

struct HistoryCheck {
    lost: usize,
    duplicated: usize,
    in_order: bool,
}

/// Every committed history seq once, in commit order.
fn check_history(name: &str, records: &[ChangeRecord], committed: &[i64]) -> HistoryCheck {
    let got: Vec<i64> = records
        .iter()
        .filter_map(history_seq)
        .filter(|s| *s > 0)
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for seq in &got {
        *counts.entry(*seq).or_default() += 1;
    }
    let lost = committed.iter().filter(|s| !counts.contains_key(s)).count();
    let duplicated = counts.values().map(|c| c - 1).sum();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    if lost > 0 || duplicated > 0 || !in_order {
        let missing: Vec<&i64> = committed
            .iter()
            .filter(|s| !counts.contains_key(s))
            .take(20)
            .collect();
        let twice: Vec<&i64> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(s, _)| s)
            .take(20)
            .collect();
        eprintln!("{name}: missing {missing:?}…, duplicated {twice:?}…, in order: {in_order}");
    }
    HistoryCheck {
        lost,
        duplicated,
        in_order,
    }
}
