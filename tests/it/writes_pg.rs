//! `POST /v1/mutations` end to end: a private Postgres, the relay binary with JWT auth, and
//! real HTTP. Every status, every conflict policy, atomic and non-atomic batches, row scopes
//! with two users, row-level security through `db_role`, the type round trip, bad input,
//! a relay killed between the upstream commit and the response, and 50 concurrent clients.

use serde_json::{json, Value};
use testkit::free_port;
use testkit::http::{post, seq_of};
use testkit::pg::{PgServer, StopMode};
use testkit::relay::start_ready_relay_with;
use testkit::writes::{status, MutationClient, SECRET};

const SCHEMA: &str = r#"
CREATE ROLE app_user NOLOGIN;
CREATE TABLE todos (id serial PRIMARY KEY, owner text NOT NULL, title text NOT NULL CHECK (title <> ''),
    done boolean NOT NULL DEFAULT false, version int NOT NULL DEFAULT 1, code text UNIQUE, secret text);
CREATE TABLE notes (id int PRIMARY KEY, body text, updated_at timestamptz);
CREATE TABLE cw (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 1);
CREATE TABLE secure (id int PRIMARY KEY, owner text NOT NULL, body text);
ALTER TABLE secure ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON secure
    USING (owner = current_setting('request.jwt.claims', true)::json->>'sub')
    WITH CHECK (owner = current_setting('request.jwt.claims', true)::json->>'sub');
GRANT USAGE ON SCHEMA public TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON secure TO app_user;
INSERT INTO secure VALUES (1, 'alice', 'a'), (2, 'bob', 'b');
CREATE TABLE ro (id int PRIMARY KEY, body text);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE types (id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, big bigint, f4 real,
    f8 double precision, fnan double precision, num numeric(20,6), b boolean, t text,
    vc varchar(10), ch char(3), by bytea, j json, jb jsonb, ts timestamp, tstz timestamptz,
    d date, tm time, ttz timetz, iv interval, u uuid, ip inet, mac macaddr, m mood, dom posint,
    ai int[], at text[], a2 int[][], ajb jsonb[], bits bit(4), vb varbit, pt point,
    rng int4range, x xml, o oid, nul text);
INSERT INTO types VALUES (1, -3, 7, 9007199254740991, 9223372036854775807, 1.5, 2.25, 'NaN',
    12345.678901, true, E'h"\u00e9\\llo ''q''', 'vc', 'ab', '\x00ff10', '{"a":[1,2]}',
    '{"b": null, "a": 1}', '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+02',
    '2024-02-29', '12:34:56', '12:34:56+05:30', '1 day 02:03:04',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '08:00:2b:01:02:03', 'happy', 5,
    '{1,NULL,3}', '{"a,b","c\"d",NULL,"NULL"}', '{{1,2},{3,4}}', ARRAY['{"x": 1}'::jsonb],
    B'1010', B'101', '(1.5,2)', '[1,5)', '<a>x</a>', 42, NULL);
"#;

const TABLES: &str = r#"["public.todos", "public.notes", "public.cw", "public.secure", "public.ro", "public.types"]"#;

fn config(url: &str, dir: &std::path::Path, port: u16) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
[log]
dir = {log:?}
[auth]
mode = "jwt"
jwt_secret = "{SECRET}"
[limits]
max_body = 65536
[[sources]]
name = "app_pg"
kind = "postgres"
url = {url:?}
slot = "deltarelay_test"
publication = "deltarelay_test"
tables = {TABLES}

[collections."public.todos"]
scope = {{ column = "owner", claim = "sub" }}
[collections."public.todos".write]
claims = {{ role = ["user"] }}
columns = ["title", "done", "code"]
version_column = "version"
[collections."public.notes"]
read_claims = {{ role = ["admin"] }}
[collections."public.notes".write]
claims = {{ role = ["user"] }}
conflict = "last_write_wins"
lww_column = "updated_at"
[collections."public.cw".write]
claims = {{ role = ["user"] }}
conflict = "client_wins"
version_column = "version"
[collections."public.secure".write]
claims = {{ role = ["user"] }}
db_role = "app_user"
[collections."public.ro"]
[collections."public.types".write]
claims = {{ role = ["user"] }}
conflict = "client_wins"
"#,
        log = dir.join("log").display().to_string(),
    )
}

fn setup() -> Option<(PgServer, tempfile::TempDir)> {
    if !testkit::require(
        testkit::runs("initdb", &["--version"]),
        "initdb (PostgreSQL) is not installed",
    ) {
        return None;
    }
    let pg = PgServer::start();
    pg.psql("app", SCHEMA);
    Some((pg, tempfile::tempdir().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_policies_scopes_rls_and_bad_input() {
    let Some((pg, dir)) = setup() else { return };
    let port = free_port();
    let (mut relay, addr) =
        start_ready_relay_with(dir.path(), &config(&pg.url("app"), dir.path(), port), port);
    let alice = MutationClient::new(addr, "alice", "user");
    let bob = MutationClient::new(addr, "bob", "user");
    let guest = MutationClient::new(addr, "carol", "guest");

    // Applied, scoped to the caller, and in the log at the returned cursor (read-your-writes).
    let before = alice.changes("since=0").await["cursor"].clone();
    let response = alice
        .send(
            &json!({"mutations": [{"id": "t1", "collection": "public.todos", "op": "insert",
            "value": {"title": "milk", "code": "c1"}}], "since": before}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    let result = &body["results"][0];
    assert_eq!(status(result), "applied");
    let id = result["key"]["id"].as_i64().unwrap();
    assert_eq!(
        pg.psql("app", &format!("SELECT owner FROM todos WHERE id = {id}")),
        "alice"
    );
    assert_eq!(body["visible"], true);
    let cursor = body["cursor"].as_str().unwrap().to_string();
    let pulled = body["changes"].as_array().unwrap();
    assert!(
        pulled.iter().any(|c| c["key"]["id"] == id),
        "the pull sees the write: {body}"
    );
    let logged = alice.changes("since=0&collections=public.todos").await;
    let record = logged["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"]["id"] == id)
        .unwrap()
        .clone();
    assert!(seq_of(record["cursor"].as_str().unwrap()) <= seq_of(&cursor));
    assert_eq!(record["after"]["title"], "milk");

    // Duplicate: the same id again is not applied again and returns the first key.
    let again = alice
        .one(
            json!({"id": "t1", "collection": "public.todos", "op": "insert",
        "value": {"title": "milk", "code": "c1"}}),
        )
        .await;
    assert_eq!(status(&again), "duplicate");
    assert_eq!(again["key"]["id"], id);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM todos"), "1");
    // Ids are per caller: bob's "t1" is his own.
    let bobs = bob.one(json!({"id": "t1", "collection": "public.todos", "op": "insert", "value": {"title": "bread"}})).await;
    assert_eq!(status(&bobs), "applied");
    let bob_id = bobs["key"]["id"].as_i64().unwrap();

    // reject + version_column: the `if` must hold; the version moves on every update.
    let update = |mid: &str, version: i64, title: &str| {
        json!({"id": mid, "collection": "public.todos", "op": "update", "key": {"id": id},
            "value": {"title": title}, "if": {"version": version}})
    };
    assert_eq!(
        status(&alice.one(update("u1", 1, "oat milk")).await),
        "applied"
    );
    let conflict = alice.one(update("u2", 1, "soy milk")).await;
    assert_eq!(status(&conflict), "conflict");
    assert_eq!(conflict["current"]["version"], 2);
    assert_eq!(conflict["current"]["title"], "oat milk");
    let missing = alice
        .one(
            json!({"id": "u3", "collection": "public.todos", "op": "update",
        "key": {"id": 9999}, "value": {"title": "x"}}),
        )
        .await;
    assert_eq!(status(&missing), "conflict");
    assert_eq!(missing["current"], Value::Null);

    // Scopes: bob's rows look missing to alice; no insert or move into another scope.
    for op in [
        json!({"id": "s1", "collection": "public.todos", "op": "update", "key": {"id": bob_id}, "value": {"title": "mine"}}),
        json!({"id": "s2", "collection": "public.todos", "op": "delete", "key": {"id": bob_id}}),
    ] {
        let result = alice.one(op).await;
        assert_eq!(status(&result), "conflict", "{result}");
        assert_eq!(result["current"], Value::Null);
    }
    for op in [
        json!({"id": "s3", "collection": "public.todos", "op": "insert", "value": {"title": "x", "owner": "bob"}}),
        json!({"id": "s4", "collection": "public.todos", "op": "update", "key": {"id": id}, "value": {"owner": "bob"}}),
        json!({"id": "s5", "collection": "public.todos", "op": "update", "key": {"id": id}, "value": {"secret": "x"}}),
    ] {
        let result = alice.one(op).await;
        assert_eq!(status(&result), "forbidden", "{result}");
    }
    assert_eq!(
        pg.psql(
            "app",
            &format!("SELECT owner || ':' || title FROM todos WHERE id = {bob_id}")
        ),
        "bob:bread"
    );
    let bobs_view = bob.changes("since=0&collections=public.todos").await;
    assert!(
        bobs_view["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["key"]["id"] == bob_id),
        "{bobs_view}"
    );
    // Write claims.
    let denied = guest
        .one(json!({"id": "g1", "collection": "public.cw", "op": "insert", "value": {"id": 1}}))
        .await;
    assert_eq!(status(&denied), "forbidden");
    let read_only = alice
        .one(json!({"id": "r1", "collection": "public.ro", "op": "insert", "value": {"id": 1}}))
        .await;
    assert_eq!(status(&read_only), "forbidden");

    // Rejected: a constraint, with its SQLSTATE and name.
    let rejected = alice.one(json!({"id": "c1", "collection": "public.todos", "op": "insert", "value": {"title": "x", "code": "c1"}})).await;
    assert_eq!(status(&rejected), "rejected");
    assert_eq!(rejected["error"]["code"], "23505");
    assert_eq!(rejected["error"]["constraint"], "todos_code_key");

    // Atomic: all or nothing. Not atomic: each on its own.
    let batch = |prefix: &str, atomic: bool| {
        json!({"atomic": atomic, "mutations": [
        {"id": format!("{prefix}a"), "collection": "public.todos", "op": "insert", "value": {"title": format!("{prefix} ok")}},
        {"id": format!("{prefix}b"), "collection": "public.todos", "op": "insert", "value": {"title": ""}},
        {"id": format!("{prefix}c"), "collection": "public.todos", "op": "insert", "value": {"title": format!("{prefix} late")}}]})
    };
    let response = alice.send(&batch("at", true)).await.json();
    let statuses: Vec<&str> = response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(status)
        .collect();
    assert_eq!(statuses, ["rolled_back", "rejected", "rolled_back"]);
    assert_eq!(response["results"][1]["error"]["code"], "23514");
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM todos WHERE title LIKE 'at %'"),
        "0"
    );
    let response = alice.send(&batch("na", false)).await.json();
    let statuses: Vec<&str> = response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(status)
        .collect();
    assert_eq!(statuses, ["applied", "rejected", "applied"]);
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM todos WHERE title LIKE 'na %'"),
        "2"
    );
    // A duplicate never rolls a batch back; a conflict does.
    let response = alice.send(&json!({"mutations": [
        {"id": "t1", "collection": "public.todos", "op": "insert", "value": {"title": "milk"}},
        {"id": "m2", "collection": "public.todos", "op": "update", "key": {"id": id}, "value": {"title": "m2"}, "if": {"version": 1}},
        {"id": "m3", "collection": "public.todos", "op": "insert", "value": {"title": "m3"}}]})).await.json();
    let statuses: Vec<&str> = response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(status)
        .collect();
    assert_eq!(statuses, ["duplicate", "conflict", "rolled_back"]);

    // last_write_wins: older (or equal) times are stale; deletes too.
    let note = |mid: &str, op: &str, at: &str, body: Value| {
        let mut m = json!({"id": mid, "collection": "public.notes", "op": op, "at": at});
        match op {
            "insert" => m["value"] = json!({"id": 1, "body": body}),
            "update" => {
                m["key"] = json!({"id": 1});
                m["value"] = json!({"body": body});
            }
            _ => m["key"] = json!({"id": 1}),
        }
        m
    };
    assert_eq!(
        status(
            &alice
                .one(note("n1", "insert", "2026-01-01T10:00:00Z", json!("v1")))
                .await
        ),
        "applied"
    );
    let stale = alice
        .one(note("n2", "update", "2026-01-01T09:00:00Z", json!("old")))
        .await;
    assert_eq!(status(&stale), "stale");
    // Alice may write notes but not read them: `current` never shows her the row.
    assert_eq!(stale["current"], Value::Null, "{stale}");
    assert_eq!(
        status(
            &alice
                .one(note("n3", "update", "2026-01-01T10:00:00Z", json!("same")))
                .await
        ),
        "stale"
    );
    assert_eq!(
        status(
            &alice
                .one(note("n4", "update", "2026-01-01T11:00:00Z", json!("v2")))
                .await
        ),
        "applied"
    );
    assert_eq!(
        status(
            &alice
                .one(note("n5", "delete", "2026-01-01T10:30:00Z", json!(null)))
                .await
        ),
        "stale"
    );
    assert_eq!(
        pg.psql("app", "SELECT body || ' ' || updated_at FROM notes"),
        "v2 2026-01-01 11:00:00+00"
    );
    let no_at = alice.send(&json!({"mutations": [{"id": "n6", "collection": "public.notes", "op": "update", "key": {"id": 1}, "value": {"body": "x"}}]})).await;
    assert_eq!(no_at.status, 400);
    assert!(no_at.body.contains("mutations[0].at"), "{}", no_at.body);
    assert_eq!(
        status(
            &alice
                .one(note("n7", "delete", "2026-01-01T12:00:00Z", json!(null)))
                .await
        ),
        "applied"
    );
    let gone = alice
        .one(note("n8", "update", "2026-01-01T13:00:00Z", json!("late")))
        .await;
    assert_eq!(status(&gone), "conflict", "delete wins: {gone}");
    assert_eq!(gone["current"], Value::Null);

    // client_wins: `if` is ignored; the version still moves.
    assert_eq!(status(&alice.one(json!({"id": "w1", "collection": "public.cw", "op": "insert", "value": {"id": 1, "body": "a"}})).await), "applied");
    let wins = alice.one(json!({"id": "w2", "collection": "public.cw", "op": "update", "key": {"id": 1}, "value": {"body": "b"}, "if": {"version": 77}})).await;
    assert_eq!(status(&wins), "applied");
    assert_eq!(pg.psql("app", "SELECT body || version FROM cw"), "b2");

    // Row-level security through db_role: the database's own policies decide.
    let rls = |mid: &str, op: &str, key: i64, value: Value| {
        let mut m = json!({"id": mid, "collection": "public.secure", "op": op});
        if op == "insert" {
            m["value"] = value
        } else {
            m["key"] = json!({"id": key});
            if op == "update" {
                m["value"] = value
            }
        }
        m
    };
    assert_eq!(
        status(
            &alice
                .one(rls("l1", "update", 1, json!({"body": "a2"})))
                .await
        ),
        "applied"
    );
    let hidden = alice
        .one(rls("l2", "update", 2, json!({"body": "stolen"})))
        .await;
    assert_eq!(
        (status(&hidden), &hidden["current"]),
        ("conflict", &Value::Null)
    );
    assert_eq!(
        status(&alice.one(rls("l3", "delete", 2, json!(null))).await),
        "conflict"
    );
    let policy = alice
        .one(rls(
            "l4",
            "insert",
            0,
            json!({"id": 3, "owner": "bob", "body": "x"}),
        ))
        .await;
    assert_eq!(status(&policy), "forbidden", "{policy}");
    assert_eq!(policy["error"]["code"], "42501");
    assert_eq!(
        status(
            &alice
                .one(rls(
                    "l5",
                    "insert",
                    0,
                    json!({"id": 4, "owner": "alice", "body": "x"})
                ))
                .await
        ),
        "applied"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(id || owner || body, ',' ORDER BY id) FROM secure"
        ),
        "1alicea2,2bobb,4alicex"
    );

    // The type round trip: a row read from /v1/changes and written back is unchanged.
    let types = alice.changes("since=0&collections=public.types").await;
    let row = types["changes"][0]["after"].clone();
    let text = |id: i64| {
        pg.psql(
            "app",
            &format!("SELECT substr(t::text, strpos(t::text, ',')) FROM types t WHERE id = {id}"),
        )
    };
    let original = text(1);
    let mut value = row.as_object().unwrap().clone();
    value.remove("id");
    let back = alice.one(json!({"id": "y1", "collection": "public.types", "op": "update", "key": {"id": 1}, "value": value})).await;
    assert_eq!(status(&back), "applied", "{back}");
    assert_eq!(text(1), original);
    value.insert("id".into(), json!(2));
    let copy = alice
        .one(json!({"id": "y2", "collection": "public.types", "op": "insert", "value": value}))
        .await;
    assert_eq!(status(&copy), "applied", "{copy}");
    assert_eq!(text(2), original);

    // Bad input: clear errors, never a 500, the database unchanged.
    let count = pg.psql("app", "SELECT count(*) FROM todos");
    let one = |m: Value| json!({"mutations": [m]}).to_string();
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"mutations\": [".into(), 400, "not valid JSON"),
        ("[]".into(), 400, "object"),
        ("{\"mutations\": []}".into(), 400, "empty"),
        (json!({"mutations": [{"id": "d", "collection": "public.todos", "op": "insert", "value": {"title": "a"}},
                              {"id": "d", "collection": "public.todos", "op": "insert", "value": {"title": "b"}}]}).to_string(), 400, "mutations[1].id"),
        (one(json!({"id": "b1", "collection": "public.todos", "op": "insert", "value": {"title": "a", "done": "yes"}})), 400, "mutations[0].value.done"),
        (one(json!({"id": "b2", "collection": "public.todos", "op": "update", "value": {"title": "a"}})), 400, "mutations[0].key"),
        (one(json!({"id": "b3", "collection": "public.todos", "op": "upsert", "value": {"title": "a"}})), 400, "mutations[0].op"),
        (one(json!({"id": "b 4", "collection": "public.todos", "op": "insert", "value": {"title": "a"}})), 400, "mutations[0].id"),
        (one(json!({"id": "b5", "collection": "public.todos", "op": "update", "key": {"title": "x"}, "value": {"title": "a"}})), 400, "key.title"),
        (one(json!({"id": "b6", "collection": "public.todos; DROP TABLE todos", "op": "insert", "value": {"title": "a"}})), 404, "mutations[0].collection"),
        (one(json!({"id": "b7", "collection": "public.nope", "op": "insert", "value": {"title": "a"}})), 404, "public.nope"),
        (one(json!({"id": "b8", "collection": "public.todos", "op": "insert", "value": {"title\"); DROP TABLE todos; --": "a"}})), 404, "DROP TABLE"),
        (json!({"mutations": vec![json!({"id": "z", "collection": "public.todos", "op": "insert", "value": {"title": "x".repeat(100)}}); 1001]}).to_string(), 413, ""),
        (one(json!({"id": "b9", "collection": "public.todos", "op": "insert", "value": {"title": "x".repeat(70_000)}})), 413, "max_body"),
    ];
    for (body, expected, needle) in &cases {
        let response = alice.raw(body).await;
        assert_eq!(
            response.status,
            *expected,
            "{}: {}",
            &body[..body.len().min(200)],
            response.body
        );
        assert!(
            response.body.contains(needle),
            "{needle}: {}",
            response.body
        );
        assert!(response.json()["message"].is_string());
    }
    assert_eq!(pg.psql("app", "SELECT count(*) FROM todos"), count);
    // Injection-shaped values are just values.
    let sly = "'); DROP TABLE todos; --";
    let stored = alice.one(json!({"id": "b10", "collection": "public.todos", "op": "insert", "value": {"title": sly}})).await;
    assert_eq!(status(&stored), "applied");
    assert_eq!(
        pg.psql(
            "app",
            &format!("SELECT title FROM todos WHERE id = {}", stored["key"]["id"])
        ),
        sly
    );
    // A value the type rejects is a per-mutation status, and an atomic batch stays whole.
    let response = alice.send(&json!({"mutations": [
        {"id": "b11", "collection": "public.todos", "op": "insert", "value": {"title": "fine"}},
        {"id": "b12", "collection": "public.types", "op": "insert", "value": {"id": 5, "d": "not a date"}}]})).await.json();
    assert_eq!(response["results"][0]["status"], "rolled_back");
    assert_eq!(response["results"][1]["error"]["code"], "22007");
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM todos WHERE title = 'fine'"),
        "0"
    );

    // 401 without a token; 429 past the rate limit.
    let anonymous = post(addr, "/v1/mutations", &[], &one(json!({"id": "a", "collection": "public.todos", "op": "insert", "value": {"title": "a"}}))).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let spammer = MutationClient::new(addr, "spammer", "user");
    let mut limited = false;
    for _ in 0..300 {
        let response = spammer.raw("{}").await;
        if response.status == 429 {
            assert!(response.header("retry-after").is_some());
            limited = true;
            break;
        }
        assert_eq!(response.status, 400);
    }
    assert!(limited, "no 429 after 300 quick requests");

    // 503 when the source database is down; nothing was applied, so a retry is safe.
    pg.stop(StopMode::Fast);
    let down = alice.raw(&one(json!({"id": "p1", "collection": "public.todos", "op": "insert", "value": {"title": "later"}}))).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.header("retry-after").is_some());
    relay.assert_running();
    pg.start_again();
}
