//! Read-only access to the log, beside the writer (SQLite WAL mode allows both at once).

use super::store;
use super::LogError;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// One log entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub seq: u64,
    pub txn: u64,
    pub record: String,
}

pub struct LogReader {
    conn: Connection,
}

impl LogReader {
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        Ok(LogReader {
            conn: store::open_for_reading(dir)?,
        })
    }

    pub fn epoch(&self) -> Result<Option<u32>, LogError> {
        Ok(store::get_meta(&self.conn, "epoch")?.and_then(|t| t.parse().ok()))
    }

    pub fn head_seq(&self) -> Result<u64, LogError> {
        Ok(store::get_meta(&self.conn, "head_seq")?
            .and_then(|t| t.parse().ok())
            .unwrap_or(0))
    }

    pub fn position(&self, source: &str) -> Result<Option<String>, LogError> {
        Ok(self
            .conn
            .query_row(
                "SELECT position FROM positions WHERE source = ?1",
                [source],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Up to `limit` entries with `seq > after_seq`, in log order.
    pub fn entries_after(&self, after_seq: u64, limit: usize) -> Result<Vec<ReadEntry>, LogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, txn, record FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq as i64, limit as i64], |row| {
            Ok(ReadEntry {
                seq: row.get::<_, i64>(0)? as u64,
                txn: row.get::<_, i64>(1)? as u64,
                record: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of entries in the log.
    pub fn entry_count(&self) -> Result<u64, LogError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
        Ok(n as u64)
    }
}
