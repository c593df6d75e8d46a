//! Initial-copy speed: rows per second the relay copies from a table into its log, against
//! Postgres's own `COPY … TO '/dev/null'` of the same table in the same run.
//!
//! `cargo bench --bench initial_copy` (1,000,000 rows; `DELTARELAY_BENCH_ROWS=N` for another
//! size, or `DELTARELAY_BENCH_SCALE=0.05` like the other benchmarks). It prints its figures and
//! never fails on timing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;

fn best_of(runs: usize, what: &str, run: impl Fn()) -> Duration {
    (0..runs)
        .map(|_| timed(what, &run).1)
        .min()
        .unwrap_or_default()
}

fn main() {
    heading("initial copy: rows into the log, against COPY TO '/dev/null'");
    let rows: u64 = std::env::var("DELTARELAY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| scaled(1_000_000, 1000));
    let pg = PgServer::start();
    timed("creating the table", || {
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL, title text, \
                   price numeric(10,2), active boolean, created timestamptz NOT NULL DEFAULT now());
                 INSERT INTO items (id, qty, title, price, active)
                   SELECT g, g % 1000, 'item ' || md5(g::text), (g % 10000) / 100.0, g % 2 = 0
                   FROM generate_series(1, {rows}) g;"
            ),
        );
        pg.psql("app", "VACUUM ANALYZE items");
    });

    let server_copy = best_of(3, "COPY items TO '/dev/null' (server side)", || {
        pg.psql("app", "COPY items TO '/dev/null'");
    });
    let client_copy = best_of(
        3,
        "COPY items TO STDOUT through psql into /dev/null",
        || {
            pg.psql("app", "\\copy items TO '/dev/null'");
        },
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.items"], port);
    let started = Instant::now();
    let mut relay = start_relay(dir.path(), &config);
    wait_ready(&mut relay, addr, Duration::from_secs(3600));
    let relay_copy = started.elapsed();
    eprintln!(
        "relay: start to ready (copy into the log, durable): {:.2} s",
        relay_copy.as_secs_f64()
    );
    let log_bytes = std::fs::metadata(dir.path().join("changes.sqlite3"))
        .map(|m| m.len())
        .unwrap_or(0);
    relay.terminate();

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "initial copy of {rows} rows (6 columns) (load now {})",
        load()
    );
    println!(
        "  baseline COPY TO '/dev/null' (server):  {:>10.0} rows/s",
        rate(server_copy)
    );
    println!(
        "  baseline COPY TO STDOUT via psql:       {:>10.0} rows/s",
        rate(client_copy)
    );
    println!(
        "  deltarelay (start → ready, durable):    {:>10.0} rows/s",
        rate(relay_copy)
    );
    println!(
        "  ratio relay / server COPY: {:.2}   relay / psql COPY: {:.2}",
        server_copy.as_secs_f64() / relay_copy.as_secs_f64(),
        client_copy.as_secs_f64() / relay_copy.as_secs_f64()
    );
    println!("  log size: {:.1} MiB", log_bytes as f64 / 1048576.0);
}
