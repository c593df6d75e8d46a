//! What the chaos runs share (`chaos.rs` on the embedded SQLite log, `chaos_nats.rs` on the
//! shared log in NATS JetStream): the schema, a writer committing a numbered history, an SSE
//! subscriber that reconnects with `Last-Event-ID` (to the same node, or moving between
//! nodes), the database's ground truth and the exactly-once check against it.

use deltarelay::record::ChangeRecord;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::http::SseClient;
use testkit::pg::PgServer;
use testkit::relay::client_state;
use tokio::io::AsyncWriteExt;

pub(crate) const TABLES: [&str; 3] = ["public.history", "public.counters", "public.items"];

/// The history, counters and items tables, and Postgres giving up on a silent walsender
/// after `wal_sender_timeout`, which frees the slot for the relay's next connection.
pub(crate) fn create_schema(pg: &PgServer, wal_sender_timeout: &str) {
    pg.psql(
        "app",
        "CREATE TABLE history (seq bigint PRIMARY KEY, payload text);
         CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(0, 9) g;
         CREATE TABLE items (id int PRIMARY KEY, v text, n int NOT NULL, body text);
         ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;",
    );
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET wal_sender_timeout = '{wal_sender_timeout}'"),
    );
    pg.psql("postgres", "SELECT pg_reload_conf()");
}

pub(crate) fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What the writer has committed, for recovery measurements.
#[derive(Default)]
pub(crate) struct Written {
    /// The highest history seq whose transaction is known to have committed.
    pub committed: AtomicI64,
    pub transactions: AtomicU64,
    pub stop: AtomicBool,
}

/// Commits transactions until told to stop, each inserting the next history seqs (usually
/// one to three, now and then a few hundred), bumping a counter and upserting or deleting an
/// item, then pausing for a random part of `pause` (ms). A transaction cut off by an outage is
/// retried with the same seqs: its outcome is unknown, the inserts are idempotent, and the
/// final check reads the database itself.
pub(crate) async fn write(url: String, written: Arc<Written>, seed: u64, pause: Range<u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = 1i64;
    let mut pending: Option<String> = None;
    let mut last = 0;
    while !written.stop.load(Ordering::SeqCst) {
        let client = match testkit::pg::connect(&url).await {
            Ok(client) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while !written.stop.load(Ordering::SeqCst) {
            let sql = match &pending {
                Some(sql) => sql.clone(),
                None => {
                    let rows = if rng.gen_ratio(1, 150) {
                        rng.gen_range(200..800)
                    } else {
                        rng.gen_range(1..=3)
                    };
                    last = next + rows - 1;
                    let item = rng.gen_range(0..40);
                    let item_change = if rng.gen_ratio(1, 4) {
                        format!("DELETE FROM items WHERE id = {item};")
                    } else {
                        // A 3.2 KB body stored out of line, left alone by the update: Postgres
                        // sends it as unchanged TOAST and the log fills it from its stored copy.
                        format!(
                            "INSERT INTO items VALUES ({item}, md5(random()::text), 1, repeat(md5(random()::text), 100))
                             ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = items.n + 1;"
                        )
                    };
                    let sql = format!(
                        "BEGIN;
                         INSERT INTO history SELECT g, md5(g::text) FROM generate_series({next}, {last}) g
                           ON CONFLICT DO NOTHING;
                         UPDATE counters SET n = n + 1 WHERE id = {};
                         {item_change}
                         COMMIT;",
                        rng.gen_range(0..10)
                    );
                    pending = Some(sql.clone());
                    sql
                }
            };
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    pending = None;
                    next = last + 1;
                    written.committed.store(last, Ordering::SeqCst);
                    written.transactions.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(pause.clone()))).await;
        }
    }
}

/// What the SSE subscriber has seen.
#[derive(Default)]
pub(crate) struct Seen {
    pub records: Mutex<Vec<ChangeRecord>>,
    pub max_history: AtomicI64,
    pub connections: AtomicU64,
    /// Connections the subscriber ended itself to move to another node.
    pub moves: AtomicU64,
    /// Answers other than 200 to a stream request: (node, status, the cursor sent).
    pub refused: Mutex<Vec<(SocketAddr, u16, Option<String>)>>,
}

impl Seen {
    pub(crate) fn has_end_marker(&self) -> bool {
        let end_key = json!({"seq": 0});
        self.records
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.key.as_ref().map(|k| json!(k)) == Some(end_key.clone()))
    }
}

/// Where the subscriber reads from.
pub(crate) struct Route {
    pub nodes: Vec<SocketAddr>,
    /// Also move to another node after this many ms on one connection (a random part of the
    /// range), fault or not; `None`: stay until the connection ends.
    pub move_after: Option<Range<u64>>,
    pub seed: u64,
}

impl Route {
    pub(crate) fn one(node: SocketAddr) -> Route {
        Route {
            nodes: vec![node],
            move_after: None,
            seed: 0,
        }
    }
}

/// Follows `/v1/stream` for as long as it runs, reconnecting with `Last-Event-ID` whenever the
/// connection ends (the node was killed) or cannot be made, each time to another of the
/// route's nodes when it has several.
pub(crate) async fn subscribe(route: Route, seen: Arc<Seen>) {
    let mut rng = StdRng::seed_from_u64(route.seed);
    let mut last_id: Option<String> = None;
    let mut node = rng.gen_range(0..route.nodes.len());
    loop {
        let addr = route.nodes[node];
        if route.nodes.len() > 1 {
            node = (node + rng.gen_range(1..route.nodes.len())) % route.nodes.len();
        }
        let mut client = match open_stream(addr, last_id.as_deref()).await {
            Some(client) if client.status == 200 => client,
            Some(client) => {
                let refusal = (addr, client.status, last_id.clone());
                seen.refused.lock().unwrap().push(refusal);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            None => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        seen.connections.fetch_add(1, Ordering::SeqCst);
        let stay = route
            .move_after
            .clone()
            .map(|ms| Duration::from_millis(rng.gen_range(ms)))
            .unwrap_or(Duration::MAX);
        let moving = tokio::time::sleep(stay.min(Duration::from_secs(86_400)));
        tokio::pin!(moving);
        loop {
            let event = tokio::select! {
                event = client.next() => event,
                _ = &mut moving => {
                    seen.moves.fetch_add(1, Ordering::SeqCst);
                    None
                }
            };
            let Some(event) = event else { break };
            if event.event != "change" {
                continue;
            }
            let record: ChangeRecord = serde_json::from_str(&event.data).unwrap();
            assert_eq!(event.id.as_deref(), Some(record.cursor.as_str()));
            last_id = event.id;
            if let Some(seq) = history_seq(&record) {
                seen.max_history.fetch_max(seq, Ordering::SeqCst);
            }
            seen.records.lock().unwrap().push(record);
        }
    }
}

/// A `/v1/stream` request from `last_id` on; `None` when the node does not answer.
async fn open_stream(addr: SocketAddr, last_id: Option<&str>) -> Option<SseClient> {
    let connect = tokio::net::TcpStream::connect(addr);
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let mut request = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
    );
    if let Some(id) = last_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    tokio::time::timeout(Duration::from_secs(10), SseClient::try_over(stream))
        .await
        .ok()?
}

pub(crate) fn history_seq(record: &ChangeRecord) -> Option<i64> {
    if record.collection != "public.history" {
        return None;
    }
    record.key.as_ref()?.get("seq")?.as_i64()
}

pub(crate) struct Truth {
    /// The committed history seqs, in commit order (the writer is sequential).
    pub seqs: Vec<i64>,
    pub tables: Vec<(&'static str, BTreeMap<String, Value>)>,
}

pub(crate) fn ground_truth(pg: &PgServer) -> Truth {
    let seqs: Vec<i64> = pg
        .psql("app", "SELECT seq FROM history WHERE seq > 0 ORDER BY seq")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    // Gapless: a transaction's outcome may be unknown to the writer, but it retries the same
    // seqs until one attempt is known to have committed.
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as i64 + 1),
        "the database's history has gaps"
    );
    Truth {
        seqs,
        tables: vec![
            ("public.history", pg.table_state("app", "history", &["seq"])),
            (
                "public.counters",
                pg.table_state("app", "counters", &["id"]),
            ),
            ("public.items", pg.table_state("app", "items", &["id"])),
        ],
    }
}

/// The state a client builds from `records` equals the database's, table by table.
pub(crate) fn assert_state(name: &str, records: &[ChangeRecord], truth: &Truth) {
    let state = client_state(records);
    for (table, rows) in &truth.tables {
        assert_eq!(
            state.get(*table).cloned().unwrap_or_default(),
            *rows,
            "{name}: the state of {table} differs from the database"
        );
    }
}

pub(crate) struct HistoryCheck {
    pub lost: usize,
    pub duplicated: usize,
    pub in_order: bool,
}

/// Every committed history seq once, in commit order.
pub(crate) fn check_history(
    name: &str,
    records: &[ChangeRecord],
    committed: &[i64],
) -> HistoryCheck {
    let got: Vec<i64> = records
        .iter()
        .filter_map(history_seq)
        .filter(|s| *s > 0)
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for seq in &got {
        *counts.entry(*seq).or_default() += 1;
    }
    let lost = committed.iter().filter(|s| !counts.contains_key(s)).count();
    let duplicated = counts.values().map(|c| c - 1).sum();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    if lost > 0 || duplicated > 0 || !in_order {
        let missing: Vec<&i64> = committed
            .iter()
            .filter(|s| !counts.contains_key(s))
            .take(20)
            .collect();
        let twice: Vec<&i64> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(s, _)| s)
            .take(20)
            .collect();
        eprintln!("{name}: missing {missing:?}…, duplicated {twice:?}…, in order: {in_order}");
    }
    HistoryCheck {
        lost,
        duplicated,
        in_order,
    }
}
