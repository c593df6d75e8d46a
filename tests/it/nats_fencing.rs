//! The stream's writer is fenced, also with its messages pipelined: two ingest processes that
//! both believe they write the shared log (as after a partition) cannot interleave. Each
//! message must land right after the one its writer sent before; the second writer's block
//! fails as a whole (at its commit, or at an append once its window of messages in flight is
//! full) and none of it ever counts on any node, while the first writer goes on. An active
//! ingest node whose writes the stream refuses steps down: the relay stops, so that the
//! service manager restarts it as a standby.

use super::nats_log::{fixture_pg, ingest_config, start_ready, write_batch};
use deltarelay::log::nats::cluster::NatsSettings;
use deltarelay::log::reader::{ReadFrom, RowFilter};
use deltarelay::log::scope::ScopeColumns;
use deltarelay::log::{Log, LogError};
use serde_json::{json, Value};
use std::sync::Arc;
use testkit::http::{commit, tx, upsert};
use testkit::nats::NatsCluster;

/// `count` upserts of ids `first..first + count`.
fn rows(first: i64, count: i64) -> Vec<deltarelay::record::Change> {
    (first..first + count)
        .map(|id| upsert("public.items", id, json!(id)))
        .collect()
}

/// The ids of every entry of the node's log, in log order.
async fn logged_ids(log: &Log) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = log
            .page(
                ReadFrom::Seq(after),
                Arc::new(RowFilter::all()),
                10_000,
                64 << 20,
            )
            .await
            .unwrap();
        for entry in &page.entries {
            let record: Value = serde_json::from_str(&entry.record).unwrap();
            ids.push(record["key"]["id"].as_i64().unwrap());
        }
        if !page.has_more {
            return ids;
        }
        after = page.scanned_seq;
    }
}

fn fenced(result: Result<impl std::fmt::Debug, LogError>) {
    match result {
        Err(LogError::ReadOnly(reason)) => {
            assert!(reason.contains("no longer its writer"), "{reason}")
        }
        other => panic!("expected the writer to be fenced off, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_fenced_off_and_none_of_its_block_counts() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let nats = NatsCluster::start(3);
    let settings = NatsSettings {
        urls: nats.urls(),
        stream: "IT_FENCE".into(),
        replicas: 3,
        snapshots: Default::default(),
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let open = |dir: &tempfile::TempDir| {
        let settings = settings.clone();
        let dir = dir.path().to_path_buf();
        async move {
            Log::open_nats(&settings, Some(&dir), ScopeColumns::new(), true)
                .await
                .unwrap()
        }
    };
    // Both open on the empty stream: each would write after sequence 0.
    let first = open(&dirs[0]).await;
    let second = open(&dirs[1]).await;

    // A block larger than the window of messages in flight (40 appends of 1,000 changes):
    // the first writer's lands whole.
    let mut txn = first.begin().await.unwrap();
    for batch in 0..40 {
        txn.append(tx(1), rows(batch * 1000, 1000)).await.unwrap();
    }
    txn.commit("pg", "1".into()).await.unwrap();

    // The second writer's small block fails at its commit.
    let mut txn = second.begin().await.unwrap();
    txn.append(tx(2), rows(100_000, 5)).await.unwrap();
    fenced(txn.commit("pg", "2".into()).await);

    // Its large block fails at an append, once the window is full, and stays fenced.
    let mut txn = second.begin().await.unwrap();
    let mut failed = None;
    for batch in 0..40 {
        if let Err(e) = txn.append(tx(3), rows(200_000 + batch * 1000, 1000)).await {
            failed = Some(e);
            break;
        }
    }
    match failed {
        Some(e) => fenced(Err::<(), _>(e)),
        None => fenced(txn.commit("pg", "3".into()).await),
    }

    // The first writer goes on; both nodes hold its blocks and nothing of the other's.
    commit(&first, vec![(tx(4), rows(50_000, 10))]).await;
    let mut expected: Vec<i64> = (0..40_000).collect();
    expected.extend(50_000..50_010);
    for log in [&first, &second] {
        assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("4"));
        assert_eq!(logged_ids(log).await, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_node_whose_writes_are_refused_steps_down() {
    testkit::skip_unless!(testkit::nats::available(), "nats-server is not installed");
    let pg = fixture_pg();
    let nats = NatsCluster::start(3);
    let stream = "IT_STEP_DOWN";
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let (mut relay, addr) = start_ready(
        dir.path(),
        &ingest_config(&pg, &nats, dir.path(), port, stream),
        port,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while testkit::http::get(addr, "/v1/status", &[]).await.json()["role"] != "active" {
        relay.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "not active:\n{}",
            relay.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    write_batch(&pg, 1, 5);

    // Another process writes the stream behind the active node's back (as a node that took
    // the lease while this one was paused would): the active node's next block is refused.
    let intruder_dir = tempfile::tempdir().unwrap();
    let settings = NatsSettings {
        urls: nats.urls(),
        stream: stream.into(),
        replicas: 3,
        snapshots: Default::default(),
    };
    let intruder = Log::open_nats(
        &settings,
        Some(intruder_dir.path()),
        ScopeColumns::new(),
        true,
    )
    .await
    .unwrap();
    commit(&intruder, vec![(tx(1), rows(1, 1))]).await;
    write_batch(&pg, 6, 5);

    let code = tokio::task::spawn_blocking(move || {
        let code = relay.wait_exit(std::time::Duration::from_secs(60));
        (code, relay.output())
    })
    .await
    .unwrap();
    let (code, output) = code;
    assert_ne!(
        code,
        Some(0),
        "the relay should stop with an error:\n{output}"
    );
    assert!(output.contains("no longer its writer"), "{output}");
    assert!(
        output.contains("restarts this node as a standby"),
        "{output}"
    );
}
