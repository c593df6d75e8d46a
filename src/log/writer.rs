//! The log's single writer: appends changes inside one SQLite transaction, compacts by key,
//! stores the source position with them, and commits. Synchronous; [`super::Log`] runs it on its
//! own thread.

use super::cursor::Cursor;
use super::store;
use super::LogError;
use crate::record::{key_text, Change, ChangeRecord, Op, Row, TxInfo, TxMeta};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// At most this many records of one commit are kept in memory for live subscribers; a larger
/// commit is announced by range only and subscribers read it from the log.
pub const MAX_BROADCAST_RECORDS: usize = 10_000;

/// A record as stored, ready to be sent: serialized once, shared by every subscriber.
#[derive(Debug)]
pub struct StoredRecord {
    pub seq: u64,
    pub txn: u64,
    pub collection: String,
    pub op: Op,
    pub json: Arc<str>,
}

/// What one log commit made visible: entries with `after_seq < seq <= last_seq`.
#[derive(Debug)]
pub struct Committed {
    pub after_seq: u64,
    pub last_seq: u64,
    /// The surviving records in seq order, or `None` when the commit was too large to hold.
    pub records: Option<Vec<Arc<StoredRecord>>>,
}

pub struct LogWriter {
    conn: Connection,
    epoch: u32,
    /// The last seq of the committed log.
    committed_seq: u64,
    open: Option<OpenTxn>,
}

struct OpenTxn {
    next_seq: u64,
    last_tx: Option<(Arc<TxMeta>, u64)>,
    broadcast: Option<Vec<Option<Arc<StoredRecord>>>>,
    /// Where each (collection, key) sits in `broadcast`, to drop superseded versions.
    broadcast_index: HashMap<(String, String), usize>,
}

impl LogWriter {
    pub fn open(dir: &Path) -> Result<LogWriter, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let conn = store::open_for_writing(dir)?;
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
        Ok(LogWriter {
            conn,
            epoch,
            committed_seq,
            open: None,
        })
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn head_seq(&self) -> u64 {
        self.committed_seq
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
                broadcast: Some(Vec::new()),
                broadcast_index: HashMap::new(),
            });
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
            return self.write(
                tx,
                Entry {
                    collection,
                    op,
                    key: None,
                    after: None,
                    before: None,
                    changed: None,
                    unchanged: vec![],
                },
            );
        }
        let key = key.ok_or_else(|| {
            LogError::Invalid(format!("a {} in {collection} carries no key", op.as_str()))
        })?;
        let old_key = old_key.filter(|old| *old != key);
        if !unchanged.is_empty() {
            let previous_key = old_key.as_ref().unwrap_or(&key);
            self.fill_unchanged(&collection, previous_key, &mut after, &mut unchanged)?;
        }
        match old_key {
            Some(old_key) => {
                // A key change: the old key is gone, the new key is new.
                self.write(
                    tx,
                    Entry {
                        collection: collection.clone(),
                        op: Op::Delete,
                        key: Some(old_key),
                        after: None,
                        before,
                        changed: None,
                        unchanged: vec![],
                    },
                )?;
                self.write(
                    tx,
                    Entry {
                        collection,
                        op: Op::Insert,
                        key: Some(key),
                        after,
                        before: None,
                        changed: None,
                        unchanged,
                    },
                )
            }
            None => self.write(
                tx,
                Entry {
                    collection,
                    op,
                    key: Some(key),
                    after,
                    before,
                    changed,
                    unchanged,
                },
            ),
        }
    }

    /// Fills columns the source did not send from the key's previous entry in the log.
    fn fill_unchanged(
        &mut self,
        collection: &str,
        key: &Row,
        after: &mut Option<Row>,
        unchanged: &mut Vec<String>,
    ) -> Result<(), LogError> {
        let previous: Option<String> = self
            .conn
            .prepare_cached("SELECT record FROM entries WHERE collection = ?1 AND key = ?2")?
            .query_row(params![collection, key_text(key)], |row| row.get(0))
            .optional()?;
        let Some(previous) = previous else {
            return Ok(());
        };
        let previous: ChangeRecord = serde_json::from_str(&previous)?;
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

    fn write(&mut self, tx: &Arc<TxMeta>, entry: Entry) -> Result<(), LogError> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| LogError::Invalid("no open transaction".into()))?;
        let seq = open.next_seq;
        open.next_seq += 1;
        let txn = match &open.last_tx {
            Some((last, txn)) if Arc::ptr_eq(last, tx) => *txn,
            _ => {
                open.last_tx = Some((tx.clone(), seq));
                seq
            }
        };
        let key = entry.key.as_ref().map(key_text).unwrap_or_default();
        let record = ChangeRecord {
            cursor: Cursor {
                epoch: self.epoch,
                seq,
            }
            .to_string(),
            source: tx.source.to_string(),
            collection: entry.collection,
            op: entry.op,
            key: entry.key,
            after: entry.after,
            before: entry.before,
            changed: entry.changed,
            unchanged: entry.unchanged,
            commit_time: tx.commit_time.clone(),
            tx: TxInfo {
                id: tx.id.clone(),
                position: tx.position.clone(),
            },
        };
        let json: Arc<str> = serde_json::to_string(&record)?.into();
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO entries (seq, txn, collection, key, op, commit_time, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                seq as i64,
                txn as i64,
                record.collection,
                key,
                record.op.as_str(),
                record.commit_time,
                &*json
            ])?;
        open.remember_for_broadcast(
            StoredRecord {
                seq,
                txn,
                collection: record.collection,
                op: record.op,
                json,
            },
            key,
        );
        Ok(())
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
    fn remember_for_broadcast(&mut self, record: StoredRecord, key: String) {
        let Some(list) = self.broadcast.as_mut() else {
            return;
        };
        if list.len() >= MAX_BROADCAST_RECORDS {
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
                .retain(|(collection, _), _| *collection != record.collection);
        }
        let index_key = (record.collection.clone(), key);
        if let Some(previous) = self.broadcast_index.insert(index_key, list.len()) {
            list[previous] = None;
        }
        list.push(Some(Arc::new(record)));
    }
}

struct Entry {
    collection: String,
    op: Op,
    key: Option<Row>,
    after: Option<Row>,
    before: Option<Row>,
    changed: Option<Vec<String>>,
    unchanged: Vec<String>,
}

/// A fresh epoch for a new log: random, so that a cursor from a deleted and recreated log does
/// not look valid.
fn new_epoch() -> u32 {
    rand::random::<u32>() % 2_000_000_000 + 1
}
