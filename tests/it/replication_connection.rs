//! The replication-protocol connection against a private Postgres server.

use std::time::{Duration, Instant};

use deltarelay::source::postgres::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
};
use deltarelay::source::postgres::Lsn;
use testkit::pg::{PgServer, StopMode};

const PARAMS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
];

const PGOUTPUT: &[(&str, &str)] = &[("proto_version", "1"), ("publication_names", "pub")];

async fn connect_url(url: &str) -> Result<ReplicationConnection, ReplicationError> {
    let config: tokio_postgres::Config = url.parse().expect("valid URL");
    ReplicationConnection::connect(&config, PARAMS).await
}

async fn connect(pg: &PgServer) -> ReplicationConnection {
    connect_url(&pg.url("app")).await.expect("connect")
}

/// The next message, failing the test if none comes within `limit`.
async fn next(stream: &mut ReplicationStream, limit: Duration) -> ReplicationMessage {
    match tokio::time::timeout(limit, stream.next_message()).await {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => panic!("the server ended the stream"),
        Ok(Err(e)) => panic!("stream error: {e}"),
        Err(_) => panic!("no message within {limit:?}"),
    }
}

/// Reads pgoutput messages up to and including the next Commit, skipping keepalives.
async fn next_transaction(stream: &mut ReplicationStream) -> Vec<bytes::Bytes> {
    let mut messages = Vec::new();
    loop {
        if let ReplicationMessage::XLogData { data, .. } =
            next(stream, Duration::from_secs(10)).await
        {
            let is_commit = data.first() == Some(&b'C');
            messages.push(data);
            if is_commit {
                return messages;
            }
        }
    }
}

/// The end LSN of a pgoutput Commit message: flags (1), commit LSN (8), end LSN (8), time (8).
fn commit_end_lsn(commit: &[u8]) -> Lsn {
    let bytes: [u8; 8] = commit[10..18].try_into().expect("commit message too short");
    Lsn(u64::from_be_bytes(bytes))
}

fn slot_flush_lsn(pg: &PgServer, slot: &str) -> Lsn {
    let sql =
        format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'");
    pg.psql("app", &sql).parse().expect("an LSN")
}

#[tokio::test]
async fn trust_over_tcp_and_unix_socket() {
    let pg = PgServer::start();

    let mut conn = connect(&pg).await;
    let id = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert!(!id.system_id.is_empty() && id.system_id.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(id.timeline, 1);
    assert!(id.xlog_pos > Lsn(0));
    assert_eq!(id.dbname.as_deref(), Some("app"));

    // SQL works in replication=database mode, and the startup parameters took effect.
    let result = conn
        .simple_query("SELECT 1 AS one, NULL AS nothing, current_setting('DateStyle') AS style")
        .await
        .expect("SELECT");
    assert_eq!(result.columns, ["one", "nothing", "style"]);
    assert_eq!(
        result.rows,
        [vec![
            Some("1".to_string()),
            None,
            Some("ISO, MDY".to_string())
        ]]
    );

    // A failed query leaves the connection usable.
    let err = conn
        .simple_query("SELECT * FROM missing")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42P01"), "{err}");
    let slot = conn
        .create_logical_slot("plain", false)
        .await
        .expect("create slot");
    assert_eq!(slot.snapshot_name, None);
    assert!(slot.consistent_point > Lsn(0));
    let err = conn.create_logical_slot("plain", false).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");

    // Over the Unix socket.
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(pg.socket_dir())
        .port(pg.port())
        .user("postgres")
        .dbname("app");
    let mut conn = ReplicationConnection::connect(&config, PARAMS)
        .await
        .expect("connect over the Unix socket");
    assert_eq!(
        conn.identify_system().await.unwrap().system_id,
        id.system_id
    );

    // Hosts are tried in order: the first refuses, the second answers.
    let multi = format!(
        "host=127.0.0.1,127.0.0.1 port=1,{} user=postgres dbname=app",
        pg.port()
    );
    let mut conn = connect_url(&multi)
        .await
        .expect("connect to the second host");
    conn.identify_system().await.expect("IDENTIFY_SYSTEM");
}

#[tokio::test]
async fn missing_slot_is_a_server_error() {
    let pg = PgServer::start();
    let conn = connect(&pg).await;
    let err = conn
        .start_logical_replication("no_such_slot", Lsn(0), PGOUTPUT)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
    assert!(err.to_string().starts_with("42704: "), "{err}");
}

async fn check_password_auth(method: &str) {
    let pg = PgServer::start_with_auth(method);
    let port = pg.port();

    let mut conn = connect_url(&format!("postgres://relay:secret@127.0.0.1:{port}/app"))
        .await
        .unwrap_or_else(|e| panic!("{method} login failed: {e}"));
    let id = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(id.dbname.as_deref(), Some("app"));
    // The server really used this method (md5 is not silently upgraded to SCRAM).
    let expected = format!("identity=\"relay\" method={method}");
    assert!(
        pg.log_contents().contains(&expected),
        "no {expected:?} in the server log"
    );

    let err = connect_url(&format!("postgres://relay:wrong@127.0.0.1:{port}/app"))
        .await
        .unwrap_err();
    assert!(
        err.sqlstate() == Some("28P01") || matches!(err, ReplicationError::Auth(_)),
        "{method}, wrong password: {err}"
    );

    let err = connect_url(&format!("postgres://relay@127.0.0.1:{port}/app"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicationError::Auth(_)),
        "{method}, no password: {err}"
    );
}

#[tokio::test]
async fn md5_auth() {
    check_password_auth("md5").await;
}

#[tokio::test]
async fn scram_sha_256_auth() {
    check_password_auth("scram-sha-256").await;
}

#[tokio::test]
async fn cleartext_password_auth() {
    check_password_auth("password").await;
}

#[tokio::test]
async fn streams_changes_and_acknowledges_flush() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text); CREATE PUBLICATION pub FOR TABLE items;",
    );
    pg.psql("app", "INSERT INTO items VALUES (0, 'before the slot')");

    let mut conn = connect(&pg).await;
    let slot = conn
        .create_logical_slot("relay", true)
        .await
        .expect("create slot");
    let snapshot = slot.snapshot_name.expect("an exported snapshot");
    // The snapshot is usable while this connection stays idle.
    let seen = pg.psql(
        "app",
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'; \
             SELECT count(*) FROM items; COMMIT;"
        ),
    );
    assert_eq!(seen, "1");

    let mut stream = conn
        .start_logical_replication("relay", slot.consistent_point, PGOUTPUT)
        .await
        .expect("START_REPLICATION");
    pg.psql("app", "INSERT INTO items VALUES (1, 'a'), (2, 'b')");

    let transaction = next_transaction(&mut stream).await;
    let tags: Vec<u8> = transaction.iter().map(|m| m[0]).collect();
    assert_eq!(tags, b"BRIIC", "pgoutput message types");

    let end = commit_end_lsn(transaction.last().unwrap());
    assert!(slot_flush_lsn(&pg, "relay") < end);
    stream
        .send_status(end, end, end, false)
        .await
        .expect("status");
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot_flush_lsn(&pg, "relay") != end {
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn never reached {end}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.close().await.expect("close");

    // Restarting from the slot sends only what was not acknowledged.
    pg.psql("app", "INSERT INTO items VALUES (3, 'c')");
    let mut stream = connect(&pg)
        .await
        .start_logical_replication("relay", Lsn(0), PGOUTPUT)
        .await
        .expect("START_REPLICATION again");
    let transaction = next_transaction(&mut stream).await;
    let tags: Vec<u8> = transaction.iter().map(|m| m[0]).collect();
    assert_eq!(tags, b"BRIC", "only the new transaction is replayed");
    stream.close().await.expect("close");
}

#[tokio::test]
async fn answers_keepalives_inside_select() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE items;",
    );
    // Half of wal_sender_timeout without a reply makes the server ask for one.
    pg.psql("app", "ALTER SYSTEM SET wal_sender_timeout = '2s'");
    pg.psql("app", "SELECT pg_reload_conf()");
    let mut conn = connect(&pg).await;
    let slot = conn
        .create_logical_slot("relay", false)
        .await
        .expect("create slot");
    let mut stream = conn
        .start_logical_replication("relay", slot.consistent_point, PGOUTPUT)
        .await
        .expect("START_REPLICATION");
    pg.psql("app", "INSERT INTO items SELECT generate_series(1, 2000)");

    // A short ticker keeps cancelling next_message mid-read; no bytes may get lost, and the
    // server must not time us out while we answer its keepalives.
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let deadline = tokio::time::sleep(Duration::from_millis(4500));
    tokio::pin!(deadline);
    let (mut inserts, mut commits, mut replies_requested, mut last_end) = (0, 0, 0, Lsn(0));
    loop {
        tokio::select! {
            message = stream.next_message() => match message.expect("stream error") {
                Some(ReplicationMessage::XLogData { data, .. }) => match data[0] {
                    b'I' => inserts += 1,
                    b'C' => {
                        commits += 1;
                        last_end = commit_end_lsn(&data);
                    }
                    _ => {}
                },
                Some(ReplicationMessage::Keepalive { reply_requested, .. }) => {
                    if reply_requested {
                        replies_requested += 1;
                        stream.send_status(last_end, last_end, last_end, false).await.expect("status");
                    }
                }
                None => panic!("the server ended the stream"),
            },
            _ = ticker.tick() => {}
            _ = &mut deadline => break,
        }
    }
    assert_eq!((inserts, commits), (2000, 1));
    assert!(
        replies_requested >= 2,
        "only {replies_requested} keepalives asked for a reply"
    );
    assert!(!pg.log_contents().contains("replication timeout"));
    stream.close().await.expect("close");
}

#[tokio::test]
async fn killed_server_fails_the_stream() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int); CREATE PUBLICATION pub FOR TABLE items;",
    );
    let mut conn = connect(&pg).await;
    let slot = conn
        .create_logical_slot("relay", false)
        .await
        .expect("create slot");
    let mut stream = conn
        .start_logical_replication("relay", slot.consistent_point, PGOUTPUT)
        .await
        .expect("START_REPLICATION");

    pg.stop(StopMode::Immediate);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next_message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("next_message hung after the server died");
    assert!(ended.is_err(), "expected an error, got {ended:?}");

    // After a restart the slot is still there and streaming resumes.
    pg.start_again();
    let mut stream = connect(&pg)
        .await
        .start_logical_replication("relay", Lsn(0), PGOUTPUT)
        .await
        .expect("START_REPLICATION after restart");
    pg.psql("app", "INSERT INTO items VALUES (1)");
    let tags: Vec<u8> = next_transaction(&mut stream)
        .await
        .iter()
        .map(|m| m[0])
        .collect();
    assert_eq!(tags, b"BRIC");
}
