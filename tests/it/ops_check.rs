//! `deltarelay check` and `deltarelay slot drop` against a private Postgres, run as the binary
//! an operator runs.

use std::path::Path;
use std::process::Command;
use testkit::free_port;
use testkit::pg::{PgServer, StopMode};
use testkit::relay::{postgres_config, start_ready_relay};

/// Runs `deltarelay ARGS --config <dir>/check.toml`; returns (exit code, stdout).
fn deltarelay(dir: &Path, config: &str, args: &[&str]) -> (Option<i32>, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!(
        "$ deltarelay {}\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), stdout)
}

/// The `FAIL` lines, each with the `fix:` line that follows it.
fn failures(stdout: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = stdout.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FAIL"))
        .map(|(i, l)| {
            let fix = lines.get(i + 1).copied().unwrap_or("");
            assert!(fix.trim_start().starts_with("fix: "), "no fix after {l:?}");
            (l.to_string(), fix.to_string())
        })
        .collect()
}

#[test]
fn check_names_each_broken_prerequisite_with_its_fix_and_passes_once_fixed() {
    let pg = PgServer::start();
    pg.psql("postgres", "ALTER SYSTEM SET wal_level = replica");
    pg.restart(StopMode::Fast);
    pg.psql(
        "app",
        "CREATE ROLE app_user LOGIN;
         CREATE TABLE items (id int PRIMARY KEY, name text);
         CREATE TABLE notes (body text);
         GRANT SELECT ON items, notes TO app_user;
         CREATE PUBLICATION deltarelay_test FOR TABLE items, notes;",
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://app_user@127.0.0.1:{}/app", pg.port());
    let config = postgres_config(
        &url,
        &dir.path().join("log"),
        &["public.items", "public.notes"],
        free_port(),
    );

    let (code, stdout) = deltarelay(dir.path(), &config, &["check"]);
    assert_eq!(code, Some(1), "check must fail");
    let failed = failures(&stdout);
    assert_eq!(failed.len(), 3, "exactly three failures:\n{stdout}");
    assert!(failed[0].0.contains("wal_level") && failed[0].0.contains("\"replica\""));
    assert!(failed[0].1.contains("ALTER SYSTEM SET wal_level = logical"));
    assert!(failed[1].0.contains("replication privilege") && failed[1].0.contains("app_user"));
    assert!(failed[1]
        .1
        .contains("ALTER ROLE \"app_user\" WITH REPLICATION"));
    assert!(failed[2].0.contains("table public.notes") && failed[2].0.contains("no primary key"));
    assert!(failed[2].1.contains("REPLICA IDENTITY FULL"));
    assert!(
        stdout.contains("PASS app_pg table public.items"),
        "{stdout}"
    );

    // Apply the fixes it printed; then everything passes.
    pg.psql("postgres", "ALTER SYSTEM SET wal_level = logical");
    pg.restart(StopMode::Fast);
    pg.psql(
        "app",
        "ALTER ROLE app_user WITH REPLICATION;
         ALTER TABLE public.notes REPLICA IDENTITY FULL;",
    );
    let (code, stdout) = deltarelay(dir.path(), &config, &["check"]);
    assert!(failures(&stdout).is_empty(), "{stdout}");
    assert_eq!(code, Some(0), "{stdout}");
    for passed in [
        "PASS app_pg wal_level",
        "PASS app_pg replication privilege",
        "PASS app_pg replication connection",
        "PASS app_pg publication",
        "PASS app_pg slot",
    ] {
        assert!(stdout.contains(passed), "missing {passed:?}:\n{stdout}");
    }
    // Unlimited WAL retention is worth a warning, not a failure.
    assert!(stdout.contains("WARN app_pg max_slot_wal_keep_size"));

    // A table the role may not read fails, with the GRANT to run.
    pg.psql("app", "REVOKE SELECT ON notes FROM app_user");
    let (code, stdout) = deltarelay(dir.path(), &config, &["check"]);
    assert_eq!(code, Some(1));
    let failed = failures(&stdout);
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(failed[0]
        .1
        .contains("GRANT SELECT ON \"public\".\"notes\" TO \"app_user\""));
}

#[test]
fn slot_drop_releases_the_slot_and_publication() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY, name text)");
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, _) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);
    let slots = || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'deltarelay_test'",
        )
    };
    let publications = || {
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_publication WHERE pubname = 'deltarelay_test'",
        )
    };
    assert_eq!((slots().as_str(), publications().as_str()), ("1", "1"));
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.items"],
        free_port(),
    );

    // While the relay streams from it, the slot is refused, and nothing is dropped.
    let (code, _) = deltarelay(dir.path(), &config, &["slot", "drop"]);
    assert_eq!(code, Some(1));
    assert_eq!((slots().as_str(), publications().as_str()), ("1", "1"));

    assert_eq!(relay.terminate(), Some(0));
    let (code, stdout) = deltarelay(dir.path(), &config, &["slot", "drop"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("dropped replication slot deltarelay_test"));
    assert!(stdout.contains("dropped publication deltarelay_test"));
    assert_eq!((slots().as_str(), publications().as_str()), ("0", "0"));

    // Idempotent: a second run finds nothing to drop and succeeds.
    let (code, stdout) = deltarelay(dir.path(), &config, &["slot", "drop"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("replication slot deltarelay_test does not exist"));
}

#[test]
fn version_and_help_with_examples() {
    let output = Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("deltarelay {}", env!("CARGO_PKG_VERSION"))
    );
    let output = Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for expected in ["Examples:", "deltarelay check", "slot drop", "DELTARELAY__"] {
        assert!(
            help.contains(expected),
            "--help lacks {expected:?}:\n{help}"
        );
    }
}

#[test]
fn check_reports_an_invalid_config_by_key_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(
        "postgres://relay@127.0.0.1:1/app",
        &dir.path().join("log"),
        &["public.items"],
        free_port(),
    )
    .replace("[http]", "[http]\nlisen = \"0.0.0.0:80\"");
    let (code, stdout) = deltarelay(dir.path(), &config, &["check"]);
    assert_eq!(code, Some(2));
    assert!(stdout.starts_with("FAIL config file:"), "{stdout}");
    assert!(stdout.contains("lisen"), "{stdout}");
}

#[test]
fn json_logs_name_the_source_and_the_error_when_it_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: the source fails and retries.
    let url = format!("postgres://relay@127.0.0.1:{}/app", free_port());
    let config = postgres_config(
        &url,
        &dir.path().join("log"),
        &["public.items"],
        free_port(),
    );
    let mut relay = testkit::relay::RelayProcess::start_with_env(
        dir.path(),
        &config,
        &[("DELTARELAY__LOG__FORMAT", "json")],
    );
    testkit::relay::wait_until(std::time::Duration::from_secs(30), "a reconnect", || {
        relay.output().contains("reconnecting")
    });
    let output = relay.output();
    let lines: Vec<serde_json::Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failure = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("reconnecting")
        })
        .unwrap();
    assert_eq!(failure["level"], "WARN");
    assert_eq!(failure["fields"]["source"], "app_pg");
    assert!(failure["fields"]["error"]
        .as_str()
        .unwrap()
        .contains("onnect"));
    assert!(failure["fields"]["retry_in"].is_string());
    assert_eq!(relay.terminate(), Some(0));
}
