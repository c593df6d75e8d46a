//! Shared by the benchmarks: the size scale, timing, percentiles, process figures and the
//! relay started the way the benchmarks start it.

use crate::relay::{http_status, RelayProcess};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// `DELTARELAY_BENCH_SCALE` (default 1): every workload size is multiplied by it, so a smoke
/// run (`DELTARELAY_BENCH_SCALE=0.01`) exercises the same code on small data.
pub fn scale() -> f64 {
    match std::env::var("DELTARELAY_BENCH_SCALE") {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => v,
            _ => panic!("DELTARELAY_BENCH_SCALE={text:?}: expected a positive number, e.g. 0.05"),
        },
    }
}

/// `n` scaled by [`scale`], at least `min`.
pub fn scaled(n: u64, min: u64) -> u64 {
    ((n as f64 * scale()).round() as u64).max(min)
}

/// `secs` seconds scaled by [`scale`], at least `min` seconds.
pub fn scaled_secs(secs: f64, min: f64) -> Duration {
    Duration::from_secs_f64((secs * scale()).max(min))
}

/// Runs `run` and prints how long it took.
pub fn timed<T>(what: &str, run: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = run();
    let elapsed = started.elapsed();
    eprintln!("{what}: {:.2} s", elapsed.as_secs_f64());
    (value, elapsed)
}

/// The machine's load averages, to print beside the figures (`/proc/loadavg`).
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Prints the benchmark's heading: what runs, the scale and the machine's load.
pub fn heading(name: &str) {
    println!(
        "== {name}  (scale {}, {} cores, load {}){}",
        scale(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load(),
        if cfg!(debug_assertions) {
            "  DEBUG BUILD: a smoke run, the figures mean nothing (use cargo bench)"
        } else {
            ""
        }
    );
}

/// The `p`-th percentile (0..=100) of `values`, which this sorts; 0 when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// p50 / p99 / max of latencies in milliseconds, as one line.
pub fn latency_line(values: &mut [f64]) -> String {
    format!(
        "p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  (n = {})",
        percentile(values, 50.0),
        percentile(values, 99.0),
        values.last().copied().unwrap_or(0.0),
        values.len()
    )
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU seconds the process has used so far (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Some(ticks / 100.0)
}

/// The relay as the benchmarks run it: `info` logging (the tests' debug logging costs time).
pub fn start_relay(dir: &Path, config: &str) -> RelayProcess {
    RelayProcess::start_with_env(dir, config, &[("DELTARELAY_LOG", "info")])
}

/// Waits (up to `limit`) until the relay answers `/readyz` with 200.
pub fn wait_ready(relay: &mut RelayProcess, addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while http_status(addr, "/readyz") != Some(200) {
        relay.assert_running();
        assert!(
            Instant::now() < deadline,
            "the relay was not ready within {limit:?}\n{}",
            relay.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PostgreSQL program from the Debian install location, else from PATH.
pub fn pg_bin(name: &str) -> std::path::PathBuf {
    let installed = Path::new("/usr/lib/postgresql/15/bin").join(name);
    if installed.exists() {
        installed
    } else {
        name.into()
    }
}

/// `pg_recvlogical --start` on `slot` of database `app`, with the relay's pgoutput options
/// (`proto_version=1`, the test publication); the caller adds the output and any `--endpos`.
pub fn recvlogical(pg: &crate::pg::PgServer, slot: &str) -> std::process::Command {
    let mut command = std::process::Command::new(pg_bin("pg_recvlogical"));
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", "app", "--slot", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1"])
        .arg(format!("--option=publication_names={}", crate::relay::SLOT));
    command
}

/// `events`: the table the latency and fan-out benchmarks write (two columns, so the baseline
/// can find the key in pgoutput's tuple).
pub const EVENTS: &str = "CREATE TABLE events (id bigint PRIMARY KEY, payload text NOT NULL)";

/// Rows `first..=last` committed in one transaction, acknowledged at `at`.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub first: i64,
    pub last: i64,
    pub at: Instant,
}

/// Commits rows into `events` at `rate` rows per second for `duration`: every `tick`, the rows
/// due by then go in one transaction (one row per transaction when the tick is short enough).
/// Ids start at `first_id`. Returns each commit's rows and the time its acknowledgement arrived.
pub async fn write_paced(
    client: &tokio_postgres::Client,
    first_id: i64,
    rate: f64,
    tick: Duration,
    duration: Duration,
) -> Vec<Acked> {
    let insert = "INSERT INTO events (id, payload) \
         SELECT g, 'payload of a benchmark event ' || g FROM generate_series($1::bigint, $2::bigint) g";
    let pace = Pace {
        first_id,
        rate,
        tick,
        duration,
    };
    write_paced_with(client, insert, &[], pace).await
}

/// How [`write_paced_with`] paces its commits.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub first_id: i64,
    /// Rows per second.
    pub rate: f64,
    pub tick: Duration,
    pub duration: Duration,
}

/// [`write_paced`] with another statement: `insert` takes the first and last id of the rows
/// due as `$1` and `$2`, then `extra` as `$3`, ….
pub async fn write_paced_with(
    client: &tokio_postgres::Client,
    insert: &str,
    extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    pace: Pace,
) -> Vec<Acked> {
    let insert = client.prepare(insert).await.expect("prepare the insert");
    let mut acks = Vec::new();
    let mut next = pace.first_id;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(pace.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < pace.duration {
        ticker.tick().await;
        let due = pace.first_id + (started.elapsed().as_secs_f64() * pace.rate) as i64;
        if due <= next {
            continue;
        }
        let last = due - 1;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&next, &last];
        params.extend_from_slice(extra);
        client
            .execute(&insert, &params)
            .await
            .expect("insert the rows due");
        acks.push(Acked {
            first: next,
            last,
            at: Instant::now(),
        });
        next = due;
    }
    acks
}

/// One SSE client over HTTP/1.0 (so the body is the raw event stream, not chunked). Signals
/// `ready` (and gives back its connection `permit`) once the `ready` event arrived, and hands
/// each read's whole lines, with the time they arrived, to `on_lines`. Ends when the relay
/// closes the stream.
pub async fn read_sse(
    addr: SocketAddr,
    path: &str,
    ready: tokio::sync::mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut on_lines: impl FnMut(&[u8], Instant),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const READY: &[u8] = b"event: ready\n";
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut permit = Some(permit);
    let mut ready = Some(ready);
    let mut head_checked = false;
    let mut buf = vec![0u8; 8 * 1024];
    let mut kept = 0;
    loop {
        let n = match stream.read(&mut buf[kept..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        let data = &buf[..kept + n];
        if !head_checked {
            head_checked = true;
            assert!(
                data.starts_with(b"HTTP/1.1 200") || data.starts_with(b"HTTP/1.0 200"),
                "GET {path}: {}",
                String::from_utf8_lossy(data)
            );
        }
        if let Some(signal) = ready.take() {
            if memchr::memmem::find(data, READY).is_none() {
                ready = Some(signal);
            } else {
                permit.take();
                let _ = signal.send(()).await;
            }
        }
        // Whole lines only; the rest waits for the next read.
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        on_lines(&data[..complete], now);
        buf.copy_within(complete..kept + n, 0);
        kept = kept + n - complete;
        if kept == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Each `data:` line's record in `lines`, as text.
pub fn data_lines(lines: &[u8]) -> impl Iterator<Item = &str> {
    lines
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data: "))
        .map(|record| std::str::from_utf8(record).unwrap_or(""))
}

/// A client for `url` (no TLS), its connection driven on the runtime.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    client
}

/// The rows the acknowledged commits hold.
pub fn rows_of(acks: &[Acked]) -> u64 {
    acks.iter().map(|a| (a.last - a.first + 1) as u64).sum()
}

/// The `id` of a change record's key, read from its JSON text without parsing all of it.
pub fn key_id(record: &str) -> Option<i64> {
    let at = record.find("\"key\":{\"id\":")? + "\"key\":{\"id\":".len();
    let digits: &str = &record[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Milliseconds from each row's commit acknowledgement to its arrival; `arrivals` may hold ids
/// of other phases, which are skipped. Also returns how many acknowledged rows never arrived.
pub fn latencies_ms(acks: &[Acked], arrivals: &[(i64, Instant)]) -> (Vec<f64>, u64) {
    let mut seen = std::collections::HashSet::new();
    let mut values = Vec::with_capacity(arrivals.len());
    for &(id, at) in arrivals {
        let Ok(i) = acks.binary_search_by(|a| {
            if a.last < id {
                std::cmp::Ordering::Less
            } else if a.first > id {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) else {
            continue;
        };
        if seen.insert(id) {
            values.push(at.saturating_duration_since(acks[i].at).as_secs_f64() * 1000.0);
        }
    }
    let missing = rows_of(acks) - seen.len() as u64;
    (values, missing)
}

/// `perf record` of process `pid` into `DELTARELAY_BENCH_PERF/<name>.data`, when that variable
/// names a directory; stops (and writes the file) when dropped.
pub struct Profile(Option<std::process::Child>);

impl Profile {
    pub fn start(pid: u32, name: &str) -> Profile {
        let Ok(dir) = std::env::var("DELTARELAY_BENCH_PERF") else {
            return Profile(None);
        };
        let output = Path::new(&dir).join(format!("{name}.data"));
        let child = std::process::Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
            .arg(&output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("DELTARELAY_BENCH_PERF is set but perf does not run: {e}"));
        eprintln!("perf record into {}", output.display());
        Profile(Some(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
