//! A private PostgreSQL 15 server per test, so tests can stop, kill and restart it.
//!
//! `initdb` refuses to run as root, so when the tests run as root the server commands run as
//! the `postgres` user (via `runuser`) in a temporary directory that user owns.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

/// How `stop` shuts the server down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

pub struct PgServer {
    dir: TempDir,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    /// Serves TLS with `server.crt`/`server.key` in the data directory.
    ssl: bool,
}

impl PgServer {
    /// A server trusting every local connection, with a database "app".
    pub fn start() -> PgServer {
        PgServer::init_and_start("trust")
    }

    /// A server that accepts TCP connections only over TLS (`hostnossl … reject`), with the
    /// certificate `certs/server.crt` and key `certs/server.key`.
    pub fn start_tls(certs: &Path) -> PgServer {
        PgServer::init_and_start_with("trust", Some(certs))
    }

    /// Like `start`, but TCP connections by users other than `postgres` need `method`
    /// ("md5", "scram-sha-256" or "password"), and a role `relay` (password "secret",
    /// REPLICATION LOGIN) exists. `postgres` stays trusted so `psql` keeps working.
    pub fn start_with_auth(method: &str) -> PgServer {
        let server = PgServer::init_and_start(method);
        // md5 authentication needs an md5-hashed password; otherwise the server
        // silently upgrades the exchange to SCRAM.
        let encryption = if method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        server.psql(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; \
                 CREATE ROLE relay WITH LOGIN REPLICATION PASSWORD 'secret';"
            ),
        );
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A TCP URL for `db` as the trusted superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&self, mode: StopMode) {
        let data_dir = path_str(&self.data_dir);
        let output = run_as_server_user(
            "pg_ctl",
            &[
                "stop",
                "-D",
                data_dir,
                "-m",
                mode.as_arg(),
                "-w",
                "-t",
                "30",
            ],
        );
        assert_success("pg_ctl stop", &output, self);
    }

    pub fn start_again(&self) {
        let output = self.pg_ctl_start();
        assert_success("pg_ctl start", &output, self);
    }

    pub fn restart(&self, mode: StopMode) {
        self.stop(mode);
        self.start_again();
    }

    /// Runs `sql` with psql over TCP as `postgres`; panics with stderr on failure.
    /// Returns stdout with the trailing newline removed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let output = Command::new(bin("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        if !output.status.success() {
            panic!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_string()
    }

    /// The table's rows as the log's key text → row JSON, via Postgres's own `row_to_json`
    /// (which matches the relay's mapping for integer, text and boolean columns).
    pub fn table_state(
        &self,
        db: &str,
        table: &str,
        key_columns: &[&str],
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        let text = self.psql(
            db,
            &format!("SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM {table} t"),
        );
        let rows: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap();
        rows.into_iter()
            .map(|row| {
                let key: serde_json::Map<String, serde_json::Value> = key_columns
                    .iter()
                    .map(|c| (c.to_string(), row[*c].clone()))
                    .collect();
                (serde_json::Value::Object(key).to_string(), row)
            })
            .collect()
    }

    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn init_and_start(method: &str) -> PgServer {
        PgServer::init_and_start_with(method, None)
    }

    fn init_and_start_with(method: &str, certs: Option<&Path>) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("deltarelay-pg")
            .tempdir()
            .expect("create temp dir");
        if running_as_root() {
            let output = Command::new("chown")
                .args(["postgres:postgres", path_str(dir.path())])
                .output()
                .expect("run chown");
            assert!(output.status.success(), "chown failed: {output:?}");
        }
        let data_dir = dir.path().join("data");
        let log_file = dir.path().join("postgres.log");
        let output = run_as_server_user(
            "initdb",
            &[
                "-D",
                path_str(&data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        if !output.status.success() {
            panic!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        write_hba(&data_dir, method);
        if let Some(certs) = certs {
            install_certs(&data_dir, certs);
        }

        let mut server = PgServer {
            dir,
            data_dir,
            log_file,
            port: 0,
            ssl: certs.is_some(),
        };
        server.start_on_free_port();
        server.psql("postgres", "CREATE DATABASE app");
        server
    }

    /// Picks a free port and starts; another process may grab the port in between, so retry.
    fn start_on_free_port(&mut self) {
        for _ in 0..5 {
            self.port = crate::free_port();
            self.write_conf();
            let output = self.pg_ctl_start();
            if output.status.success() {
                return;
            }
            if !self.log_contents().contains("could not bind") {
                assert_success("pg_ctl start", &output, self);
            }
        }
        panic!("could not start postgres:\n{}", self.log_contents());
    }

    /// Appends our settings; later lines win, so rewriting the port on retry is fine.
    fn write_conf(&self) {
        let conf = format!(
            "\n# deltarelay tests\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = 32MB\n\
             log_connections = on\n{ssl}",
            port = self.port,
            socket_dir = path_str(self.dir.path()),
            ssl = if self.ssl {
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            } else {
                ""
            },
        );
        let path = self.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&conf);
        fs::write(&path, text).expect("write postgresql.conf");
    }

    fn pg_ctl_start(&self) -> Output {
        run_as_server_user(
            "pg_ctl",
            &[
                "start",
                "-D",
                path_str(&self.data_dir),
                "-l",
                path_str(&self.log_file),
                "-w",
                "-t",
                "30",
            ],
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = run_as_server_user(
            "pg_ctl",
            &["stop", "-D", path_str(&self.data_dir), "-m", "immediate"],
        );
    }
}

fn write_hba(data_dir: &Path, method: &str) {
    let hba = format!(
        "local all all trust\n\
         local replication all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host replication postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 {method}\n\
         host replication all 127.0.0.1/32 {method}\n"
    );
    fs::write(data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
}

/// Copies the server certificate and key into the data directory (owned by the server user,
/// key readable only by it, as Postgres demands) and allows TCP only over TLS.
fn install_certs(data_dir: &Path, certs: &Path) {
    for name in ["server.crt", "server.key"] {
        let target = data_dir.join(name);
        fs::copy(certs.join(name), &target).expect("copy certificate");
        if running_as_root() {
            let output = Command::new("chown")
                .args(["postgres:postgres", path_str(&target)])
                .output()
                .expect("run chown");
            assert!(output.status.success(), "chown failed: {output:?}");
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let hba = "local all all trust\n\
               local replication all trust\n\
               hostnossl all all 127.0.0.1/32 reject\n\
               hostnossl replication all 127.0.0.1/32 reject\n\
               hostssl all all 127.0.0.1/32 trust\n\
               hostssl replication all 127.0.0.1/32 trust\n";
    fs::write(data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let output = Command::new("id").arg("-u").output().expect("run id -u");
        String::from_utf8_lossy(&output.stdout).trim() == "0"
    })
}

/// A PostgreSQL program from PATH, else from the Debian install location.
fn bin(name: &str) -> PathBuf {
    let on_path = Command::new("which")
        .arg(name)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match on_path {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new("/usr/lib/postgresql/15/bin").join(name),
    }
}

/// Runs a server program, as `postgres` when we are root.
fn run_as_server_user(program: &str, args: &[&str]) -> Output {
    let program = bin(program);
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn assert_success(what: &str, output: &Output, server: &PgServer) {
    if !output.status.success() {
        panic!(
            "{what} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            server.log_contents()
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A query client for `url` (no TLS), its connection driven on the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
