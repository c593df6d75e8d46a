//! The shared engine (`log.backend = "nats"`): the log is a NATS JetStream stream of write
//! commands; every node keeps a local SQLite materialization of it and reads from that.
//!
//! Writes (only on an ingest node) are published to the stream, each message fenced by
//! `Nats-Expected-Last-Sequence` so that nothing interleaves with them, and a call returns only
//! once JetStream acknowledged it and this node's materializer applied it: so a source acks
//! upstream only what the replicated stream holds. Reads go to the local materialization,
//! which assigns the same seqs on every node (see `materializer.rs`).

pub mod check;
pub mod cluster;
mod lease;
mod materializer;
pub mod node;
mod prefetch;
mod publisher;
pub mod snapshot;
mod wire;

use super::actor::Command;
use super::backend::{LogBackend, LogStats};
use super::reader::{CollectionSummary, LogReader, Page, ReadFrom, RowFilter};
use super::sqlite::SqliteBackend;
use super::LogError;
use crate::shape::ColumnInfo;
use async_nats::jetstream::{self, stream};
use cluster::{last_sequence, NatsSettings};
use futures_util::future::BoxFuture;
pub(crate) use materializer::Materializer;
use materializer::{Reply, Waiters};
pub(crate) use prefetch::Prefetched;
use publisher::Publisher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use wire::{changes_to_wire, encode, Waiter, WireCommand, WireTx};

/// Messages stay well under NATS's default `max_payload` (1 MiB), headers included.
pub(crate) const MAX_MESSAGE_BYTES: usize = 768 * 1024;

/// The engine's handle: the local materialization for reads, the stream for writes.
pub struct NatsBackend {
    local: SqliteBackend,
    stream: stream::Stream,
    /// `None` on a serve-only node: it never writes the shared log.
    publisher: Option<Publisher>,
    node: u64,
    next_waiter: AtomicU64,
    waiters: Arc<Waiters>,
    pub(crate) applied: watch::Receiver<u64>,
    /// Removes a materialization kept in a temporary directory when the node stops.
    _scratch: Option<ScratchDir>,
}

/// A directory removed when dropped (a serve-only node's materialization without `log.dir`).
pub struct ScratchDir(pub PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) struct Parts {
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub settings: NatsSettings,
    pub local: SqliteBackend,
    pub writable: bool,
    pub node: u64,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Receiver<u64>,
    pub scratch: Option<ScratchDir>,
    pub prefetched: Arc<Prefetched>,
}

impl NatsBackend {
    pub(crate) async fn new(parts: Parts) -> Result<NatsBackend, LogError> {
        let publisher = match parts.writable {
            true => Some(
                Publisher::new(
                    parts.js,
                    parts.stream.clone(),
                    parts.settings.subject(),
                    parts.settings.bell_subject(),
                    parts.prefetched,
                )
                .await?,
            ),
            false => None,
        };
        Ok(NatsBackend {
            local: parts.local,
            stream: parts.stream,
            publisher,
            node: parts.node,
            next_waiter: AtomicU64::new(1),
            waiters: parts.waiters,
            applied: parts.applied,
            _scratch: parts.scratch,
        })
    }

    /// Waits until the local materialization has applied everything the stream holds now.
    pub(crate) async fn catch_up(&self) -> Result<(), LogError> {
        let end = last_sequence(&self.stream).await?;
        tracing::debug!(
            end,
            applied = *self.applied.borrow(),
            "catching up with the stream"
        );
        let mut applied = self.applied.clone();
        applied
            .wait_for(|applied| *applied >= end)
            .await
            .map_err(|_| LogError::Stopped)?;
        Ok(())
    }

    /// Makes this node the stream's writer (it took the ingest lease): applies everything
    /// published so far, then writes after the stream's end.
    pub(crate) async fn claim_writer(&self) -> Result<(), LogError> {
        tracing::debug!("claiming the stream: catching up");
        self.publisher()?.claim(self.catch_up()).await
    }

    /// Resolves once the stream refused this node as its writer (never on a serve-only node).
    pub(crate) async fn fenced(&self) -> String {
        match &self.publisher {
            Some(publisher) => publisher.fenced().await,
            None => std::future::pending().await,
        }
    }

    fn publisher(&self) -> Result<&Publisher, LogError> {
        self.publisher.as_ref().ok_or_else(|| {
            LogError::ReadOnly("a serve-only node (no [[sources]]) only reads".into())
        })
    }

    /// Publishes `command` (one or more messages) right after what this node sent before,
    /// without waiting for the stream's acknowledgement: a later [`NatsBackend::publish_settled`]
    /// reports a failure. Another writer in between fences this one off for good.
    async fn publish(&self, command: WireCommand) -> Result<(), LogError> {
        let payloads = encode(command, MAX_MESSAGE_BYTES)?;
        self.publisher()?.publish(payloads, false).await
    }

    /// Publishes `command` and waits until the stream acknowledged it and all sent before.
    async fn publish_settled(&self, command: WireCommand) -> Result<(), LogError> {
        let payloads = encode(command, MAX_MESSAGE_BYTES)?;
        self.publisher()?.publish(payloads, true).await
    }

    fn waiter(&self) -> Waiter {
        Waiter {
            node: self.node,
            id: self.next_waiter.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Publishes a command whose result the materializer hands back, and waits for it.
    async fn publish_awaited(
        &self,
        make: impl FnOnce(Waiter) -> WireCommand,
    ) -> Result<Reply, LogError> {
        let waiter = self.waiter();
        let answer = self.waiters.register(waiter.id);
        if let Err(e) = self.publish_settled(make(waiter)).await {
            self.waiters.forget(waiter.id);
            return Err(e);
        }
        answer.await.map_err(|_| LogError::Stopped)
    }

    async fn write_command(&self, command: Command) -> Result<(), LogError> {
        match command {
            Command::Position { .. } => {
                // Read only once everything published (by any node, before a crash too) is
                // applied: a source resumes from the last position the stream holds.
                self.catch_up().await?;
                self.local.write(command).await
            }
            Command::Begin => self.publish(WireCommand::Begin).await,
            Command::Rollback => self.publish(WireCommand::Rollback).await,
            Command::Append(batch) => {
                let txs = batch
                    .into_iter()
                    .map(|(tx, changes)| (WireTx::from(&*tx), changes_to_wire(changes)))
                    .collect();
                self.publish(WireCommand::Append { txs }).await
            }
            Command::AppendCopied { tx, changes, floor } => {
                self.publish(WireCommand::AppendCopied {
                    tx: WireTx::from(&*tx),
                    changes: changes_to_wire(changes),
                    floor,
                })
                .await
            }
            Command::RemoveCollection(collection) => {
                self.publish(WireCommand::RemoveCollection { collection })
                    .await
            }
            Command::Columns {
                collection,
                columns,
            } => {
                self.publish(WireCommand::Columns {
                    collection,
                    columns,
                })
                .await
            }
            Command::Commit {
                source,
                position,
                reply,
            } => {
                let result = match self
                    .publish_awaited(|waiter| WireCommand::Commit {
                        source,
                        position,
                        waiter,
                    })
                    .await
                {
                    Ok(Reply::Committed(result)) => result,
                    Ok(_) => Err(LogError::Stopped),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                Ok(())
            }
            Command::ResetSource { source, reply } => {
                let result = match self
                    .publish_awaited(|waiter| WireCommand::ResetSource { source, waiter })
                    .await
                {
                    Ok(Reply::Reset(result)) => result,
                    Ok(_) => Err(LogError::Stopped),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                Ok(())
            }
            Command::PurgeTombstones { before, reply } => {
                let result = match self
                    .publish_awaited(|waiter| WireCommand::PurgeTombstones { before, waiter })
                    .await
                {
                    Ok(Reply::Purged(result)) => result,
                    Ok(_) => Err(LogError::Stopped),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                Ok(())
            }
        }
    }
}

impl LogBackend for NatsBackend {
    fn write(&self, command: Command) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(self.write_command(command))
    }

    fn page(
        &self,
        from: ReadFrom,
        filter: Arc<RowFilter>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Page, LogError>> {
        self.local.page(from, filter, limit, max_bytes)
    }

    fn collections(&self) -> BoxFuture<'_, Result<Vec<String>, LogError>> {
        self.local.collections()
    }

    fn collection_summaries(&self) -> BoxFuture<'_, Result<Vec<CollectionSummary>, LogError>> {
        self.local.collection_summaries()
    }

    fn columns(
        &self,
        collection: String,
    ) -> BoxFuture<'_, Result<Option<Vec<ColumnInfo>>, LogError>> {
        self.local.columns(collection)
    }

    fn has_entries_of(&self, source: String) -> BoxFuture<'_, Result<bool, LogError>> {
        self.local.has_entries_of(source)
    }

    fn stats(&self) -> BoxFuture<'_, Result<LogStats, LogError>> {
        self.local.stats()
    }

    fn reader(&self) -> Result<LogReader, LogError> {
        self.local.reader()
    }
}

/// Where this node materializes the log: `dir/nats`, emptied first (the stream and its
/// snapshots are the truth: seqs only match other nodes' when built from them), or a temporary
/// directory removed when the node stops.
pub(crate) fn materialization_dir(
    dir: Option<&std::path::Path>,
    settings: &NatsSettings,
) -> Result<(PathBuf, Option<ScratchDir>), LogError> {
    let (path, scratch) = match dir {
        Some(dir) => (dir.join("nats"), false),
        None => (
            std::env::temp_dir().join(format!(
                "deltarelay-{}-{}-{:x}",
                settings.stream,
                std::process::id(),
                rand::random::<u32>()
            )),
            true,
        ),
    };
    let dir_error = |source| LogError::Dir {
        dir: path.clone(),
        source,
    };
    match std::fs::remove_dir_all(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(dir_error(e)),
    }
    std::fs::create_dir_all(&path).map_err(dir_error)?;
    // `then`, not `then_some`: a `ScratchDir` built and dropped would remove the directory.
    Ok((path.clone(), scratch.then(|| ScratchDir(path))))
}

/// The log's death: the writer thread's, or the materializer's when it cannot go on.
pub(crate) fn watch_death(
    mut writer_death: watch::Receiver<Option<String>>,
    materializer: Materializer,
) -> watch::Receiver<Option<String>> {
    let (died, death) = watch::channel(None);
    tokio::spawn(async move {
        let reason = tokio::select! {
            reason = writer_death.wait_for(Option::is_some) => match reason {
                Ok(reason) => reason.clone(),
                Err(_) => None,
            },
            reason = materializer.run() => Some(format!("following the NATS log stream: {reason}")),
        };
        if let Some(reason) = &reason {
            tracing::error!(%reason, "the log has stopped");
        }
        died.send_replace(reason);
    });
    death
}
