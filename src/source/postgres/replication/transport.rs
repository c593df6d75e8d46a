//! Where a replication connection goes (TCP, Unix socket, TLS) and the socket it gets.

use super::*;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::Host;

use super::super::tls::PgTls;

/// The byte stream under the protocol.
pub(super) enum Socket {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One place the URL says to connect to (it may list several hosts).
pub(super) enum Target {
    Tcp {
        host: String,
        port: u16,
        /// The name the server's certificate must carry (the host name, else the address).
        tls_name: String,
    },
    #[cfg(unix)]
    Unix { dir: std::path::PathBuf, port: u16 },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Target::Unix { dir, port } => write!(f, "{}", socket_path(dir, *port).display()),
        }
    }
}

#[cfg(unix)]
pub(super) fn socket_path(dir: &Path, port: u16) -> std::path::PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

impl Target {
    pub(super) async fn open(&self, tls: &PgTls) -> Result<Socket> {
        match self {
            Target::Tcp {
                host,
                port,
                tls_name,
            } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                // Status updates are small and latency matters more than packet count.
                stream.set_nodelay(true)?;
                match tls.client_config() {
                    None => Ok(Socket::Tcp(stream)),
                    Some(client) => start_tls(stream, client, tls, tls_name).await,
                }
            }
            #[cfg(unix)]
            Target::Unix { dir, port } => Ok(Socket::Unix(
                UnixStream::connect(socket_path(dir, *port)).await?,
            )),
        }
    }
}

/// SSLRequest, then the TLS handshake when the server agrees. A server without TLS is an error
/// unless the mode only prefers TLS.
pub(super) async fn start_tls(
    mut stream: TcpStream,
    client: std::sync::Arc<rustls::ClientConfig>,
    tls: &PgTls,
    name: &str,
) -> Result<Socket> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {
            let name = super::super::tls::server_name(name).map_err(ReplicationError::Config)?;
            let stream = tokio_rustls::TlsConnector::from(client)
                .connect(name, stream)
                .await
                .map_err(|e| ReplicationError::Tls(e.to_string()))?;
            Ok(Socket::Tls(Box::new(stream)))
        }
        b'N' if !tls.mode.required() => Ok(Socket::Tcp(stream)),
        b'N' => Err(ReplicationError::Tls(format!(
            "the server does not accept TLS connections, but sslmode is {:?}",
            tls.mode
        ))),
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer {other:#x} to SSLRequest"
        ))),
    }
}

/// The hosts of `config` in order, paired with their ports (like libpq: one port for all, or
/// one per host; `hostaddr` wins over `host` for the address).
pub(super) fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(ReplicationError::Config(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        )));
    }
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err(ReplicationError::Config("no host given".into()));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(ReplicationError::Config(format!(
            "{count} hosts but {} ports",
            ports.len()
        )));
    }
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let target = match (addrs.get(i), hosts.get(i)) {
            (Some(addr), host) => Target::Tcp {
                host: addr.to_string(),
                port,
                tls_name: match host {
                    Some(Host::Tcp(name)) => name.clone(),
                    _ => addr.to_string(),
                },
            },
            (None, Some(Host::Tcp(host))) => Target::Tcp {
                host: host.clone(),
                port,
                tls_name: host.clone(),
            },
            #[cfg(unix)]
            (None, Some(Host::Unix(dir))) => Target::Unix {
                dir: dir.clone(),
                port,
            },
            (None, None) => return Err(ReplicationError::Config("no host given".into())),
        };
        targets.push(target);
    }
    Ok(targets)
}
