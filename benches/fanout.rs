//! Fan-out: 1,000, 5,000 and 10,000 concurrent Server-Sent Events clients of one relay while a
//! writer commits a steady change rate: events delivered per second in total, delivery latency
//! (commit acknowledged → event read, on a sample of clients) and the relay's memory per idle
//! connection (`VmRSS` before and after the clients connect, before any change flows).
//!
//! Baseline in the same run: the delivery the rate asks for (clients × changes/s), so the
//! ratio says how much of it the relay kept up with.
//!
//! The harness raises its open-file limit to the hard limit; the relay inherits it.
//! `cargo bench --bench fanout`; `DELTARELAY_BENCH_SCALE=0.1` scales client counts and phase
//! length; `DELTARELAY_BENCH_FANOUT_RATE` (default 120, so that 10,000 clients are asked for
//! 1.2 M events/s, above the 1 M goal) sets the changes per second;
//! `DELTARELAY_BENCH_PERF=<dir>` records the relay during each phase with `perf record`
//! (`<dir>/fanout-<clients>.data`). It prints its figures and never fails on timing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;
use testkit::sse_clients::SseClients;

/// Clients whose every event is timed (the others only count theirs).
const SAMPLED: usize = 20;
/// Every change must reach every client; no progress for this long is an error.
const STALL: Duration = Duration::from_secs(60);
/// Rows per second are committed in ticks of this length (one row per commit at 100/s).
const TICK: Duration = Duration::from_millis(10);

fn main() {
    heading("fan-out: SSE clients of one relay at a steady change rate");
    let nofile = raise_open_files();
    let rate: f64 = std::env::var("DELTARELAY_BENCH_FANOUT_RATE")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("DELTARELAY_BENCH_FANOUT_RATE={v:?}: expected a number"))
        })
        .unwrap_or(120.0);
    let phase = scaled_secs(10.0, 1.0);
    let levels: Vec<usize> = [1000, 5000, 10_000]
        .iter()
        .map(|&n| scaled(n, 10) as usize)
        .collect();

    let pg = PgServer::start();
    pg.psql("app", EVENTS);
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.events"], port)
        + "\n[limits]\nmax_streams = 100000\nrequests_per_second = 0\n";
    let mut relay = start_relay(dir.path(), &config);
    wait_ready(&mut relay, addr, Duration::from_secs(60));
    let pid = relay.pid().expect("relay pid");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    runtime.block_on(async {
        let writer = pg_client(&pg.url("app")).await;
        // Warm-up: the relay learns the table; its memory settles.
        let warm = write_paced(&writer, 1, 100.0, TICK, Duration::from_millis(300)).await;
        let mut next_id = 1 + rows_of(&warm) as i64;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_idle = status_kib(pid, "VmRSS").unwrap_or(0);
        let mut clients = SseClients::new(SAMPLED);
        for &level in &levels {
            if level + 200 > nofile as usize {
                println!("  {level} clients: skipped, the open-file limit is {nofile}");
                continue;
            }
            let started = Instant::now();
            clients.grow_to(&[addr], level).await;
            let connect_time = started.elapsed();
            eprintln!(
                "{level} clients connected in {:.1} s",
                connect_time.as_secs_f64()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss = status_kib(pid, "VmRSS").unwrap_or(0);
            let rss_per_client = (rss.saturating_sub(rss_idle)) as f64 * 1024.0 / level as f64;

            let before = clients.delivered();
            let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
            let started = Instant::now();
            let profile = Profile::start(pid, &format!("fanout-{level}"));
            let acks = write_paced(&writer, next_id, rate, TICK, phase).await;
            let rows = rows_of(&acks);
            next_id += rows as i64;
            let expected = before + rows * level as u64;
            clients.wait_for(expected, STALL).await;
            let took = started.elapsed();
            drop(profile);
            let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
            let mut latency = clients.latencies(&acks);
            results.push(Level {
                clients: level,
                connect: connect_time,
                rss_per_client,
                rows,
                events: rows * level as u64,
                took,
                phase,
                cpu,
                latency: latency_line(&mut latency),
            });
        }
    });
    relay.terminate();

    println!(
        "fan-out at {rate:.0} changes/s, committed every {} ms (load now {}), open-file limit {nofile}",
        TICK.as_millis(),
        load()
    );
    for l in results {
        let delivered = l.events as f64 / l.took.as_secs_f64();
        let asked = l.events as f64 / l.phase.as_secs_f64();
        println!(
            "  {:>6} clients: connected in {:.1} s, relay memory {:>6.1} KiB per idle connection",
            l.clients,
            l.connect.as_secs_f64(),
            l.rss_per_client / 1024.0
        );
        println!(
            "      {} rows → {} events in {:.1} s: {delivered:>10.0} events/s delivered, {asked:>10.0} asked, ratio {:.2}; relay CPU {:.2} µs/event",
            l.rows,
            l.events,
            l.took.as_secs_f64(),
            delivered / asked,
            l.cpu * 1e6 / l.events.max(1) as f64
        );
        println!("      delivery latency (sampled clients): {}", l.latency);
    }
}

struct Level {
    clients: usize,
    connect: Duration,
    rss_per_client: f64,
    rows: u64,
    events: u64,
    took: Duration,
    phase: Duration,
    cpu: f64,
    latency: String,
}

/// Raises the soft open-file limit to the hard one (inherited by the relay); returns it.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            panic!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    limit.rlim_cur
}
