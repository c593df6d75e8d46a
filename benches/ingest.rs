//! Ingest speed: changes per second from upstream commit to durable in the relay's log, against
//! `pg_recvlogical` (same plugin, same publication, its own slot over the same WAL, writing to
//! `/dev/null`) in the same run: how fast Postgres itself decodes and sends.
//!
//! For each workload, on a fresh private Postgres: the relay starts once (slot, empty copy) and
//! stops; a second slot is made for the baseline; the workload is committed upstream while
//! nobody reads; then `pg_recvlogical --endpos` and the relay each read the same WAL to the
//! workload's last commit. The relay's time runs from its process start until its log holds
//! that commit's end LSN as its durable position (stored in the same SQLite transaction as the
//! changes, `synchronous = FULL`).
//!
//! `cargo bench --bench ingest`; `DELTARELAY_BENCH_SCALE=0.05` for smaller workloads;
//! `DELTARELAY_BENCH_ONLY=a,c` runs only some; `DELTARELAY_BENCH_PERF=<dir>` records the relay
//! with `perf record` while it catches up (`<dir>/ingest-<workload>.data`). It prints its
//! figures and never fails on timing.

use deltarelay::log::reader::{ReadFrom, RowFilter};
use deltarelay::log::LogReader;
use deltarelay::source::postgres::Lsn;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;

const BASELINE_SLOT: &str = "bench_baseline";
/// How long either reader may take before the benchmark gives up (a real error, not timing).
const READ_LIMIT: Duration = Duration::from_secs(1800);

struct Workload {
    id: &'static str,
    title: String,
    /// Tables (and rows) that exist before the relay's first start (copied, not timed).
    setup: Vec<String>,
    /// Statements committed upstream while nobody reads; each runs on its own (a `DO` block
    /// with `COMMIT` inside must not share a psql call with anything else).
    run: Vec<String>,
    /// Row changes the workload makes.
    changes: u64,
}

const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, title text, \
                     price numeric(10,2), active boolean, created timestamptz NOT NULL DEFAULT now())";

/// The row `g` of `items` as a SELECT list (one md5 per row, like the copy benchmark).
const ITEM_ROW: &str = "g, g % 1000, 'item ' || md5(g::text), (g % 10000) / 100.0, g % 2 = 0";

fn workloads() -> Vec<Workload> {
    let a_rows = scaled(1_000_000, 1000).div_ceil(1000) * 1000;
    let b_txns = scaled(200_000, 100);
    let c_rows = scaled(10_000, 100);
    let c_updates = scaled(100_000, 100);
    let c_batch = c_rows.min(1000);
    let c_rounds = c_updates.div_ceil(c_rows);
    let d_rows = scaled(1_000_000, 1000);
    vec![
        Workload {
            id: "a",
            title: format!("{a_rows} row inserts in 1,000-row transactions"),
            setup: vec![ITEMS.into()],
            run: vec![format!(
                "DO $$ BEGIN FOR b IN 0..{} LOOP \
                   INSERT INTO items (id, qty, title, price, active) \
                   SELECT {ITEM_ROW} FROM generate_series(b * 1000 + 1, b * 1000 + 1000) g; \
                   COMMIT; END LOOP; END $$",
                a_rows / 1000 - 1
            )],
            changes: a_rows,
        },
        Workload {
            id: "b",
            title: format!("{b_txns} single-row transactions"),
            setup: vec![ITEMS.into()],
            run: vec![format!(
                "DO $$ BEGIN FOR g IN 1..{b_txns} LOOP \
                   INSERT INTO items (id, qty, title, price, active) VALUES ({ITEM_ROW}); \
                   COMMIT; END LOOP; END $$"
            )],
            changes: b_txns,
        },
        Workload {
            id: "c",
            title: format!(
                "{} updates of {c_rows} rows with a 10 KB TOASTed column, {c_batch}-row transactions",
                c_rounds * c_rows
            ),
            setup: vec![
                "CREATE TABLE docs (id bigint PRIMARY KEY, version int NOT NULL, body text NOT NULL)".into(),
                // EXTERNAL: out of line and uncompressed, so every row really has 10 KB in TOAST.
                "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL".into(),
                format!("INSERT INTO docs SELECT g, 0, repeat(md5(g::text), 320) FROM generate_series(1, {c_rows}) g"),
            ],
            run: vec![format!(
                "DO $$ BEGIN FOR r IN 1..{c_rounds} LOOP FOR b IN 0..{} LOOP \
                   UPDATE docs SET version = version + 1 WHERE id > b * {c_batch} AND id <= (b + 1) * {c_batch}; \
                   COMMIT; END LOOP; END LOOP; END $$",
                c_rows.div_ceil(c_batch) - 1
            )],
            changes: c_rounds * c_rows,
        },
        Workload {
            id: "d",
            title: format!("one transaction of {d_rows} row inserts"),
            setup: vec![ITEMS.into()],
            run: vec![format!(
                "INSERT INTO items (id, qty, title, price, active) \
                 SELECT {ITEM_ROW} FROM generate_series(1, {d_rows}) g"
            )],
            changes: d_rows,
        },
    ]
}

struct Figures {
    changes: u64,
    upstream: Duration,
    baseline: Duration,
    relay: Duration,
    relay_cpu: f64,
    relay_peak_kib: u64,
    log_mib: f64,
}

fn main() {
    heading("ingest: commit to durable in the log, against pg_recvlogical");
    let only = std::env::var("DELTARELAY_BENCH_ONLY").ok();
    let mut results = Vec::new();
    for workload in workloads() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|w| w.trim() == workload.id))
        {
            continue;
        }
        eprintln!("--- ({}) {}", workload.id, workload.title);
        let figures = run(&workload);
        results.push((workload, figures));
    }

    println!("ingest (load now {})", load());
    for (w, f) in &results {
        let rate = |d: &Duration| (f.changes + 1) as f64 / d.as_secs_f64();
        println!("  ({}) {}", w.id, w.title);
        println!(
            "      upstream commit rate {:>10.0} changes/s   pg_recvlogical {:>10.0} changes/s   deltarelay {:>10.0} changes/s   relay/baseline {:.2}",
            rate(&f.upstream),
            rate(&f.baseline),
            rate(&f.relay),
            f.baseline.as_secs_f64() / f.relay.as_secs_f64()
        );
        println!(
            "      relay CPU {:.1} µs/change, peak RSS {:.0} MiB, log file and its WAL {:.0} MiB",
            f.relay_cpu * 1e6 / f.changes as f64,
            f.relay_peak_kib as f64 / 1024.0,
            f.log_mib
        );
    }
}

fn run(workload: &Workload) -> Figures {
    let pg = PgServer::start();
    // Nothing but the workload may commit while it runs: the end LSN is its last commit's.
    pg.psql("postgres", "ALTER SYSTEM SET autovacuum = off");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    pg.psql("app", "CREATE EXTENSION pg_walinspect");
    pg.psql("app", "CREATE TABLE bench_marker (id int PRIMARY KEY)");
    timed("setup (tables and rows before the first start)", || {
        for sql in &workload.setup {
            pg.psql("app", sql);
        }
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let table = if workload.id == "c" {
        "public.docs"
    } else {
        "public.items"
    };
    let config = postgres_config(
        &pg.url("app"),
        dir.path(),
        &[table, "public.bench_marker"],
        port,
    );
    // First start: slot, publication and the copy of what setup made; then stop.
    let mut relay = start_relay(dir.path(), &config);
    timed("relay first start (slot and copy)", || {
        wait_ready(&mut relay, addr, READ_LIMIT)
    });
    relay.terminate();
    pg.psql(
        "app",
        &format!("SELECT pg_create_logical_replication_slot('{BASELINE_SLOT}', 'pgoutput')"),
    );

    let (_, upstream) = timed("upstream: committing the workload", || {
        for sql in &workload.run {
            pg.psql("app", sql);
        }
    });
    let end = marker_commit(&pg);
    eprintln!("workload ends at {end}");

    let (_, baseline) = timed("pg_recvlogical to the end LSN", || baseline(&pg, end));

    let started = Instant::now();
    let mut relay = start_relay(dir.path(), &config);
    let pid = relay.pid().expect("relay pid");
    let profile = Profile::start(pid, &format!("ingest-{}", workload.id));
    let mut cpu = 0.0;
    let mut peak = 0;
    let reader = LogReader::open(dir.path()).expect("open the relay's log");
    loop {
        relay.assert_running();
        cpu = cpu_seconds(pid).unwrap_or(cpu);
        peak = status_kib(pid, "VmHWM").unwrap_or(peak);
        if durable_position(&reader).is_some_and(|p| p >= end) {
            break;
        }
        assert!(
            started.elapsed() < READ_LIMIT,
            "the relay did not reach {end}\n{}",
            relay.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let relay_time = started.elapsed();
    drop(profile);
    if workload.id == "c" {
        assert_toast_filled(&reader);
    }
    eprintln!(
        "relay: start to durable at the end LSN: {:.2} s",
        relay_time.as_secs_f64()
    );
    let log_mib = ["changes.sqlite3", "changes.sqlite3-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len() as f64 / 1048576.0)
        .sum();
    relay.terminate();
    Figures {
        changes: workload.changes,
        upstream,
        baseline,
        relay: relay_time,
        relay_cpu: cpu,
        relay_peak_kib: peak,
        log_mib,
    }
}

/// Commits one marker row and returns the end LSN of its commit record, which is what the
/// relay stores as its position and where `pg_recvlogical --endpos` stops.
fn marker_commit(pg: &PgServer) -> Lsn {
    let before = pg.psql("app", "SELECT pg_current_wal_insert_lsn()");
    pg.psql("app", "INSERT INTO bench_marker VALUES (1)");
    let after = pg.psql("app", "SELECT pg_current_wal_insert_lsn()");
    let end = pg.psql(
        "app",
        &format!(
            "SELECT end_lsn FROM pg_get_wal_records_info('{before}', '{after}') \
             WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' \
             ORDER BY end_lsn DESC LIMIT 1"
        ),
    );
    end.trim()
        .parse()
        .unwrap_or_else(|e| panic!("no commit record between {before} and {after}: {e}"))
}

/// `pg_recvlogical` on the baseline slot, decoding with the relay's plugin options into
/// `/dev/null` until `end`.
fn baseline(pg: &PgServer, end: Lsn) {
    let output = testkit::bench::recvlogical(pg, BASELINE_SLOT)
        .args(["--endpos", &end.to_string(), "-f", "/dev/null"])
        .output()
        .expect("run pg_recvlogical");
    assert!(
        output.status.success(),
        "pg_recvlogical failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn durable_position(reader: &LogReader) -> Option<Lsn> {
    reader.position("app_pg").ok()??.parse().ok()
}

/// (c) measures filling unchanged TOAST columns from the log: check that it happened.
fn assert_toast_filled(reader: &LogReader) {
    let docs = ["public.docs".to_string()];
    let filter = RowFilter::collections(Some(&docs));
    let page = reader
        .page(&ReadFrom::Seq(0), &filter, 1)
        .expect("read the log");
    let entry = page.entries.first().expect("docs entries in the log");
    let record: serde_json::Value = serde_json::from_str(&entry.record).expect("record JSON");
    assert_eq!(record["op"], "update", "{record}");
    assert_eq!(
        record["after"]["body"].as_str().map(str::len),
        Some(10240),
        "the update's body was filled from the log"
    );
    assert!(record.get("unchanged").is_none(), "{}", record["unchanged"]);
}
