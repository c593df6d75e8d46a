//! Shapes: SSE clients each with its own `where owner = N` on one collection, while a writer
//! commits a steady change rate whose every row concerns one client. Reports commit → client
//! latency (every event) and the relay's CPU per change at 1,000 and 10,000 clients: with the
//! equality index the cost of a change must not grow with the clients it does not concern
//! (the goal: CPU per change at 10,000 ≤ 1.2 × at 1,000). Then the same with an unindexed
//! filter (`title LIKE '%/N/%'`), where every change is evaluated for every client: its CPU
//! per change per client, against the indexed run at the same client count (the baseline).
//!
//! `cargo bench --bench shapes`; `DELTARELAY_BENCH_SCALE=0.1` scales client counts and phase
//! length; `DELTARELAY_BENCH_SHAPES_RATE` (default 1000) sets the changes per second;
//! `DELTARELAY_BENCH_PERF=<dir>` records the relay in each phase with `perf record`. It prints
//! its figures and never fails on timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;
use tokio::sync::{mpsc, Semaphore};

const CONNECTING: usize = 256;
const STALL: Duration = Duration::from_secs(60);
/// Rows due are committed every tick (one row per commit at 1,000/s).
const TICK: Duration = Duration::from_millis(1);

const TASKS: &str = "CREATE TABLE tasks (id bigint PRIMARY KEY, owner int, title text);
    INSERT INTO tasks VALUES (0, -1, 'warm-up');";

fn main() {
    heading("shapes: SSE clients with their own where owner = N, at a steady change rate");
    let nofile = raise_open_files();
    let rate: f64 = std::env::var("DELTARELAY_BENCH_SHAPES_RATE")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("DELTARELAY_BENCH_SHAPES_RATE={v:?}"))
        })
        .unwrap_or(1000.0);
    let phase = scaled_secs(10.0, 1.0);
    let small = scaled(1000, 10) as usize;
    let large = scaled(10_000, 20) as usize;

    let pg = PgServer::start();
    pg.psql("app", TASKS);
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.tasks"], port)
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
        let mut next_id = 1;
        for (clients, indexed) in [(small, true), (large, true), (small, false)] {
            if clients + 200 > nofile as usize {
                println!("  {clients} clients: skipped, the open-file limit is {nofile}");
                continue;
            }
            let filter = |n: usize| {
                if indexed {
                    format!("owner%20%3D%20{n}")
                } else {
                    format!("title%20LIKE%20%27%25%2F{n}%2F%25%27")
                }
            };
            let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
            let started = Instant::now();
            let tasks = connect(addr, clients, &filter, arrivals_tx).await;
            let connect_time = started.elapsed();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
            let fallbacks_before = fallbacks(addr).await;
            let profile = Profile::start(pid, &format!("shapes-{clients}-{indexed}"));
            let acks = write_owned(&writer, next_id, clients, rate, phase).await;
            let rows = rows_of(&acks);
            next_id += rows as i64;
            // Every row reaches exactly one client.
            let mut got = Vec::with_capacity(rows as usize);
            let mut progress = Instant::now();
            while (got.len() as u64) < rows {
                match tokio::time::timeout(Duration::from_millis(100), arrivals.recv()).await {
                    Ok(Some(arrival)) => {
                        got.push(arrival);
                        progress = Instant::now();
                    }
                    Ok(None) => panic!("every client ended"),
                    Err(_) => assert!(
                        progress.elapsed() < STALL,
                        "stalled at {} of {rows}",
                        got.len()
                    ),
                }
            }
            drop(profile);
            let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
            let fell_back = fallbacks(addr).await - fallbacks_before;
            let (mut latency, missing) = latencies_ms(&acks, &got);
            assert_eq!(missing, 0, "rows that reached no client");
            for task in tasks {
                task.abort();
            }
            results.push((
                clients,
                indexed,
                connect_time,
                rows,
                cpu,
                latency_line(&mut latency),
                fell_back,
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    relay.terminate();

    println!(
        "shapes at {rate:.0} changes/s, one row per commit (load now {})",
        load()
    );
    let per_change = |cpu: f64, rows: u64| cpu * 1e6 / rows.max(1) as f64;
    let mut indexed_small = None;
    let mut indexed_large = None;
    for (clients, indexed, connect, rows, cpu, latency, fell_back) in &results {
        let kind = if *indexed {
            "where owner = N"
        } else {
            "where title LIKE '%/N/%'"
        };
        println!(
            "  {clients:>6} clients, {kind}: connected in {:.1} s; {rows} changes, relay CPU {:.1} µs per change",
            connect.as_secs_f64(),
            per_change(*cpu, *rows)
        );
        println!("      commit → client latency: {latency}; {fell_back} reads of the log after falling behind");
        match (indexed, *clients == small) {
            (true, true) => indexed_small = Some(per_change(*cpu, *rows)),
            (true, false) => indexed_large = Some(per_change(*cpu, *rows)),
            (false, _) => {
                if let Some(base) = indexed_small {
                    println!(
                        "      unindexed cost: {:.3} µs per change per client ({:.1} µs per change over the indexed baseline at {clients} clients)",
                        (per_change(*cpu, *rows) - base) / *clients as f64,
                        per_change(*cpu, *rows) - base
                    );
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (indexed_small, indexed_large) {
        println!(
            "  CPU per change at {large} clients / at {small}: {:.2} (goal ≤ 1.2)",
            b / a
        );
    }
}

/// How many times SSE streams went back to reading the log (they fell behind the live path).
async fn fallbacks(addr: SocketAddr) -> u64 {
    let text = testkit::http::get(addr, "/metrics", &[]).await.body;
    testkit::http::metric(&text, "deltarelay_sse_log_fallbacks_total") as u64
}

/// Inserts rows at `rate` per second for `duration`, row `id` owned by `id % owners` with the
/// title `/<owner>/`, committing what is due every TICK.
async fn write_owned(
    client: &tokio_postgres::Client,
    first_id: i64,
    owners: usize,
    rate: f64,
    duration: Duration,
) -> Vec<Acked> {
    let insert = "INSERT INTO tasks (id, owner, title) \
         SELECT g, g % $3, '/' || (g % $3) || '/' FROM generate_series($1::bigint, $2::bigint) g";
    let pace = Pace {
        first_id,
        rate,
        tick: TICK,
        duration,
    };
    write_paced_with(client, insert, &[&(owners as i64)], pace).await
}

/// Connects `n` clients, client `i` with `filter(i)`, each from the log's head, and waits for
/// each one's `ready` event. Every change event's key and arrival time go to `arrivals`.
async fn connect(
    addr: SocketAddr,
    n: usize,
    filter: &dyn Fn(usize) -> String,
    arrivals: mpsc::UnboundedSender<(i64, Instant)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let status = testkit::http::get(addr, "/v1/status", &[]).await.json();
    let head = status["log"]["head_cursor"]
        .as_str()
        .expect("head")
        .to_string();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let ready = ready_tx.clone();
        let arrivals = arrivals.clone();
        let path = format!(
            "/v1/stream?since={head}&collections=public.tasks&where={}",
            filter(i)
        );
        tasks.push(tokio::spawn(async move {
            follow(addr, &path, arrivals, ready, permit).await;
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        ready_rx
            .recv()
            .await
            .expect("a client ended before its ready event");
    }
    tasks
}

/// One SSE client: reports each change event's key and arrival time.
async fn follow(
    addr: SocketAddr,
    path: &str,
    arrivals: mpsc::UnboundedSender<(i64, Instant)>,
    ready: mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    read_sse(addr, path, ready, permit, |lines, now| {
        for id in data_lines(lines).filter_map(key_id) {
            let _ = arrivals.send((id, now));
        }
    })
    .await
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
