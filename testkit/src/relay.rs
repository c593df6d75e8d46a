//! Running the relay in tests: as a child process (so it can be killed with SIGKILL) and
//! reading its log back.

use deltarelay::log::LogReader;
use deltarelay::record::{ChangeRecord, Op};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The slot (and publication) name in [`postgres_config`].
pub const SLOT: &str = "deltarelay_test";

/// Waits until the relay streams from its slot.
pub fn wait_streaming(pg: &super::pg::PgServer, relay: &mut RelayProcess) {
    wait_until(
        Duration::from_secs(60),
        "the relay to stream from its slot",
        || {
            relay.assert_running();
            pg.psql(
                "app",
                &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}' AND active"),
            )
            .trim()
                == "1"
        },
    );
}

/// A config file for one Postgres source.
pub fn postgres_config(url: &str, log_dir: &Path, tables: &[&str], http_port: u16) -> String {
    let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    format!(
        r#"
[http]
listen = "127.0.0.1:{http_port}"

[log]
dir = {log_dir:?}

[[sources]]
name = "app_pg"
kind = "postgres"
url = {url:?}
slot = "deltarelay_test"
publication = "deltarelay_test"
tables = [{tables}]
"#,
        tables = tables.join(", "),
        log_dir = log_dir.display().to_string(),
    )
}

/// The relay binary running in its own process.
pub struct RelayProcess {
    child: Option<Child>,
    config: PathBuf,
    stderr: PathBuf,
    runs: u32,
    env: Vec<(String, String)>,
}

impl RelayProcess {
    /// Writes `config_text` next to the log and starts `deltarelay run`.
    pub fn start(dir: &Path, config_text: &str) -> RelayProcess {
        RelayProcess::start_with_env(dir, config_text, &[])
    }

    /// Like `start`, with extra environment variables for the relay.
    pub fn start_with_env(dir: &Path, config_text: &str, env: &[(&str, &str)]) -> RelayProcess {
        let config = dir.join("deltarelay.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut relay = RelayProcess {
            child: None,
            config,
            stderr: dir.join("relay.log"),
            runs: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        relay.spawn();
        relay
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "relay already running");
        self.runs += 1;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let child = Command::new(crate::relay_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("DELTARELAY_LOG", "info,deltarelay=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                // Killed before failing, so that it does not outlive the test.
                let _ = child.kill();
                let _ = child.wait();
                panic!("relay did not exit after SIGTERM\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the relay to exit by itself; its exit code (`None`: killed
    /// by a signal). Fails the test if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("relay not running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "relay still running after {timeout:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Fails the test if the relay exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("relay exited with {status}\n{}", self.output());
            }
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every entry of the log, in log order.
pub fn read_log(dir: &Path) -> Vec<ChangeRecord> {
    let Ok(reader) = LogReader::open(dir) else {
        return vec![];
    };
    reader
        .entries_after(0, usize::MAX >> 1)
        .unwrap_or_default()
        .into_iter()
        .map(|e| serde_json::from_str(&e.record).unwrap())
        .collect()
}

/// The state a client builds by applying the log's records from the beginning:
/// collection → key text → row.
pub fn client_state(records: &[ChangeRecord]) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut state: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for r in records {
        let table = state.entry(r.collection.clone()).or_default();
        match r.op {
            Op::Insert | Op::Update => {
                let key = Value::Object(r.key.clone().unwrap()).to_string();
                table.insert(key, Value::Object(r.after.clone().unwrap()));
            }
            Op::Delete => {
                table.remove(&Value::Object(r.key.clone().unwrap()).to_string());
            }
            Op::Truncate => table.clear(),
        }
    }
    state
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cursors strictly increase along the log.
pub fn assert_cursors_increase(records: &[ChangeRecord]) {
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r.cursor.split_once('-').unwrap().1.parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "cursors do not strictly increase"
    );
}

/// Starts the relay on a free port for `tables` of the database at `pg_url`, with its log in
/// `dir/log`, and waits until `/readyz` answers 200.
pub fn start_ready_relay(
    pg_url: &str,
    dir: &Path,
    tables: &[&str],
) -> (RelayProcess, std::net::SocketAddr) {
    let port = crate::free_port();
    let config = postgres_config(pg_url, &dir.join("log"), tables, port);
    start_ready_relay_with(dir, &config, port)
}

/// A `[[sources]]` entry for a MongoDB source named `app_mongo`; `extra` adds keys.
pub fn mongo_source_toml(uri: &str, database: &str, collections: &[&str], extra: &str) -> String {
    let collections: Vec<String> = collections.iter().map(|c| format!("{c:?}")).collect();
    format!(
        r#"
[[sources]]
name = "app_mongo"
kind = "mongodb"
url = {uri:?}
database = {database:?}
collections = [{collections}]
{extra}
"#,
        collections = collections.join(", "),
    )
}

/// A config file for one MongoDB source (see [`mongo_source_toml`]).
pub fn mongo_config(log_dir: &Path, http_port: u16, source: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[log]\ndir = {:?}\n{source}",
        log_dir.display().to_string()
    )
}

/// Starts the relay with `config` (listening on `port`) and waits for `/readyz`.
pub fn start_ready_relay_with(
    dir: &Path,
    config: &str,
    port: u16,
) -> (RelayProcess, std::net::SocketAddr) {
    let mut relay = RelayProcess::start(dir, config);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(60), "the relay to be ready", || {
        relay.assert_running();
        http_status(addr, "/readyz") == Some(200)
    });
    (relay, addr)
}

/// The status code of a plain `GET`, or `None` when nothing answers.
pub fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
