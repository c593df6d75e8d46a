//! A private NATS JetStream cluster for tests: three `nats-server` processes (Debian's 2.9.x)
//! on free loopback ports, routed to each other, each storing JetStream in its own temporary
//! directory. Nodes can be killed (SIGKILL) and started again with their store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Whether `nats-server` is installed.
pub fn available() -> bool {
    Path::new(NATS_SERVER).exists()
}

struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` routed nodes and waits until JetStream answers on every one (a leader
    /// of its meta group is elected).
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "")
    }

    /// [`NatsCluster::start`] with `extra` appended to every node's configuration (accounts
    /// and their limits, say).
    pub fn start_with(size: usize, extra: &str) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let cluster_ports: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();
        let nodes = (0..size)
            .map(|i| {
                let name = format!("n{i}");
                let store = dir.path().join(&name);
                std::fs::create_dir_all(&store).unwrap();
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                         jetstream {{ store_dir: {store:?}, max_memory_store: 64MB, max_file_store: 1GB }}\n\
                         cluster {{ name: deltarelay_test, listen: 127.0.0.1:{cluster}, routes: [{routes}] }}\n{extra}\n",
                        client = client_ports[i],
                        cluster = cluster_ports[i],
                        store = store.display().to_string(),
                        routes = routes.join(", "),
                    ),
                )
                .unwrap();
                Node {
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: client_ports[i],
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster { _dir: dir, nodes };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster.wait_jetstream_ready();
        cluster
    }

    /// `nats://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// The `urls = [...]` TOML value.
    pub fn urls_toml(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} already runs", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        node.child = Some(
            Command::new(NATS_SERVER)
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.client_port));
        crate::relay::wait_until(Duration::from_secs(20), "nats-server to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
    }

    /// SIGKILL, like a crash: the node's store stays for [`NatsCluster::start_node`].
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every running node answers `$JS.API.INFO` (JetStream is up cluster-wide).
    pub fn wait_jetstream_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            while !jetstream_answers(node.client_port) {
                assert!(
                    Instant::now() < deadline,
                    "JetStream not ready on {}:\n{}",
                    node.name,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// The servers' own logs, for failure messages.
    pub fn output(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} ---\n{}",
                    n.name,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// Whether the node's JetStream answers an account-info request with a meta leader elected:
/// the plain protocol (CONNECT, SUB, PUB with a reply), read back with a short timeout.
fn jetstream_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.ready 1\r\nPUB $JS.API.INFO _INBOX.ready 0\r\n\r\nPING\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains("\"type\":\"io.nats.jetstream.api.v1.account_info_response\"") {
            return !text.contains("\"error\"");
        }
    }
    false
}

/// A `[log]` section for a node of the shared log; `dir` only when given.
pub fn log_section(cluster: &NatsCluster, dir: Option<&Path>, stream: &str) -> String {
    let dir = dir
        .map(|d| format!("dir = {:?}\n", d.display().to_string()))
        .unwrap_or_default();
    format!(
        "[log]\n{dir}backend = \"nats\"\n\n[log.nats]\nurls = {}\nstream = {stream:?}\nreplicas = 3\n",
        cluster.urls_toml()
    )
}

/// A config for an ingest node of the shared log: the Postgres source of database `app` on
/// `tables` (slot and publication [`crate::relay::SLOT`]), its local state under `dir`.
pub fn ingest_config(
    pg: &crate::pg::PgServer,
    nats: &NatsCluster,
    dir: &Path,
    port: u16,
    stream: &str,
    tables: &[&str],
) -> String {
    ingest_config_via(&pg.url("app"), nats, dir, port, stream, tables)
}

/// Like [`ingest_config`], reaching Postgres at `url` (through a proxy, say).
pub fn ingest_config_via(
    url: &str,
    nats: &NatsCluster,
    dir: &Path,
    port: u16,
    stream: &str,
    tables: &[&str],
) -> String {
    let slot = crate::relay::SLOT;
    let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{log}\n[[sources]]\nname = \"app_pg\"\nkind = \"postgres\"\nurl = {url:?}\nslot = \"{slot}\"\npublication = \"{slot}\"\ntables = [{tables}]\n",
        log = log_section(nats, Some(&dir.join("log")), stream),
        tables = tables.join(", "),
    )
}

/// A config for a serve-only (stateless) node of the shared log.
pub fn serve_config(nats: &NatsCluster, port: u16, stream: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        log_section(nats, None, stream)
    )
}
