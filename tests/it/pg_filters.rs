//! Per-table column lists and row filters (Postgres 15+), end to end: `exclude_columns` /
//! `columns` / `where` in a table entry become the publication's column list and row filter,
//! so an excluded column or row never reaches the relay (neither streamed nor copied); a
//! changed entry takes effect on restart with a copy of what became visible and deletes of
//! what no longer is; entries Postgres would refuse (a bad `where`, a column list without the
//! key, an unknown column) leave that table unsynced, named with the fix, and the rest flow.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use testkit::free_port;
use testkit::http::get;
use testkit::pg::PgServer;
use testkit::relay::{client_state, read_log, start_ready_relay_with, wait_until, RelayProcess};

fn config(pg: &PgServer, dir: &Path, port: u16, users_entry: &str) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:{port}"

[log]
dir = {log:?}

[[sources]]
name = "app_pg"
kind = "postgres"
url = {url:?}
slot = "deltarelay_test"
publication = "deltarelay_test"
tables = [{users_entry}, "public.items"]
"#,
        log = dir.join("log").display().to_string(),
        url = pg.url("app"),
    )
}

/// Every byte the log keeps on disk (the database, its WAL), as text.
fn log_bytes(dir: &Path) -> String {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.join("log")).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn users_in_log(dir: &Path) -> BTreeMap<String, Value> {
    client_state(&read_log(&dir.join("log")))
        .remove("public.users")
        .unwrap_or_default()
}

fn wait_users(pg: &PgServer, dir: &Path, relay: &mut RelayProcess, visible: &str, what: &str) {
    let query = format!("(SELECT tenant, id, name FROM users WHERE {visible})");
    wait_until(Duration::from_secs(60), what, || {
        relay.assert_running();
        users_in_log(dir) == pg.table_state("app", &query, &["tenant", "id"])
    });
}

#[test]
fn an_excluded_column_and_rows_never_leave_the_database() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE users (tenant int, id int, name text, password_hash text,
                             PRIMARY KEY (tenant, id));
         INSERT INTO users SELECT g % 3, g, 'user' || g, 'SECRET-' || g FROM generate_series(1, 30) g;
         CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let entry =
        r#"{ name = "public.users", exclude_columns = ["password_hash"], where = "tenant = 1" }"#;
    let (mut relay, _addr) =
        start_ready_relay_with(dir.path(), &config(&pg, dir.path(), port, entry), port);
    wait_users(
        &pg,
        dir.path(),
        &mut relay,
        "tenant = 1",
        "the filtered copy",
    );
    assert_eq!(users_in_log(dir.path()).len(), 10);

    // The application's writes keep working (Postgres accepts UPDATE/DELETE on the table),
    // and only tenant 1's rows, without the hash, arrive.
    pg.psql(
        "app",
        "INSERT INTO users VALUES (1, 100, 'new', 'SECRET-100'), (2, 101, 'other', 'SECRET-101');
         UPDATE users SET password_hash = 'SECRET-changed', name = 'renamed' WHERE id = 1;
         UPDATE users SET password_hash = 'SECRET-only' WHERE id = 4;
         UPDATE users SET tenant = 2 WHERE id = 7;
         DELETE FROM users WHERE id = 10;
         DELETE FROM users WHERE id = 2;",
    );
    wait_users(
        &pg,
        dir.path(),
        &mut relay,
        "tenant = 1",
        "the filtered changes",
    );
    for record in read_log(&dir.path().join("log")) {
        assert!(
            !format!("{record:?}").contains("password_hash"),
            "{record:?}"
        );
    }

    // Wider on restart: tenant 2 becomes visible (copied), including a change made while the
    // relay was stopped.
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    pg.psql(
        "app",
        "UPDATE users SET name = 'while stopped' WHERE id = 5",
    );
    let entry = r#"{ name = "public.users", columns = ["tenant", "id", "name"], where = "tenant IN (1, 2)" }"#;
    std::fs::write(
        dir.path().join("deltarelay.toml"),
        config(&pg, dir.path(), port, entry),
    )
    .unwrap();
    relay.spawn();
    wait_users(
        &pg,
        dir.path(),
        &mut relay,
        "tenant IN (1, 2)",
        "the newly visible rows",
    );

    // Narrower on restart: tenant 1's rows leave (deleted), while writes go on.
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
    let entry =
        r#"{ name = "public.users", exclude_columns = ["password_hash"], where = "tenant = 2" }"#;
    std::fs::write(
        dir.path().join("deltarelay.toml"),
        config(&pg, dir.path(), port, entry),
    )
    .unwrap();
    relay.spawn();
    pg.psql(
        "app",
        "INSERT INTO users VALUES (1, 200, 'x', 'SECRET-200'), (2, 201, 'y', 'SECRET-201')",
    );
    wait_users(
        &pg,
        dir.path(),
        &mut relay,
        "tenant = 2",
        "tenant 1's rows to leave",
    );
    pg.psql("app", "UPDATE users SET name = 'last' WHERE id = 201");
    wait_users(
        &pg,
        dir.path(),
        &mut relay,
        "tenant = 2",
        "streaming after the narrowing",
    );

    assert!(
        !log_bytes(dir.path()).contains("SECRET"),
        "no password hash is anywhere in the log's files"
    );
    assert!(
        !relay.output().contains("SECRET"),
        "nor in the relay's output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_postgres_would_refuse_leave_only_their_table_unsynced() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, name text);
         CREATE TABLE c (id int PRIMARY KEY, password text);
         CREATE TABLE d (id int PRIMARY KEY, owner text);
         CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');
         INSERT INTO b VALUES (1, 'x');",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let entries = r#"{ name = "public.a", where = "nosuch > 1" },
        { name = "public.b", columns = ["name"] },
        { name = "public.c", exclude_columns = ["pasword"] },
        { name = "public.d", where = "owner = 'ann'" }"#;
    let config = config(&pg, dir.path(), port, entries);
    let (mut relay, addr) = start_ready_relay_with(dir.path(), &config, port);
    let status = get(addr, "/v1/status", &[]).await.json();
    let unsynced: Vec<Value> = status["sources"][0]["unsynced_tables"]
        .as_array()
        .unwrap()
        .clone();
    let by_table = |t: &str| {
        unsynced
            .iter()
            .find(|u| u["table"] == t)
            .unwrap_or_else(|| panic!("{t} not reported: {status}"))
            .clone()
    };
    assert_eq!(unsynced.len(), 4, "{status}");
    assert!(by_table("public.a")["problem"]
        .as_str()
        .unwrap()
        .contains("nosuch"));
    assert!(by_table("public.a")["fix"]
        .as_str()
        .unwrap()
        .contains("correct the where"));
    assert!(by_table("public.b")["fix"]
        .as_str()
        .unwrap()
        .contains("include every key column"));
    assert!(by_table("public.c")["problem"]
        .as_str()
        .unwrap()
        .contains("pasword"));
    // A filter on a column outside the replica identity would break the app's UPDATEs.
    assert!(by_table("public.d")["fix"]
        .as_str()
        .unwrap()
        .contains("REPLICA IDENTITY FULL"));
    // None of them was left in the publication: the application's writes still work.
    pg.psql(
        "app",
        "UPDATE b SET name = 'y' WHERE id = 1; DELETE FROM b; UPDATE d SET owner = 'x'",
    );
    pg.psql("app", "INSERT INTO items VALUES (2, 'b')");
    wait_until(Duration::from_secs(30), "the good table to flow", || {
        relay.assert_running();
        client_state(&read_log(&dir.path().join("log")))
            .get("public.items")
            .is_some_and(|items| items.len() == 2)
    });

    let check_path = dir.path().join("check.toml");
    std::fs::write(&check_path, &config).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["check", "--config"])
        .arg(&check_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    for table in ["a", "b", "c", "d"] {
        assert!(
            stdout.contains(&format!("FAIL app_pg table public.{table}")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("PASS app_pg table public.items"),
        "{stdout}"
    );
    // The check tried them in a transaction it rolled back: no scratch publication is left.
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE '%scratch%'"
        )
        .trim(),
        "0"
    );
}
