//! End-to-end latency: from a commit's acknowledgement to the writer until a Server-Sent Events
//! client of the relay receives the change, at steady rates (1,000 and 10,000 changes/s).
//!
//! Baseline in the same run: `pg_recvlogical` (pgoutput, same publication, its own slot) piped
//! into this process, timed the same way: how soon Postgres itself decodes and sends a commit.
//! Both follow the same commits at the same time. Latency is wall clock on this machine:
//! acknowledgement received by the writer → event (or pgoutput Insert) read by the client.
//!
//! `cargo bench --bench latency`; `DELTARELAY_BENCH_SCALE=0.1` shortens each phase (10 s at
//! scale 1); `DELTARELAY_BENCH_RATES=1000,10000,20000` sets the rates. It prints its figures
//! and never fails on timing.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use testkit::bench::*;
use testkit::free_port;
use testkit::http::SseClient;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;
use tokio::sync::mpsc;

const BASELINE_SLOT: &str = "bench_latency_baseline";
/// Rows are committed every tick: one row per transaction at 1,000/s.
const TICK: Duration = Duration::from_millis(1);
/// How long to wait for the last events of a phase before calling them missing.
const DRAIN: Duration = Duration::from_secs(30);

fn rates() -> Vec<f64> {
    match std::env::var("DELTARELAY_BENCH_RATES") {
        Err(_) => vec![1000.0, 10_000.0],
        Ok(text) => text
            .split(',')
            .map(|r| {
                r.trim().parse().unwrap_or_else(|_| {
                    panic!("DELTARELAY_BENCH_RATES={text:?}: expected numbers, e.g. 1000,10000")
                })
            })
            .collect(),
    }
}

fn main() {
    heading("latency: commit acknowledged → SSE event received, against pg_recvlogical");
    let phase = scaled_secs(10.0, 1.0);
    let pg = PgServer::start();
    pg.psql("app", EVENTS);
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(&pg.url("app"), dir.path(), &["public.events"], port);
    let mut relay = start_relay(dir.path(), &config);
    wait_ready(&mut relay, addr, Duration::from_secs(60));
    pg.psql(
        "app",
        &format!("SELECT pg_create_logical_replication_slot('{BASELINE_SLOT}', 'pgoutput')"),
    );
    let mut baseline = recvlogical(&pg, BASELINE_SLOT)
        .args(["-f", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pg_recvlogical");
    let baseline_out = baseline.stdout.take().expect("pg_recvlogical stdout");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (relay_tx, mut relay_rx) = mpsc::unbounded_channel();
    let (base_tx, mut base_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || read_pgoutput(baseline_out, base_tx));
    let mut results = Vec::new();
    runtime.block_on(async {
        let mut client = SseClient::connect(addr, "/v1/stream", None).await;
        assert_eq!(client.status, 200, "GET /v1/stream");
        let ready = client
            .next_within(Duration::from_secs(30))
            .await
            .expect("the stream's ready event");
        assert_eq!(ready.event, "ready", "{ready:?}");
        tokio::spawn(async move {
            while let Some(event) = client.next().await {
                if event.event == "change" {
                    let id = key_id(&event.data).expect("a change with an id key");
                    if relay_tx.send((id, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        });
        let writer = pg_client(&pg.url("app")).await;
        // Warm-up: relations learned, connections and caches warm; not measured.
        let mut next_id = 1;
        let warm = write_paced(&writer, next_id, 1000.0, TICK, Duration::from_millis(300)).await;
        next_id += rows_of(&warm) as i64;
        collect(&mut relay_rx, &warm, "relay").await;
        collect(&mut base_rx, &warm, "pg_recvlogical").await;

        for rate in rates() {
            eprintln!("--- {rate} changes/s for {:.1} s", phase.as_secs_f64());
            let acks = write_paced(&writer, next_id, rate, TICK, phase).await;
            let rows = rows_of(&acks);
            next_id += rows as i64;
            let achieved = rows as f64 / phase.as_secs_f64();
            let relay = collect(&mut relay_rx, &acks, "relay").await;
            let base = collect(&mut base_rx, &acks, "pg_recvlogical").await;
            results.push((rate, achieved, acks.len(), relay, base));
        }
    });
    let relay_cpu = relay.pid().and_then(cpu_seconds).unwrap_or(0.0);
    relay.terminate();
    let _ = baseline.kill();
    let _ = baseline.wait();

    println!(
        "latency (load now {}), relay CPU {relay_cpu:.1} s in all",
        load()
    );
    for (rate, achieved, commits, mut relay, mut base) in results {
        println!("  {rate:.0} changes/s asked, {achieved:.0} written in {commits} commits");
        println!("      pg_recvlogical  {}", latency_line(&mut base));
        println!("      deltarelay SSE  {}", latency_line(&mut relay));
        println!(
            "      p99 relay - baseline: {:.2} ms",
            percentile(&mut relay, 99.0) - percentile(&mut base, 99.0)
        );
    }
}

/// Receives arrivals until every row of `acks` has arrived (or [`DRAIN`] passes: an error).
async fn collect(
    arrivals: &mut mpsc::UnboundedReceiver<(i64, Instant)>,
    acks: &[Acked],
    who: &str,
) -> Vec<f64> {
    let (Some(first), Some(last)) = (acks.first(), acks.last()) else {
        return Vec::new();
    };
    let ids = first.first..=last.last;
    let expected = rows_of(acks) as usize;
    let mut got = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while got.len() < expected {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(arrival)) if ids.contains(&arrival.0) => got.push(arrival),
            Ok(Some(_)) => {}
            Ok(None) => panic!("{who} stopped delivering"),
            Err(_) => panic!(
                "{who}: {} acknowledged rows did not arrive within {DRAIN:?}",
                expected - got.len()
            ),
        }
    }
    let (values, missing) = latencies_ms(acks, &got);
    assert_eq!(missing, 0, "{who} delivered a row twice and missed another");
    values
}

/// Reads `pg_recvlogical`'s output (pgoutput messages, each followed by a newline) and reports
/// the key of every Insert into `events` with the time it was read.
fn read_pgoutput(mut out: impl Read, arrivals: mpsc::UnboundedSender<(i64, Instant)>) {
    // An Insert into a two-column table: 'I', relation id (4 bytes), 'N', 2 columns, then the
    // first column as 't' + length (4 bytes) + text.
    const TUPLE: &[u8] = b"N\x00\x02t";
    let mut buf = vec![0u8; 256 * 1024];
    let mut kept = 0;
    loop {
        let n = match out.read(&mut buf[kept..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        let data = &buf[..kept + n];
        let mut at = 0;
        let mut consumed = 0;
        while let Some(found) = find(&data[at..], TUPLE) {
            let start = at + found;
            let len_at = start + TUPLE.len();
            let Some(len) = data.get(len_at..len_at + 4) else {
                break;
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let Some(text) = data.get(len_at + 4..len_at + 4 + len) else {
                break;
            };
            let id = std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .expect("the first column of an events Insert is its id");
            if arrivals.send((id, now)).is_err() {
                return;
            }
            at = len_at + 4 + len;
            consumed = at;
        }
        // Keep an unfinished message (or the few bytes that may start one) for the next read.
        let keep_from = if find(&data[consumed..], TUPLE).is_some() {
            consumed
        } else {
            consumed.max(data.len().saturating_sub(TUPLE.len()))
        };
        buf.copy_within(keep_from..kept + n, 0);
        kept = kept + n - keep_from;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
