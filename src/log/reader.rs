//! Read-only access to the log, beside the writer (SQLite WAL mode allows both at once).

use super::large;
use super::shaped::ShapeRead;
use super::store;
use super::LogError;
use crate::record::Op;
use crate::shape::{ColumnInfo, Shape};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Which entries a reader may see: whole collections and, in scoped collections, the rows of
/// one scope value (plus the collection's truncate, which concerns every scope).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    /// `None`: every collection, unrestricted.
    rules: Option<Rules>,
    /// A client's shape over the one collection it reads.
    shape: Option<ShapeRead>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rules {
    full: BTreeSet<String>,
    scoped: BTreeMap<String, String>,
    /// `Some(named)`: every collection not in `named` is readable in full as well.
    others_except: Option<BTreeSet<String>>,
}

impl RowFilter {
    /// Everything.
    pub fn all() -> RowFilter {
        RowFilter {
            rules: None,
            shape: None,
        }
    }

    /// Nothing yet; add to it with [`RowFilter::full`], [`RowFilter::scoped`], [`RowFilter::others`].
    pub fn none() -> RowFilter {
        RowFilter {
            rules: Some(Rules::default()),
            shape: None,
        }
    }

    /// Only these collections, in full (`None`: everything).
    pub fn collections(names: Option<&[String]>) -> RowFilter {
        match names {
            None => RowFilter::all(),
            Some(names) => names.iter().fold(RowFilter::none(), |f, n| f.full(n)),
        }
    }

    pub fn full(mut self, collection: &str) -> RowFilter {
        if let Some(rules) = self.rules.as_mut() {
            rules.full.insert(collection.to_string());
        }
        self
    }

    pub fn scoped(mut self, collection: &str, scope: &str) -> RowFilter {
        if let Some(rules) = self.rules.as_mut() {
            rules
                .scoped
                .insert(collection.to_string(), scope.to_string());
        }
        self
    }

    /// Every collection not in `named` (resolved at each read), in full.
    pub fn others(mut self, named: BTreeSet<String>) -> RowFilter {
        if let Some(rules) = self.rules.as_mut() {
            rules.others_except = Some(named);
        }
        self
    }

    /// Reads through `shape` (its collection must be the one the filter lets through).
    pub fn shaped(mut self, shape: Arc<Shape>) -> RowFilter {
        self.shape = (!shape.is_everything()).then_some(ShapeRead {
            shape,
            fresh_until: 0,
        });
        self
    }

    /// The same filter, for a replay from the start of the log whose first snapshot's head
    /// was `seq` (see [`ShapeRead::fresh_until`]).
    pub fn fresh_until(&self, seq: u64) -> RowFilter {
        let mut filter = self.clone();
        if let Some(shape) = filter.shape.as_mut() {
            shape.fresh_until = seq;
        }
        filter
    }

    pub fn shape(&self) -> Option<&Arc<Shape>> {
        self.shape.as_ref().map(|s| &s.shape)
    }

    /// Whether an entry belongs to the filter: the same rule as the reads, for live records.
    pub fn allows(&self, collection: &str, scope: &str, op: Op) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        if let Some(wanted) = rules.scoped.get(collection) {
            return op == Op::Truncate || wanted == scope;
        }
        rules.full.contains(collection)
            || rules
                .others_except
                .as_ref()
                .is_some_and(|named| !named.contains(collection))
    }
}

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
    /// The seq of the last entry the read covered, returned or not (a shape may leave entries
    /// out); 0 when it covered none. Reading on from it skips nothing.
    pub scanned_seq: u64,
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
    /// Columns and types, when the source has a catalog (Postgres).
    pub columns: Option<Vec<ColumnInfo>>,
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
        // One read transaction: a record and its large values come from the same snapshot.
        let snapshot = self.conn.unchecked_transaction()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, txn, record, large FROM entries WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq as i64, limit as i64], read_row)?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(self.full(row?)?);
        }
        drop(stmt);
        snapshot.finish()?;
        Ok(entries)
    }

    /// A page of at most `limit` entries from `from`, in log order, restricted to
    /// `collections` when given. A page never ends inside an upstream transaction group (same
    /// `txn`) unless that group alone fills the page.
    pub fn page(
        &self,
        from: &ReadFrom,
        filter: &RowFilter,
        limit: usize,
    ) -> Result<Page, LogError> {
        self.page_within(from, filter, limit, usize::MAX)
    }

    /// Like [`LogReader::page`], but the page also ends once its records reach `max_bytes`
    /// (it holds at least one entry), so that a page's memory is bounded whatever the rows'
    /// size.
    pub fn page_within(
        &self,
        from: &ReadFrom,
        filter: &RowFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, LogError> {
        let limit = limit.max(1);
        // One read transaction: the entries, head and purge mark come from the same snapshot.
        let snapshot = self.conn.unchecked_transaction()?;
        let head_seq = meta_u64(&self.conn, "head_seq")?;
        let purged_seq = meta_u64(&self.conn, "purged_seq")?;
        let (mut entries, next) = self.select(from, filter, limit, max_bytes)?;
        let mut has_more = false;
        if let Some(next) = next {
            has_more = true;
            let split = entries
                .iter()
                .rposition(|e| e.txn != next.txn)
                .map_or(0, |i| i + 1);
            if split > 0 {
                entries.truncate(split);
            }
        }
        let scanned_seq = entries.last().map_or(0, |e| e.seq);
        if !has_more {
            if let (ReadFrom::CommitTime(_), Some(last)) = (from, entries.last()) {
                // The next page is read by cursor: say whether it has anything.
                has_more = !self
                    .select(&ReadFrom::Seq(last.seq), filter, 1, usize::MAX)?
                    .0
                    .is_empty();
            }
        }
        snapshot.finish()?;
        if let Some(shape) = &filter.shape {
            entries = shape.apply(entries, *from == ReadFrom::Seq(0))?;
        }
        Ok(Page {
            entries,
            has_more,
            scanned_seq,
            head_seq,
            purged_seq,
        })
    }

    /// Up to `limit` entries matching `from` and `filter`, in log order, ending early once
    /// their records reach `max_bytes`; and the entry after them, if any. A restricted filter
    /// is one indexed range read per collection (and scope), merged: a scoped reader never
    /// scans the other scopes' entries.
    fn select(
        &self,
        from: &ReadFrom,
        filter: &RowFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<ReadEntry>, Option<ReadEntry>), LogError> {
        let Some((sql, values)) = self.select_query(from, filter, limit.saturating_add(1))? else {
            return Ok((Vec::new(), None));
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(values), read_row)?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let entry = self.full(row?)?;
            if entries.len() >= limit || bytes >= max_bytes {
                return Ok((entries, Some(entry)));
            }
            bytes = bytes.saturating_add(entry.record.len());
            entries.push(entry);
        }
        Ok((entries, None))
    }

    /// SQLite's plan for a read (tests check that scoped reads use the indexes).
    #[cfg(test)]
    pub(crate) fn plan(&self, from: &ReadFrom, filter: &RowFilter) -> Result<String, LogError> {
        let Some((sql, values)) = self.select_query(from, filter, 10)? else {
            return Ok(String::new());
        };
        let mut stmt = self.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let rows = stmt.query_map(params_from_iter(values), |row| row.get::<_, String>(3))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.join("\n"))
    }

    /// The SQL and parameters of [`LogReader::select`]; `None` when nothing can match.
    fn select_query(
        &self,
        from: &ReadFrom,
        filter: &RowFilter,
        limit: usize,
    ) -> Result<Option<(String, Vec<SqlValue>)>, LogError> {
        let (condition, start): (&str, SqlValue) = match from {
            ReadFrom::Seq(after) => ("seq > ?", (*after as i64).into()),
            ReadFrom::CommitTime(time) => ("commit_time > ?", time.clone().into()),
        };
        let limit_value = SqlValue::from(limit as i64);
        let Some(rules) = &filter.rules else {
            let sql = format!(
                "SELECT seq, txn, record, large FROM entries WHERE {condition} ORDER BY seq LIMIT ?"
            );
            return Ok(Some((sql, vec![start, limit_value])));
        };
        let mut full = rules.full.clone();
        if let Some(named) = &rules.others_except {
            full.extend(
                self.collections()?
                    .into_iter()
                    .filter(|c| !named.contains(c)),
            );
        }
        let mut arms = Vec::new();
        let mut values = Vec::new();
        let mut arm = |index: &str, extra: &str, bound: Vec<SqlValue>| {
            arms.push(format!(
                "SELECT * FROM (SELECT seq, txn, record, large FROM entries{index} WHERE collection = ?{extra} AND {condition} ORDER BY seq LIMIT ?)"
            ));
            values.extend(bound);
            values.push(start.clone());
            values.push(limit_value.clone());
        };
        for collection in full.iter().filter(|c| !rules.scoped.contains_key(*c)) {
            arm("", "", vec![collection.clone().into()]);
        }
        for (collection, scope) in &rules.scoped {
            if scope.is_empty() {
                // Not in the scope index (it holds scope != '' only): walk the collection.
                arm("", " AND scope = ''", vec![collection.clone().into()]);
            } else {
                arm(
                    " INDEXED BY entries_by_scope",
                    " AND scope = ? AND scope != ''",
                    vec![collection.clone().into(), scope.clone().into()],
                );
            }
            // The collection's truncate (key '') concerns every scope. Left to itself SQLite
            // walks (collection, seq) and tests every entry's key, a scan of the collection
            // per page; the key index (key '', then collection) finds the few truncates directly.
            arm(
                " INDEXED BY entries_by_key_first",
                " AND key = ''",
                vec![collection.clone().into()],
            );
        }
        if arms.is_empty() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT seq, txn, record, large FROM ({}) ORDER BY seq LIMIT ?",
            arms.join(" UNION ALL ")
        );
        values.push(limit_value);
        Ok(Some((sql, values)))
    }

    /// The entry with its values stored apart put back into its record (within the caller's
    /// read transaction, so that both come from one snapshot).
    fn full(&self, (entry, large): (ReadEntry, Option<String>)) -> Result<ReadEntry, LogError> {
        let record =
            large::full_record(&self.conn, entry.seq as i64, entry.record, large.as_deref())?;
        Ok(ReadEntry { record, ..entry })
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
            let columns = self.columns(&name)?;
            out.push(CollectionSummary {
                name,
                source,
                key_columns,
                columns,
            });
        }
        Ok(out)
    }

    /// A collection's columns and types, as its source last stored them.
    pub fn columns(&self, collection: &str) -> Result<Option<Vec<ColumnInfo>>, LogError> {
        let name = format!("{}{collection}", super::writer::COLUMNS_META);
        match store::get_meta(&self.conn, &name)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| LogError::Corrupt(format!("meta {name}: {e}"))),
        }
    }

    /// Whether `source` has any entry in the log.
    pub fn has_entries_of(&self, source: &str) -> Result<bool, LogError> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM entries WHERE source = ?1)",
            [source],
            |row| row.get(0),
        )?)
    }

    /// Number of entries in the log.
    pub fn entry_count(&self) -> Result<u64, LogError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
        Ok(n as u64)
    }
}

/// An entry as stored: its record and, when it has values stored apart, its `large` column.
fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ReadEntry, Option<String>)> {
    Ok((
        ReadEntry {
            seq: row.get::<_, i64>(0)? as u64,
            txn: row.get::<_, i64>(1)? as u64,
            record: row.get(2)?,
        },
        row.get(3)?,
    ))
}

fn meta_u64(conn: &Connection, name: &str) -> Result<u64, LogError> {
    Ok(store::get_meta(conn, name)?
        .and_then(|t| t.parse().ok())
        .unwrap_or(0))
}
