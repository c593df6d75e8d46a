//! Running under systemd: the unit file passes `systemd-analyze verify` (and its offline
//! security review), and the relay speaks the notify protocol: READY=1 only once its source
//! is connected, WATCHDOG=1 pings, STOPPING=1 on SIGTERM.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::free_port;
use testkit::pg::{PgServer, StopMode};
use testkit::relay::{http_status, postgres_config, wait_until, RelayProcess};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/deltarelay.service")
}

/// The shipped unit with ExecStart pointing at the binary under test (verify insists that
/// the program exists).
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/deltarelay run "));
    let text = text.replace(
        "/usr/local/bin/deltarelay",
        env!("CARGO_BIN_EXE_deltarelay"),
    );
    let path = dir.join("deltarelay.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_analyze_accepts_the_unit_without_warnings() {
    let analyze = "systemd-analyze";
    testkit::skip_unless!(
        testkit::runs(analyze, &["--version"]),
        "systemd-analyze is absent (apt-get install systemd)"
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "verify failed:\n{stderr}");
    // verify reports unknown keys and values on stderr but still exits 0.
    assert!(stderr.trim().is_empty(), "verify complained:\n{stderr}");

    let output = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let exposure: f64 = text
        .split("Overall exposure level for deltarelay.service: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 2.0,
        "the unit is less sandboxed than intended:\n{text}"
    );
}

/// Every datagram that arrives within `window`.
fn receive(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    messages
}

#[test]
fn ready_is_notified_once_the_source_is_connected_then_watchdog_and_stopping() {
    let pg = PgServer::start();
    pg.psql("app", "CREATE TABLE items (id int PRIMARY KEY)");
    // Postgres is down when the relay starts: it must not claim to be ready.
    pg.stop(StopMode::Fast);

    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = postgres_config(
        &pg.url("app"),
        &dir.path().join("log"),
        &["public.items"],
        port,
    );
    let mut relay = RelayProcess::start_with_env(
        dir.path(),
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    wait_until(Duration::from_secs(30), "HTTP to answer", || {
        relay.assert_running();
        http_status(addr, "/healthz") == Some(200)
    });
    assert_eq!(
        http_status(addr, "/"),
        Some(404),
        "the console is off by default"
    );
    let early = receive(&socket, Duration::from_millis(1500));
    assert_ne!(http_status(addr, "/readyz"), Some(200));
    assert!(
        !early.iter().any(|m| m.contains("READY=1")),
        "READY=1 before the source connected: {early:?}"
    );
    assert!(
        early.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "watchdog pings every 200 ms expected: {early:?}"
    );

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let messages = receive(&socket, Duration::from_millis(200));
        if messages.iter().any(|m| m.contains("READY=1")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no READY=1 after Postgres came up\n{}",
            relay.output()
        );
    }
    assert_eq!(
        http_status(addr, "/readyz"),
        Some(200),
        "READY=1 means /readyz says ready"
    );

    assert_eq!(relay.terminate(), Some(0));
    let last = receive(&socket, Duration::from_millis(300));
    assert!(
        last.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1 on SIGTERM: {last:?}"
    );
}

/// Runs deploy/install.sh staged into `destdir`; returns its stdout.
fn install_into(destdir: &Path) -> String {
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/install.sh"))
        .args(["--bin", env!("CARGO_BIN_EXE_deltarelay")])
        .env("DESTDIR", destdir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "install.sh failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn install_script_is_idempotent_and_keeps_the_operators_config() {
    use std::os::unix::fs::PermissionsExt;
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    install_into(root);
    let config = root.join("etc/deltarelay/deltarelay.toml");
    let env_file = root.join("etc/deltarelay/env");
    for path in [
        "usr/local/bin/deltarelay",
        "etc/systemd/system/deltarelay.service",
        "usr/local/share/doc/deltarelay/README.md",
    ] {
        assert!(root.join(path).is_file(), "{path} missing");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env_file), 0o640, "secrets must not be world-readable");
    assert_eq!(mode(&root.join("etc/deltarelay")), 0o750);
    // The installed example config is valid as shipped.
    let output = Command::new(root.join("usr/local/bin/deltarelay"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());

    // The operator edits config and secrets; a re-run (an upgrade) keeps both.
    std::fs::write(&config, "# edited\n").unwrap();
    std::fs::write(&env_file, "DATABASE_URL=postgres://x\n").unwrap();
    let stdout = install_into(root);
    assert!(
        stdout.contains("keeping /etc/deltarelay/deltarelay.toml"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "DATABASE_URL=postgres://x\n"
    );
    assert_eq!(
        std::fs::read(root.join("etc/systemd/system/deltarelay.service")).unwrap(),
        std::fs::read(unit_path()).unwrap()
    );
}
