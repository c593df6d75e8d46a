//! `/v1/stream` (Server-Sent Events) over real sockets.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::http::*;

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The key of the last commit in the concurrent test: clients stop when they see it.
const END_KEY: i64 = 1_000_000;

#[tokio::test]
async fn replays_then_ready_then_live_and_resumes_after_last_event_id() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(
            tx(1),
            vec![
                upsert("public.a", 1, json!(1)),
                upsert("public.a", 2, json!(2)),
            ],
        )],
    )
    .await;
    commit(
        &server.log,
        vec![(
            tx(2),
            vec![upsert("public.a", 1, json!(3)), delete("public.a", 2)],
        )],
    )
    .await;
    commit(
        &server.log,
        vec![(tx(3), vec![upsert("public.b", 1, json!(4))])],
    )
    .await;
    let epoch = server.epoch();

    let mut client = SseClient::connect(server.addr, "/v1/stream", None).await;
    assert_eq!(client.status, 200);
    assert_eq!(
        client
            .headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .unwrap()
            .1,
        "text/event-stream"
    );
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(record_of(&client.next_within(EVENT_TIMEOUT).await.unwrap()));
    }
    assert_eq!(replayed, log_records(&server.log), "the replay is the log");
    assert_eq!(client.retry, Some(2000));
    let ready = client.next_within(EVENT_TIMEOUT).await.unwrap();
    assert_eq!(ready.event, "ready");
    assert_eq!(ready.id, Some(format!("{epoch}-5")));

    // Live.
    commit(
        &server.log,
        vec![(tx(4), vec![upsert("public.a", 7, json!(7))])],
    )
    .await;
    let live = record_of(&client.next_within(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(
        (live["key"].clone(), live["cursor"].clone()),
        (json!({"id": 7}), json!(format!("{epoch}-6")))
    );
    commit(
        &server.log,
        vec![(tx(5), vec![upsert("public.a", 8, json!(8))])],
    )
    .await;
    let last_seen = client.next_within(EVENT_TIMEOUT).await.unwrap();
    assert_eq!(last_seen.id, Some(format!("{epoch}-7")));
    drop(client);

    // Changes while disconnected, then a reconnect with Last-Event-ID (which wins over since).
    commit(
        &server.log,
        vec![(
            tx(6),
            vec![
                upsert("public.a", 9, json!(9)),
                upsert("public.a", 7, json!(70)),
            ],
        )],
    )
    .await;
    let mut client =
        SseClient::connect(server.addr, "/v1/stream?since=0", last_seen.id.as_deref()).await;
    let first = record_of(&client.next_within(EVENT_TIMEOUT).await.unwrap());
    let second = record_of(&client.next_within(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(first["cursor"], format!("{epoch}-8"));
    assert_eq!(second["cursor"], format!("{epoch}-9"));
    assert_eq!(
        client.next_within(EVENT_TIMEOUT).await.unwrap().event,
        "ready"
    );

    // A collection filter, from the beginning.
    let mut only_b = SseClient::connect(server.addr, "/v1/stream?collections=public.b", None).await;
    let record = record_of(&only_b.next_within(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(record["collection"], "public.b");
    let ready = only_b.next_within(EVENT_TIMEOUT).await.unwrap();
    assert_eq!(
        (ready.event.as_str(), ready.id),
        ("ready", Some(format!("{epoch}-9")))
    );
    commit(
        &server.log,
        vec![(
            tx(7),
            vec![
                upsert("public.a", 1, json!(0)),
                upsert("public.b", 2, json!(0)),
            ],
        )],
    )
    .await;
    let record = record_of(&only_b.next_within(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(
        (record["collection"].clone(), record["key"].clone()),
        (json!("public.b"), json!({"id": 2}))
    );

    let status = server.get("/v1/status").await.json();
    assert_eq!(status["subscribers"], 2);

    // The change events sent are counted (other tests in this binary may add to the count).
    let metrics = server.get("/metrics").await.body;
    let sent = metric(&metrics, "deltarelay_sse_events_sent_total");
    assert!(sent >= 4.0, "{sent} change events counted\n{metrics}");
}

/// What one client did.
struct ClientRun {
    mode: &'static str,
    start_seq: u64,
    seqs: Vec<u64>,
    state: State,
    filter: Option<Vec<&'static str>>,
}

/// A client that starts at a random moment: from 0 over SSE, or after paging `/v1/changes` to
/// the head or part-way (then SSE from the page's cursor). Reads until the end marker.
async fn run_client(
    addr: SocketAddr,
    mode: &'static str,
    filter: Option<Vec<&'static str>>,
    pages: usize,
) -> ClientRun {
    let filter_param = filter
        .as_ref()
        .map(|f| format!("&collections={}", f.join(",")))
        .unwrap_or_default();
    let mut state = State::new();
    let mut since = "0".to_string();
    if mode != "zero" {
        let mut taken = 0;
        loop {
            let body = get(
                addr,
                &format!("/v1/changes?since={since}&limit=50{filter_param}"),
                &[],
            )
            .await
            .json();
            for record in body["changes"].as_array().unwrap() {
                apply(&mut state, record);
            }
            since = body["cursor"].as_str().unwrap().to_string();
            taken += 1;
            if !body["has_more"].as_bool().unwrap() || (mode == "middle" && taken >= pages) {
                break;
            }
        }
    }
    let start_seq = if since == "0" { 0 } else { seq_of(&since) };
    let mut client = SseClient::connect(
        addr,
        &format!("/v1/stream?since={since}{filter_param}"),
        None,
    )
    .await;
    assert_eq!(client.status, 200);
    let mut seqs = Vec::new();
    let mut ready = 0;
    loop {
        let event = client
            .next_within(EVENT_TIMEOUT)
            .await
            .expect("stream ended early");
        if event.event == "ready" {
            ready += 1;
            continue;
        }
        let record = record_of(&event);
        seqs.push(seq_of(record["cursor"].as_str().unwrap()));
        apply(&mut state, &record);
        if record["key"] == json!({ "id": END_KEY }) {
            break;
        }
    }
    assert_eq!(ready, 1, "exactly one ready event");
    ClientRun {
        mode,
        start_seq,
        seqs,
        state,
        filter,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_and_clients_from_random_cursors_see_exactly_the_log() {
    let server = Server::start().await;
    let mut rng = StdRng::seed_from_u64(42);
    // Some history first, so that "middle" has somewhere to stop.
    let mut next_tx = 1u64;
    let mut make_commit = move |rng: &mut StdRng, big: bool| {
        let mut txs = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            let size = if big { 10_050 } else { rng.gen_range(1..5) };
            let changes = (0..size)
                .map(|_| {
                    let collection = if rng.gen_bool(0.5) {
                        "public.a"
                    } else {
                        "public.b"
                    };
                    let key = rng.gen_range(0..400);
                    if rng.gen_bool(0.1) {
                        delete(collection, key)
                    } else {
                        upsert(collection, key, json!(rng.gen::<u32>()))
                    }
                })
                .collect();
            txs.push((tx(next_tx), changes));
            next_tx += 1;
        }
        txs
    };
    for _ in 0..300 {
        commit(&server.log, make_commit(&mut rng, false)).await;
    }

    const COMMITS: usize = 2000;
    const CLIENTS: usize = 20;
    let log = server.log.clone();
    let writer_rng = StdRng::seed_from_u64(43);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut rng = writer_rng;
        for i in 0..COMMITS {
            // Two commits too large to broadcast: subscribers must read them from the log.
            let big = i == COMMITS / 3 || i == 2 * COMMITS / 3;
            commit(&log, make_commit(&mut rng, big)).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        commit(
            &log,
            vec![(
                tx(u64::MAX),
                vec![upsert("public.a", END_KEY, json!("end"))],
            )],
        )
        .await;
    });

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let delay = Duration::from_millis(rng.gen_range(0..3000));
        let mode = ["zero", "head", "middle"][i % 3];
        let filter = (i % 4 == 3).then(|| vec!["public.a"]);
        let pages = rng.gen_range(1..20);
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_client(addr, mode, filter, pages).await
        }));
    }
    writer.await.unwrap();
    let wrote = started.elapsed();
    let records = log_records(&server.log);
    let mut all_state = State::new();
    for record in &records {
        apply(&mut all_state, record);
    }
    println!(
        "writer: {COMMITS} commits in {wrote:?}; the log holds {} entries, head {}",
        records.len(),
        server.head()
    );

    for client in clients {
        let run = client.await.unwrap();
        let wanted = |collection: &str| {
            run.filter
                .as_ref()
                .map_or(true, |f| f.contains(&collection))
        };
        assert!(
            run.seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: cursors strictly increase",
            run.mode
        );
        assert!(
            run.seqs.first().map_or(true, |s| *s > run.start_seq),
            "{}: nothing at or before its cursor",
            run.mode
        );
        let received: BTreeSet<u64> = run.seqs.iter().copied().collect();
        let missing: Vec<u64> = records
            .iter()
            .filter(|r| wanted(r["collection"].as_str().unwrap()))
            .map(|r| seq_of(r["cursor"].as_str().unwrap()))
            .filter(|s| *s > run.start_seq && !received.contains(s))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: latest entries never received: {:?}",
            run.mode,
            &missing[..missing.len().min(10)]
        );
        let expected: State = all_state
            .iter()
            .filter(|((c, _), _)| wanted(c))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert!(
            run.state == expected,
            "{}: the client's state differs from the log's",
            run.mode
        );
        println!(
            "client {:>6} from seq {:>6} filter {:?}: {} events, {} rows",
            run.mode,
            run.start_seq,
            run.filter.is_some(),
            run.seqs.len(),
            run.state.len()
        );
    }
}

#[tokio::test]
async fn streams_end_cleanly_on_shutdown() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(tx(1), vec![upsert("public.a", 1, json!(1))])],
    )
    .await;
    let mut client = SseClient::connect(server.addr, "/v1/stream", None).await;
    record_of(&client.next_within(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(
        client.next_within(EVENT_TIMEOUT).await.unwrap().event,
        "ready"
    );
    let started = Instant::now();
    server.shutdown.send(true).unwrap();
    assert_eq!(
        client.next_within(Duration::from_secs(5)).await,
        None,
        "the stream ends"
    );
    tokio::time::timeout(Duration::from_secs(5), server.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A source reset expires every cursor: a live stream ends (instead of silently missing the
/// forgotten rows) and reconnecting from its last event gets 410.
#[tokio::test]
async fn a_source_reset_ends_live_streams_and_their_cursors_expire() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(tx(1), vec![upsert("public.a", 1, json!(1))])],
    )
    .await;
    let mut client = SseClient::connect(server.addr, "/v1/stream", None).await;
    let first = client.next_within(EVENT_TIMEOUT).await.unwrap();
    let ready = client.next_within(EVENT_TIMEOUT).await.unwrap();
    assert_eq!(ready.event, "ready");
    let comments_before = client.comments;
    server.log.reset_source("pg").await.unwrap();
    assert_eq!(
        client.next_within(Duration::from_secs(5)).await,
        None,
        "the stream ends"
    );
    assert!(
        client.comments > comments_before,
        "it says why in a comment"
    );
    for cursor in [first.id.unwrap(), ready.id.unwrap()] {
        let response = server.get(&format!("/v1/stream?since={cursor}")).await;
        assert_eq!(response.status, 410, "{cursor}");
    }
    // From the beginning works, and sees only what was written after the reset.
    commit(
        &server.log,
        vec![(tx(2), vec![upsert("public.a", 2, json!(2))])],
    )
    .await;
    let mut fresh = SseClient::connect(server.addr, "/v1/stream", None).await;
    let record = record_of(&fresh.next_within(EVENT_TIMEOUT).await.unwrap());
    assert_eq!(record["key"], json!({"id": 2}));
    assert_eq!(
        fresh.next_within(EVENT_TIMEOUT).await.unwrap().event,
        "ready"
    );
}
