//! The daemon: opens the log, starts every source and the HTTP server, and stops them in order.

use crate::auth::{Access, Verifier};
use crate::config::{AuthMode, Config, LogBackendKind};
use crate::http::{self, AppState};
use crate::log::nats::cluster::NatsSettings;
use crate::log::Log;
use crate::source::SourceSpec;
use crate::systemd;
use anyhow::Context;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long sources may take to stop after the log writer died.
const SOURCES_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the relay until `stop` completes or a source fails for good.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Before the sources start, so that their first counters are recorded.
    crate::telemetry::install();
    let log = open_log(&config).await?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    // Only a node that writes the log purges its tombstones (a serve-only node of the shared
    // log reads the purges the ingest node publishes).
    let retention = (!config.sources.is_empty()).then(|| {
        tokio::spawn(while_writing(
            log.clone(),
            shutdown.clone(),
            crate::log::retention::run(
                log.clone(),
                config.log.tombstone_retention,
                shutdown.clone(),
            ),
        ))
    });

    let mut sources = JoinSet::new();
    let mut statuses = Vec::new();
    let mut writers = Vec::new();
    for spec in SourceSpec::parse_all(&config).context("config")? {
        let started = spec
            .start(log.clone(), &config.writes, shutdown.clone())
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("source {}", spec.name()))?;
        statuses.push(started.status);
        writers.extend(started.writer);
        let name = spec.name().to_string();
        // A standby ingest node of the shared log starts its sources once it is active.
        let run = while_writing(log.clone(), shutdown.clone(), started.run);
        sources.spawn(async move {
            let ran = run.await.unwrap_or(Ok(()));
            (name, ran.map_err(|e| anyhow::anyhow!(e)))
        });
    }

    let listener = listen(config.http.listen, config.limits.send_buffer_bytes)
        .with_context(|| format!("listening on {}", config.http.listen))?;
    tracing::info!(listen = %config.http.listen, "serving HTTP");
    tokio::spawn(systemd::notify_ready(
        statuses.clone(),
        log.role(),
        shutdown.clone(),
    ));
    tokio::spawn(systemd::watchdog(shutdown.clone()));
    let state = AppState {
        log: log.clone(),
        sources: statuses,
    };
    let options = http_options(&config, writers)?;
    if let Some(verifier) = &options.verifier {
        verifier.clone().spawn_reloader(shutdown.clone());
    }
    let mut app = http::router_with(state, options, shutdown.clone());
    if config.http.console {
        tracing::info!("serving the console at /");
        app = app.merge(http::console::router());
    }
    let mut server = tokio::spawn(http::serve_router(listener, app, shutdown.clone()));

    tokio::pin!(stop);
    let mut writer_died = false;
    let failure = tokio::select! {
        _ = &mut stop => None,
        lost = log.hold_ingest_lease() => {
            // Sources stop promptly: the stream refuses a deposed writer's messages anyway.
            writer_died = true;
            Some(anyhow::anyhow!("{lost}; stopping so that the service manager restarts this node as a standby"))
        }
        reason = log.writer_stopped() => {
            writer_died = true;
            Some(anyhow::anyhow!("{reason}; stopping so that the service manager restarts the relay (nothing unacknowledged is lost)"))
        }
        Some(done) = sources.join_next() => match done {
            Ok((name, Err(e))) => Some(e.context(format!("source {name}"))),
            Ok((_, Ok(()))) => None,
            Err(e) => Some(anyhow::Error::new(e).context("a source task panicked")),
        },
        served = &mut server => Some(match served {
            Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e).context("HTTP server"),
            Err(e) => anyhow::Error::new(e).context("the HTTP server task panicked"),
        }),
    };

    tracing::info!("shutting down");
    systemd::notify_stopping();
    let _ = shutdown_tx.send(true);
    // With a dead log writer nothing more can be committed, and the relay must exit promptly
    // so that it is restarted: the wait is bounded then.
    let drain = async {
        while let Some(done) = sources.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::warn!(source = %name, error = %e, "source ended with an error during shutdown");
            }
        }
        if let Some(retention) = retention {
            let _ = retention.await;
        }
    };
    if !writer_died {
        drain.await;
    } else if tokio::time::timeout(SOURCES_GRACE, drain).await.is_err() {
        tracing::warn!("sources did not stop within {SOURCES_GRACE:?}; exiting anyway");
    }
    if !server.is_finished() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Runs `task` once this node writes the log (at once with the embedded engine; on an ingest
/// node of the shared log, once it holds the ingest lease). `None` when the relay is told to
/// stop first: a standby's sources never start then (waiting on, the shutdown hung until the
/// service manager killed the process).
async fn while_writing<T>(
    log: Log,
    mut shutdown: watch::Receiver<bool>,
    task: impl Future<Output = T>,
) -> Option<T> {
    let mut role = log.role();
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => return None,
        _ = role.wait_for(|role| role.writes()) => {}
    }
    Some(task.await)
}

/// The configured engine's log: the SQLite file under `log.dir`, or the shared NATS log.
async fn open_log(config: &Config) -> anyhow::Result<Log> {
    let scopes = config.scope_columns();
    let nats = match (config.log.backend, &config.log.nats) {
        (LogBackendKind::Nats, Some(nats)) => nats,
        _ => {
            let log = Log::open_scoped(&config.log.dir, scopes)
                .with_context(|| format!("opening the log in {}", config.log.dir.display()))?;
            tracing::info!(dir = %config.log.dir.display(), epoch = log.epoch(), "log open");
            return Ok(log);
        }
    };
    let settings = NatsSettings::from_config(nats)?;
    let dir = Some(config.log.dir.as_path()).filter(|dir| !dir.as_os_str().is_empty());
    let writable = !config.sources.is_empty();
    let log = Log::open_nats(&settings, dir, scopes, writable)
        .await
        .with_context(|| format!("opening the NATS log stream {}", settings.stream))?;
    tracing::info!(
        stream = %settings.stream,
        urls = ?settings.urls,
        epoch = log.epoch(),
        head = *log.head().borrow(),
        writable,
        "shared log open (NATS JetStream)"
    );
    Ok(log)
}

/// The HTTP listener. Accepted connections inherit its send buffer size (`0` keeps the
/// kernel's autotuning), which bounds what a client that stops reading makes the kernel hold.
fn listen(
    addr: std::net::SocketAddr,
    send_buffer: usize,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(u32::try_from(send_buffer).unwrap_or(u32::MAX))?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Authentication, access rules, limits and CORS from the config; says loudly what is exposed.
fn http_options(
    config: &Config,
    writers: Vec<std::sync::Arc<dyn crate::source::write::Writer>>,
) -> anyhow::Result<http::HttpOptions> {
    let verifier = match config.auth.mode {
        AuthMode::Jwt => Some(std::sync::Arc::new(Verifier::from_config(&config.auth)?)),
        AuthMode::None => None,
    };
    let listen = config.http.listen;
    match (&verifier, listen.ip().is_loopback()) {
        (Some(_), _) => tracing::info!(
            %listen,
            collections = config.collections.len(),
            serve_unlisted = config.auth.serve_unlisted,
            "JWT auth: collections are served per [collections] rules"
        ),
        (None, true) => {
            tracing::info!(%listen, "auth.mode = \"none\": every collection is readable by local clients")
        }
        (None, false) => tracing::warn!(
            %listen,
            "AUTH IS OFF ON A NON-LOOPBACK ADDRESS: every synced row of every collection is readable by anyone who can reach {listen} (http.allow_unauthenticated_remote = true)"
        ),
    }
    Ok(http::HttpOptions {
        access: Access::from_config(config),
        verifier,
        public_metrics: config.auth.public_metrics,
        limits: Some(config.limits.clone()),
        cors_origins: config.http.cors_origins.clone(),
        writes: http::mutations::WriteOptions {
            writers,
            allow_unauthenticated: config.writes.allow_unauthenticated,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_get_the_configured_send_buffer() {
        for (configured, expected) in [(65536, Some(2 * 65536)), (0, None)] {
            let listener = listen("127.0.0.1:0".parse().unwrap(), configured).unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let socket = tokio::net::TcpSocket::from_std_stream(accepted.into_std().unwrap());
            let size = socket.send_buffer_size().unwrap();
            match expected {
                // Linux doubles the size it is given, for its bookkeeping.
                Some(expected) => assert_eq!(size, expected),
                None => assert_ne!(size, 2 * 65536),
            }
        }
    }
}
