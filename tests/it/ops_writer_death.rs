//! A log writer that dies stops the relay: it says why and exits non-zero within 5 s (so that
//! systemd restarts it) instead of serving stale data while its sources retry forever; after a
//! restart every committed row is in the log exactly once.

use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::{postgres_config, read_log, wait_until, RelayProcess};

const ROWS: i32 = 40;

#[test]
fn a_dead_log_writer_stops_the_relay_and_a_restart_loses_nothing() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, n int)");
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let port = free_port();
    let config = postgres_config(&pg.url("app"), &log_dir, &["public.items"], port);
    // The test fault: the writer thread panics after its third commit.
    let mut relay = RelayProcess::start_with_env(
        dir.path(),
        &config,
        &[("DELTARELAY_TEST_KILL_LOG_WRITER_AFTER", "3")],
    );
    for id in 1..=ROWS {
        pg.psql("app", &format!("INSERT INTO items VALUES ({id}, 0)"));
    }

    let reported = "the log writer panicked: test fault";
    let mut died_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if died_at.is_none() && relay.output().contains(reported) {
            died_at = Some(Instant::now());
        }
        if let Some(died) = died_at {
            break relay.wait_exit(Duration::from_secs(5).saturating_sub(died.elapsed()));
        }
        assert!(
            Instant::now() < deadline,
            "the writer never died\n{}",
            relay.output()
        );
        relay.assert_running();
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = relay.output();
    assert_ne!(
        code,
        Some(0),
        "the relay exited 0 after its writer died\n{output}"
    );
    assert!(
        output.contains("the service manager restarts the relay"),
        "the relay did not say why it stopped\n{output}"
    );

    // Restarted without the fault, it catches up: every row once, none lost.
    let mut relay = RelayProcess::start(dir.path(), &config);
    wait_until(Duration::from_secs(60), "the log to hold every row", || {
        relay.assert_running();
        read_log(&log_dir).len() >= ROWS as usize
    });
    let mut ids: Vec<i64> = read_log(&log_dir)
        .iter()
        .map(|r| r.key.as_ref().unwrap()["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=i64::from(ROWS)).collect::<Vec<_>>(),
        "a row is missing or doubled"
    );
    assert_eq!(relay.terminate(), Some(0), "{}", relay.output());
}
