//! What the writer does besides appending: removing a collection, resetting a source,
//! purging old tombstones. Each runs in a transaction of its own.

use super::LogWriter;
use crate::log::large;
use crate::log::store;
use crate::log::LogError;
use rusqlite::params;

impl LogWriter {
    /// Removes every entry of `collection` (a table no longer synced), without tombstones.
    pub fn remove_collection(&mut self, collection: &str) -> Result<usize, LogError> {
        self.ensure_open()?;
        let removed = self
            .conn
            .prepare_cached("DELETE FROM entries WHERE collection = ?1")?
            .execute([collection])?;
        large::remove_collection(&self.conn, collection)?;
        Ok(removed)
    }

    /// Forgets everything `source` wrote and where it was (its position and any `source#…`
    /// progress), and expires every cursor issued so far. Used when the source's history is
    /// lost upstream and the source starts over with a fresh copy. Returns the new purge mark.
    pub fn reset_source(&mut self, source: &str) -> Result<u64, LogError> {
        self.rollback();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            self.conn
                .execute("DELETE FROM entries WHERE source = ?1", [source])?;
            large::remove_orphans(&self.conn)?;
            self.conn.execute(
                "DELETE FROM positions WHERE source = ?1 OR substr(source, 1, length(?1) + 1) = ?1 || '#'",
                [source],
            )?;
            let mark = self.committed_seq + 1;
            store::set_meta(&self.conn, "purged_seq", &mark.to_string())?;
            self.conn.execute_batch("COMMIT")?;
            Ok(mark)
        })();
        match result {
            Ok(mark) => {
                self.purged_seq = mark;
                Ok(mark)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Drops delete and truncate tombstones committed upstream before `before` (RFC 3339, the
    /// stored form) and raises the purge mark to the newest one dropped. Returns how many.
    pub fn purge_tombstones(&mut self, before: &str) -> Result<usize, LogError> {
        self.rollback();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let newest: Option<i64> = self.conn.query_row(
                "SELECT max(seq) FROM entries WHERE op IN ('delete', 'truncate') AND commit_time < ?1",
                [before],
                |row| row.get(0),
            )?;
            let Some(newest) = newest else {
                self.conn.execute_batch("ROLLBACK")?;
                return Ok((0, self.purged_seq));
            };
            let removed = self.conn.execute(
                "DELETE FROM entries WHERE op IN ('delete', 'truncate') AND seq <= ?1 AND commit_time < ?2",
                params![newest, before],
            )?;
            let mark = self.purged_seq.max(newest as u64);
            store::set_meta(&self.conn, "purged_seq", &mark.to_string())?;
            self.conn.execute_batch("COMMIT")?;
            Ok((removed, mark))
        })();
        match result {
            Ok((removed, mark)) => {
                self.purged_seq = mark;
                Ok(removed)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}
