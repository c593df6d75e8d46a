//! TLS to Postgres: a private server that refuses plaintext TCP (`hostnossl … reject`), with a
//! certificate for "localhost" issued by a throwaway CA made with the openssl CLI. The relay
//! streams from it with `sslmode=verify-full`; both connection kinds are checked for every
//! sslmode, including a wrong CA and a wrong host name.

use deltarelay::source::postgres::catalog;
use deltarelay::source::postgres::replication::ReplicationConnection;
use deltarelay::source::postgres::tls;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::http::get;
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.crt`) and, when `server` is set, a server certificate for "localhost" signed by it.
fn make_ca(dir: &Path, name: &str, server: bool) {
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    if !server {
        return;
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Tries both connection kinds with `url`; `Ok` only when both succeed.
async fn connect_both(url: &str) -> Result<(), String> {
    let (config, tls) = tls::parse(url)?;
    let client = catalog::connect_tls(&config, &tls)
        .await
        .map_err(|e| format!("query connection: {e:?}"))?;
    client
        .query_one("SELECT 1", &[])
        .await
        .map_err(|e| format!("query: {e}"))?;
    let mut conn = ReplicationConnection::connect_tls(&config, &tls, &[])
        .await
        .map_err(|e| format!("replication connection: {e}"))?;
    conn.identify_system()
        .await
        .map_err(|e| format!("IDENTIFY_SYSTEM: {e}"))?;
    Ok(())
}

/// `url` must fail, with an error mentioning one of `mentions`.
async fn refused(url: &str, mentions: &[&str]) {
    let err = connect_both(url).await.unwrap_err();
    assert!(
        mentions
            .iter()
            .any(|m| err.to_lowercase().contains(&m.to_lowercase())),
        "{url}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_from_a_postgres_that_requires_tls() {
    testkit::skip_unless!(
        testkit::runs("openssl", &["version"]),
        "the openssl CLI is absent (apt-get install openssl)"
    );
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "deltarelay test CA", true);
    let other = tempfile::tempdir().unwrap();
    make_ca(other.path(), "another CA", false);
    let ca = certs.path().join("ca.crt");
    let wrong_ca = other.path().join("ca.crt");

    let pg = PgServer::start_tls(certs.path());
    let port = pg.port();
    let by_name = |mode: &str, root: &Path| {
        format!(
            "postgres://postgres@localhost:{port}/app?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            root.display()
        )
    };
    let by_ip = |mode: &str, root: &Path| {
        format!(
            "postgres://postgres@127.0.0.1:{port}/app?sslmode={mode}&sslrootcert={}",
            root.display()
        )
    };

    // What each sslmode accepts.
    connect_both(&by_name("verify-full", &ca)).await.unwrap();
    connect_both(&by_ip("verify-ca", &ca)).await.unwrap();
    connect_both(&format!(
        "postgres://postgres@127.0.0.1:{port}/app?sslmode=require"
    ))
    .await
    .unwrap();
    connect_both(&format!("postgres://postgres@127.0.0.1:{port}/app"))
        .await
        .unwrap();
    refused(&by_ip("verify-full", &ca), &["name"]).await;
    refused(&by_name("verify-full", &wrong_ca), &["UnknownIssuer"]).await;
    refused(&by_name("verify-ca", &wrong_ca), &["UnknownIssuer"]).await;
    let plain = format!("postgres://postgres@127.0.0.1:{port}/app?sslmode=disable");
    refused(&plain, &["no encryption", "pg_hba"]).await;
    let no_ca = format!("postgres://postgres@localhost:{port}/app?sslmode=verify-full");
    refused(&no_ca, &["sslrootcert"]).await;

    // The relay streams through verify-full.
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, name text)");
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, addr) =
        start_ready_relay(&by_name("verify-full", &ca), dir.path(), &["public.items"]);
    pg.psql(
        "app",
        "INSERT INTO items VALUES (1, 'over TLS'), (2, 'also')",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = get(addr, "/v1/changes?wait=5", &[]).await.json();
        let names: Vec<String> = body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["after"]["name"].as_str().unwrap_or_default().to_string())
            .collect();
        if names.len() == 2 {
            assert_eq!(names, vec!["over TLS", "also"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no changes: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The server saw the replication connection arrive over TLS.
    let log = pg.log_contents();
    assert!(
        log.lines()
            .any(|l| l.contains("replication connection authorized") && l.contains("SSL enabled")),
        "{log}"
    );
    assert_eq!(relay.terminate(), Some(0));
}
