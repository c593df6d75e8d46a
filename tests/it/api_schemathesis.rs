//! The HTTP API against its own description (`docs/openapi.yaml`, served at
//! `/v1/openapi.json`): the `schemathesis` CLI (PyPI, the version `.ci/run` pins) reads the
//! document from a running relay binary and sends generated requests, valid and invalid, to
//! every operation it lists — so routes and parameters added to the document later are tested
//! without touching this file. Every response must have a documented status, content type,
//! headers and body schema, and none may be a 500; afterwards the relay must still be running
//! and answer `/healthz`.
//!
//! The relay runs with JWT auth on and a private Postgres with two tables of varied column
//! types (`public.items`, readable with the `member` token schemathesis sends, and
//! `public.secrets`, `admin` only), changed after the initial copy. Two runs: with a valid token
//! (200s, 400 for bad parameters, 403 for collections the token may not read, 410 for a foreign
//! cursor, 405 for undocumented methods) and, briefly, with a forged one (the 401 paths).
//! Checks: all of schemathesis's; valid input may get the documented 4xx (see [`CONFIG`]).
//!
//! `/v1/stream` is left out: its 200 is an endless event stream, which schemathesis would only
//! ever see as a request timeout. Its parameters are parsed by the same code as `/v1/changes`'s,
//! and tests/it/http_stream.rs and hostile_clients.rs test the stream itself.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::{http_status, postgres_config, start_ready_relay_with};

const SECRET: &str = "schemathesis-test-secret-0123456789";
/// The version `.ci/run` installs; another one may check differently, so it is named on failure.
const PINNED: &str = "4.32.5";
/// Every check schemathesis has (schema, status, content type and header conformance; no 500;
/// invalid input refused with a 4xx, valid input accepted; auth enforced; 405 for undocumented
/// methods…). Schema-valid input may still be refused where the document says so:
/// a well-formed cursor of another log epoch, or beyond the head, gets 410.
const CONFIG: &str = r#"
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "410", "429"]
"#;

fn token(role: &str) -> String {
    token_signed_with(role, SECRET.as_bytes())
}

fn token_signed_with(role: &str, secret: &[u8]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "fuzzer", "exp": exp, "role": role}),
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// `python3 -m schemathesis.cli`: works wherever pip put the package, on PATH or not.
fn schemathesis() -> Command {
    let mut command = Command::new("python3");
    command.args(["-m", "schemathesis.cli"]);
    command
}

fn installed_version() -> Option<String> {
    let out = schemathesis().arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const TABLES: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY, name text, price numeric(12, 2), ratio double precision,
    active boolean, tags text[], meta jsonb, created timestamptz, day date, uid uuid,
    blob bytea, code varchar(8), span interval, during tstzrange
);
INSERT INTO items VALUES
    (1, 'one', 12.50, 0.25, true, '{a,b}', '{\"k\": [1, null]}', '2026-01-01T10:00:00Z',
     '2026-01-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', 'AB', '1 day',
     '[2026-01-01,2026-02-01)'),
    (2, 'ünïcödé \"quoted\"', -0.01, 'NaN', false, '{}', 'null', '-infinity', '0001-01-01',
     NULL, '', NULL, '-1 hour', 'empty'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE secrets (id int PRIMARY KEY, value text);
INSERT INTO secrets VALUES (1, 'hidden');
UPDATE items SET name = 'uno' WHERE id = 1;
DELETE FROM items WHERE id = 3;
";

#[test]
fn every_generated_request_gets_a_documented_response_and_the_relay_survives() {
    let version = installed_version();
    testkit::skip_unless!(
        version.is_some(),
        format!("schemathesis is not installed (python3 -m pip install schemathesis=={PINNED})")
    );
    let version = version.unwrap();

    let pg = PgServer::start();
    pg.psql("app", TABLES);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.items", "public.secrets"],
        port,
    ) + &format!(
        r#"
[auth]
mode = "jwt"
jwt_secret = "{SECRET}"

[collections."public.items"]
read_claims = {{ role = ["member", "admin"] }}

[collections."public.secrets"]
read_claims = {{ role = ["admin"] }}

[limits]
requests_per_second = 100000
burst = 100000
"#
    );
    let (mut relay, addr) = start_ready_relay_with(dir.path(), &config, port);
    // Changes after the initial copy, so the log holds live records (updates, a delete) too.
    pg.psql(
        "app",
        "UPDATE items SET price = 99.99, tags = '{x}' WHERE id = 2; \
         INSERT INTO items (id, name) VALUES (4, 'four'); DELETE FROM items WHERE id = 1;",
    );

    let config_file = dir.path().join("schemathesis.toml");
    std::fs::write(&config_file, CONFIG).unwrap();

    // With a valid token: every operation's success and parameter-error paths (and 403 for a
    // collection the token may not read, 410 for a foreign cursor).
    let valid = run(addr, dir.path(), "valid-token", &token("member"), "40");
    // With a token signed by another key: the 401 paths (schemathesis sends no request without
    // the header it was given, and the document makes auth optional, as it is with auth none).
    let forged = token_signed_with("member", b"not-the-relay-secret-0123456789abc");
    let invalid = run(addr, dir.path(), "invalid-token", &forged, "10");

    relay.assert_running();
    assert_eq!(
        http_status(addr, "/healthz"),
        Some(200),
        "the relay stopped answering /healthz after the schemathesis runs; its log:\n{}",
        relay.output()
    );
    for run in [&valid, &invalid] {
        assert!(
            run.passed,
            "schemathesis ({version}; .ci/run pins {PINNED}) found responses that do not match \
             docs/openapi.yaml in the {} run (report above); the relay's log:\n{}",
            run.name,
            relay.output()
        );
    }
    // Proof that the runs reached what they were meant to reach.
    for (run, status) in [(&valid, 200), (&valid, 400), (&invalid, 401)] {
        assert!(
            run.statuses.contains_key(&status),
            "the {} run saw no {status} response: {:?}",
            run.name,
            run.statuses
        );
    }
}

struct RunResult {
    name: &'static str,
    passed: bool,
    /// Status → how many responses had it (from the run's HAR report).
    statuses: BTreeMap<u64, usize>,
}

/// One `schemathesis run` against the relay's served document with `token` in the
/// Authorization header, for at most `max_time` seconds.
fn run(addr: SocketAddr, dir: &Path, name: &'static str, token: &str, max_time: &str) -> RunResult {
    let har = dir.join(format!("{name}.har"));
    let started = Instant::now();
    let out = schemathesis()
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{addr}/v1/openapi.json"))
        .args(["--checks", "all"])
        .args(["--exclude-path", "/v1/stream"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--max-time", max_time])
        // Above the longest documented long poll (`wait` ≤ 60 s), so a held request is no error.
        .args(["--request-timeout", "65", "--max-response-time", "62"])
        .args([
            "--workers",
            "2",
            "--no-color",
            "--suppress-health-check",
            "too_slow",
        ])
        .args(["--generation-database", "none"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .current_dir(dir)
        .output()
        .expect("running schemathesis");
    eprintln!(
        "schemathesis, {name} run, took {:.0?}:\n{}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let har: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    let mut statuses = BTreeMap::new();
    for entry in har["log"]["entries"].as_array().unwrap() {
        let status = entry["response"]["status"].as_u64().unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("{name} run: responses by status: {statuses:?}");
    RunResult {
        name,
        passed: out.status.success(),
        statuses,
    }
}
