//! The change log: durable, ordered, key-compacted, with each source's position stored in the
//! same local transaction as the changes it covers.
//!
//! [`Log`] is the handle the rest of the relay uses. Writes go through one writer thread
//! ([`writer::LogWriter`]) so that appends never block the async runtime and decoding and
//! writing overlap. A source takes a [`LogTxn`] (one writer at a time), streams changes into it
//! and commits it with its new position; only then does it acknowledge upstream.

pub mod checkpoint;
pub mod cursor;
pub mod large;
pub mod reader;
pub mod retention;
pub mod scope;
pub mod store;
pub mod writer;

pub use cursor::Cursor;
pub use reader::{LogReader, ReadEntry};
pub use writer::{Committed, StoredRecord};

use crate::record::{Change, TxMeta};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex, OwnedMutexGuard};
use writer::LogWriter;

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

/// Batches of changes in flight to the writer thread: bounds memory when the writer is slower
/// than the source.
const COMMAND_QUEUE: usize = 16;
/// A [`LogTxn`] gathers this many changes (of one or many upstream transactions) before it hands
/// them to the writer thread: one message and one wake-up per batch, not per transaction.
const APPEND_BATCH: usize = 1000;
const COMMITTED_BROADCAST: usize = 1024;

enum Command {
    Begin,
    /// Changes of one or more upstream transactions, in commit order.
    Append(Vec<(Arc<TxMeta>, Vec<Change>)>),
    AppendCopied {
        tx: Arc<TxMeta>,
        changes: Vec<Change>,
        floor: u64,
    },
    RemoveCollection(String),
    ResetSource {
        source: String,
        reply: oneshot::Sender<Result<u64, LogError>>,
    },
    PurgeTombstones {
        before: String,
        reply: oneshot::Sender<Result<usize, LogError>>,
    },
    Commit {
        source: String,
        position: String,
        reply: oneshot::Sender<Result<Arc<Committed>, LogError>>,
    },
    Rollback,
    Position {
        source: String,
        reply: oneshot::Sender<Result<Option<String>, LogError>>,
    },
}

/// The relay's handle on the log. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    dir: PathBuf,
    epoch: u32,
    commands: mpsc::Sender<Command>,
    write_lock: Arc<Mutex<()>>,
    committed: broadcast::Sender<Arc<Committed>>,
    head: watch::Receiver<u64>,
}

impl Log {
    /// Opens (or creates) the log under `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        Log::open_scoped(dir, scope::ScopeColumns::new())
    }

    /// Opens the log with the configured row-scope columns (collection → column).
    pub fn open_scoped(dir: &Path, scopes: scope::ScopeColumns) -> Result<Log, LogError> {
        let mut writer = LogWriter::open_scoped(dir, scopes)?;
        let epoch = writer.epoch();
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let (committed, _) = broadcast::channel(COMMITTED_BROADCAST);
        let listeners = committed.clone();
        writer.hold_records_while(move || listeners.receiver_count() > 0);
        let (head_tx, head) = watch::channel(writer.head_seq());
        let announce = committed.clone();
        let checkpointer = checkpoint::Checkpointer::start(dir)?;
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || run_writer(writer, receiver, announce, head_tx, checkpointer))
            .map_err(|source| LogError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
        Ok(Log {
            dir: dir.to_path_buf(),
            epoch,
            commands,
            write_lock: Arc::new(Mutex::new(())),
            committed,
            head,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The stored position of `source`, if it ever committed.
    pub async fn position(&self, source: &str) -> Result<Option<String>, LogError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Position {
            source: source.to_string(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| LogError::Stopped)?
    }

    /// Forgets everything `source` wrote and its stored position, and expires every cursor
    /// issued so far (clients get 410 and start over; live streams end). For a source whose
    /// upstream history is lost: it then copies everything again. Returns the new purge mark.
    pub async fn reset_source(&self, source: &str) -> Result<u64, LogError> {
        let _guard = self.write_lock.lock().await;
        let (reply, answer) = oneshot::channel();
        self.send(Command::ResetSource {
            source: source.to_string(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| LogError::Stopped)?
    }

    /// Drops tombstones committed before `before` (RFC 3339 UTC, `…ffffffZ`); cursors older
    /// than the newest dropped one expire. Returns how many were dropped.
    pub async fn purge_tombstones(&self, before: String) -> Result<usize, LogError> {
        let _guard = self.write_lock.lock().await;
        let (reply, answer) = oneshot::channel();
        self.send(Command::PurgeTombstones { before, reply })
            .await?;
        answer.await.map_err(|_| LogError::Stopped)?
    }

    /// Starts a local transaction. Waits while another source holds one.
    pub async fn begin(&self) -> Result<LogTxn, LogError> {
        let guard = self.write_lock.clone().lock_owned().await;
        self.send(Command::Begin).await?;
        Ok(LogTxn {
            _guard: guard,
            commands: self.commands.clone(),
            appended: 0,
            gathered: Vec::new(),
            gathered_changes: 0,
        })
    }

    /// Announcements of every commit, for live subscribers.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.committed.subscribe()
    }

    /// The last committed seq, updated after every commit.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// A new read-only connection (blocking; use from a blocking context).
    pub fn reader(&self) -> Result<LogReader, LogError> {
        LogReader::open(&self.dir)
    }

    async fn send(&self, command: Command) -> Result<(), LogError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| LogError::Stopped)
    }
}

/// An open local transaction. Dropping it without commit rolls it back (at the next `begin`).
pub struct LogTxn {
    _guard: OwnedMutexGuard<()>,
    commands: mpsc::Sender<Command>,
    appended: usize,
    /// Appends not yet sent to the writer (fewer than [`APPEND_BATCH`] changes).
    gathered: Vec<(Arc<TxMeta>, Vec<Change>)>,
    gathered_changes: usize,
}

impl LogTxn {
    /// Queues changes of upstream transaction `tx`. Errors surface at [`LogTxn::commit`].
    pub async fn append(&mut self, tx: Arc<TxMeta>, changes: Vec<Change>) -> Result<(), LogError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.appended += changes.len();
        self.gathered_changes += changes.len();
        match self.gathered.last_mut() {
            Some((last, gathered)) if Arc::ptr_eq(last, &tx) => gathered.extend(changes),
            _ => self.gathered.push((tx, changes)),
        }
        if self.gathered_changes >= APPEND_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the gathered appends to the writer (before anything that must follow them).
    async fn flush(&mut self) -> Result<(), LogError> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.gathered);
        self.gathered_changes = 0;
        self.commands
            .send(Command::Append(batch))
            .await
            .map_err(|_| LogError::Stopped)
    }

    /// Queues rows of an initial copy that began when the log's head was `floor`: a row is
    /// skipped when the stream has written its key since (see `LogWriter::append_copied`).
    pub async fn append_copied(
        &mut self,
        tx: Arc<TxMeta>,
        changes: Vec<Change>,
        floor: u64,
    ) -> Result<(), LogError> {
        self.flush().await?;
        self.appended += changes.len();
        self.commands
            .send(Command::AppendCopied { tx, changes, floor })
            .await
            .map_err(|_| LogError::Stopped)
    }

    /// Queues the removal of every entry of `collection` (a table no longer synced).
    pub async fn remove_collection(&mut self, collection: &str) -> Result<(), LogError> {
        self.flush().await?;
        self.commands
            .send(Command::RemoveCollection(collection.to_string()))
            .await
            .map_err(|_| LogError::Stopped)
    }

    /// Changes queued so far in this local transaction.
    pub fn appended(&self) -> usize {
        self.appended
    }

    /// Stores `position` for `source` with everything appended, durably.
    pub async fn commit(
        mut self,
        source: &str,
        position: String,
    ) -> Result<Arc<Committed>, LogError> {
        self.flush().await?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Commit {
                source: source.to_string(),
                position,
                reply,
            })
            .await
            .map_err(|_| LogError::Stopped)?;
        answer.await.map_err(|_| LogError::Stopped)?
    }

    pub async fn rollback(self) {
        let _ = self.commands.send(Command::Rollback).await;
    }
}

fn run_writer(
    mut writer: LogWriter,
    mut commands: mpsc::Receiver<Command>,
    committed: broadcast::Sender<Arc<Committed>>,
    head: watch::Sender<u64>,
    checkpointer: checkpoint::Checkpointer,
) {
    // The first error of a local transaction; later appends are ignored and commit reports it.
    let mut failed: Option<LogError> = None;
    while let Some(command) = commands.blocking_recv() {
        match command {
            Command::Begin => {
                writer.rollback();
                failed = None;
            }
            Command::Append(batch) => {
                if failed.is_some() {
                    continue;
                }
                'batch: for (tx, changes) in batch {
                    for change in changes {
                        if let Err(e) = writer.append(&tx, change) {
                            writer.rollback();
                            failed = Some(e);
                            break 'batch;
                        }
                    }
                }
            }
            Command::AppendCopied { tx, changes, floor } => {
                if failed.is_some() {
                    continue;
                }
                for change in changes {
                    if let Err(e) = writer.append_copied(&tx, change, floor) {
                        writer.rollback();
                        failed = Some(e);
                        break;
                    }
                }
            }
            Command::RemoveCollection(collection) => {
                if failed.is_some() {
                    continue;
                }
                if let Err(e) = writer.remove_collection(&collection) {
                    writer.rollback();
                    failed = Some(e);
                }
            }
            Command::ResetSource { source, reply } => {
                let result = writer.reset_source(&source);
                announce_maintenance(&writer, &result, &committed);
                let _ = reply.send(result);
            }
            Command::PurgeTombstones { before, reply } => {
                let result = writer.purge_tombstones(&before);
                announce_maintenance(&writer, &result, &committed);
                let _ = reply.send(result);
            }
            Command::Commit {
                source,
                position,
                reply,
            } => {
                let result = match failed.take() {
                    Some(e) => Err(e),
                    None => writer.commit(&source, &position).map(Arc::new),
                };
                if let Ok(done) = &result {
                    checkpointer.wake();
                    head.send_replace(done.last_seq);
                    // No subscribers is fine.
                    let _ = committed.send(done.clone());
                }
                let _ = reply.send(result);
            }
            Command::Rollback => {
                writer.rollback();
                failed = None;
            }
            Command::Position { source, reply } => {
                let _ = reply.send(writer.position(&source));
            }
        }
    }
    writer.rollback();
}

/// Tells live subscribers that the purge mark moved, so that one positioned below it ends its
/// stream instead of silently missing what was dropped.
fn announce_maintenance<T>(
    writer: &LogWriter,
    result: &Result<T, LogError>,
    committed: &broadcast::Sender<Arc<Committed>>,
) {
    if result.is_ok() {
        let head = writer.head_seq();
        let _ = committed.send(Arc::new(Committed {
            after_seq: head,
            last_seq: head,
            records: Some(Vec::new()),
            purged_seq: writer.purged_seq(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ChangeRecord, Op, Row};
    use serde_json::json;

    fn row(value: serde_json::Value) -> Row {
        value.as_object().cloned().unwrap()
    }

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

    fn tx(id: &str) -> Arc<TxMeta> {
        Arc::new(TxMeta {
            source: "pg".into(),
            commit_time: "2025-01-15T11:00:00.000000Z".into(),
            id: id.into(),
            position: "0/1".into(),
        })
    }

    fn upsert(op: Op, id: i64, after: serde_json::Value) -> Change {
        Change {
            collection: "public.t".into(),
            op,
            key: Some(row(json!({"id": id}))),
            after: Some(row(after)),
            ..Change::default()
        }
    }

    fn delete(id: i64) -> Change {
        Change {
            collection: "public.t".into(),
            op: Op::Delete,
            key: Some(row(json!({"id": id}))),
            ..Change::default()
        }
    }

    fn read_all(log: &Log) -> Vec<ChangeRecord> {
        log.reader()
            .unwrap()
            .entries_after(0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_str(&e.record).unwrap())
            .collect()
    }

    async fn commit(log: &Log, position: &str, changes: Vec<Change>) -> Arc<Committed> {
        let mut txn = log.begin().await.unwrap();
        txn.append(tx(position), changes).await.unwrap();
        txn.commit("pg", position.into()).await.unwrap()
    }

    #[tokio::test]
    async fn pages_end_at_a_byte_budget_between_transactions() {
        use reader::{ReadFrom, RowFilter};
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        for t in 0..3 {
            commit(
                &log,
                &format!("{t}"),
                vec![
                    upsert(
                        Op::Insert,
                        t * 2,
                        json!({"id": t * 2, "v": "x".repeat(100)}),
                    ),
                    upsert(Op::Insert, t * 2 + 1, json!({"id": t * 2 + 1, "v": "y"})),
                ],
            )
            .await;
        }
        let reader = log.reader().unwrap();
        let page = |max_bytes| {
            reader
                .page_within(&ReadFrom::Seq(0), &RowFilter::all(), 1000, max_bytes)
                .unwrap()
        };
        let seqs = |p: &reader::Page| p.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
        let all = page(usize::MAX);
        assert_eq!((seqs(&all), all.has_more), ((1..=6).collect(), false));
        // Three records' worth ends inside the second transaction: the page stops before it.
        let three: usize = all.entries[..3].iter().map(|e| e.record.len()).sum();
        let budget = page(three);
        assert_eq!((seqs(&budget), budget.has_more), (vec![1, 2], true));
        // A budget smaller than one record still returns one.
        let tiny = page(1);
        assert_eq!((seqs(&tiny), tiny.has_more), (vec![1], true));
    }

    /// Live subscribers send the writer's framing of each record: the event's id is the
    /// record's cursor and its data is exactly the record the log stores.
    #[tokio::test]
    async fn broadcast_events_frame_the_stored_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let _listening = log.subscribe();
        let done = commit(
            &log,
            "1",
            vec![
                upsert(Op::Insert, 1, json!({"id": 1, "name": "ä \"quoted\"\n"})),
                upsert(Op::Insert, 2, json!({"id": 2})),
            ],
        )
        .await;
        let stored = log.reader().unwrap().entries_after(0, 10).unwrap();
        let broadcast = done.records.as_ref().unwrap();
        assert_eq!(broadcast.len(), 2);
        for (record, entry) in broadcast.iter().zip(&stored) {
            let cursor = format!("{}-{}", log.epoch(), entry.seq);
            assert_eq!(record.event.json(), entry.record.as_bytes());
            assert_eq!(
                &record.event.bytes()[..],
                format!("id: {cursor}\nevent: change\ndata: {}\n\n", entry.record).as_bytes()
            );
            let parsed: ChangeRecord = serde_json::from_slice(record.event.json()).unwrap();
            assert_eq!(parsed.cursor, cursor);
        }
        // Stored as text (it is bound from bytes), so that SQL and readers see strings.
        let file = rusqlite::Connection::open(store::log_path(dir.path())).unwrap();
        let types: Vec<String> = file
            .prepare("SELECT DISTINCT typeof(record) FROM entries")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(types, vec!["text".to_string()]);
    }

    #[tokio::test]
    async fn gathered_appends_keep_their_order_with_other_commands() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut txn = log.begin().await.unwrap();
        // Fewer than a batch: still gathered when remove_collection comes, which must apply
        // after them (and so remove them).
        txn.append(tx("1"), vec![upsert(Op::Insert, 1, json!({"id": 1}))])
            .await
            .unwrap();
        txn.remove_collection("public.t").await.unwrap();
        txn.append(tx("2"), vec![upsert(Op::Insert, 2, json!({"id": 2}))])
            .await
            .unwrap();
        txn.commit("pg", "2".into()).await.unwrap();
        let ids: Vec<_> = read_all(&log)
            .iter()
            .map(|r| r.key.clone().unwrap()["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(2)]);
    }

    #[tokio::test]
    async fn many_small_transactions_in_one_commit_keep_their_groups() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut txn = log.begin().await.unwrap();
        // 2,500 one-row upstream transactions: gathered into batches that span transactions.
        for id in 1..=2500 {
            txn.append(
                tx(&id.to_string()),
                vec![upsert(Op::Insert, id, json!({"id": id}))],
            )
            .await
            .unwrap();
        }
        let committed = txn.commit("pg", "2500".into()).await.unwrap();
        assert_eq!((committed.after_seq, committed.last_seq), (0, 2500));
        let entries = log.reader().unwrap().entries_after(0, 10_000).unwrap();
        assert_eq!(entries.len(), 2500);
        for (i, entry) in entries.iter().enumerate() {
            // Each upstream transaction is its own group (txn = its first seq).
            assert_eq!((entry.seq, entry.txn), (i as u64 + 1, i as u64 + 1));
            let record: ChangeRecord = serde_json::from_str(&entry.record).unwrap();
            assert_eq!(record.tx.id, (i + 1).to_string());
        }
    }

    #[tokio::test]
    async fn keeps_the_latest_entry_per_key_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        commit(
            &log,
            "1",
            vec![
                upsert(Op::Insert, 1, json!({"id": 1, "v": "a"})),
                upsert(Op::Insert, 2, json!({"id": 2, "v": "b"})),
            ],
        )
        .await;
        commit(
            &log,
            "2",
            vec![upsert(Op::Update, 1, json!({"id": 1, "v": "c"})), delete(2)],
        )
        .await;
        let records = read_all(&log);
        let summary: Vec<_> = records
            .iter()
            .map(|r| (r.op, r.key.clone().unwrap()["id"].clone()))
            .collect();
        assert_eq!(
            summary,
            vec![(Op::Update, json!(1)), (Op::Delete, json!(2))]
        );
        assert_eq!(records[0].after.as_ref().unwrap()["v"], json!("c"));
        let epoch = log.epoch();
        assert_eq!(records[0].cursor, format!("{epoch}-3"));
        assert_eq!(records[1].cursor, format!("{epoch}-4"));
        assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("2"));
        assert_eq!(*log.head().borrow(), 4);
    }

    #[tokio::test]
    async fn fills_unchanged_columns_from_the_previous_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        commit(
            &log,
            "1",
            vec![upsert(
                Op::Insert,
                1,
                json!({"id": 1, "body": "long", "n": 1}),
            )],
        )
        .await;
        let mut update = upsert(Op::Update, 1, json!({"id": 1, "n": 2}));
        update.unchanged = vec!["body".into()];
        let mut unknown = upsert(Op::Update, 9, json!({"id": 9, "n": 2}));
        unknown.unchanged = vec!["body".into()];
        commit(&log, "2", vec![update, unknown]).await;
        let records = read_all(&log);
        assert_eq!(records[0].after.as_ref().unwrap()["body"], json!("long"));
        assert!(records[0].unchanged.is_empty());
        assert_eq!(records[1].unchanged, vec!["body".to_string()]);
        assert!(!records[1].after.as_ref().unwrap().contains_key("body"));
    }

    #[tokio::test]
    async fn a_key_change_is_a_delete_and_an_insert() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        commit(
            &log,
            "1",
            vec![upsert(Op::Insert, 1, json!({"id": 1, "body": "x"}))],
        )
        .await;
        let mut update = upsert(Op::Update, 2, json!({"id": 2}));
        update.old_key = Some(row(json!({"id": 1})));
        update.unchanged = vec!["body".into()];
        commit(&log, "2", vec![update]).await;
        let records = read_all(&log);
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].op, &records[0].key),
            (Op::Delete, &Some(row(json!({"id": 1}))))
        );
        assert_eq!(
            (records[1].op, &records[1].key),
            (Op::Insert, &Some(row(json!({"id": 2}))))
        );
        assert_eq!(records[1].after.as_ref().unwrap()["body"], json!("x"));
    }

    #[tokio::test]
    async fn truncate_replaces_its_collection() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut other = upsert(Op::Insert, 1, json!({"id": 1}));
        other.collection = "public.other".into();
        commit(
            &log,
            "1",
            vec![upsert(Op::Insert, 1, json!({"id": 1})), other],
        )
        .await;
        let truncate = Change {
            collection: "public.t".into(),
            op: Op::Truncate,
            ..Change::default()
        };
        let _listening = log.subscribe();
        let done = commit(
            &log,
            "2",
            vec![truncate, upsert(Op::Insert, 5, json!({"id": 5}))],
        )
        .await;
        let ops: Vec<_> = read_all(&log)
            .iter()
            .map(|r| (r.collection.clone(), r.op))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("public.other".into(), Op::Insert),
                ("public.t".into(), Op::Truncate),
                ("public.t".into(), Op::Insert)
            ]
        );
        assert_eq!(done.records.as_ref().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn copied_rows_never_overwrite_what_the_stream_wrote_since_the_copy_began() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        // An entry from before the copy (e.g. an interrupted earlier copy): overwritten.
        commit(
            &log,
            "1",
            vec![upsert(Op::Insert, 1, json!({"id": 1, "v": "old"}))],
        )
        .await;
        let floor = *log.head().borrow();
        // The stream writes key 2 (update) and key 3 (delete) after the copy began.
        commit(
            &log,
            "2",
            vec![
                upsert(Op::Update, 2, json!({"id": 2, "v": "stream"})),
                delete(3),
            ],
        )
        .await;
        let mut txn = log.begin().await.unwrap();
        txn.append_copied(
            tx("snapshot"),
            vec![
                upsert(Op::Insert, 1, json!({"id": 1, "v": "copy"})),
                upsert(Op::Insert, 2, json!({"id": 2, "v": "copy"})),
                upsert(Op::Insert, 3, json!({"id": 3, "v": "copy"})),
                upsert(Op::Insert, 4, json!({"id": 4, "v": "copy"})),
            ],
            floor,
        )
        .await
        .unwrap();
        txn.commit("pg#copy", "{}".into()).await.unwrap();
        let state: Vec<_> = read_all(&log)
            .iter()
            .map(|r| {
                let v = r.after.as_ref().map(|a| a["v"].clone());
                (r.key.clone().unwrap()["id"].clone(), r.op, v)
            })
            .collect();
        assert_eq!(
            state,
            vec![
                (json!(2), Op::Update, Some(json!("stream"))),
                (json!(3), Op::Delete, None),
                (json!(1), Op::Insert, Some(json!("copy"))),
                (json!(4), Op::Insert, Some(json!("copy"))),
            ]
        );
        // The copy's progress is stored apart from the stream's position.
        assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn reset_source_forgets_the_source_and_expires_every_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        commit(&log, "1", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
        let mut other = upsert(Op::Insert, 7, json!({"id": 7}));
        other.collection = "app.docs".into();
        let mut txn = log.begin().await.unwrap();
        txn.append(
            Arc::new(TxMeta {
                source: "mongo".into(),
                ..(*tx("m1")).clone()
            }),
            vec![other],
        )
        .await
        .unwrap();
        txn.commit("mongo", "token".into()).await.unwrap();
        let mut live = log.subscribe();
        let mark = log.reset_source("pg").await.unwrap();
        assert_eq!(mark, 3, "every cursor up to the head (2) expires");
        assert_eq!(live.recv().await.unwrap().purged_seq, 3);
        let left: Vec<_> = read_all(&log).iter().map(|r| r.source.clone()).collect();
        assert_eq!(left, vec!["mongo".to_string()]);
        assert_eq!(log.position("pg").await.unwrap(), None);
        assert_eq!(
            log.position("mongo").await.unwrap().as_deref(),
            Some("token")
        );
        assert_eq!(log.reader().unwrap().purged_seq().unwrap(), 3);
        // Later commits carry the mark and continue the sequence.
        let done = commit(&log, "9", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
        assert_eq!((done.last_seq, done.purged_seq), (3, 3));
    }

    #[tokio::test]
    async fn purging_tombstones_raises_the_purge_mark_to_the_newest_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        commit(
            &log,
            "1",
            vec![
                upsert(Op::Insert, 1, json!({"id": 1})),
                delete(2),
                delete(3),
            ],
        )
        .await;
        // Tombstones committed at or after the cut stay.
        let removed = log
            .purge_tombstones("2025-01-15T11:00:00.000000Z".into())
            .await
            .unwrap();
        assert_eq!(removed, 0);
        assert_eq!(log.reader().unwrap().purged_seq().unwrap(), 0);
        let removed = log
            .purge_tombstones("2025-01-16T00:00:00.000000Z".into())
            .await
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!(log.reader().unwrap().purged_seq().unwrap(), 3);
        assert_eq!(read_all(&log).len(), 1);
    }

    #[tokio::test]
    async fn a_failed_append_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        commit(&log, "1", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
        let mut txn = log.begin().await.unwrap();
        let keyless = Change {
            collection: "public.t".into(),
            op: Op::Insert,
            ..Change::default()
        };
        txn.append(
            tx("2"),
            vec![upsert(Op::Insert, 2, json!({"id": 2})), keyless],
        )
        .await
        .unwrap();
        let err = txn.commit("pg", "2".into()).await.unwrap_err();
        assert!(err.to_string().contains("no key"), "{err}");
        assert_eq!(read_all(&log).len(), 1);
        assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("1"));
        // The next transaction continues the sequence without a hole or a reuse of a visible seq.
        commit(&log, "3", vec![upsert(Op::Insert, 3, json!({"id": 3}))]).await;
        let cursors: Vec<_> = read_all(&log).iter().map(|r| r.cursor.clone()).collect();
        assert_eq!(
            cursors,
            vec![format!("{}-1", log.epoch()), format!("{}-2", log.epoch())]
        );
    }

    #[tokio::test]
    async fn broadcasts_only_the_surviving_version_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut live = log.subscribe();
        commit(
            &log,
            "1",
            vec![
                upsert(Op::Insert, 1, json!({"id": 1, "v": 1})),
                upsert(Op::Update, 1, json!({"id": 1, "v": 2})),
            ],
        )
        .await;
        let done = live.recv().await.unwrap();
        let records = done.records.as_ref().unwrap();
        assert_eq!((done.after_seq, done.last_seq, records.len()), (0, 2, 1));
        assert_eq!(records[0].seq, 2);
    }

    /// Records are held for live subscribers only while someone listens; a subscriber that
    /// comes later learns the commit's range and reads it from the log.
    #[tokio::test]
    async fn records_are_held_only_while_someone_listens() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let alone = commit(&log, "1", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
        assert!(alone.records.is_none());
        assert_eq!((alone.after_seq, alone.last_seq), (0, 1));
        let mut live = log.subscribe();
        commit(&log, "2", vec![upsert(Op::Insert, 2, json!({"id": 2}))]).await;
        let heard = live.recv().await.unwrap();
        assert_eq!(heard.records.as_ref().map(Vec::len), Some(1));
        drop(live);
        let again = commit(&log, "3", vec![upsert(Op::Insert, 3, json!({"id": 3}))]).await;
        assert!(again.records.is_none());
    }

    #[tokio::test]
    async fn reopening_keeps_epoch_head_and_positions() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = {
            let log = Log::open(dir.path()).unwrap();
            commit(&log, "7", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
            log.epoch()
        };
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(log.epoch(), epoch);
        assert_eq!(*log.head().borrow(), 1);
        assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("7"));
        commit(&log, "8", vec![upsert(Op::Insert, 2, json!({"id": 2}))]).await;
        assert_eq!(read_all(&log)[1].cursor, format!("{epoch}-2"));
    }
}
