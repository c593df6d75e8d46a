//! The log's single writer: a thread that runs [`Command`]s in order against the SQLite writer,
//! announces each commit to live subscribers, and reports its own death.

use super::checkpoint::Checkpointer;
use super::error::LogError;
use super::writer::{Committed, LogWriter};
use crate::record::{Change, TxMeta};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// The write protocol: what a [`super::Log`] handle asks of the single writer, in order.
pub(crate) enum Command {
    Begin,
    /// Changes of one or more upstream transactions, in commit order.
    Append(Vec<(Arc<TxMeta>, Vec<Change>)>),
    AppendCopied {
        tx: Arc<TxMeta>,
        changes: Vec<Change>,
        floor: u64,
    },
    RemoveCollection(String),
    /// A collection's columns and types as its source's catalog has them (JSON of
    /// `Vec<ColumnInfo>`): what shapes type their filters by and `/v1/collections` lists.
    Columns {
        collection: String,
        columns: String,
    },
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

/// What the writer thread needs besides its commands.
pub(super) struct Outlets {
    pub committed: broadcast::Sender<Arc<Committed>>,
    pub head: watch::Sender<u64>,
    pub checkpointer: Checkpointer,
}

/// Starts the writer thread. The returned receiver holds `None` while the writer runs and the
/// reason once it has died (a panic or an error that makes the log unwritable), so that the
/// relay stops instead of serving stale data while its sources retry forever.
pub(super) fn spawn(
    writer: LogWriter,
    commands: mpsc::Receiver<Command>,
    outlets: Outlets,
) -> std::io::Result<watch::Receiver<Option<String>>> {
    let (died, death) = watch::channel(None);
    let fault = TestFault::from_env();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| run(writer, commands, outlets, fault));
            let reason = match std::panic::catch_unwind(run) {
                Ok(None) => return,
                Ok(Some(error)) => format!("the log cannot be written: {error}"),
                Err(panic) => format!("the log writer panicked: {}", panic_text(&panic)),
            };
            tracing::error!(reason = %reason, "the log writer has stopped");
            died.send_replace(Some(reason));
        })?;
    Ok(death)
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A test-only fault: `DELTARELAY_TEST_KILL_LOG_WRITER_AFTER=<n>` makes the writer thread
/// panic after its n-th commit, so that tests can prove the relay stops when its writer dies.
struct TestFault {
    panic_after_commits: Option<u64>,
}

impl TestFault {
    fn from_env() -> TestFault {
        let panic_after_commits = std::env::var("DELTARELAY_TEST_KILL_LOG_WRITER_AFTER")
            .ok()
            .and_then(|n| n.parse().ok());
        TestFault {
            panic_after_commits,
        }
    }

    fn after_commit(&mut self) {
        if let Some(left) = self.panic_after_commits.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                panic!("test fault: DELTARELAY_TEST_KILL_LOG_WRITER_AFTER");
            }
        }
    }
}

/// Runs commands until every handle is gone (`None`) or the log becomes unwritable (the error).
fn run(
    mut writer: LogWriter,
    mut commands: mpsc::Receiver<Command>,
    outlets: Outlets,
    mut fault: TestFault,
) -> Option<LogError> {
    let Outlets {
        committed,
        head,
        checkpointer,
    } = outlets;
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
            Command::Columns {
                collection,
                columns,
            } => {
                // Outside or inside a source's open transaction alike: metadata that each
                // session of the source writes again, so a rollback loses nothing for long.
                if let Err(e) = writer.set_columns(&collection, &columns) {
                    tracing::warn!(%collection, error = %e, "could not store a collection's columns");
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
                if let Err(e) = &result {
                    if e.is_fatal() {
                        failed = Some(LogError::Corrupt(e.to_string()));
                    }
                }
                if let Ok(done) = &result {
                    fault.after_commit();
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
        if let Some(fatal) = failed.take_if(|e| e.is_fatal()) {
            // Answer nothing more: dropping `commands` fails every waiting and later caller.
            writer.rollback();
            return Some(fatal);
        }
    }
    writer.rollback();
    None
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
