//! The log's single writer: appends changes inside one SQLite transaction, compacts by key,
//! stores the source position with them, and commits. Synchronous; [`super::Log`] runs it on its
//! own thread.

mod entry;
mod maintenance;
mod prior;
mod write_entry;

use super::cursor::Cursor;
use super::interest::ShapeInterest;
use super::large::{self, Marks};
use super::scope::{self, ScopeColumns};
use super::store;
use super::LogError;
use crate::record::{key_text, Change, ChangeRecordRef, Op, Row, TxInfoRef, TxMeta};
use crate::sse::ChangeEvent;
use entry::{fill_unchanged, Apart, Entry, LiveEntry, StoredColumns};
pub use prior::Prior;
use rusqlite::{params, Connection};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// At most this many records of one commit are kept in memory for live subscribers; a larger
/// commit is announced by range only and subscribers read it from the log.
pub const MAX_BROADCAST_RECORDS: usize = 10_000;
/// Nor more than this many bytes of events: a commit of many large rows is announced by range.
pub const MAX_BROADCAST_BYTES: usize = 16 << 20;

/// A record as stored, ready to be sent: serialized once, shared by every subscriber.
#[derive(Debug)]
pub struct StoredRecord {
    pub seq: u64,
    pub txn: u64,
    pub collection: String,
    pub op: Op,
    /// The entry's scope value (`''` when unscoped): live subscribers filter on it exactly as
    /// scoped reads of the log do.
    pub scope: String,
    /// The record framed as the SSE event `/v1/stream` sends (its JSON is what the log stores).
    pub event: ChangeEvent,
    /// The row before this commit, when a shaped follower reads the collection.
    pub prior: Prior,
}

/// What one log commit made visible: entries with `after_seq < seq <= last_seq`.
#[derive(Debug)]
pub struct Committed {
    pub after_seq: u64,
    pub last_seq: u64,
    /// The surviving records in seq order, or `None` when the commit was too large to hold.
    pub records: Option<Vec<Arc<StoredRecord>>>,
    /// Cursors below this seq are expired (purged tombstones or a reset source): a subscriber
    /// positioned below it can no longer be served a complete history and must start over.
    pub purged_seq: u64,
}

/// The meta entry of a collection's columns: this prefix and the collection's name.
pub(super) const COLUMNS_META: &str = "columns:";

pub struct LogWriter {
    conn: Connection,
    epoch: u32,
    /// The last seq of the committed log.
    committed_seq: u64,
    purged_seq: u64,
    open: Option<OpenTxn>,
    /// Collection → scope column, from the config.
    scopes: ScopeColumns,
    /// The last record's JSON length: room to reserve for the next (records of a table are
    /// alike), so that serializing one rarely grows its buffer.
    record_size_hint: usize,
    /// Whether anyone listens for live records; asked as each local transaction opens.
    listeners: Box<dyn Fn() -> bool + Send>,
    /// Collections with shaped followers: their changes carry the row's prior version.
    interest: Arc<ShapeInterest>,
    /// Collections with values stored apart (large.rs), so that the others never look for any.
    /// May name a collection that has none left.
    large_collections: HashSet<String>,
    marks: Marks,
}

struct OpenTxn {
    next_seq: u64,
    last_tx: Option<(Arc<TxMeta>, u64)>,
    broadcast: Option<Vec<Option<Arc<StoredRecord>>>>,
    /// The bytes of the events in `broadcast`.
    broadcast_bytes: usize,
    /// Where each (collection, key, scope) sits in `broadcast`, to drop superseded versions.
    broadcast_index: HashMap<(String, String, String), usize, foldhash::fast::RandomState>,
}

impl LogWriter {
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<LogWriter, LogError> {
        LogWriter::open_scoped(dir, ScopeColumns::new())
    }

    /// For a log rebuilt from elsewhere at every start (a node's materialization of the shared
    /// log, whose durability is the stream's): commits count before they reach the disk.
    /// `synchronous = NORMAL` in WAL mode still survives a crash of the process.
    pub fn without_commit_sync(self) -> Result<LogWriter, LogError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(self)
    }

    /// Opens the log with the configured scope columns; recomputes stored scopes if they changed.
    pub fn open_scoped(dir: &Path, scopes: ScopeColumns) -> Result<LogWriter, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let conn = store::open_for_writing(dir)?;
        scope::reconcile(&conn, &scopes)?;
        let epoch = match store::get_meta(&conn, "epoch")? {
            Some(text) => text
                .parse()
                .map_err(|_| LogError::Corrupt(format!("meta epoch {text:?} is not a number")))?,
            None => {
                let epoch = new_epoch();
                store::set_meta(&conn, "epoch", &epoch.to_string())?;
                epoch
            }
        };
        let committed_seq = match store::get_meta(&conn, "head_seq")? {
            Some(text) => text.parse().map_err(|_| {
                LogError::Corrupt(format!("meta head_seq {text:?} is not a number"))
            })?,
            None => 0,
        };
        let purged_seq = store::get_meta(&conn, "purged_seq")?
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let large_collections = large::collections(&conn)?;
        Ok(LogWriter {
            conn,
            epoch,
            committed_seq,
            purged_seq,
            open: None,
            scopes,
            record_size_hint: 0,
            listeners: Box::new(|| true),
            interest: Arc::default(),
            large_collections,
            marks: Marks::random(),
        })
    }

    /// Keeps the records of a commit for live subscribers only while `listeners` says someone
    /// listens when the local transaction opens. Otherwise the commit is announced by range
    /// only: a subscriber that arrives meanwhile reads that range from the log, as it does for
    /// a commit too large to hold.
    /// Shares the registry of shaped followers (see [`Prior`]).
    pub fn watch_shapes(&mut self, interest: Arc<ShapeInterest>) {
        self.interest = interest;
    }

    pub fn hold_records_while(&mut self, listeners: impl Fn() -> bool + Send + 'static) {
        self.listeners = Box::new(listeners);
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Gives a new, empty log the epoch of a shared log (`log.backend = "nats"`), so that its
    /// cursors match every other node's.
    pub fn adopt_epoch(&mut self, epoch: u32) -> Result<(), LogError> {
        store::set_meta(&self.conn, "epoch", &epoch.to_string())?;
        self.epoch = epoch;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn use_marks(&mut self, marks: Marks) {
        self.marks = marks;
    }

    pub fn head_seq(&self) -> u64 {
        self.committed_seq
    }

    pub fn purged_seq(&self) -> u64 {
        self.purged_seq
    }

    pub fn position(&self, source: &str) -> Result<Option<String>, LogError> {
        Ok(store::position(&self.conn, source)?)
    }

    fn ensure_open(&mut self) -> Result<(), LogError> {
        if self.open.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.open = Some(OpenTxn {
                next_seq: self.committed_seq + 1,
                last_tx: None,
                broadcast: (self.listeners)().then(Vec::new),
                broadcast_bytes: 0,
                broadcast_index: HashMap::default(),
            });
        }
        Ok(())
    }

    /// Stores a collection's columns (JSON) when they differ from what is stored.
    pub fn set_columns(&mut self, collection: &str, columns: &str) -> Result<(), LogError> {
        let name = format!("{COLUMNS_META}{collection}");
        if store::get_meta(&self.conn, &name)?.as_deref() != Some(columns) {
            store::set_meta(&self.conn, &name, columns)?;
        }
        Ok(())
    }

    /// Appends one change of the upstream transaction `tx` to the open local transaction.
    pub fn append(&mut self, tx: &Arc<TxMeta>, change: Change) -> Result<(), LogError> {
        self.ensure_open()?;
        let Change {
            collection,
            op,
            key,
            old_key,
            mut after,
            before,
            changed,
            mut unchanged,
        } = change;
        if op == Op::Truncate {
            self.conn
                .prepare_cached("DELETE FROM entries WHERE collection = ?1")?
                .execute([&collection])?;
            if self.large_collections.contains(&collection) {
                large::remove_collection(&self.conn, &collection)?;
            }
            return self.write(
                tx,
                Entry {
                    collection,
                    op,
                    key: None,
                    scope: String::new(),
                    after: None,
                    before: None,
                    changed: None,
                    unchanged: vec![],
                    apart: vec![],
                    replaces: None,
                    prior: Prior::Unknown,
                },
            );
        }
        let key = key.ok_or_else(|| {
            LogError::Invalid(format!("a {} in {collection} carries no key", op.as_str()))
        })?;
        let old_key = old_key.filter(|old| *old != key);
        let column = self.scopes.get(&collection).cloned();
        let has_large = self.large_collections.contains(&collection);
        // The row's current version in the log (under its old key if the key changed).
        let previous_key = old_key.as_ref().unwrap_or(&key);
        let wants_prior = self.interest.wants(&collection)
            && self.open.as_ref().is_some_and(|o| o.broadcast.is_some());
        let previous = if column.is_some() || !unchanged.is_empty() || has_large || wants_prior {
            self.live_entry(&collection, previous_key)?
        } else {
            None
        };
        let prior = if wants_prior {
            Prior::of(&self.conn, previous.as_ref())?
        } else {
            Prior::Unknown
        };
        let previous_apart = match previous.as_ref().and_then(|p| p.large.as_deref()) {
            Some(text) => large::columns_of(text)?,
            None => Vec::new(),
        };
        // Unchanged columns stored apart stay there: the new version refers to them.
        let mut kept = Vec::new();
        if !previous_apart.is_empty() {
            unchanged.retain(|c| {
                let apart = previous_apart.contains(c);
                if apart {
                    kept.push(c.clone());
                }
                !apart
            });
        }
        if !unchanged.is_empty() {
            fill_unchanged(previous.as_ref(), &mut after, &mut unchanged)?;
        }
        let previous_seq = previous.as_ref().map(|p| p.seq);
        let previous_scope = previous.map(|p| p.scope);
        let scope_of = |row: Option<&Row>| column.as_deref().and_then(|c| scope::row_scope(row, c));
        let tombstone = |key: Row, scope: String, before: Option<Row>| Entry {
            collection: collection.clone(),
            op: Op::Delete,
            key: Some(key),
            scope,
            after: None,
            before,
            changed: None,
            unchanged: vec![],
            apart: vec![],
            replaces: None,
            prior: prior.clone(),
        };
        if op == Op::Delete {
            if has_large {
                large::remove_key(&self.conn, &collection, &key_text(&key))?;
            }
            // Deliver the delete where the row was: its previous version decides, then the old
            // image (REPLICA IDENTITY FULL), else nowhere in particular.
            let scope = previous_scope
                .or_else(|| scope_of(before.as_ref()))
                .unwrap_or_default();
            return self.write(tx, tombstone(key, scope, before));
        }
        let apart = self.store_apart(
            &collection,
            &key,
            old_key.as_ref(),
            column.as_deref(),
            after.as_mut(),
            kept,
            &previous_apart,
        )?;
        let scope = scope_of(after.as_ref())
            .or_else(|| previous_scope.clone())
            .unwrap_or_default();
        let mut moved = false;
        let old_key_changed = old_key.is_some();
        if let Some(old_key) = old_key {
            // A key change: the old key is gone (where it was), the new key is new.
            let old_scope = previous_scope.unwrap_or_else(|| scope.clone());
            self.write(tx, tombstone(old_key, old_scope, before.clone()))?;
            moved = true;
            if column.is_some() {
                if let Some(stale) = self.live_entry(&collection, &key)? {
                    if stale.scope != scope {
                        let mut stale = tombstone(key.clone(), stale.scope, None);
                        stale.prior = Prior::Unknown;
                        self.write(tx, stale)?;
                    }
                }
            }
        } else if let Some(old_scope) = previous_scope.filter(|s| *s != scope) {
            // The row left its scope: a delete there first, then an insert in the new one.
            self.write(tx, tombstone(key.clone(), old_scope, None))?;
            moved = true;
        }
        let entry = if moved {
            Entry {
                collection,
                op: Op::Insert,
                key: Some(key),
                scope,
                after,
                before: None,
                changed: None,
                unchanged,
                apart,
                replaces: None,
                prior: if old_key_changed {
                    Prior::Unknown
                } else {
                    prior
                },
            }
        } else {
            Entry {
                collection,
                op,
                key: Some(key),
                scope,
                after,
                before,
                changed,
                unchanged,
                apart,
                // Same key, same scope: the row's live entry is the one this one replaces.
                replaces: previous_seq,
                prior,
            }
        };
        self.write(tx, entry)
    }

    /// Appends a row read by an initial copy, unless the stream has written that key since the
    /// copy began (an entry with `seq > floor`): the stream's version is at least as new, and
    /// the stream delivers every later change of the key itself. Returns whether it was written.
    pub fn append_copied(
        &mut self,
        tx: &Arc<TxMeta>,
        change: Change,
        floor: u64,
    ) -> Result<bool, LogError> {
        self.ensure_open()?;
        let key = change.key.as_ref().map(key_text).ok_or_else(|| {
            LogError::Invalid(format!(
                "a copied row of {} carries no key",
                change.collection
            ))
        })?;
        // Equality on (collection, key) only, so that SQLite seeks the key's index entries
        // rather than scanning the collection by seq (which made copies quadratic).
        let mut newer = false;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq FROM entries WHERE collection = ?1 AND key = ?2")?;
        let mut rows = stmt.query(params![change.collection, key])?;
        while let Some(row) = rows.next()? {
            newer |= row.get::<_, i64>(0)? as u64 > floor;
        }
        drop(rows);
        drop(stmt);
        if newer {
            return Ok(false);
        }
        self.append(tx, change)?;
        Ok(true)
    }

    /// Stores `position` for `source` and commits everything appended since the last commit.
    pub fn commit(&mut self, source: &str, position: &str) -> Result<Committed, LogError> {
        self.ensure_open()?;
        let result = self.commit_open(source, position);
        if result.is_err() {
            self.rollback();
        }
        result
    }

    fn commit_open(&mut self, source: &str, position: &str) -> Result<Committed, LogError> {
        let last_seq = self
            .open
            .as_ref()
            .map_or(self.committed_seq, |o| o.next_seq - 1);
        self.conn
            .prepare_cached(
                "INSERT INTO positions (source, position, updated_at)
                 VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                 ON CONFLICT (source) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            )?
            .execute([source, position])?;
        if last_seq != self.committed_seq {
            store::set_meta(&self.conn, "head_seq", &last_seq.to_string())?;
        }
        self.conn.execute_batch("COMMIT")?;
        let open = self.open.take();
        let committed = Committed {
            after_seq: self.committed_seq,
            last_seq,
            records: open
                .and_then(|o| o.broadcast)
                .map(|list| list.into_iter().flatten().collect()),
            purged_seq: self.purged_seq,
        };
        self.committed_seq = last_seq;
        Ok(committed)
    }

    /// Drops everything appended since the last commit.
    pub fn rollback(&mut self) {
        if self.open.take().is_some() {
            // Fails only if SQLite already rolled back (e.g. after SQLITE_FULL); nothing to undo then.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl OpenTxn {
    fn remember_for_broadcast(&mut self, mut record: StoredRecord, key: String) {
        let Some(list) = self.broadcast.as_mut() else {
            return;
        };
        self.broadcast_bytes += record.event.bytes().len();
        if list.len() >= MAX_BROADCAST_RECORDS || self.broadcast_bytes > MAX_BROADCAST_BYTES {
            self.broadcast = None;
            self.broadcast_index.clear();
            return;
        }
        if record.op == Op::Truncate {
            // The truncate supersedes every earlier record of its collection in this commit.
            for slot in list.iter_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|r| r.collection == record.collection)
                {
                    *slot = None;
                }
            }
            self.broadcast_index
                .retain(|(collection, _, _), _| *collection != record.collection);
        }
        let index_key = (record.collection.clone(), key, record.scope.clone());
        if let Some(previous) = self.broadcast_index.insert(index_key, list.len()) {
            // The earlier version goes; what the row was before the commit stays.
            if let Some(earlier) = list[previous].take() {
                record.prior = earlier.prior.clone();
            }
        }
        list.push(Some(Arc::new(record)));
    }
}

/// A fresh epoch for a new log: random, so that a cursor from a deleted and recreated log does
/// not look valid.
fn new_epoch() -> u32 {
    rand::random::<u32>() % 2_000_000_000 + 1
}
