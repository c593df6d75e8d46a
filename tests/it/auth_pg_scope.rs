//! Row scoping end to end, randomized: a private Postgres, the relay binary with JWT auth and
//! `todos` scoped by `owner = sub`. A writer inserts, updates, moves rows between users, changes
//! keys and deletes (deletes carry only the key: REPLICA IDENTITY DEFAULT). Each user follows
//! `/v1/stream` live and walks `/v1/changes` (from 0, and on from a cursor saved midway):
//! no user ever receives a row, or a delete, of a row that was never theirs, and every user's
//! state ends equal to the database's rows for that user.
//!
//! `DELTARELAY_SCOPE_SEED=<n>` replays one run; `DELTARELAY_SCOPE_ROUNDS=<n>` makes it longer.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::free_port;
use testkit::http::*;
use testkit::pg::PgServer;
use testkit::relay::{postgres_config, start_ready_relay_with};

const SECRET: &str = "scope-test-secret-0123456789abcdef";
const USERS: usize = 5;
const MARKER_BASE: i64 = 900_000;

fn user(i: usize) -> String {
    format!("user{i}")
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "role": "member"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The writer's model of the table: id → owner, plus every (id, owner) that ever existed.
struct Model {
    rows: BTreeMap<i64, String>,
    ever: HashSet<(i64, String)>,
    next_id: i64,
}

impl Model {
    fn owner(&mut self, rng: &mut StdRng) -> String {
        user(rng.gen_range(0..USERS))
    }

    fn existing(&self, rng: &mut StdRng) -> Option<i64> {
        if self.rows.is_empty() {
            return None;
        }
        let n = rng.gen_range(0..self.rows.len());
        self.rows.keys().nth(n).copied()
    }

    fn set(&mut self, id: i64, owner: String) {
        self.ever.insert((id, owner.clone()));
        self.rows.insert(id, owner);
    }

    /// One random statement, applied to the model.
    fn statement(&mut self, rng: &mut StdRng, i: usize) -> String {
        let pick = rng.gen_range(0..100);
        let existing = self.existing(rng);
        match (pick, existing) {
            (0..=34, _) | (_, None) => {
                let id = self.next_id;
                self.next_id += 1;
                let owner = self.owner(rng);
                self.set(id, owner.clone());
                format!("INSERT INTO todos VALUES ({id}, '{owner}', 't{i}');")
            }
            (35..=54, Some(id)) => format!("UPDATE todos SET title = 'u{i}' WHERE id = {id};"),
            (55..=74, Some(id)) => {
                let owner = self.owner(rng);
                self.set(id, owner.clone());
                format!("UPDATE todos SET owner = '{owner}', title = 'm{i}' WHERE id = {id};")
            }
            (75..=84, Some(id)) => {
                // A key change, sometimes with a move.
                let new_id = self.next_id;
                self.next_id += 1;
                let owner = if rng.gen_bool(0.5) {
                    self.owner(rng)
                } else {
                    self.rows[&id].clone()
                };
                self.rows.remove(&id);
                self.set(new_id, owner.clone());
                format!("UPDATE todos SET id = {new_id}, owner = '{owner}' WHERE id = {id};")
            }
            (_, Some(id)) => {
                self.rows.remove(&id);
                format!("DELETE FROM todos WHERE id = {id};")
            }
        }
    }
}

/// The database's rows of one user: key text → row.
fn db_rows(pg: &PgServer, owner: &str) -> BTreeMap<String, Value> {
    let text = pg.psql(
        "app",
        &format!(
            "SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM todos t WHERE owner = '{owner}' AND id < {MARKER_BASE}"
        ),
    );
    let rows: Vec<Value> = serde_json::from_str(text.trim()).unwrap();
    rows.into_iter()
        .map(|row| (json!({"id": row["id"]}).to_string(), row))
        .collect()
}

/// A user's view: applies records, checking each against the ground truth.
#[derive(Clone)]
struct View {
    owner: String,
    state: State,
}

impl View {
    fn apply(&mut self, record: &Value, ever: &HashSet<(i64, String)>) {
        assert_eq!(record["collection"], "public.todos", "{record}");
        let id = record["key"]["id"].as_i64().unwrap();
        match record["op"].as_str().unwrap() {
            "insert" | "update" => assert_eq!(
                record["after"]["owner"], self.owner,
                "{} received another user's row: {record}",
                self.owner
            ),
            "delete" => assert!(
                ever.contains(&(id, self.owner.clone())),
                "{} received the delete of row {id}, which was never theirs: {record}",
                self.owner
            ),
            other => panic!("unexpected op {other}: {record}"),
        }
        apply(&mut self.state, record);
    }

    fn rows(&self) -> BTreeMap<String, Value> {
        self.state
            .iter()
            .filter(|((_, key), _)| {
                serde_json::from_str::<Value>(key).unwrap()["id"]
                    .as_i64()
                    .unwrap()
                    < MARKER_BASE
            })
            .map(|((_, key), row)| (key.clone(), row.clone()))
            .collect()
    }
}

/// Walks `/v1/changes` from `since` to the end, applying every page to `view`; returns the cursor.
async fn walk(
    addr: SocketAddr,
    token: &str,
    since: &str,
    view: &mut View,
    ever: &HashSet<(i64, String)>,
) -> String {
    let bearer = format!("Bearer {token}");
    let mut since = since.to_string();
    loop {
        let response = get(
            addr,
            &format!("/v1/changes?since={since}&limit=23"),
            &[("Authorization", &bearer)],
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let body = response.json();
        for record in body["changes"].as_array().unwrap() {
            view.apply(record, ever);
        }
        since = body["cursor"].as_str().unwrap().to_string();
        if !body["has_more"].as_bool().unwrap() {
            return since;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_sees_exactly_their_rows_and_deletes() {
    let seed: u64 = std::env::var("DELTARELAY_SCOPE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("DELTARELAY_SCOPE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("DELTARELAY_SCOPE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE todos (id bigint PRIMARY KEY, owner text NOT NULL, title text)",
    );
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[auth]
mode = "jwt"
jwt_secret = "{SECRET}"

[collections."public.todos"]
read_claims = {{ role = ["member"] }}
scope = {{ column = "owner", claim = "sub" }}

[limits]
requests_per_second = 1000
burst = 1000
"#
    );
    let port = free_port();
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.todos"],
        port,
    ) + &extra;
    let (mut relay, addr) = start_ready_relay_with(dir.path(), &config, port);

    let tokens: Vec<String> = (0..USERS).map(|i| token(&user(i))).collect();
    let mut streams = Vec::new();
    for token in &tokens {
        let bearer = format!("Bearer {token}");
        let mut client =
            SseClient::connect_with(addr, "/v1/stream", &[("Authorization", &bearer)]).await;
        assert_eq!(client.status, 200);
        let ready = client.next_within(Duration::from_secs(20)).await.unwrap();
        assert_eq!(ready.event, "ready");
        streams.push(client);
    }
    let mut live: Vec<View> = (0..USERS)
        .map(|i| View {
            owner: user(i),
            state: State::new(),
        })
        .collect();

    let mut model = Model {
        rows: BTreeMap::new(),
        ever: HashSet::new(),
        next_id: 1,
    };
    let mut midway: Vec<Option<(View, String)>> = (0..USERS).map(|_| None).collect();
    let mut statements = 0;
    for round in 0..rounds {
        let mut script = String::new();
        for _ in 0..100 {
            if rng.gen_bool(0.2) {
                // A transaction of several statements (insert-then-move, move-then-delete, …).
                script.push_str("BEGIN;\n");
                for _ in 0..rng.gen_range(2..5) {
                    script.push_str(&model.statement(&mut rng, statements));
                    script.push('\n');
                    statements += 1;
                }
                script.push_str("COMMIT;\n");
            } else {
                script.push_str(&model.statement(&mut rng, statements));
                script.push('\n');
                statements += 1;
            }
        }
        tokio::task::block_in_place(|| pg.psql("app", &script));
        if round == rounds / 2 {
            // Delta clients that stop here and catch up from their cursor at the end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (i, token) in tokens.iter().enumerate() {
                let mut view = View {
                    owner: user(i),
                    state: State::new(),
                };
                let cursor = walk(addr, token, "0", &mut view, &model.ever).await;
                midway[i] = Some((view, cursor));
            }
        }
    }
    // One marker row per user: once a user's stream shows it, it has everything before it.
    let mut markers = String::new();
    for i in 0..USERS {
        markers.push_str(&format!(
            "INSERT INTO todos VALUES ({}, '{}', 'marker');\n",
            MARKER_BASE + i as i64,
            user(i)
        ));
        model.set(MARKER_BASE + i as i64, user(i));
    }
    tokio::task::block_in_place(|| pg.psql("app", &markers));

    for (i, client) in streams.iter_mut().enumerate() {
        let marker = json!({"id": MARKER_BASE + i as i64});
        let mut seen = 0;
        loop {
            let event = client
                .next_within(Duration::from_secs(60))
                .await
                .expect("stream ended");
            let record = record_of(&event);
            live[i].apply(&record, &model.ever);
            seen += 1;
            if record["key"] == marker {
                break;
            }
        }
        let expected = db_rows(&pg, &user(i));
        assert_eq!(
            live[i].rows(),
            expected,
            "{}'s live stream state differs from the database ({seen} events)",
            user(i)
        );
        // From the beginning, and from the midway cursor, the delta API agrees.
        let mut fresh = View {
            owner: user(i),
            state: State::new(),
        };
        walk(addr, &tokens[i], "0", &mut fresh, &model.ever).await;
        assert_eq!(fresh.rows(), expected, "{} from 0", user(i));
        let (mut resumed, cursor) = midway[i].take().unwrap();
        let mut replay = resumed.clone();
        walk(addr, &tokens[i], &cursor, &mut resumed, &model.ever).await;
        assert_eq!(
            resumed.rows(),
            expected,
            "{} from the midway cursor",
            user(i)
        );
        // A stream resumed from the midway cursor catches up to the same state.
        // (EventSource style: the token in the query string.)
        let mut client = SseClient::connect(
            addr,
            &format!("/v1/stream?since={cursor}&access_token={}", tokens[i]),
            None,
        )
        .await;
        assert_eq!(client.status, 200);
        loop {
            let event = client.next_within(Duration::from_secs(20)).await.unwrap();
            if event.event == "ready" {
                break;
            }
            replay.apply(&record_of(&event), &model.ever);
        }
        assert_eq!(
            replay.rows(),
            expected,
            "{} streamed from the midway cursor",
            user(i)
        );
    }
    let owners: BTreeSet<&String> = model.rows.values().collect();
    eprintln!(
        "{statements} statements, {} rows left across {} users",
        model.rows.len(),
        owners.len()
    );
    drop(streams);
    assert_eq!(relay.terminate(), Some(0));
    // Tokens never reach the relay's log, not even at debug level.
    let output = relay.output();
    assert!(output.contains("JWT auth"), "{output}");
    for token in &tokens {
        assert!(!output.contains(token.as_str()), "a token was logged");
    }
}
