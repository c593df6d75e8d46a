//! JWT auth, per-collection access, limits and CORS over the in-process HTTP API: every 401 and
//! 403 case, HS256/RS256/ES256/JWKS keys, 429 with Retry-After, CORS headers.

use base64::Engine;
use deltarelay::auth::{Access, Verifier};
use deltarelay::config::{AuthConfig, AuthMode, CollectionConfig, LimitsConfig, ScopeConfig};
use deltarelay::http::HttpOptions;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::http::*;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "app";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims valid for an hour, plus `extra`.
fn claims(extra: Value) -> Value {
    let mut claims =
        json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600, "nbf": now() - 10});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn auth_config(mode_key: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
    let mut auth = AuthConfig {
        mode: AuthMode::Jwt,
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..AuthConfig::default()
    };
    mode_key(&mut auth);
    auth
}

/// `public.todos`: role user/admin, rows scoped by owner = sub. `public.tags`: any token.
fn rules() -> BTreeMap<String, CollectionConfig> {
    BTreeMap::from([
        (
            "public.todos".to_string(),
            CollectionConfig {
                read_claims: BTreeMap::from([(
                    "role".to_string(),
                    vec![json!("user"), json!("admin")],
                )]),
                scope: Some(ScopeConfig {
                    column: "owner".into(),
                    claim: "sub".into(),
                }),
                ..CollectionConfig::default()
            },
        ),
        ("public.tags".to_string(), CollectionConfig::default()),
    ])
}

fn options(auth: &AuthConfig, limits: Option<LimitsConfig>) -> HttpOptions {
    HttpOptions {
        access: Access {
            enabled: true,
            collections: rules(),
            serve_unlisted: false,
        },
        verifier: Some(Arc::new(Verifier::from_config(auth).unwrap())),
        public_metrics: false,
        limits,
        cors_origins: vec!["https://app.example".into()],
        ..HttpOptions::default()
    }
}

async fn server(auth: &AuthConfig, limits: Option<LimitsConfig>) -> Server {
    let scopes = BTreeMap::from([("public.todos".to_string(), "owner".to_string())]);
    let server = Server::start_with(scopes, options(auth, limits)).await;
    let todo = |id: i64, owner: &str| deltarelay::record::Change {
        collection: "public.todos".into(),
        op: deltarelay::record::Op::Insert,
        key: Some(row(json!({"id": id}))),
        after: Some(row(json!({"id": id, "owner": owner}))),
        ..Default::default()
    };
    commit(
        &server.log,
        vec![(
            tx(1),
            vec![
                todo(1, "alice"),
                todo(2, "bob"),
                upsert("public.tags", 1, json!("red")),
                upsert("public.secret", 1, json!("x")),
            ],
        )],
    )
    .await;
    server
}

async fn get_with(server: &Server, path: &str, token: &str) -> Response {
    let bearer = format!("Bearer {token}");
    get(server.addr, path, &[("Authorization", &bearer)]).await
}

fn assert_error(response: &Response, status: u16, code: &str, mentions: &str) {
    assert_eq!(response.status, status, "{}", response.body);
    let body = response.json();
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.to_lowercase().contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

fn ids(response: &Response) -> Vec<(String, i64)> {
    response.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["collection"].as_str().unwrap().to_string(),
                r["key"]["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_401_case_and_what_a_valid_token_reads() {
    let auth = auth_config(|a| a.jwt_secret = Some(SECRET.into()));
    let server = server(&auth, None).await;
    let alice = hs256(
        &claims(json!({"sub": "alice", "role": "user"})),
        SECRET.as_bytes(),
    );

    // Missing, in both places.
    let response = server.get("/v1/changes").await;
    assert_error(&response, 401, "unauthorized", "no token");
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    // Malformed: not a JWT, and a wrong scheme.
    assert_error(
        &get_with(&server, "/v1/changes", "not.a.jwt").await,
        401,
        "unauthorized",
        "token",
    );
    assert_error(
        &get(
            server.addr,
            "/v1/changes",
            &[("Authorization", "Basic dXNlcjpwdw==")],
        )
        .await,
        401,
        "unauthorized",
        "bearer",
    );
    // Expired (beyond the leeway), not yet valid.
    let expired = hs256(
        &claims(json!({"sub": "alice", "role": "user", "exp": now() - 3600})),
        SECRET.as_bytes(),
    );
    assert_error(
        &get_with(&server, "/v1/changes", &expired).await,
        401,
        "unauthorized",
        "expired",
    );
    let early = hs256(
        &claims(json!({"sub": "alice", "role": "user", "nbf": now() + 3600})),
        SECRET.as_bytes(),
    );
    assert_error(
        &get_with(&server, "/v1/changes", &early).await,
        401,
        "unauthorized",
        "not valid yet",
    );
    // No exp at all.
    let mut forever = claims(json!({"sub": "alice", "role": "user"}));
    forever.as_object_mut().unwrap().remove("exp");
    assert_error(
        &get_with(&server, "/v1/changes", &hs256(&forever, SECRET.as_bytes())).await,
        401,
        "unauthorized",
        "exp",
    );
    // Wrong signature.
    let forged = hs256(
        &claims(json!({"sub": "alice", "role": "user"})),
        b"another-secret-of-sufficient-length-000",
    );
    assert_error(
        &get_with(&server, "/v1/changes", &forged).await,
        401,
        "unauthorized",
        "signature",
    );
    // Wrong issuer, wrong audience.
    let wrong_iss = hs256(
        &claims(json!({"sub": "alice", "role": "user", "iss": "https://evil"})),
        SECRET.as_bytes(),
    );
    assert_error(
        &get_with(&server, "/v1/changes", &wrong_iss).await,
        401,
        "unauthorized",
        "issuer",
    );
    let wrong_aud = hs256(
        &claims(json!({"sub": "alice", "role": "user", "aud": "other-app"})),
        SECRET.as_bytes(),
    );
    assert_error(
        &get_with(&server, "/v1/changes", &wrong_aud).await,
        401,
        "unauthorized",
        "audience",
    );
    // alg: none, with the claims of a valid token and an empty signature.
    let payload = claims(json!({"sub": "alice", "role": "admin"}));
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(payload.to_string().as_bytes())
    );
    assert_error(
        &get_with(&server, "/v1/changes", &none).await,
        401,
        "unauthorized",
        "none",
    );
    // The query parameter is checked just the same.
    assert_error(
        &server
            .get(&format!("/v1/changes?access_token={forged}"))
            .await,
        401,
        "unauthorized",
        "signature",
    );
    // Status and metrics need a token; health checks do not.
    assert_eq!(server.get("/v1/status").await.status, 401);
    assert_eq!(server.get("/metrics").await.status, 401);
    assert_eq!(server.get("/v1/collections").await.status, 401);
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/readyz").await.status, 200);
    assert_eq!(get_with(&server, "/v1/status", &alice).await.status, 200);

    // A valid token reads its own rows and the open collection, nothing else.
    let page = get_with(&server, "/v1/changes", &alice).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        ids(&page),
        vec![("public.todos".into(), 1), ("public.tags".into(), 1)]
    );
    let page = server
        .get(&format!("/v1/changes?access_token={alice}"))
        .await;
    assert_eq!(ids(&page).len(), 2, "{}", page.body);
    let listed = get_with(&server, "/v1/collections", &alice).await.json();
    let names: Vec<&str> = listed["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["public.tags", "public.todos"]);

    // EventSource style: the stream with access_token.
    let mut stream = SseClient::connect(
        server.addr,
        &format!("/v1/stream?access_token={alice}"),
        None,
    )
    .await;
    assert_eq!(stream.status, 200);
    let first = record_of(&stream.next_within(Duration::from_secs(5)).await.unwrap());
    assert_eq!(first["key"]["id"], 1);
    assert_eq!(first["after"]["owner"], "alice");
}

#[tokio::test]
async fn every_403_case() {
    let auth = auth_config(|a| a.jwt_secret = Some(SECRET.into()));
    let server = server(&auth, None).await;
    let guest = hs256(
        &claims(json!({"sub": "carol", "role": "guest"})),
        SECRET.as_bytes(),
    );
    let no_sub = hs256(&claims(json!({"role": "user"})), SECRET.as_bytes());
    let alice = hs256(
        &claims(json!({"sub": "alice", "role": "user"})),
        SECRET.as_bytes(),
    );

    // A claim that does not grant the collection.
    assert_error(
        &get_with(&server, "/v1/changes?collections=public.todos", &guest).await,
        403,
        "forbidden",
        "role",
    );
    assert_error(
        &get_with(&server, "/v1/stream?collections=public.todos", &guest).await,
        403,
        "forbidden",
        "role",
    );
    // The scope claim missing.
    assert_error(
        &get_with(&server, "/v1/changes?collections=public.todos", &no_sub).await,
        403,
        "forbidden",
        "sub",
    );
    // A collection without rules (serve_unlisted = false), existing or not.
    for name in ["public.secret", "public.nothing"] {
        assert_error(
            &get_with(&server, &format!("/v1/changes?collections={name}"), &alice).await,
            403,
            "forbidden",
            "not served",
        );
    }
    // Without naming collections, the guest gets what it may read: only the open one.
    let page = get_with(&server, "/v1/changes", &guest).await;
    assert_eq!(ids(&page), vec![("public.tags".into(), 1)]);
    let listed = get_with(&server, "/v1/collections", &guest).await.json();
    assert_eq!(
        listed["collections"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
}

/// Key pairs made with the openssl CLI: (private PEM, public PEM) paths.
fn keypair(dir: &Path, name: &str, algorithm: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mut args = vec!["genpkey", "-out", private.to_str().unwrap()];
    args.extend_from_slice(algorithm);
    run(&args);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}

const RSA: &[&str] = &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
const EC: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A JWKS document with the RSA public key at `public` under `kid`.
fn jwks(public: &Path, kid: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "rsa",
            "-pubin",
            "-in",
            public.to_str().unwrap(),
            "-modulus",
            "-noout",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&bytes), "e": "AQAB"}]})
        .to_string()
}

fn signed(algorithm: Algorithm, private_pem: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(private_pem).unwrap(),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

#[tokio::test]
async fn public_keys_pem_and_jwks_and_no_algorithm_confusion() {
    testkit::skip_unless!(
        testkit::runs("openssl", &["version"]),
        "the openssl CLI is absent (apt-get install openssl)"
    );
    let keys = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = keypair(keys.path(), "rsa", RSA);
    let (ec_private, ec_public) = keypair(keys.path(), "ec", EC);
    let (other_private, _) = keypair(keys.path(), "other", RSA);
    let alice = claims(json!({"sub": "alice", "role": "user"}));

    // RS256 with a PEM key.
    let server_rsa = server(
        &auth_config(|a| a.jwt_public_key = Some(rsa_public.clone())),
        None,
    )
    .await;
    let good = signed(Algorithm::RS256, &rsa_private, None, &alice);
    assert_eq!(
        get_with(&server_rsa, "/v1/changes", &good).await.status,
        200
    );
    let wrong_key = signed(Algorithm::RS256, &other_private, None, &alice);
    assert_error(
        &get_with(&server_rsa, "/v1/changes", &wrong_key).await,
        401,
        "unauthorized",
        "signature",
    );
    // HS/RS confusion: an HS256 token whose "secret" is the server's public key file.
    let confused = hs256(&alice, &std::fs::read(&rsa_public).unwrap());
    assert_error(
        &get_with(&server_rsa, "/v1/changes", &confused).await,
        401,
        "unauthorized",
        "hs256",
    );

    // ES256 with a PEM key; an RS256 token is refused by algorithm.
    let server_ec = server(&auth_config(|a| a.jwt_public_key = Some(ec_public)), None).await;
    let good = signed(Algorithm::ES256, &ec_private, None, &alice);
    assert_eq!(get_with(&server_ec, "/v1/changes", &good).await.status, 200);
    let rs = signed(Algorithm::RS256, &rsa_private, None, &alice);
    assert_eq!(get_with(&server_ec, "/v1/changes", &rs).await.status, 401);

    // JWKS: keys by kid; a rotated file is picked up without a restart.
    let jwks_path = keys.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&rsa_public, "k1")).unwrap();
    let auth = auth_config(|a| a.jwks_file = Some(jwks_path.clone()));
    let verifier = Arc::new(Verifier::from_config(&auth).unwrap());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    verifier.clone().spawn_reloader(stop);
    let mut opts = options(&auth, None);
    opts.verifier = Some(verifier);
    let server_jwks = Server::start_with(Default::default(), opts).await;
    let k1 = signed(Algorithm::RS256, &rsa_private, Some("k1"), &alice);
    assert_eq!(get_with(&server_jwks, "/v1/changes", &k1).await.status, 200);
    let (_, other_public) = (other_private.clone(), keys.path().join("other.pub"));
    let k2 = signed(Algorithm::RS256, &other_private, Some("k2"), &alice);
    assert_error(
        &get_with(&server_jwks, "/v1/changes", &k2).await,
        401,
        "unauthorized",
        "kid",
    );
    std::fs::write(&jwks_path, jwks(&other_public, "k2")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get_with(&server_jwks, "/v1/changes", &k2).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated JWKS file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old key is gone with the old file.
    assert_eq!(get_with(&server_jwks, "/v1/changes", &k1).await.status, 401);
    let _ = stop_tx.send(true);
}

#[tokio::test]
async fn over_the_limits_is_429_with_retry_after_and_the_relay_stays_healthy() {
    let auth = auth_config(|a| a.jwt_secret = Some(SECRET.into()));
    let limits = LimitsConfig {
        max_streams: 3,
        max_streams_per_subject: 2,
        requests_per_second: 5,
        burst: 5,
        max_header_bytes: 4096,
        ..LimitsConfig::default()
    };
    let server = server(&auth, Some(limits)).await;
    let token = |sub: &str| {
        hs256(
            &claims(json!({"sub": sub, "role": "user"})),
            SECRET.as_bytes(),
        )
    };
    let alice = token("alice");
    let bob = token("bob");

    // Requests per second per subject: the burst passes, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..12 {
        let response = get_with(&server, "/v1/changes", &alice).await;
        statuses.push(response.status);
        if response.status == 429 {
            limited = Some(response);
        }
    }
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    let limited = limited.expect("no 429 after the burst");
    assert_eq!(limited.json()["error"], "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another subject is not affected; health is not limited; alice recovers.
    assert_eq!(get_with(&server, "/v1/changes", &bob).await.status, 200);
    assert_eq!(server.get("/healthz").await.status, 200);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get_with(&server, "/v1/changes", &alice).await.status, 200);

    // Streams: two per subject, three in total.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = |token: String| {
        let addr = server.addr;
        async move {
            let bearer = format!("Bearer {token}");
            SseClient::connect_with(addr, "/v1/stream", &[("Authorization", &bearer)]).await
        }
    };
    let a1 = open(alice.clone()).await;
    let a2 = open(alice.clone()).await;
    assert_eq!((a1.status, a2.status), (200, 200));
    let a3 = get_with(&server, "/v1/stream", &alice).await;
    assert_error(&a3, 429, "rate_limited", "per client");
    assert!(a3.header("retry-after").is_some());
    let b1 = open(bob.clone()).await;
    assert_eq!(b1.status, 200);
    let b2 = get_with(&server, "/v1/stream", &bob).await;
    assert_error(&b2, 429, "rate_limited", "as many streams");
    // Closing a stream frees its slot.
    drop(a1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = open(bob.clone()).await;
        if again.status == 200 {
            assert!(again.next_within(Duration::from_secs(5)).await.is_some());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Oversized headers.
    let huge = "x".repeat(5000);
    let response = get(server.addr, "/v1/changes", &[("X-Padding", &huge)]).await;
    assert_eq!(response.status, 431, "{}", response.body);
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn cors_headers_for_configured_origins() {
    let auth = auth_config(|a| a.jwt_secret = Some(SECRET.into()));
    let server = server(&auth, None).await;
    let alice = hs256(
        &claims(json!({"sub": "alice", "role": "user"})),
        SECRET.as_bytes(),
    );
    let bearer = format!("Bearer {alice}");
    let allowed = get(
        server.addr,
        "/v1/changes",
        &[
            ("Authorization", &bearer),
            ("Origin", "https://app.example"),
        ],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = get(
        server.addr,
        "/v1/changes",
        &[
            ("Authorization", &bearer),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    // A preflight is answered without a token.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"OPTIONS /v1/changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let lower = text.to_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(
        lower.contains("access-control-allow-headers: authorization"),
        "{text}"
    );
}

/// The relay binary re-reads its JWKS file on SIGHUP (the file's mtime is put back, so only
/// the signal can explain the reload), and keeps serving with the old keys when the new file
/// is broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reloads_its_jwks_on_sighup() {
    testkit::skip_unless!(
        testkit::runs("openssl", &["version"]),
        "the openssl CLI is absent (apt-get install openssl)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (k1_private, k1_public) = keypair(dir.path(), "k1", RSA);
    let (k2_private, k2_public) = keypair(dir.path(), "k2", RSA);
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&k1_public, "k1")).unwrap();
    let stamp = std::fs::metadata(&jwks_path).unwrap().modified().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
[log]
dir = {log:?}
[auth]
mode = "jwt"
jwks_file = {jwks:?}
serve_unlisted = true
[[sources]]
name = "app_pg"
kind = "postgres"
url = "postgres://relay@127.0.0.1:1/app?sslmode=disable"
tables = ["public.items"]
"#,
        log = dir.path().join("log").display().to_string(),
        jwks = jwks_path.display().to_string(),
    );
    let config_path = dir.path().join("deltarelay.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("relay.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let claims = claims(json!({"sub": "alice"}));
    let k1 = signed(Algorithm::RS256, &k1_private, Some("k1"), &claims);
    let k2 = signed(Algorithm::RS256, &k2_private, Some("k2"), &claims);
    let status = |token: String| async move {
        let bearer = format!("Bearer {token}");
        get(addr, "/v1/changes", &[("Authorization", &bearer)])
            .await
            .status
    };
    let until = |what: &'static str, token: String, want: u16| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let connected = tokio::net::TcpStream::connect(addr).await.is_ok();
            if connected && status(token.clone()).await == want {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    until("k1 accepted at start", k1.clone(), 200).await;
    assert_eq!(status(k2.clone()).await, 401);

    // Rotate to k2 but keep the old mtime: the poll sees no change, SIGHUP must do it.
    std::fs::write(&jwks_path, jwks(&k2_public, "k2")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&jwks_path)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(k2.clone()).await, 401, "reloaded without a signal");
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    hup(child.id());
    until("k2 accepted after SIGHUP", k2.clone(), 200).await;
    assert_eq!(status(k1.clone()).await, 401);

    // A broken file keeps the keys that work.
    std::fs::write(&jwks_path, "{not json").unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status(k2).await, 200);
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(log.contains("could not reload the JWKS file"), "{log}");
}

/// The API description is open with auth on, like /healthz: it reveals no data.
#[tokio::test]
async fn the_openapi_document_needs_no_token() {
    let auth = auth_config(|a| a.jwt_secret = Some(SECRET.into()));
    let server = server(&auth, None).await;
    let response = server.get("/v1/openapi.json").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["openapi"], "3.1.0");
    assert_eq!(server.get("/v1/collections").await.status, 401);
}
