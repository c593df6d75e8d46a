//! README's first command, as a user runs it: `./deploy/quickstart.sh` brings up Postgres, the
//! demo writer and the relay with its console, prints the page to open, and Ctrl-C (SIGINT to
//! the terminal's process group) removes everything. With Chromium present, the printed page
//! is opened: its todo app must be there with writes on, and a row inserted after the page
//! went live must appear in the feed.
//!
//! The test passes the already built binary (`DELTARELAY_BIN`) so the script skips its own
//! `cargo build --release`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use testkit::browser::{chromium_available, page_target, Browser, Cdp};
use testkit::free_port;
use testkit::relay::{http_status, wait_until};

/// The script in its own process group, SIGKILLed as a group if the test fails midway.
struct Quickstart {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Quickstart {
    fn start(http_port: u16, pg_port: u16, stderr: &Path) -> Quickstart {
        let mut child = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/quickstart.sh"))
            .env("PORT", http_port.to_string())
            .env("PG_PORT", pg_port.to_string())
            .env("DELTARELAY_BIN", env!("CARGO_BIN_EXE_deltarelay"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Quickstart {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line contains `text`; returns that line.
    fn wait_for_line(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "quickstart.sh never printed {text:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    fn interrupt(&mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-s", "INT", "--", &format!("-{}", self.child.id())])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "quickstart.sh ignored Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

fn psql(pg_port: u16, sql: &str) {
    let status = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &pg_port.to_string(),
            "-U",
            "postgres",
            "-d",
            "app",
            "-c",
            sql,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "psql {sql}");
}

#[test]
fn quickstart_brings_up_the_live_console_and_ctrl_c_cleans_up() {
    let started = Instant::now();
    let (http_port, pg_port) = (free_port(), free_port());
    let logs = tempfile::tempdir().unwrap();
    let mut quickstart = Quickstart::start(http_port, pg_port, &logs.path().join("stderr"));

    let line = quickstart.wait_for_line("starting a throwaway Postgres", Duration::from_secs(120));
    let work = PathBuf::from(line.rsplit(' ').next().unwrap());
    assert!(work.starts_with("/tmp"), "{line}");
    let url = format!("http://127.0.0.1:{http_port}/");
    quickstart.wait_for_line("Open the live console", Duration::from_secs(120));
    quickstart.wait_for_line(&url, Duration::from_secs(5));
    println!("quickstart: ready to open after {:?}", started.elapsed());
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    assert_eq!(http_status(addr, "/readyz"), Some(200));
    assert_eq!(http_status(addr, "/"), Some(200), "the console is on");

    if chromium_available() {
        let profile = tempfile::tempdir().unwrap();
        let browser = Browser::open(&url, profile.path(), &logs.path().join("chromium"), &[]);
        let mut page = Cdp::connect(&page_target(profile.path(), &url));
        page.eval_until(
            "the stream to go live",
            "document.getElementById('state').textContent",
            |v| v == "live",
        );
        // The todo app is there and may write (the script enables `[writes]`); its writes are
        // tested end to end in console_todos.rs.
        page.eval_until(
            "the todo app, writable",
            "document.getElementById('writes').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.starts_with("Add, tick and delete"))
            },
        );
        page.eval_until(
            "the demo rows in the todo app",
            "document.getElementById('todos').innerText",
            |v| v.as_str().is_some_and(|t| t.contains("Try deltarelay")),
        );
        // The demo writer keeps changing public.todos; this row is ours.
        psql(
            pg_port,
            "INSERT INTO todos (title) VALUES ('added after the page went live')",
        );
        page.eval_until(
            "our row on the page",
            "document.getElementById('feed').innerText",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.contains("added after the page went live"))
            },
        );
        page.eval_until(
            "the demo writer's changes",
            "document.getElementById('count').textContent",
            |v| {
                v.as_str()
                    .and_then(|t| t.split(' ').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n >= 3)
            },
        );
        drop(page);
        drop(browser);
    }

    let code = quickstart.interrupt();
    assert!(
        matches!(code, Some(0 | 130)),
        "quickstart.sh ended with {code:?} on Ctrl-C"
    );
    wait_until(
        Duration::from_secs(10),
        "the temp dir to be removed",
        || !work.exists(),
    );
    assert_eq!(http_status(addr, "/healthz"), None, "the relay is still up");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pg_port)).is_err(),
        "Postgres is still up"
    );
    println!("quickstart: total {:?}", started.elapsed());
}
