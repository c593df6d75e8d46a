//! What can end a Postgres session, and which of it retrying can fix.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("replication connection: {0}")]
    Replication(#[from] ReplicationError),
    #[error("pgoutput: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("initial copy: {0}")]
    Copy(#[from] CopyError),
    #[error("the initial copy task failed: {0}")]
    CopyTask(String),
    #[error("unexpected replication message: {0}")]
    Protocol(String),
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error(
        "reconnecting to stream the append-only tables' publication, which the slot has now passed"
    )]
    Rejoin,
    #[error(
        "no answer from Postgres within {after:?} while {what}: the connection looks dead \
         (dropped by the network?); reconnecting (see replication_timeout)"
    )]
    Timeout { what: &'static str, after: Duration },
}

/// Bounds one network step: a connection the network dropped silently never answers.
pub(super) async fn bounded<T, E: Into<SourceError>>(
    limit: Duration,
    what: &'static str,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(SourceError::Timeout { what, after: limit }),
    }
}

impl SourceError {
    /// Errors that retrying cannot fix stop the relay; a login or privilege the server
    /// refuses is the operator's to fix, and said so while it is retried.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Config { .. }
            | SourceError::Copy(CopyError::Shape(_))
            | SourceError::Catalog(CatalogError::Unusable(_)) => ErrorKind::Fatal,
            SourceError::Log(e) if e.is_fatal() => ErrorKind::Fatal,
            _ if self
                .sqlstate()
                .is_some_and(crate::source::postgres::pg_error::is_configuration) =>
            {
                ErrorKind::Config
            }
            SourceError::Replication(ReplicationError::Auth(_)) => ErrorKind::Config,
            _ => ErrorKind::Retry,
        }
    }

    /// The server's SQLSTATE, when the server refused something.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SourceError::Catalog(CatalogError::Query(e)) => {
                crate::source::postgres::pg_error::sqlstate(e)
            }
            SourceError::Copy(CopyError::Query { source, .. } | CopyError::Snapshot(source)) => {
                crate::source::postgres::pg_error::sqlstate(source)
            }
            SourceError::Copy(CopyError::Catalog(CatalogError::Query(e))) => {
                crate::source::postgres::pg_error::sqlstate(e)
            }
            SourceError::Replication(e) => e.sqlstate(),
            _ => None,
        }
    }
}
