//! A client that stops reading `/v1/stream` (the test runs in a process of its own, so that
//! the process's memory figures are its own).

use serde_json::json;
use std::time::{Duration, Instant};
use testkit::http::*;

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_the_others() {
    if !testkit::in_own_process("http_stall::a_client_that_never_reads_does_not_delay_the_others") {
        return;
    }
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(tx(1), vec![upsert("public.a", 0, json!("start"))])],
    )
    .await;

    // The stalled client: a small receive window, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled_stream = socket.connect(server.addr).await.unwrap();
    let request = format!(
        "GET /v1/stream?since=0 HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled_stream, request.as_bytes())
        .await
        .unwrap();

    // A normal client, reading in the background.
    let mut reader = SseClient::connect(server.addr, "/v1/stream?since=0", None).await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(event) = reader.next().await {
            if event.event == "change" {
                let record = record_of(&event);
                seqs.push(seq_of(record["cursor"].as_str().unwrap()));
                if record["key"] == json!({"id": 99_999}) {
                    let _ = seen_tx.send((record, Instant::now()));
                }
            }
        }
        seqs
    });

    let rss_before = rss_kib();
    let payload = "x".repeat(2000);
    const COMMITS: i64 = 3000;
    let started = Instant::now();
    let mut rss_half = 0;
    for i in 0..COMMITS {
        let changes = (0..4)
            .map(|k| upsert("public.a", (i * 4 + k) % 5000, json!(payload)))
            .collect();
        commit(&server.log, vec![(tx(i as u64 + 2), changes)]).await;
        if i == COMMITS / 2 {
            rss_half = rss_kib();
        }
    }
    let flood = started.elapsed();
    let rss_flooded = rss_kib();

    // A marker commit reaches the reading client promptly, although the stalled one holds on.
    let marker_committed = {
        commit(
            &server.log,
            vec![(
                tx(1_000_000),
                vec![upsert("public.a", 99_999, json!("marker"))],
            )],
        )
        .await;
        Instant::now()
    };
    let latency = loop {
        let (record, at) = tokio::time::timeout(EVENT_TIMEOUT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        if record["key"] == json!({"id": 99_999}) {
            break at.saturating_duration_since(marker_committed);
        }
    };
    println!(
        "flood of {COMMITS} commits ({} MB) in {flood:?}; marker reached the reading client {latency:?} after its commit",
        COMMITS * 4 * 2000 / 1_000_000
    );
    println!(
        "RSS: {rss_before} KiB before, {rss_half} KiB half-way, {rss_flooded} KiB after the flood with one stalled client"
    );
    // Bounded: the second half of the flood (12 MB more) must not grow memory by as much.
    assert!(
        rss_flooded < rss_half + 8 * 1024,
        "memory keeps growing while a client is stalled"
    );
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    assert_eq!(server.get("/healthz").await.status, 200);
    let status = server.get("/v1/status").await.json();
    assert_eq!(status["subscribers"], 2);

    // Now the stalled client reads: it falls back to the log and still gets everything, once.
    let mut stalled = SseClient::over(stalled_stream).await;
    let mut state = State::new();
    let mut last = 0;
    loop {
        let event = stalled.next_within(EVENT_TIMEOUT).await.unwrap();
        if event.event != "change" {
            continue;
        }
        let record = record_of(&event);
        let seq = seq_of(record["cursor"].as_str().unwrap());
        assert!(seq > last, "strictly increasing");
        last = seq;
        apply(&mut state, &record);
        if record["key"] == json!({"id": 99_999}) {
            break;
        }
    }
    let mut expected = State::new();
    for record in log_records(&server.log) {
        apply(&mut expected, &record);
    }
    assert!(
        state == expected,
        "the stalled client's state equals the log's"
    );
    let metrics = server.get("/metrics").await.body;
    let fallbacks = metric(&metrics, "deltarelay_sse_log_fallbacks_total");
    println!("subscribers fell back to the log {fallbacks} times");
    assert!(
        fallbacks >= 1.0,
        "the stalled client lagged behind the broadcast"
    );
    drop(stalled);
    server.shutdown.send(true).unwrap();
    let seqs = tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .unwrap()
        .unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}
