//! The rows the writer works with: an entry being written, the key's live entry it replaces,
//! and the columns bound to SQL.

use crate::log::LogError;
use crate::record::{ChangeRecord, Op, Row};
use rusqlite::{params, Connection};

/// The columns of one `entries` row, borrowed from the record being written.
pub(super) struct StoredColumns<'a> {
    pub(super) seq: u64,
    pub(super) txn: u64,
    pub(super) collection: &'a str,
    pub(super) key: &'a str,
    pub(super) op: Op,
    pub(super) commit_time: &'a str,
    /// The record's JSON (serde_json writes only UTF-8), bound as text without checking it again.
    pub(super) record: &'a [u8],
    /// Where its values stored apart go (large.rs), if it has any.
    pub(super) large: Option<&'a str>,
    pub(super) source: &'a str,
    pub(super) scope: &'a str,
}

impl StoredColumns<'_> {
    pub(super) fn insert(&self, conn: &Connection) -> rusqlite::Result<usize> {
        conn.prepare_cached(
            "INSERT INTO entries (seq, txn, collection, key, op, commit_time, record, source, scope, large)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            self.seq as i64,
            self.txn as i64,
            self.collection,
            self.key,
            self.op.as_str(),
            self.commit_time,
            rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(self.record)),
            self.source,
            self.scope,
            self.large,
        ])
    }

    /// Turns the entry `earlier` of the same (collection, key, scope) into this one.
    pub(super) fn replace(&self, conn: &Connection, earlier: i64) -> rusqlite::Result<usize> {
        conn.prepare_cached(
            "UPDATE entries SET seq = ?1, txn = ?2, op = ?3, commit_time = ?4, record = ?5,
                 source = ?6, large = ?7
             WHERE seq = ?8",
        )?
        .execute(params![
            self.seq as i64,
            self.txn as i64,
            self.op.as_str(),
            self.commit_time,
            rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(self.record)),
            self.source,
            self.large,
            earlier,
        ])
    }

    /// Removes the key's entry in this scope, if any.
    pub(super) fn delete_earlier(&self, conn: &Connection) -> rusqlite::Result<usize> {
        conn.prepare_cached(
            "DELETE FROM entries WHERE collection = ?1 AND key = ?2 AND scope = ?3",
        )?
        .execute(params![self.collection, self.key, self.scope])
    }
}

pub(super) struct LiveEntry {
    pub(super) seq: i64,
    pub(super) scope: String,
    pub(super) record: String,
    /// Its `large` column: which of its values are stored apart.
    pub(super) large: Option<String>,
}

/// Fills columns the source did not send from the key's previous entry in the log.
pub(super) fn fill_unchanged(
    previous: Option<&LiveEntry>,
    after: &mut Option<Row>,
    unchanged: &mut Vec<String>,
) -> Result<(), LogError> {
    let Some(previous) = previous else {
        return Ok(());
    };
    let previous: ChangeRecord = serde_json::from_str(&previous.record)?;
    let (Some(previous_after), Some(after)) = (previous.after, after.as_mut()) else {
        return Ok(());
    };
    unchanged.retain(|column| match previous_after.get(column) {
        Some(value) => {
            after.insert(column.clone(), value.clone());
            false
        }
        None => true,
    });
    Ok(())
}

pub(super) struct Entry {
    pub(super) collection: String,
    pub(super) op: Op,
    pub(super) key: Option<Row>,
    pub(super) scope: String,
    pub(super) after: Option<Row>,
    pub(super) before: Option<Row>,
    pub(super) changed: Option<Vec<String>>,
    pub(super) unchanged: Vec<String>,
    /// Values of `after` stored apart (large.rs).
    pub(super) apart: Vec<Apart>,
    /// The seq of the key's entry in this scope, when the writer has read it already.
    pub(super) replaces: Option<i64>,
    /// The row before this change, for shaped followers.
    pub(super) prior: super::Prior,
}

/// A value of a record stored apart: its column and, when the record brought it, its JSON (a
/// value the record keeps from its previous version is read back only to frame a live event).
pub(super) struct Apart {
    pub(super) column: String,
    pub(super) json: Option<Vec<u8>>,
}
