//! Upstream sources and the registry of their kinds.
//!
//! Each kind owns its config section ([`postgres::PostgresConfig`], [`mongo::MongoConfig`]),
//! its `deltarelay check` and its sessions; [`supervise()`] runs every kind's sessions the same
//! way (backoff, status, error kinds). [`SourceSpec`] is the only place that lists the kinds.

pub mod backoff;
pub mod logged;
pub mod mongo;
pub mod postgres;
mod status;
pub mod supervise;
pub mod write;

pub use status::{
    all_ready, log_lag_ms, now_ms, CopyProgress, CopyState, Freshness, SourceStatus, UnsyncedTable,
};
pub use supervise::{supervise, ErrorKind, Source};

use crate::check::CheckResult;
use crate::config::{Config, Problem, SourceConfig, WritesConfig};
use crate::log::Log;
use futures_util::future::BoxFuture;
use mongo::{MongoConfig, MongoSource};
use postgres::{PostgresConfig, PostgresSource};
use std::sync::Arc;
use tokio::sync::watch;
use write::Writer;

/// Any source's error, once it has left its kind.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One configured source, parsed by its kind.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    Postgres(PostgresConfig),
    Mongodb(MongoConfig),
}

/// A source that is set up: its status, and the supervised run to spawn.
pub struct Started {
    pub status: watch::Receiver<SourceStatus>,
    pub run: BoxFuture<'static, Result<(), BoxError>>,
    /// Its writes (`POST /v1/mutations`), for kinds that take them.
    pub writer: Option<Arc<dyn Writer>>,
}

impl SourceSpec {
    /// The `[[sources]]` entry's own keys, checked by its kind.
    pub fn parse(config: &SourceConfig) -> Result<SourceSpec, Problem> {
        match config.kind.as_str() {
            "postgres" => PostgresConfig::parse(config).map(SourceSpec::Postgres),
            "mongodb" => MongoConfig::parse(config).map(SourceSpec::Mongodb),
            other => Err(config.problem(format!(
                "kind = {other:?} is not a source kind: use \"postgres\" or \"mongodb\""
            ))),
        }
    }

    /// Every source of `config`.
    pub fn parse_all(config: &Config) -> Result<Vec<SourceSpec>, Problem> {
        config.sources.iter().map(SourceSpec::parse).collect()
    }

    pub fn name(&self) -> &str {
        match self {
            SourceSpec::Postgres(c) => &c.name,
            SourceSpec::Mongodb(c) => &c.name,
        }
    }

    /// Sets the source up on `log`; its run streams until `shutdown` turns true.
    pub fn start(
        &self,
        log: Log,
        writes: &WritesConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Started, BoxError> {
        Ok(match self {
            SourceSpec::Postgres(config) => {
                let source = PostgresSource::new(config, log)?;
                let writer = Arc::new(source.writer(writes));
                writer.spawn_purger();
                Started {
                    status: source.status_receiver(),
                    run: Box::pin(async move { Ok(supervise(source, shutdown).await?) }),
                    writer: Some(writer),
                }
            }
            SourceSpec::Mongodb(config) => {
                let source = MongoSource::new(config, log);
                let writer = Arc::new(source.writer(writes));
                Started {
                    status: source.status_receiver(),
                    run: Box::pin(async move { Ok(supervise(source, shutdown).await?) }),
                    writer: Some(writer),
                }
            }
        })
    }

    /// This source's prerequisites, as its kind checks them.
    pub async fn check(&self) -> Vec<CheckResult> {
        match self {
            SourceSpec::Postgres(config) => postgres::check::check(config).await,
            SourceSpec::Mongodb(config) => mongo::check::check(config).await,
        }
    }
}

/// `deltarelay check`: the config, then every check of every source, printing each result
/// as it is known. Returns all results; the caller fails when any is a failure.
pub async fn check_all(config: &Config, mut print: impl FnMut(&CheckResult)) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let mut emit = |result: CheckResult| {
        print(&result);
        results.push(result);
    };
    let specs = match SourceSpec::parse_all(config) {
        Ok(specs) => specs,
        Err(problem) => {
            emit(CheckResult::fail(
                "config",
                "file",
                problem.to_string(),
                "correct the config file",
            ));
            return results;
        }
    };
    emit(CheckResult::pass(
        "config",
        "file",
        format!("valid, {} source(s)", specs.len()),
    ));
    for spec in &specs {
        for result in spec.check().await {
            emit(result);
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load_text, MINIMAL};

    #[test]
    fn the_shipped_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deltarelay.toml");
        let config = Config::load(&path).unwrap();
        let specs = SourceSpec::parse_all(&config).unwrap();
        let SourceSpec::Postgres(pg) = &specs[0] else {
            panic!("{specs:?}")
        };
        assert_eq!(pg.tables.len(), 2);
        let SourceSpec::Mongodb(mongo) = &specs[1] else {
            panic!("{specs:?}")
        };
        assert_eq!(mongo.full_document, mongo::FullDocumentMode::UpdateLookup);
        assert!(!mongo.pre_images);
    }

    #[test]
    fn an_unknown_kind_is_named() {
        let config =
            load_text(&MINIMAL.replace("kind = \"postgres\"", "kind = \"mysql\"")).unwrap();
        let err = SourceSpec::parse_all(&config).unwrap_err().to_string();
        assert!(err.contains("mysql") && err.contains("app_pg"), "{err}");
    }
}
