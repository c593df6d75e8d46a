//! Shapes end to end: a private Postgres, the relay binary, SSE and delta clients with
//! different filters and projections while random updates move rows in and out of them. Each
//! client must end with exactly `SELECT id, <columns> FROM tasks WHERE <filter>`, including
//! the unchanged TOASTed `body` of rows that move in, whether it followed live, caught up from
//! a random mid-stream cursor, or started from nothing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::http::*;
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;

struct ShapeCase {
    filter: &'static str,
    columns: &'static str,
}

const SHAPES: &[ShapeCase] = &[
    ShapeCase {
        filter: "owner = 1",
        columns: "owner,title,body",
    },
    ShapeCase {
        filter: "owner IN (2, 3) AND NOT done",
        columns: "title",
    },
    ShapeCase {
        filter: "title LIKE 't1%' OR owner IS NULL",
        columns: "",
    },
    ShapeCase {
        filter: "owner = $1 AND title <> 'x''y'",
        columns: "done,body",
    },
];

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(shape: &ShapeCase) -> String {
    let mut q = format!("collections=public.tasks&where={}", encode(shape.filter));
    if !shape.columns.is_empty() {
        q.push_str(&format!("&columns={}", encode(shape.columns)));
    }
    q + "&params%5B1%5D=4"
}

/// What Postgres says the shape holds: key text → projected row.
fn expected(pg: &PgServer, shape: &ShapeCase) -> BTreeMap<String, Value> {
    let columns = if shape.columns.is_empty() {
        "*".to_string()
    } else {
        format!("id, {}", shape.columns)
    };
    let filter = shape.filter.replace("$1", "4");
    let text = pg.psql(
        "app",
        &format!(
            "SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM (SELECT {columns} FROM tasks WHERE {filter}) t"
        ),
    );
    let rows: Vec<Value> = serde_json::from_str(text.trim()).unwrap();
    rows.into_iter()
        .map(|row| (json!({"id": row["id"]}).to_string(), row))
        .collect()
}

fn as_table(state: &State) -> BTreeMap<String, Value> {
    state
        .iter()
        .map(|((_, key), row)| (key.clone(), row.clone()))
        .collect()
}

/// Walks /v1/changes from `since` to the end, applying what it gets to `state`.
async fn catch_up(addr: std::net::SocketAddr, q: &str, since: &str, state: &mut State) {
    let mut since = since.to_string();
    for _ in 0..10_000 {
        let response = get(addr, &format!("/v1/changes?{q}&since={since}&limit=7"), &[]).await;
        assert_eq!(response.status, 200, "{}", response.body);
        let body = response.json();
        for record in body["changes"].as_array().unwrap() {
            apply(state, record);
        }
        since = body["cursor"].as_str().unwrap().to_string();
        if !body["has_more"].as_bool().unwrap() {
            return;
        }
    }
    panic!("/v1/changes never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_shapes_end_with_exactly_their_rows() {
    let pg = PgServer::start();
    // `body` is large and incompressible: stored out of line, so updates that leave it alone
    // do not send it (unchanged TOAST).
    pg.psql(
        "app",
        "CREATE TABLE tasks (id int PRIMARY KEY, owner int, title text, body text, secret text, done bool);
         INSERT INTO tasks SELECT i, i % 5, 't' || i, (SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 120) g WHERE i > 0), 's', false
           FROM generate_series(1, 40) i;",
    );
    let dir = tempfile::tempdir().unwrap();
    let (_relay, addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.tasks"]);

    let collections = get(addr, "/v1/collections", &[]).await.json();
    assert_eq!(
        collections["collections"][0]["columns"],
        json!([
            {"name": "id", "type": "int4"}, {"name": "owner", "type": "int4"},
            {"name": "title", "type": "text"}, {"name": "body", "type": "text"},
            {"name": "secret", "type": "text"}, {"name": "done", "type": "bool"}
        ])
    );

    let mut clients = Vec::new();
    for shape in SHAPES {
        let mut client =
            SseClient::connect(addr, &format!("/v1/stream?{}", query(shape)), None).await;
        assert_eq!(client.status, 200);
        let mut state = State::new();
        loop {
            let event = client.next_within(Duration::from_secs(20)).await.unwrap();
            if event.event == "ready" {
                break;
            }
            apply(&mut state, &record_of(&event));
        }
        clients.push((client, state, Vec::<(String, State)>::new()));
    }

    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut script = String::new();
    for i in 0..400 {
        let id = rng.gen_range(1..60);
        let owner = match rng.gen_range(0..7) {
            6 => "NULL".to_string(),
            n => n.to_string(),
        };
        script.push_str(&match rng.gen_range(0..8) {
            // Moves rows between owners without touching the body (unchanged TOAST).
            0..=2 => format!("UPDATE tasks SET owner = {owner} WHERE id = {id};\n"),
            3 => format!("UPDATE tasks SET done = NOT done, title = 't{i}' WHERE id = {id};\n"),
            4 => format!("UPDATE tasks SET secret = 's{i}' WHERE id = {id};\n"),
            5 => format!("DELETE FROM tasks WHERE id = {id};\n"),
            6 => format!(
                "INSERT INTO tasks VALUES ({id}, {owner}, 'x''y', repeat('b', 3000), 's', false) ON CONFLICT (id) DO UPDATE SET owner = excluded.owner;\n"
            ),
            _ => format!(
                "BEGIN; UPDATE tasks SET owner = {owner} WHERE id = {id}; UPDATE tasks SET owner = {} WHERE id = {id}; COMMIT;\n",
                rng.gen_range(0..6)
            ),
        });
    }
    tokio::task::block_in_place(|| pg.psql("app", &script));

    for (n, shape) in SHAPES.iter().enumerate() {
        let want = expected(&pg, shape);
        let (client, state, snapshots) = &mut clients[n];
        // Live: read until the client's state is the shape's (or it stops changing).
        let mut events = 0;
        while as_table(state) != want {
            let Some(event) = client.next_within(Duration::from_secs(20)).await else {
                break;
            };
            if event.event != "change" {
                continue;
            }
            let record = record_of(&event);
            if record["op"] == "delete" {
                // Live, a delete comes only for a row that was in the shape.
                let id = ("public.tasks".to_string(), record["key"].to_string());
                assert!(
                    state.contains_key(&id),
                    "a live delete of a row never sent: {record}"
                );
            }
            apply(state, &record);
            events += 1;
            if rng.gen_bool(0.05) {
                snapshots.push((
                    record["cursor"].as_str().unwrap().to_string(),
                    state.clone(),
                ));
            }
        }
        assert_eq!(
            as_table(state),
            want,
            "live client of {:?} after {events} events",
            shape.filter
        );
        for row in state.values() {
            assert!(
                row.get("secret").is_none() || shape.columns.is_empty(),
                "{row}"
            );
        }

        // Catch-up from mid-stream cursors, from the state the live client had there.
        let q = query(shape);
        for (cursor, mut at) in snapshots.drain(..) {
            catch_up(addr, &q, &cursor, &mut at).await;
            assert_eq!(
                as_table(&at),
                want,
                "catch-up of {:?} from {cursor}",
                shape.filter
            );
        }
        // From nothing: /v1/changes and a new SSE client.
        let mut fresh = State::new();
        catch_up(addr, &q, "0", &mut fresh).await;
        assert_eq!(as_table(&fresh), want, "from 0: {:?}", shape.filter);
        let mut replay = SseClient::connect(addr, &format!("/v1/stream?{q}"), None).await;
        let mut state = State::new();
        loop {
            let event = replay.next_within(Duration::from_secs(20)).await.unwrap();
            if event.event == "ready" {
                break;
            }
            let record = record_of(&event);
            assert_ne!(
                record["op"], "delete",
                "a replay from 0 sends no deletes: {record}"
            );
            apply(&mut state, &record);
        }
        assert_eq!(as_table(&state), want, "SSE from 0: {:?}", shape.filter);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_shapes_are_refused_with_the_position() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE tasks (id int PRIMARY KEY, owner int, title text); INSERT INTO tasks VALUES (1, 1, 'a');
         CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1);",
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr) = start_ready_relay(
        &pg.url("app"),
        dir.path(),
        &["public.tasks", "public.other"],
    );
    let deep = format!("{}owner = 1{}", "(".repeat(200), ")".repeat(200));
    let long = vec!["owner = 1"; 600].join(" OR ");
    let cases: Vec<(String, Option<usize>)> = vec![
        ("nope = 1".into(), Some(1)),
        ("owner = 'x'".into(), Some(9)),
        ("title = 5".into(), Some(9)),
        ("owner = 1; DROP TABLE tasks".into(), Some(10)),
        ("owner = 1 OR other.id = 1".into(), Some(14)),
        ("title = '".into(), Some(9)),
        ("pg_sleep(10) IS NULL".into(), Some(1)),
        ("owner = $3".into(), Some(9)),
        ("\u{0}".into(), Some(1)),
        ("é = 'ü'".into(), Some(1)),
        (deep, None),
        (long, None),
    ];
    for (filter, position) in cases {
        for route in ["/v1/changes", "/v1/stream"] {
            let path = format!("{route}?collections=public.tasks&where={}", encode(&filter));
            let response = get(addr, &path, &[]).await;
            assert_eq!(response.status, 400, "{filter:?}: {}", response.body);
            let body = response.json();
            assert_eq!(body["error"], "bad_where", "{filter:?}: {body}");
            if let Some(position) = position {
                assert_eq!(body["position"], position, "{filter:?}: {body}");
            }
        }
    }
    for path in [
        "/v1/changes?where=owner%20%3D%201",
        "/v1/changes?collections=public.tasks,public.other&where=owner%20%3D%201",
        "/v1/changes?collections=public.tasks&columns=nope",
        "/v1/changes?collections=public.tasks&where=owner%3D1&params%5B0%5D=1",
    ] {
        let response = get(addr, path, &[]).await;
        assert_eq!(response.status, 400, "{path}: {}", response.body);
    }
    relay.assert_running();
    assert_eq!(pg.psql("app", "SELECT count(*) FROM tasks").trim(), "1");
}
