//! The HTTP API against its own description (`docs/openapi.yaml`, served at
//! `/v1/openapi.json`): the `schemathesis` CLI (PyPI, the version `.ci/run` pins) reads the
//! document from a running relay binary and sends generated requests, valid and invalid, to
//! every operation it lists — so routes and parameters added to the document later are tested
//! without touching this file. Every response must have a documented status, content type,
//! headers and body schema, and none may be a 500; afterwards the relays must still be running
//! and answer `/healthz`.
//!
//! The relay runs with a private Postgres with two tables of varied column types
//! (`public.items`, readable with the `member` token schemathesis sends, and `public.secrets`,
//! `admin` only), changed after the initial copy. Three runs: with JWT auth and a valid token
//! (200s, 400 for bad parameters, 403 for collections the token may not read, 410 for a foreign
//! cursor, 405 for undocumented methods), briefly with a forged token (the 401 paths), and against a
//! second relay on the same tables with auth off (404 for unknown collections), side by side. Checks: all of schemathesis's; valid
//! input may get the documented 4xx (see [`CONFIG`]). `DELTARELAY_SCHEMATHESIS_SCALE=<x>`
//! makes every run x times longer, to hunt.
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
use testkit::relay::{http_status, postgres_config, start_ready_relay_with, SLOT};

const SECRET: &str = "schemathesis-test-secret-0123456789";
/// The version `.ci/run` installs; another one may check differently, so it is named on failure.
const PINNED: &str = "4.32.5";
/// Every check schemathesis has (schema, status, content type and header conformance; no 500;
/// invalid input refused with a 4xx, valid input accepted; auth enforced; 405 for undocumented
/// methods…). Schema-valid input may still be refused where the document says so: a
/// well-formed cursor of another log epoch, or beyond the head, gets 410; a request whose URL
/// and headers pass `limits.max_header_bytes` gets 431, valid or not. Where validity is more
/// than a JSON schema can say, valid-looking input may get 400 too: a `where` is a SQL filter
/// checked against the collection's columns and needs exactly one collection named, and a
/// mutation's values are checked against the column types (and ids must be unique per request).
const CONFIG: &str = r#"
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "410", "429", "431"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "431"]

[[operations]]
include-path = ["/v1/changes", "/v1/mutations"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "410", "413", "429", "431"]
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
    // Two relays on the same tables, each with its own slot and log: JWT auth, and auth off
    // (404 for unknown collections where JWT answers 403).
    let (jwt_dir, open_dir) = (dir.path().join("jwt"), dir.path().join("open"));
    let (jwt_port, open_port) = (free_port(), free_port());
    std::fs::create_dir_all(&jwt_dir).unwrap();
    std::fs::create_dir_all(&open_dir).unwrap();
    let jwt_config = relay_config(&pg, &jwt_dir, jwt_port, true);
    let open_config =
        relay_config(&pg, &open_dir, open_port, false).replace(SLOT, "deltarelay_open");
    let (mut jwt_relay, jwt_addr) = start_ready_relay_with(&jwt_dir, &jwt_config, jwt_port);
    let (mut open_relay, open_addr) = start_ready_relay_with(&open_dir, &open_config, open_port);
    // Changes after the initial copy, so the logs hold live records (updates, a delete) too.
    pg.psql(
        "app",
        "UPDATE items SET price = 99.99, tags = '{x}' WHERE id = 2; \
         INSERT INTO items (id, name) VALUES (4, 'four'); DELETE FROM items WHERE id = 1;",
    );
    std::fs::write(dir.path().join("schemathesis.toml"), CONFIG).unwrap();

    // At the same time, since a run can end only when its longest long poll (≤ 60 s) has:
    // with a valid token (200s, 400s, 403 for a collection the token may not read, 410 for a
    // foreign cursor); with a token signed by another key (the 401 paths: schemathesis sends no
    // request without the header it was given, and the document makes auth optional, as it is
    // with auth none); and without auth.
    let valid_token = token("member");
    let forged = token_signed_with("member", b"not-the-relay-secret-0123456789abc");
    let (valid, invalid, open) = std::thread::scope(|s| {
        let valid = s.spawn(|| run(jwt_addr, dir.path(), "valid-token", Some(&valid_token), 30));
        let invalid = s.spawn(|| run(jwt_addr, dir.path(), "invalid-token", Some(&forged), 10));
        let open = s.spawn(|| run(open_addr, dir.path(), "no-auth", None, 20));
        (
            valid.join().unwrap(),
            invalid.join().unwrap(),
            open.join().unwrap(),
        )
    });

    for (relay, addr) in [(&mut jwt_relay, jwt_addr), (&mut open_relay, open_addr)] {
        relay.assert_running();
        assert_eq!(
            http_status(addr, "/healthz"),
            Some(200),
            "a relay stopped answering /healthz after the schemathesis runs; its log:\n{}",
            relay.output()
        );
    }
    for (run, relay) in [
        (&valid, &jwt_relay),
        (&invalid, &jwt_relay),
        (&open, &open_relay),
    ] {
        assert!(
            run.passed,
            "schemathesis ({version}; .ci/run pins {PINNED}) found responses that do not match \
             docs/openapi.yaml in the {} run (report above); the relay's log:\n{}",
            run.name,
            relay.output()
        );
    }
    // Proof that the runs reached what they were meant to reach.
    let expected = [
        (&valid, 200),
        (&valid, 400),
        (&valid, 403),
        (&invalid, 401),
        (&open, 200),
        (&open, 404),
    ];
    for (run, status) in expected {
        assert!(
            run.statuses.contains_key(&status),
            "the {} run saw no {status} response: {:?}",
            run.name,
            run.statuses
        );
    }
}

/// The relay's config: both tables, generous rate limits, and with `jwt` the auth rules.
fn relay_config(pg: &PgServer, dir: &Path, port: u16, jwt: bool) -> String {
    let mut config = postgres_config(
        &pg.url("app"),
        &dir.join("log"),
        &["public.items", "public.secrets"],
        port,
    );
    config.push_str("\n[limits]\nrequests_per_second = 100000\nburst = 100000\n");
    if jwt {
        config.push_str(&format!(
            r#"
[auth]
mode = "jwt"
jwt_secret = "{SECRET}"

[collections."public.items"]
read_claims = {{ role = ["member", "admin"] }}

[collections."public.secrets"]
read_claims = {{ role = ["admin"] }}
"#
        ));
    }
    config
}

struct RunResult {
    name: &'static str,
    passed: bool,
    /// Status → how many responses had it (from the run's HAR report).
    statuses: BTreeMap<u64, usize>,
}

/// One `schemathesis run` against the relay's served document, with `token` (if any) in the
/// Authorization header, generating for about `seconds` (times `DELTARELAY_SCHEMATHESIS_SCALE`,
/// default 1, for longer hunts).
fn run(
    addr: SocketAddr,
    dir: &Path,
    name: &'static str,
    token: Option<&str>,
    seconds: u32,
) -> RunResult {
    let scale: f64 = std::env::var("DELTARELAY_SCHEMATHESIS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let max_time = ((f64::from(seconds) * scale).round() as u64)
        .max(1)
        .to_string();
    let har = dir.join(format!("{name}.har"));
    let started = Instant::now();
    let mut command = schemathesis();
    command
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{addr}/v1/openapi.json"))
        .args(["--checks", "all"])
        .args(["--exclude-path", "/v1/stream"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--max-time", &max_time])
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
        .current_dir(dir);
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.output().expect("running schemathesis");
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
