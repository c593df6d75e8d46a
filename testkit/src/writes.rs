//! Shared by the write-path tests (`tests/it/writes_*.rs`): tokens signed with the tests'
//! secret, a client of `POST /v1/mutations`, and a relay that dies right after its first
//! upstream commit (the lost-answer fault).

use crate::http::{get, post, Response};
use crate::relay::{http_status, wait_until, RelayProcess};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The HS256 secret the write tests configure as `auth.jwt_secret`.
pub const SECRET: &str = "writes-test-secret-0123456789abcdef";

/// A token for `sub` with claim `role`, valid for an hour.
pub fn token(sub: &str, role: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp, "role": role}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a token")
}

/// A client of the relay at `addr` with a bearer token.
pub struct MutationClient {
    pub addr: SocketAddr,
    pub token: String,
}

impl MutationClient {
    /// A client with a token for `sub` and `role`.
    pub fn new(addr: SocketAddr, sub: &str, role: &str) -> MutationClient {
        MutationClient {
            addr,
            token: token(sub, role),
        }
    }

    pub async fn send(&self, body: &Value) -> Response {
        self.raw(&body.to_string()).await
    }

    /// `POST /v1/mutations` with `body` as it is (bad JSON included).
    pub async fn raw(&self, body: &str) -> Response {
        let auth = format!("Bearer {}", self.token);
        post(
            self.addr,
            "/v1/mutations",
            &[("Authorization", &auth)],
            body,
        )
        .await
        .expect("a response")
    }

    /// One mutation alone; its result, after checking that the write is visible.
    pub async fn one(&self, mutation: Value) -> Value {
        let response = self.send(&json!({"mutations": [mutation]})).await;
        assert_eq!(response.status, 200, "{}", response.body);
        let body = response.json();
        assert_eq!(body["visible"], true, "{body}");
        body["results"][0].clone()
    }

    /// `GET /v1/changes?{query}` with the token; the body of its 200.
    pub async fn changes(&self, query: &str) -> Value {
        let auth = format!("Bearer {}", self.token);
        let response = get(
            self.addr,
            &format!("/v1/changes?{query}"),
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }
}

/// A mutation result's status.
pub fn status(result: &Value) -> &str {
    result["status"]
        .as_str()
        .unwrap_or_else(|| panic!("a result without a status: {result}"))
}

/// The statuses of a response's results, in order.
pub fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("a response without results: {body}"))
        .iter()
        .map(|r| status(r).to_string())
        .collect()
}

/// Starts the relay with the fault that kills it right after its first mutation's upstream
/// commit, sends `batch` unauthenticated, and checks that the client heard nothing and that
/// the fault, not something else, ended the relay.
pub async fn post_with_the_answer_lost(dir: &Path, config: &str, addr: SocketAddr, batch: &str) {
    let mut relay = RelayProcess::start_with_env(
        dir,
        config,
        &[("DELTARELAY_TEST_KILL_AFTER_UPSTREAM_COMMIT", "1")],
    );
    wait_until(Duration::from_secs(60), "the relay to be ready", || {
        relay.assert_running();
        http_status(addr, "/readyz") == Some(200)
    });
    let lost = post(addr, "/v1/mutations", &[], batch).await;
    assert!(lost.is_none(), "the relay answered: {lost:?}");
    // Killed by the fault (SIGABRT, no exit code), after the upstream commit.
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), None);
    assert!(relay
        .output()
        .contains("test fault: DELTARELAY_TEST_KILL_AFTER_UPSTREAM_COMMIT"));
}
