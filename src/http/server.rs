//! Accepting and serving HTTP/1.1 connections: one task per connection, driven by hyper's
//! HTTP/1 connection directly.
//!
//! `axum::serve` would do the same through hyper-util's protocol-sniffing builder, which keeps
//! that builder, an upgrade wrapper and a version-detection stage in every connection's task.
//! The relay speaks HTTP/1.1 only (SSE needs nothing else), and an idle SSE connection is what
//! 10,000 clients hold open, so its task is kept as small as hyper allows (`benches/fanout.rs`
//! measures the memory per idle connection).

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

/// How long a client may take to send a request's headers, which is also how long a kept-alive
/// connection may stay idle between requests. Without it a client that opens a connection and
/// sends nothing (or one byte a minute) holds it forever. It is long on purpose: a reverse proxy
/// reuses idle connections to the relay for up to its own idle timeout (nginx's upstream
/// `keepalive_timeout` 60 s, Caddy's 2 min), and if the relay closed one first, a request the
/// proxy sends on it at that moment would fail with a 502.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Serves `app` on `listener` until `shutdown` turns true, then stops accepting, asks every
/// connection to close once its current response is done (streams and long polls end on the
/// same signal) and returns when all have closed. Handlers see the client's address
/// (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with_header_timeout(listener, app, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with a given header read timeout (tests use a short one).
async fn serve_with_header_timeout(
    listener: TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    header_timeout: Duration,
) -> io::Result<()> {
    // Every connection task holds a clone of `open`; `all_closed` resolves when none is left.
    let (all_closed, open) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                wait_after_accept_error(e).await;
                continue;
            }
        };
        no_delay(&tcp);
        tokio::spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            shutdown.clone(),
            header_timeout,
            open.clone(),
        ));
    }
    drop(listener);
    drop(open);
    all_closed.closed().await;
    Ok(())
}

/// Serves one connection until the client closes it, an error ends it, or shutdown has let
/// its current response finish.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    header_timeout: Duration,
    _open: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        app.call(request.map(Body::new))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), service);
    let mut connection = std::pin::pin!(connection);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait_for(|stop| *stop), if !asked_to_close => {
                asked_to_close = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Sets `TCP_NODELAY`. A live SSE event is one small write; with Nagle's algorithm a small
/// write waits until the previous one is acknowledged, and clients delay acknowledgements by
/// up to 40 ms, which showed as a 40 ms p99 in `benches/latency.rs`.
fn no_delay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
    }
}

/// A failed accept: a client that gave up before it was accepted is nothing to wait for; any
/// other error (most likely the open-file limit) is logged and accepting pauses for a second,
/// so that the loop does not spin while connections close.
async fn wait_after_accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "could not accept a connection (is the open-file limit reached? see LimitNOFILE in the systemd unit)");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose one route answers with the client's address as the handler saw it.
    async fn start(
        header_timeout: Duration,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (stop, shutdown) = watch::channel(false);
        let served = tokio::spawn(serve_with_header_timeout(
            listener,
            app,
            shutdown,
            header_timeout,
        ));
        (addr, stop, served)
    }

    /// Sends one keep-alive request and reads its whole response (the body is short).
    async fn get_peer(tcp: &mut TcpStream) -> String {
        tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: relay\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&response).contains("\r\n\r\n127.0.0.1:") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-response");
            response.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(n) = tcp.try_read(&mut buf) {
            response.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(response).unwrap()
    }

    /// Reads until the server closes the connection; fails after `within`.
    async fn closed_within(tcp: &mut TcpStream, within: Duration) {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(within, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        });
        read.await.expect("the server closed the connection");
    }

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_acknowledgements() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (accepted, _) = listener.accept().await.unwrap();
        no_delay(&accepted);
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is set");
        client.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn handlers_see_the_clients_address_and_connections_stay_open() {
        let (addr, _stop, _served) = start(HEADER_READ_TIMEOUT).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let me = tcp.local_addr().unwrap().to_string();
        for _ in 0..2 {
            let response = get_peer(&mut tcp).await;
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
            assert!(response.ends_with(&format!("\r\n\r\n{me}")), "{response}");
        }
    }

    #[tokio::test]
    async fn a_client_that_sends_no_request_in_time_is_disconnected() {
        let (addr, _stop, _served) = start(Duration::from_millis(300)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        closed_within(&mut silent, Duration::from_secs(10)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed after {:?}, before the timeout",
            started.elapsed()
        );
        // One byte at a time does not keep it open either.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /peer HT").await.unwrap();
        closed_within(&mut slow, Duration::from_secs(10)).await;
        // Nor does a keep-alive connection whose client has stopped asking.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        get_peer(&mut kept).await;
        closed_within(&mut kept, Duration::from_secs(10)).await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_returns() {
        let (addr, stop, served) = start(HEADER_READ_TIMEOUT).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        get_peer(&mut idle).await;
        stop.send(true).unwrap();
        closed_within(&mut idle, Duration::from_secs(5)).await;
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("serve returns once its connections are closed")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens after shutdown"
        );
    }
}
