//! The change log: durable, ordered, key-compacted, with each source's position stored in the
//! same local transaction as the changes it covers.
//!
//! [`Log`] is the handle the rest of the relay uses. Writes go through one writer thread
//! ([`writer::LogWriter`]) so that appends never block the async runtime and decoding and
//! writing overlap. A source takes a [`LogTxn`] (one writer at a time), streams changes into it
//! and commits it with its new position; only then does it acknowledge upstream.
//!
//! Reading goes through the handle too: [`Log::page`] for one page after a position, and
//! [`Log::follow`] for the replay → catch-up → live hand-off that `/v1/stream` frames. The
//! storage internals (`store`, `writer`, `large`, `checkpoint`) are private to this module,
//! behind the `backend` seam: SQLite (`sqlite.rs`) is the one engine today.
//! If the writer thread dies, [`Log::writer_stopped`] says why, and the relay stops.

mod actor;
mod backend;
mod checkpoint;
pub mod cursor;
mod error;
pub mod follow;
mod interest;
mod large;
pub mod nats;
mod pool;
pub mod reader;
pub mod retention;
pub mod role;
pub mod scope;
mod shape_index;
mod shaped;
mod sqlite;
mod store;
mod writer;

pub use cursor::Cursor;
pub use error::LogError;
pub use follow::{FollowEnd, Followed, Follower, LiveCommit};
pub use reader::{CollectionSummary, LogReader, Page, ReadEntry, ReadFrom, RowFilter};
pub use writer::{Committed, Prior, StoredRecord, MAX_BROADCAST_BYTES, MAX_BROADCAST_RECORDS};

pub use backend::LogStats;
pub use role::Role;

use crate::record::{Change, TxMeta};
use crate::shape::ColumnInfo;
use actor::Command;
use backend::LogBackend;
use sqlite::SqliteBackend;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex, OwnedMutexGuard};
use writer::LogWriter;

/// Batches of changes in flight to the writer thread: bounds memory when the writer is slower
/// than the source.
const COMMAND_QUEUE: usize = 16;
/// A [`LogTxn`] gathers this many changes (of one or many upstream transactions) before it hands
/// them to the writer thread: one message and one wake-up per batch, not per transaction.
const APPEND_BATCH: usize = 1000;
const COMMITTED_BROADCAST: usize = 1024;

/// The relay's handle on the log. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    backend: Arc<dyn LogBackend>,
    epoch: u32,
    write_lock: Arc<Mutex<()>>,
    committed: broadcast::Sender<Arc<Committed>>,
    head: watch::Receiver<u64>,
    /// `Some(reason)` once the writer thread has died.
    death: watch::Receiver<Option<String>>,
    /// Collections that shaped followers read (the writer adds prior versions for them).
    shapes: Arc<interest::ShapeInterest>,
    /// The live fan-out of shaped followers.
    shape_index: Arc<shape_index::ShapeIndex>,
    role: watch::Receiver<Role>,
    /// This node's place in the shared log (`log.backend = "nats"`).
    nats: Option<Arc<nats::node::NatsNode>>,
}

impl Log {
    /// Opens (or creates) the log under `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        Log::open_scoped(dir, scope::ScopeColumns::new())
    }

    /// Opens the log with the configured row-scope columns (collection → column).
    pub fn open_scoped(dir: &Path, scopes: scope::ScopeColumns) -> Result<Log, LogError> {
        let writer = LogWriter::open_scoped(dir, scopes)?;
        let started = Started::start(writer, dir)?;
        let backend = Arc::new(SqliteBackend::new(
            dir.to_path_buf(),
            started.commands.clone(),
        ));
        let death = started.death.clone();
        let (_, role) = watch::channel(Role::Single);
        Ok(started.into_log(backend, death, role, None))
    }

    /// Opens the shared log in a NATS JetStream cluster (`log.backend = "nats"`): connects,
    /// rebuilds this node's materialization from the newest snapshot and the stream after it,
    /// and follows the stream. `writable` on an
    /// ingest node. The materialization lives in `dir/nats` (rebuilt at every start) or, with no
    /// `dir`, in a temporary directory.
    pub async fn open_nats(
        settings: &nats::cluster::NatsSettings,
        dir: Option<&Path>,
        scopes: scope::ScopeColumns,
        writable: bool,
    ) -> Result<Log, LogError> {
        let js = nats::cluster::connect(settings).await?;
        let node_name = format!("{}-{:08x}", hostname(), rand::random::<u32>());
        let stream = nats::cluster::log_stream(&js, settings).await?;
        let bucket = nats::cluster::meta_bucket(&js, settings).await?;
        let epoch = nats::cluster::epoch(&bucket).await?;
        let snapshot_bucket = nats::snapshot::bucket(&js, settings).await?;
        let (dir, scratch) = nats::materialization_dir(dir, settings)?;
        // The newest snapshot (its epoch, seqs, positions and purge mark), then the stream after it.
        let restored = nats::snapshot::restore(&snapshot_bucket, &stream, &dir).await?;
        let mut writer = LogWriter::open_scoped(&dir, scopes)?.without_commit_sync()?;
        if writer.epoch() != epoch {
            match restored {
                0 => writer.adopt_epoch(epoch)?,
                _ => {
                    return Err(LogError::Corrupt(format!(
                        "the log snapshot has epoch {}, the meta bucket {epoch}",
                        writer.epoch()
                    )))
                }
            }
        }
        let started = Started::start(writer, &dir)?;
        let node = rand::random::<u64>();
        let waiters = Arc::default();
        let prefetched = Arc::new(nats::Prefetched::default());
        let (applied_tx, applied) = watch::channel(restored);
        let (role_tx, role) = watch::channel(match writable {
            true => Role::Standby,
            false => Role::Serve,
        });
        let materializer = nats::Materializer {
            client: js.client(),
            bell: settings.bell_subject(),
            stream: stream.clone(),
            commands: started.commands.clone(),
            node,
            waiters: Arc::clone(&waiters),
            applied: applied_tx,
            snapshots: nats::snapshot::Snapshots::new(
                snapshot_bucket,
                stream.clone(),
                dir.clone(),
                settings.snapshots,
                role.clone(),
                restored,
            ),
            prefetched: Arc::clone(&prefetched),
        };
        let death = nats::watch_death(started.death.clone(), materializer);
        let js_for_node = js.clone();
        let backend = nats::NatsBackend::new(nats::Parts {
            js,
            stream,
            settings: settings.clone(),
            local: SqliteBackend::new(dir.clone(), started.commands.clone()),
            writable,
            node,
            waiters,
            applied,
            scratch,
            prefetched,
        })
        .await?;
        backend.catch_up().await?;
        let backend = Arc::new(backend);
        let node = nats::node::NatsNode {
            backend: backend.clone(),
            js: js_for_node,
            bucket,
            settings: settings.clone(),
            role: role_tx,
            name: node_name,
        };
        Ok(started.into_log(backend, death, role, Some(Arc::new(node))))
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// What this node does with the log now (`single` with the embedded engine).
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// On an ingest node of the shared log: waits for the ingest lease, becomes the active
    /// writer, and resolves with the reason once the lease is lost. Never resolves otherwise.
    pub async fn hold_ingest_lease(&self) -> LogError {
        match &self.nats {
            Some(node) => node.lead().await,
            None => std::future::pending().await,
        }
    }

    /// The NATS cluster as this node sees it (`None` with the embedded engine).
    pub fn cluster_view(&self) -> Option<nats::node::ClusterView> {
        self.nats.as_ref().map(|node| node.view())
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
            backend: self.backend.clone(),
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

    /// A direct read-only connection (blocking; tests and tools).
    pub fn reader(&self) -> Result<LogReader, LogError> {
        self.backend.reader()
    }

    /// One page of entries after `from` that `filter` lets through: at most `limit` entries
    /// and about `max_bytes` of records.
    pub async fn page(
        &self,
        from: ReadFrom,
        filter: Arc<RowFilter>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, LogError> {
        self.backend.page(from, filter, limit, max_bytes).await
    }

    /// Every collection with an entry.
    pub async fn collections(&self) -> Result<Vec<String>, LogError> {
        self.backend.collections().await
    }

    /// Name, source and key columns of every collection.
    pub async fn collection_summaries(&self) -> Result<Vec<CollectionSummary>, LogError> {
        self.backend.collection_summaries().await
    }

    /// A collection's columns and types, when its source stored them.
    pub async fn columns(&self, collection: &str) -> Result<Option<Vec<ColumnInfo>>, LogError> {
        self.backend.columns(collection.to_string()).await
    }

    /// Stores a collection's columns and types (its source's catalog), for shapes and
    /// `/v1/collections`.
    pub async fn set_columns(
        &self,
        collection: &str,
        columns: &[ColumnInfo],
    ) -> Result<(), LogError> {
        let columns = serde_json::to_string(columns)?;
        self.send(Command::Columns {
            collection: collection.to_string(),
            columns,
        })
        .await
    }

    /// Whether `source` has written anything.
    pub async fn has_entries_of(&self, source: &str) -> Result<bool, LogError> {
        self.backend.has_entries_of(source.to_string()).await
    }

    /// Entries, purge mark and size, for `/v1/status`.
    pub async fn stats(&self) -> Result<LogStats, LogError> {
        self.backend.stats().await
    }

    /// Replays the log after `from`, then follows its live commits: see [`Follower`].
    /// Reads the first page before it returns, so that its bounds can be checked.
    pub async fn follow(
        &self,
        from: ReadFrom,
        filter: Arc<RowFilter>,
    ) -> Result<Follower, LogError> {
        Follower::start(self.clone(), from, filter).await
    }

    /// Resolves with the reason once the writer thread has died; never while it runs.
    pub async fn writer_stopped(&self) -> String {
        let mut death = self.death.clone();
        let reason = match death.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The writer's watch is gone only with the thread, which reported first.
            Err(_) => None,
        };
        reason.unwrap_or_else(|| "the log writer has stopped".into())
    }

    async fn send(&self, command: Command) -> Result<(), LogError> {
        self.backend.write(command).await
    }
}

/// The writer thread and the channels around it, before an engine is put in front.
struct Started {
    epoch: u32,
    commands: mpsc::Sender<Command>,
    committed: broadcast::Sender<Arc<Committed>>,
    head: watch::Receiver<u64>,
    death: watch::Receiver<Option<String>>,
    shapes: Arc<interest::ShapeInterest>,
}

impl Started {
    fn start(mut writer: LogWriter, dir: &Path) -> Result<Started, LogError> {
        let epoch = writer.epoch();
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let (committed, _) = broadcast::channel(COMMITTED_BROADCAST);
        let listeners = committed.clone();
        writer.hold_records_while(move || listeners.receiver_count() > 0);
        let shapes = Arc::new(interest::ShapeInterest::default());
        writer.watch_shapes(shapes.clone());
        let (head_tx, head) = watch::channel(writer.head_seq());
        let outlets = actor::Outlets {
            committed: committed.clone(),
            head: head_tx,
            checkpointer: checkpoint::Checkpointer::start(dir)?,
        };
        let death = actor::spawn(writer, receiver, outlets).map_err(|source| LogError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Started {
            epoch,
            commands,
            committed,
            head,
            death,
            shapes,
        })
    }

    fn into_log(
        self,
        backend: Arc<dyn LogBackend>,
        death: watch::Receiver<Option<String>>,
        role: watch::Receiver<Role>,
        nats: Option<Arc<nats::node::NatsNode>>,
    ) -> Log {
        Log {
            backend,
            epoch: self.epoch,
            write_lock: Arc::new(Mutex::new(())),
            committed: self.committed,
            head: self.head,
            death,
            shapes: self.shapes,
            shape_index: Arc::default(),
            role,
            nats,
        }
    }
}

/// This machine's name, for naming a node in the ingest lease.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

/// An open local transaction. Dropping it without commit rolls it back (at the next `begin`).
pub struct LogTxn {
    _guard: OwnedMutexGuard<()>,
    backend: Arc<dyn LogBackend>,
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
        self.backend.write(Command::Append(batch)).await
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
        self.backend
            .write(Command::AppendCopied { tx, changes, floor })
            .await
    }

    /// Queues the removal of every entry of `collection` (a table no longer synced).
    pub async fn remove_collection(&mut self, collection: &str) -> Result<(), LogError> {
        self.flush().await?;
        self.backend
            .write(Command::RemoveCollection(collection.to_string()))
            .await
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
        self.backend
            .write(Command::Commit {
                source: source.to_string(),
                position,
                reply,
            })
            .await?;
        answer.await.map_err(|_| LogError::Stopped)?
    }

    pub async fn rollback(self) {
        let _ = self.backend.write(Command::Rollback).await;
    }
}

#[cfg(test)]
mod tests;
