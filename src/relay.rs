//! The daemon: opens the log, starts every source and the HTTP server, and stops them in order.

use crate::config::{Config, SourceKind};
use crate::http::{self, AppState};
use crate::log::Log;
use crate::source::postgres::PostgresSource;
use anyhow::{bail, Context};
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Runs the relay until `stop` completes or a source fails for good.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Before the sources start, so that their first counters are recorded.
    http::telemetry::install();
    let log = Log::open(&config.log.dir)
        .with_context(|| format!("opening the log in {}", config.log.dir.display()))?;
    tracing::info!(dir = %config.log.dir.display(), epoch = log.epoch(), "log open");
    let (shutdown_tx, shutdown) = watch::channel(false);

    let mut sources = JoinSet::new();
    let mut statuses = Vec::new();
    for source in &config.sources {
        match source.kind {
            SourceKind::Postgres => {
                let pg = PostgresSource::new(source, log.clone())?;
                statuses.push(pg.status());
                let name = source.name.clone();
                let shutdown = shutdown.clone();
                sources.spawn(async move { (name, pg.run(shutdown).await) });
            }
            SourceKind::Mongodb => bail!(
                "source {:?}: kind = \"mongodb\" is not supported by this build yet",
                source.name
            ),
        }
    }

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("listening on {}", config.http.listen))?;
    tracing::info!(listen = %config.http.listen, "serving HTTP");
    let state = AppState {
        log: log.clone(),
        sources: statuses,
    };
    let mut server = tokio::spawn(http::serve(listener, state, shutdown.clone()));

    tokio::pin!(stop);
    let failure = tokio::select! {
        _ = &mut stop => None,
        Some(done) = sources.join_next() => match done {
            Ok((name, Err(e))) => Some(anyhow::Error::new(e).context(format!("source {name}"))),
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
    let _ = shutdown_tx.send(true);
    while let Some(done) = sources.join_next().await {
        if let Ok((name, Err(e))) = done {
            tracing::warn!(source = %name, error = %e, "source ended with an error during shutdown");
        }
    }
    if !server.is_finished() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
