//! A TCP proxy between the relay and Postgres that can break the network the ways real ones
//! break: drop every connection (the peer sees the close), or black-hole them: packets vanish,
//! nobody is told. A black-holed connection never carries a byte again, like a connection
//! whose NAT entry expired; each side only finds out by its own timeouts. During a
//! partition, new connections hang as SYNs would, and go through once it heals.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Network {
    /// Bumped by `drop_all`: connections born before close.
    drops: u64,
    /// Bumped by `black_hole`: connections born before go silent for good.
    black_holes: u64,
    /// New connections wait while true.
    partitioned: bool,
}

/// How long the server side of a connection outlives its client in a black hole.
const LINGER: Duration = Duration::from_secs(20);

pub struct Proxy {
    pub addr: SocketAddr,
    network: watch::Sender<Network>,
}

impl Proxy {
    /// Listens on a free local port and forwards every connection to `upstream`. Runs on the
    /// current tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (network, watcher) = watch::channel(Network::default());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, watcher.clone()));
            }
        });
        Proxy { addr, network }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every open connection.
    pub fn drop_all(&self) {
        self.network.send_modify(|n| n.drops += 1);
    }

    /// Open connections stop carrying anything, for good, without either side being told.
    /// New connections work.
    pub fn black_hole(&self) {
        self.network.send_modify(|n| n.black_holes += 1);
    }

    /// Black-holes open connections and holds new ones until `heal`.
    pub fn partition(&self) {
        self.network.send_modify(|n| {
            n.black_holes += 1;
            n.partitioned = true;
        });
    }

    pub fn heal(&self) {
        self.network.send_modify(|n| n.partitioned = false);
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut network: watch::Receiver<Network>) {
    let born = *network.borrow_and_update();
    // A connection attempt during a partition waits for it to heal (SYNs are retried).
    loop {
        let now = *network.borrow_and_update();
        if now.drops != born.drops {
            return;
        }
        if !now.partitioned {
            break;
        }
        if network.changed().await.is_err() {
            return;
        }
    }
    let born = *network.borrow_and_update();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the client sees its connection close, as with a refused one
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Each pump hands back its halves, so they live until the other direction is done too:
    // dropping a write half sends FIN, which a black hole must not do. When the client has
    // gone, the server side is closed after LINGER, as the server's TCP keepalive would; when
    // the server has gone, the client has to find out by itself.
    let to_server = pump(client_read, server_write, network.clone(), born);
    let to_client = pump(server_read, client_write, network, born);
    tokio::pin!(to_server, to_client);
    let _halves = tokio::select! {
        halves = &mut to_server => {
            let _ = tokio::time::timeout(LINGER, &mut to_client).await;
            halves
        }
        halves = &mut to_client => {
            (&mut to_server).await;
            halves
        }
    };
}

/// Copies one direction until its reader ends or the network drops the connection. Once
/// black-holed it keeps reading (so the sender is not blocked, as on a real network) and
/// forwards nothing, not even the end of the stream.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut network: watch::Receiver<Network>,
    born: Network,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut silent = false;
    loop {
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    if !silent {
                        let _ = to.shutdown().await;
                    }
                    return (from, to);
                }
                Ok(n) => {
                    if !silent && to.write_all(&buf[..n]).await.is_err() {
                        return (from, to);
                    }
                }
            },
            changed = network.changed() => {
                if changed.is_err() {
                    return (from, to);
                }
                let now = *network.borrow_and_update();
                if now.drops != born.drops {
                    return (from, to);
                }
                silent |= now.black_holes != born.black_holes;
            }
        }
    }
}
