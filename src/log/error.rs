//! What can go wrong in the log, in words an operator can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}", describe_sqlite(.0))]
    Sqlite(#[from] rusqlite::Error),
    #[error("log record encoding error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot create the log directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the log file is damaged: {0}")]
    Corrupt(String),
    #[error("invalid change: {0}")]
    Invalid(String),
    #[error("the log writer has stopped")]
    Stopped,
    /// The shared log (`log.backend = "nats"`) could not be reached or refused a write.
    #[error("NATS log: {0}")]
    Nats(String),
    /// A node that is not the active ingest node tried to write the shared log.
    #[error("this node cannot write the shared log: {0}")]
    ReadOnly(String),
}

impl LogError {
    /// Whether the log can no longer be written at all, so the writer must stop and the relay
    /// with it (systemd restarts it; nothing acknowledged is lost). A full disk is not: it is
    /// retried until an operator frees space.
    pub fn is_fatal(&self) -> bool {
        let damaged = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            )
        };
        match self {
            LogError::Sqlite(e) => damaged(e),
            LogError::Corrupt(_) => true,
            _ => false,
        }
    }
}

/// A full disk is the storage error an operator can fix, so it says what to do.
fn describe_sqlite(error: &rusqlite::Error) -> String {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => format!(
            "the log's disk is full ({error}): free space where log.dir is; until then nothing \
             more is acknowledged upstream and the relay retries by itself"
        ),
        _ => format!("log storage error: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_what_to_do() {
        let full = LogError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ));
        let text = full.to_string();
        assert!(text.starts_with("the log's disk is full ("), "{text}");
        assert!(text.contains("free space where log.dir is"), "{text}");
        let other = LogError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        ));
        assert!(other.to_string().starts_with("log storage error: "));
    }

    #[test]
    fn only_a_damaged_log_is_fatal() {
        let code = |c| {
            LogError::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(c),
                None,
            ))
        };
        assert!(code(rusqlite::ffi::SQLITE_CORRUPT).is_fatal());
        assert!(code(rusqlite::ffi::SQLITE_NOTADB).is_fatal());
        assert!(!code(rusqlite::ffi::SQLITE_FULL).is_fatal());
        assert!(!code(rusqlite::ffi::SQLITE_BUSY).is_fatal());
        assert!(!LogError::Stopped.is_fatal());
    }
}
