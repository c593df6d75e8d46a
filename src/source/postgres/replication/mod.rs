//! A Postgres connection in replication mode (`replication=database`), framed by hand.
//!
//! tokio-postgres cannot run `START_REPLICATION` (it answers with CopyBoth), so this module
//! speaks the wire protocol itself, using `postgres-protocol` to encode frontend messages and
//! to parse most backend messages. CopyBothResponse (`W`) and CopyData (`d`) frames are cut
//! out of the read buffer here: CopyData is the hot path, and its payload is handed out as a
//! zero-copy slice of the read buffer.

use std::time::Duration;

use bytes::Bytes;

use super::Lsn;

mod connection;
mod framing;
mod stream;
#[cfg(test)]
mod tests;
mod transport;

pub use connection::ReplicationConnection;
use framing::*;
pub use stream::ReplicationStream;
use transport::*;

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// Initial size of the read buffer; reads are topped up to at least this much free space.
const READ_BUF_SIZE: usize = 128 * 1024;
/// Below this much free space the read buffer is grown before the next read.
const MIN_READ_SPACE: usize = 16 * 1024;
/// Largest frame accepted from the server (Postgres itself caps a field at 1 GiB).
const MAX_FRAME_LEN: usize = 1 << 30;
/// How long `close` waits for the server to finish the copy before hanging up anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// XLogData header after the `w` byte: WAL start, WAL end, send time.
const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Keepalive body including the `k` byte: WAL end, send time, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{code}: {message}{}{}", in_parens(.detail), after_space(.hint))]
    Server {
        /// SQLSTATE, e.g. `42704`.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("invalid connection configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server closed the connection")]
    Closed,
}

impl ReplicationError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

fn in_parens(text: &Option<String>) -> String {
    text.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
}

fn after_space(text: &Option<String>) -> String {
    text.as_ref().map(|t| format!(" {t}")).unwrap_or_default()
}

/// The rows of a simple query's last result set, as text (`None` is SQL NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub consistent_point: Lsn,
    /// Only valid until this connection runs its next command.
    pub snapshot_name: Option<String>,
}

/// A message of the logical replication stream (the payload of one CopyData frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: a chunk of decoded WAL (one pgoutput message).
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// `k`: the server's heartbeat; answer with `send_status` when `reply_requested`.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}
