//! Read-only access to the log, beside the writer (SQLite WAL mode allows both at once).

use super::store;
use super::LogError;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
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

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries with `seq > after`.
    Seq(u64),
    /// Entries whose `commit_time` is after this instant (RFC 3339 UTC with 6 fractional
    /// digits and `Z`, the stored form, so that text comparison orders correctly).
    CommitTime(String),
}

/// One page of the log, read from a single consistent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<ReadEntry>,
    /// More matching entries exist after the last one returned (in the same snapshot).
    pub has_more: bool,
    /// The committed head of the snapshot: every matching entry up to it was returned when
    /// `has_more` is false.
    pub head_seq: u64,
    /// Tombstones with a lower seq may have been purged: a cursor below it is expired.
    pub purged_seq: u64,
}

/// What `/v1/collections` says about one collection, from its latest entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionSummary {
    pub name: String,
    pub source: Option<String>,
    /// The names in the latest keyed record's `key`, in the source's order.
    pub key_columns: Vec<String>,
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
        Ok(store::position(&self.conn, source)?)
    }

    /// Up to `limit` entries with `seq > after_seq`, in log order.
    pub fn entries_after(&self, after_seq: u64, limit: usize) -> Result<Vec<ReadEntry>, LogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, txn, record FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq as i64, limit as i64], read_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A page of at most `limit` entries from `from`, in log order, restricted to
    /// `collections` when given. A page never ends inside an upstream transaction group (same
    /// `txn`) unless that group alone fills the page.
    pub fn page(
        &self,
        from: &ReadFrom,
        collections: Option<&[String]>,
        limit: usize,
    ) -> Result<Page, LogError> {
        let limit = limit.max(1);
        // One read transaction: the entries, head and purge mark come from the same snapshot.
        let snapshot = self.conn.unchecked_transaction()?;
        let head_seq = meta_u64(&self.conn, "head_seq")?;
        let purged_seq = meta_u64(&self.conn, "purged_seq")?;
        let filter = collection_filter(collections, 3);
        let (condition, start): (&str, rusqlite::types::Value) = match from {
            ReadFrom::Seq(after) => ("seq > ?1", (*after as i64).into()),
            ReadFrom::CommitTime(time) => ("commit_time > ?1", time.clone().into()),
        };
        let sql = format!(
            "SELECT seq, txn, record FROM entries WHERE {condition}{filter} ORDER BY seq LIMIT ?2"
        );
        let mut values: Vec<rusqlite::types::Value> = vec![start, ((limit + 1) as i64).into()];
        values.extend(
            collections
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into()),
        );
        let mut entries = {
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), read_entry)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut has_more = false;
        if entries.len() > limit {
            has_more = true;
            let next_txn = entries[limit].txn;
            entries.truncate(limit);
            let split = entries
                .iter()
                .rposition(|e| e.txn != next_txn)
                .map_or(0, |i| i + 1);
            if split > 0 {
                entries.truncate(split);
            }
        }
        if !has_more {
            if let (ReadFrom::CommitTime(_), Some(last)) = (from, entries.last()) {
                // The next page is read by cursor: say whether it has anything.
                has_more = self.any_after(last.seq, collections)?;
            }
        }
        snapshot.finish()?;
        Ok(Page {
            entries,
            has_more,
            head_seq,
            purged_seq,
        })
    }

    fn any_after(&self, seq: u64, collections: Option<&[String]>) -> Result<bool, LogError> {
        let filter = collection_filter(collections, 2);
        let sql = format!("SELECT EXISTS (SELECT 1 FROM entries WHERE seq > ?1{filter})");
        let mut values: Vec<rusqlite::types::Value> = vec![(seq as i64).into()];
        values.extend(
            collections
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into()),
        );
        let found: bool = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params_from_iter(values), |row| row.get(0))?;
        Ok(found)
    }

    /// The seq below which tombstones may have been purged (0 when never).
    pub fn purged_seq(&self) -> Result<u64, LogError> {
        meta_u64(&self.conn, "purged_seq")
    }

    /// Every collection with at least one entry, in name order (one index seek each).
    pub fn collections(&self) -> Result<Vec<String>, LogError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT collection FROM entries WHERE collection > ?1 ORDER BY collection LIMIT 1",
        )?;
        let mut names = Vec::new();
        let mut last = String::new();
        while let Some(name) = stmt
            .query_row([&last], |row| row.get::<_, String>(0))
            .optional()?
        {
            names.push(name.clone());
            last = name;
        }
        Ok(names)
    }

    /// A summary of every collection: its source and key columns, from its latest entries.
    pub fn collection_summaries(&self) -> Result<Vec<CollectionSummary>, LogError> {
        let names = self.collections()?;
        let mut keyed = self.conn.prepare_cached(
            "SELECT record FROM entries WHERE collection = ?1 AND key != '' ORDER BY seq DESC LIMIT 1",
        )?;
        let mut any = self.conn.prepare_cached(
            "SELECT record FROM entries WHERE collection = ?1 ORDER BY seq DESC LIMIT 1",
        )?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let record: Option<String> =
                match keyed.query_row([&name], |row| row.get(0)).optional()? {
                    Some(record) => Some(record),
                    None => any.query_row([&name], |row| row.get(0)).optional()?,
                };
            let parsed: Option<serde_json::Value> =
                record.and_then(|r| serde_json::from_str(&r).ok());
            let source = parsed
                .as_ref()
                .and_then(|r| r["source"].as_str())
                .map(str::to_string);
            let key_columns = parsed
                .as_ref()
                .and_then(|r| r["key"].as_object())
                .map(|key| key.keys().cloned().collect())
                .unwrap_or_default();
            out.push(CollectionSummary {
                name,
                source,
                key_columns,
            });
        }
        Ok(out)
    }

    /// Number of entries in the log.
    pub fn entry_count(&self) -> Result<u64, LogError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
        Ok(n as u64)
    }
}

fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReadEntry> {
    Ok(ReadEntry {
        seq: row.get::<_, i64>(0)? as u64,
        txn: row.get::<_, i64>(1)? as u64,
        record: row.get(2)?,
    })
}

fn meta_u64(conn: &Connection, name: &str) -> Result<u64, LogError> {
    Ok(store::get_meta(conn, name)?
        .and_then(|t| t.parse().ok())
        .unwrap_or(0))
}

/// ` AND collection IN (?n, …)` for the given names, numbering placeholders from `first`.
fn collection_filter(collections: Option<&[String]>, first: usize) -> String {
    match collections {
        None => String::new(),
        Some(names) => {
            let marks: Vec<String> = (0..names.len())
                .map(|i| format!("?{}", first + i))
                .collect();
            format!(" AND collection IN ({})", marks.join(", "))
        }
    }
}
