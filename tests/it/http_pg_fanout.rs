//! Fan-out under load, end to end: a private Postgres, the relay binary as a child process, a
//! writer committing changes while SSE clients join `/v1/stream` at random moments from random
//! cursors. Every client must see strictly increasing cursors, exactly the log after its cursor
//! (no gap, no duplicate), and build the database's state.
//!
//! Scale (defaults are the numbers):
//! - `FANOUT_CHANGES` (default 20000): statements the writer commits;
//! - `FANOUT_CLIENTS` (default 50): SSE clients;
//! - `FANOUT_KEYS` (default 3000): distinct primary keys;
//! - `FANOUT_SEED`: the pseudo-random seed (printed, to replay a failure).

use deltarelay::log::LogReader;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::http::*;
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;

const MARKER_ID: i64 = 1_000_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?}")))
        .unwrap_or(default)
}

/// xorshift64*: enough randomness for a test, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// collection → key JSON text → row; truncate clears the collection.
type ClientState = BTreeMap<String, BTreeMap<String, Value>>;

fn apply_record(state: &mut ClientState, record: &Value) {
    let collection = state
        .entry(record["collection"].as_str().unwrap().to_string())
        .or_default();
    match record["op"].as_str().unwrap() {
        "insert" | "update" => {
            collection.insert(record["key"].to_string(), record["after"].clone());
        }
        "delete" => {
            collection.remove(&record["key"].to_string());
        }
        "truncate" => collection.clear(),
        other => panic!("unexpected op {other}"),
    }
}

/// `public.items` as the clients see it, via Postgres's own row_to_json.
fn table_state(pg: &PgServer) -> ClientState {
    let text = pg.psql(
        "app",
        "SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM items t",
    );
    let rows: Vec<Value> = serde_json::from_str(text.trim()).unwrap();
    let mut state = ClientState::new();
    let table = state.entry("public.items".into()).or_default();
    for row in rows {
        table.insert(json!({"id": row["id"]}).to_string(), row);
    }
    state
}

/// A cursor's sequence number; `0` (from the beginning) is 0.
fn since_seq(cursor: &str) -> u64 {
    if cursor == "0" {
        0
    } else {
        seq_of(cursor)
    }
}

/// What one SSE client saw: its starting cursor and every change event (cursor, record).
struct Seen {
    name: String,
    since: String,
    events: Vec<(u64, Value)>,
    reconnected_after: Option<u64>,
}

/// Reads change events until the marker row; `reconnect_after` drops the connection after that
/// many changes and resumes with `Last-Event-ID`.
async fn run_client(
    addr: SocketAddr,
    name: String,
    since: String,
    reconnect_after: Option<usize>,
) -> Seen {
    let mut client = SseClient::connect(addr, &format!("/v1/stream?since={since}"), None).await;
    assert_eq!(client.status, 200, "{name}");
    let mut seen = Seen {
        name,
        since,
        events: Vec::new(),
        reconnected_after: None,
    };
    let mut last = since_seq(&seen.since);
    let mut ready = false;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(90), client.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no event for 90 s after {} changes (last cursor seq {last}, ready {ready}, since {})",
                    seen.name,
                    seen.events.len(),
                    seen.since
                )
            })
            .unwrap_or_else(|| panic!("{}: stream ended", seen.name));
        if event.event == "ready" {
            assert!(!ready, "{}: a second ready event", seen.name);
            ready = true;
            continue;
        }
        assert_eq!(event.event, "change", "{}", seen.name);
        let id = event.id.clone().expect("change without id");
        let seq = seq_of(&id);
        assert!(
            seq > last,
            "{}: cursor {seq} after {last} (not strictly increasing)",
            seen.name
        );
        last = seq;
        let record: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(record["cursor"].as_str(), Some(id.as_str()));
        let done = record["key"] == json!({ "id": MARKER_ID });
        seen.events.push((seq, record));
        if done {
            return seen;
        }
        if reconnect_after == Some(seen.events.len()) && seen.reconnected_after.is_none() {
            drop(client);
            seen.reconnected_after = Some(seq);
            // The query's `since` is stale on purpose: Last-Event-ID must override it.
            client =
                SseClient::connect(addr, &format!("/v1/stream?since={}", seen.since), Some(&id))
                    .await;
            assert_eq!(client.status, 200);
            ready = false;
        }
    }
}

/// Walks `/v1/changes` from `since` to the end; returns every cursor seen and the last one.
async fn walk_changes(addr: SocketAddr, since: &str, cursors: &mut Vec<String>) -> String {
    let mut since = since.to_string();
    loop {
        let body = get(addr, &format!("/v1/changes?since={since}&limit=10000"), &[])
            .await
            .json();
        for record in body["changes"].as_array().unwrap() {
            cursors.push(record["cursor"].as_str().unwrap().to_string());
        }
        since = body["cursor"].as_str().unwrap().to_string();
        if !body["has_more"].as_bool().unwrap() {
            return since;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sse_clients_join_during_a_write_load_and_build_the_database_state() {
    let started = Instant::now();
    let changes = env_or("FANOUT_CHANGES", 20_000) as usize;
    let clients = env_or("FANOUT_CLIENTS", 50) as usize;
    let keys = env_or("FANOUT_KEYS", 3_000);
    let seed = env_or(
        "FANOUT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    println!("fanout: {changes} changes, {clients} clients, {keys} keys, FANOUT_SEED={seed}");

    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, flag bool)",
    );
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (mut relay, addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);

    // The writer: transactions of 1..=20 statements over `keys` keys.
    let db = testkit::pg::connect(&pg.url("app")).await.unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let written = written.clone();
        let writer_done = writer_done.clone();
        let mut rng = Rng(seed);
        tokio::spawn(async move {
            let mut n = 0;
            let mut txs = 0;
            while n < changes {
                let size = (1 + rng.below(20) as usize).min(changes - n);
                let mut sql = String::from("BEGIN;");
                for _ in 0..size {
                    let id = rng.below(keys);
                    let v = rng.below(1_000_000);
                    sql.push_str(&match rng.below(10) {
                        0..=4 => format!(
                            "INSERT INTO items VALUES ({id}, 'n{v}', {v}, {}) ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty, flag = excluded.flag;",
                            v % 2 == 0
                        ),
                        5..=7 => format!(
                            "UPDATE items SET qty = qty + 1, flag = NOT flag, name = 'u{v}' WHERE id = {id};"
                        ),
                        _ => format!("DELETE FROM items WHERE id = {id};"),
                    });
                }
                sql.push_str("COMMIT;");
                db.batch_execute(&sql).await.unwrap();
                n += size;
                txs += 1;
                written.store(n, Ordering::SeqCst);
            }
            writer_done.store(true, Ordering::SeqCst);
            (db, txs + 1)
        })
    };

    // Clients join at random moments while the writer runs, from 0, the head or a cursor in
    // the middle (cursors known from walking /v1/changes).
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut known: Vec<String> = Vec::new();
    let mut head = "0".to_string();
    let mut tasks = Vec::new();
    for i in 0..clients {
        // Spread the joins over the write: wait for a random share of the next slice.
        let target =
            (changes * i / clients) + rng.below((changes / clients).max(1) as u64) as usize;
        while written.load(Ordering::SeqCst) < target && !writer_done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        head = walk_changes(addr, &head, &mut known).await;
        let (kind, since) = match i % 3 {
            _ if i == 0 => ("0", "0".to_string()),
            0 => ("0", "0".to_string()),
            1 => ("head", head.clone()),
            _ if known.is_empty() => ("0", "0".to_string()),
            _ => (
                "middle",
                known[rng.below(known.len() as u64) as usize].clone(),
            ),
        };
        let reconnect = (i == clients / 2).then_some(1 + rng.below(200) as usize);
        tasks.push(tokio::spawn(run_client(
            addr,
            format!("client {i} from {kind}"),
            since,
            reconnect,
        )));
    }
    let write_started = Instant::now();
    let (db, txs) = writer.await.unwrap();
    // The marker goes in only after every client has chosen its cursor: a client that joined
    // after it (from the head) would otherwise start past it and wait for it forever.
    db.batch_execute(&format!(
        "INSERT INTO items VALUES ({MARKER_ID}, 'marker', 0, true)"
    ))
    .await
    .unwrap();
    println!(
        "fanout: writer committed {changes} statements in {txs} transactions ({:?} after the last join)",
        write_started.elapsed()
    );

    let mut seen = Vec::new();
    for task in tasks {
        seen.push(
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("a client did not reach the marker")
                .unwrap(),
        );
    }
    relay.assert_running();

    // Every client saw exactly the log after its cursor, and built the table's state.
    let table = table_state(&pg);
    let log_json: Vec<(u64, Value)> = LogReader::open(&log_dir)
        .unwrap()
        .entries_after(0, usize::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|e| {
            let record: Value = serde_json::from_str(&e.record).unwrap();
            (seq_of(record["cursor"].as_str().unwrap()), record)
        })
        .collect();
    let marker_at = log_json
        .iter()
        .position(|(_, r)| r["key"] == json!({ "id": MARKER_ID }))
        .expect("the marker is in the log");
    let log_json = &log_json[..=marker_at];
    let mut froms = BTreeMap::<&str, usize>::new();
    let mut reconnected = 0;
    for client in &seen {
        let since = since_seq(&client.since);
        let start = log_json.partition_point(|(s, _)| *s <= since);
        // The log is compacted by key: records superseded later are gone from it, but every
        // record still in it after the client's cursor must have reached the client, once, and
        // identical.
        let got: Vec<u64> = client.events.iter().map(|(s, _)| *s).collect();
        let mut at = 0;
        for (seq, record) in &log_json[start..] {
            while at < got.len() && got[at] < *seq {
                at += 1;
            }
            assert!(
                got.get(at) == Some(seq),
                "{} (since {}): missed the log's record {seq}",
                client.name,
                client.since
            );
            assert_eq!(&client.events[at].1, record, "{}", client.name);
        }
        let mut state = ClientState::new();
        for (_, record) in &log_json[..start] {
            apply_record(&mut state, record);
        }
        for (_, record) in &client.events {
            apply_record(&mut state, record);
        }
        state.retain(|_, rows| !rows.is_empty());
        assert_eq!(
            state, table,
            "{} (since {}): state differs from the database",
            client.name, client.since
        );
        if let Some(after) = client.reconnected_after {
            reconnected += 1;
            // Strictly increasing cursors (no duplicate) and every surviving log record after
            // the Last-Event-ID received (no gap) were checked above; and it did go on.
            let i = got.iter().position(|s| *s == after).unwrap();
            assert!(
                got.len() > i + 1,
                "the reconnected client got nothing after"
            );
            println!(
                "fanout: {} reconnected with Last-Event-ID {after}, resumed at {}",
                client.name,
                got[i + 1]
            );
        }
        let kind = client.name.rsplit(' ').next().unwrap();
        *froms.entry(kind).or_default() += 1;
    }
    assert_eq!(reconnected, 1, "one client reconnected with Last-Event-ID");
    let events: usize = seen.iter().map(|c| c.events.len()).sum();
    println!(
        "fanout: {} clients ({froms:?}) received {events} change events; log has {} records; {} rows; total {:?}",
        seen.len(),
        log_json.len(),
        table.get("public.items").map_or(0, |t| t.len()),
        started.elapsed()
    );
    assert_eq!(relay.terminate(), Some(0));
}
