//! Hostile and slow clients against the relay binary under a steady Postgres write load:
//! SSE connections that never read, clients that connect and drop at a high rate, and
//! requests with huge or malformed parameters, headers and cursors. The relay must answer
//! every bad request with a 4xx, never panic, keep its memory bounded, keep well-behaved
//! clients' latency, and give those clients every change.
//!
//! `cargo test --test it hostile_clients::` runs a short form. The long form (docs/RELIABILITY.md)
//! opens 2,000 silent streams for a minute:
//! `cargo test --release --test it -- --ignored --nocapture hostile_clients::`
//! (`HOSTILE_STREAMS`, `HOSTILE_SECS`, `HOSTILE_CHURNERS` to vary it).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::http::{get, seq_of, SseClient};
use testkit::measure::{percentile, runtime, status_kib};
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MARKER_ID: i64 = 1_000_000_000;

struct Load {
    /// SSE connections that send their request and never read.
    silent_streams: usize,
    /// How long the hostile phase lasts.
    seconds: u64,
    /// Concurrent connect-and-drop loops.
    churners: usize,
}

#[test]
fn hostile_clients_short() {
    let figures = run(Load {
        silent_streams: 200,
        seconds: 10,
        churners: 4,
    });
    figures.check(Limits {
        peak_rss_kib: 300 * 1024,
        p99: Duration::from_secs(2),
    });
}

#[test]
#[ignore = "long (2,000 silent streams for a minute); prints the relay's RSS and latencies"]
fn hostile_clients_long() {
    let figures = run(Load {
        silent_streams: env_or("HOSTILE_STREAMS", 2000),
        seconds: env_or("HOSTILE_SECS", 60) as u64,
        churners: env_or("HOSTILE_CHURNERS", 8),
    });
    figures.check(Limits {
        peak_rss_kib: 600 * 1024,
        p99: Duration::from_secs(2),
    });
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default)
}

struct Limits {
    peak_rss_kib: u64,
    p99: Duration,
}

#[derive(Default)]
struct Figures {
    rss_start: u64,
    rss_peak: u64,
    rss_after: u64,
    silent_opened: usize,
    churned: u64,
    churn_seconds: f64,
    bad_requests: usize,
    bad_statuses: BTreeMap<String, usize>,
    /// Bad requests answered with something other than a 4xx.
    violations: Vec<String>,
    event_baseline: Vec<Duration>,
    event_hostile: Vec<Duration>,
    poll_baseline: Vec<Duration>,
    poll_hostile: Vec<Duration>,
    panicked: bool,
}

impl Figures {
    fn check(&self, limits: Limits) {
        let p = |v: &[Duration], q: f64| percentile(v, q);
        println!(
            "hostile: {} silent streams, {} connect-and-drop connections ({:.0}/s), {} bad requests {:?}",
            self.silent_opened,
            self.churned,
            self.churned as f64 / self.churn_seconds.max(0.001),
            self.bad_requests,
            self.bad_statuses
        );
        println!(
            "hostile: relay VmRSS {} KiB at start, peak {} KiB under load, {} KiB after the hostile clients left",
            self.rss_start, self.rss_peak, self.rss_after
        );
        for (what, baseline, hostile) in [
            ("commit→event", &self.event_baseline, &self.event_hostile),
            (
                "/v1/changes request",
                &self.poll_baseline,
                &self.poll_hostile,
            ),
        ] {
            println!(
                "hostile: {what} latency p50/p99/max: quiet {:?}/{:?}/{:?} ({} samples), under attack {:?}/{:?}/{:?} ({} samples)",
                p(baseline, 0.5), p(baseline, 0.99), p(baseline, 1.0), baseline.len(),
                p(hostile, 0.5), p(hostile, 0.99), p(hostile, 1.0), hostile.len(),
            );
        }
        assert!(!self.panicked, "the relay panicked");
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
        assert!(
            self.rss_peak < limits.peak_rss_kib,
            "peak RSS {} KiB is over {} KiB",
            self.rss_peak,
            limits.peak_rss_kib
        );
        assert!(!self.event_hostile.is_empty() && !self.poll_hostile.is_empty());
        assert!(
            p(&self.event_hostile, 0.99) < limits.p99,
            "commit→event p99"
        );
        assert!(p(&self.poll_hostile, 0.99) < limits.p99, "/v1/changes p99");
    }
}

/// Which phase latencies belong to.
#[derive(Default)]
struct Phase {
    hostile: AtomicBool,
    stop: AtomicBool,
}

fn run(load: Load) -> Figures {
    let runtime = runtime(2);
    let pg = PgServer::start();
    // A log worth replaying: every silent stream starts from the beginning.
    pg.psql(
        "app",
        "CREATE TABLE items (id bigint PRIMARY KEY, payload text, sent_us bigint);
         INSERT INTO items SELECT g, repeat(md5(g::text), 16), 0 FROM generate_series(1, 10000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);
    let pid = relay.pid().unwrap();
    let epoch = Instant::now();
    let phase = Arc::new(Phase::default());
    let mut figures = Figures {
        rss_start: status_kib(pid, "VmRSS"),
        ..Figures::default()
    };

    runtime.block_on(async {
        let writer = tokio::spawn(write(pg.url("app"), epoch, phase.clone()));
        let readers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(read_events(addr, epoch, phase.clone())))
            .collect();
        let poller = tokio::spawn(poll_changes(addr, phase.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;

        phase.hostile.store(true, Ordering::SeqCst);
        let hostile_until = Instant::now() + Duration::from_secs(load.seconds);
        let mut silent = Vec::new();
        for _ in 0..load.silent_streams {
            if let Some(stream) = silent_stream(addr).await {
                silent.push(stream);
            }
        }
        figures.silent_opened = silent.len();
        let churned = Arc::new(AtomicU64::new(0));
        let churn_started = Instant::now();
        let churners: Vec<_> = (0..load.churners)
            .map(|i| tokio::spawn(churn(addr, i, hostile_until, churned.clone())))
            .collect();
        let mut rounds = 0;
        while Instant::now() < hostile_until || rounds == 0 {
            let bad = if std::env::var("HOSTILE_BAD").as_deref() == Ok("0") {
                Vec::new()
            } else {
                bad_requests(addr).await
            };
            for (name, request) in bad {
                let status = send_raw(addr, &request).await;
                let label = status.map_or("closed".to_string(), |s| s.to_string());
                *figures.bad_statuses.entry(label).or_default() += 1;
                figures.bad_requests += 1;
                if !status.is_some_and(|s| (400..500).contains(&s)) {
                    figures.violations.push(format!("{name}: {status:?}"));
                }
            }
            rounds += 1;
            figures.rss_peak = figures.rss_peak.max(status_kib(pid, "VmRSS"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for churner in churners {
            churner.await.unwrap();
        }
        figures.churned = churned.load(Ordering::SeqCst);
        figures.churn_seconds = churn_started.elapsed().as_secs_f64();
        figures.rss_peak = figures.rss_peak.max(status_kib(pid, "VmRSS"));
        drop(silent);
        phase.hostile.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        figures.rss_after = status_kib(pid, "VmRSS");

        phase.stop.store(true, Ordering::SeqCst);
        writer.await.unwrap();
        let (event_baseline, event_hostile) = {
            let mut baseline = Vec::new();
            let mut hostile = Vec::new();
            for reader in readers {
                let (b, h) = tokio::time::timeout(Duration::from_secs(60), reader)
                    .await
                    .expect("a reader did not reach the marker")
                    .unwrap();
                baseline.extend(b);
                hostile.extend(h);
            }
            (baseline, hostile)
        };
        figures.event_baseline = event_baseline;
        figures.event_hostile = event_hostile;
        let (b, h) = poller.await.unwrap();
        figures.poll_baseline = b;
        figures.poll_hostile = h;
    });
    relay.assert_running();
    figures.panicked = relay.output().contains("panicked");
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    figures
}

/// About 100 rows a second in 50 transactions, each row carrying its send time, then a
/// marker row once told to stop.
async fn write(url: String, epoch: Instant, phase: Arc<Phase>) {
    let db = testkit::pg::connect(&url).await.unwrap();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut id = 100_000i64;
    while !phase.stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        let sent = epoch.elapsed().as_micros();
        db.batch_execute(&format!(
            "INSERT INTO items VALUES ({id}, repeat('x', 500), {sent}), ({}, repeat('y', 500), {sent})",
            id + 1
        ))
        .await
        .unwrap();
        id += 2;
    }
    db.batch_execute(&format!(
        "INSERT INTO items VALUES ({MARKER_ID}, 'marker', {})",
        epoch.elapsed().as_micros()
    ))
    .await
    .unwrap();
}

/// A well-behaved SSE client from the beginning: every row once, in order, up to the
/// marker; commit→event latencies of live rows, split by phase.
async fn read_events(
    addr: SocketAddr,
    epoch: Instant,
    phase: Arc<Phase>,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut client = SseClient::connect(addr, "/v1/stream?since=0", None).await;
    let (mut baseline, mut hostile) = (Vec::new(), Vec::new());
    let mut last = 0;
    let mut ids = std::collections::HashSet::new();
    // Latencies count once the replay of the existing rows is over.
    let mut live = false;
    loop {
        let event = client
            .next_within(Duration::from_secs(30))
            .await
            .expect("the stream ended");
        live |= event.event == "ready";
        if event.event != "change" {
            continue;
        }
        let record: Value = serde_json::from_str(&event.data).unwrap();
        let seq = seq_of(record["cursor"].as_str().unwrap());
        assert!(seq > last, "cursors strictly increase");
        last = seq;
        let id = record["key"]["id"].as_i64().unwrap();
        assert!(ids.insert(id), "row {id} twice");
        if let Some(sent) = record["after"]["sent_us"]
            .as_u64()
            .filter(|s| live && *s > 0)
        {
            let latency =
                Duration::from_micros((epoch.elapsed().as_micros() as u64).saturating_sub(sent));
            if phase.hostile.load(Ordering::SeqCst) {
                hostile.push(latency);
            } else {
                baseline.push(latency);
            }
        }
        if record["key"] == json!({ "id": MARKER_ID }) {
            return (baseline, hostile);
        }
    }
}

/// `/v1/changes` from the current head every 100 ms: how long a small request takes.
async fn poll_changes(addr: SocketAddr, phase: Arc<Phase>) -> (Vec<Duration>, Vec<Duration>) {
    let (mut baseline, mut hostile) = (Vec::new(), Vec::new());
    let mut cursor = String::from("0");
    while !phase.stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let response = get(addr, &format!("/v1/changes?since={cursor}&limit=100"), &[]).await;
        let took = started.elapsed();
        assert_eq!(response.status, 200, "{}", response.body);
        cursor = response.json()["cursor"].as_str().unwrap().to_string();
        if phase.hostile.load(Ordering::SeqCst) {
            hostile.push(took);
        } else {
            baseline.push(took);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (baseline, hostile)
}

/// An SSE request from a client with a tiny receive window that never reads.
async fn silent_stream(addr: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(4096).ok()?;
    let mut stream = socket.connect(addr).await.ok()?;
    let request = format!("GET /v1/stream?since=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    Some(stream)
}

/// Connects and drops until `until`, in turn: at once; after a whole stream request; after
/// half a request; after reading the first bytes of a stream.
async fn churn(addr: SocketAddr, worker: usize, until: Instant, count: Arc<AtomicU64>) {
    let mut i = worker;
    while Instant::now() < until {
        i += 1;
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        match i % 4 {
            0 => {}
            1 => {
                let _ = stream
                    .write_all(b"GET /v1/stream?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
            }
            2 => {
                let _ = stream
                    .write_all(b"GET /v1/changes?since=0 HTTP/1.1\r\nHo")
                    .await;
            }
            _ => {
                let _ = stream
                    .write_all(b"GET /v1/stream?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
                let mut buf = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
            }
        }
        drop(stream);
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests no well-behaved client sends, each with a name.
async fn bad_requests(addr: SocketAddr) -> Vec<(&'static str, Vec<u8>)> {
    let epoch = {
        let response = get(addr, "/v1/changes?limit=1", &[]).await;
        let cursor = response.json()["cursor"]
            .as_str()
            .unwrap_or("0-0")
            .to_string();
        cursor.split('-').next().unwrap_or("0").to_string()
    };
    let line = |target: String| -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let with_header = |target: &str, header: &[u8]| -> Vec<u8> {
        let mut r =
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
        r.extend_from_slice(header);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let many_headers: Vec<u8> = (0..3000)
        .flat_map(|i| format!("X-Filler-{i}: {i}\r\n").into_bytes())
        .collect();
    vec![
        ("huge since", line(format!("/v1/changes?since={}", "9".repeat(100_000)))),
        ("huge cursor seq", line("/v1/changes?since=1-99999999999999999999999999".into())),
        ("foreign epoch", line(format!("/v1/changes?since={}-1", epoch.parse::<u64>().unwrap_or(0) + 1))),
        ("cursor beyond head", line(format!("/v1/changes?since={epoch}-999999999999"))),
        ("invalid percent", line("/v1/changes?since=%FF%FE%00".into())),
        ("broken percent", line("/v1/changes?since=%Z&limit=%".into())),
        ("negative limit", line("/v1/changes?limit=-1".into())),
        ("huge limit", line("/v1/changes?limit=100000000000000000000".into())),
        ("infinite wait", line("/v1/changes?wait=1e309".into())),
        ("NaN wait", line("/v1/changes?wait=NaN".into())),
        ("bad time", line("/v1/changes?since=2025-13-45T99:99:99Z".into())),
        ("twice", line("/v1/changes?since=0&since=1-1".into())),
        ("many collections", line(format!("/v1/changes?collections={}", vec!["a"; 5000].join(",")))),
        ("unknown collection", line("/v1/stream?collections=public.nope".into())),
        ("long path", line(format!("/v1/{}", "a".repeat(20_000)))),
        ("binary Last-Event-ID", with_header("/v1/stream", b"Last-Event-ID: \xff\xfe\x00\x01")),
        ("long Last-Event-ID", with_header("/v1/stream", format!("Last-Event-ID: {}", "7".repeat(8000)).as_bytes())),
        ("malformed Last-Event-ID", with_header("/v1/stream", b"Last-Event-ID: 1--2")),
        ("huge header", with_header("/v1/changes", format!("X-Big: {}", "b".repeat(1_000_000)).as_bytes())),
        ("many headers", with_header("/v1/changes", &many_headers)),
        ("binary request line", b"\x00\x01\x02\xff GARBAGE\r\n\r\n".to_vec()),
        ("not HTTP", b"{\"hello\": \"json\"}\n".repeat(10)),
        ("POST", b"POST /v1/changes HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec()),
    ]
}

/// Sends `request` and returns the response's status, `None` when the connection closed
/// without one.
async fn send_raw(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = stream.write_all(request).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1)?.parse().ok()
}
