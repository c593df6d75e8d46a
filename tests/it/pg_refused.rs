//! A Postgres that refuses the relay (wrong password, missing privilege) is reported as a
//! configuration error, with the server's SQLSTATE and message, in `/v1/status` and the log;
//! the relay keeps retrying and streams once the operator fixes it upstream, without a restart.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use testkit::free_port;
use testkit::http::get;
use testkit::pg::PgServer;
use testkit::relay::{http_status, postgres_config, wait_until, RelayProcess};

async fn source_status(addr: SocketAddr) -> Option<Value> {
    let response = tokio::time::timeout(Duration::from_secs(5), get(addr, "/v1/status", &[]))
        .await
        .ok()?;
    Some(response.json()["sources"][0].clone())
}

/// Polls `/v1/status` until `done` holds for the source, returning that status.
async fn wait_status(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = source_status(addr).await {
            if done(&status) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; last status {status}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_and_a_missing_privilege_are_configuration_errors_until_fixed() {
    let pg = PgServer::start_with_auth("scram-sha-256");
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("postgres://relay:oldsecret@127.0.0.1:{}/app", pg.port());
    let config = postgres_config(&url, &dir.path().join("log"), &["public.items"], port);
    let mut relay = RelayProcess::start(dir.path(), &config);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(60), "the relay to listen", || {
        relay.assert_running();
        http_status(addr, "/v1/status").is_some()
    });

    let status = wait_status(addr, "a configuration error", |s| {
        s["last_error_kind"] == "configuration"
    })
    .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.contains("28P01") && error.contains("password authentication failed"),
        "the SQLSTATE and the server's message: {error}"
    );
    assert_eq!(status["connected"], false);
    relay.assert_running();

    // The password is right now, but the role may not create the publication.
    pg.psql("postgres", "ALTER ROLE relay PASSWORD 'oldsecret'");
    wait_status(addr, "the missing privilege", |s| {
        s["last_error_kind"] == "configuration"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("42501"))
    })
    .await;

    pg.psql("postgres", "ALTER ROLE relay SUPERUSER");
    wait_status(addr, "streaming after the fix", |s| {
        s["connected"] == true && s["initial_copy"]["state"] == "done"
    })
    .await;
    relay.assert_running();
    let output = relay.output();
    assert!(
        output.contains("CONFIGURATION ERROR"),
        "the log says it loudly:\n{output}"
    );
    wait_until(Duration::from_secs(5), "the relay to keep running", || {
        relay.assert_running();
        true
    });
}
