//! The local materialization of the shared log: applies the stream's commands, in stream
//! order, to this node's SQLite log writer.
//!
//! Every node runs one, the active ingest node included, so that every node assigns the same
//! seqs (the writer's are deterministic given the same commands from the same empty start)
//! and serves reads, follows and `410`s exactly as the SQLite engine does. A block (from
//! `Begin` to its `Commit` marker) is one local transaction: a block cut short by a crash is
//! rolled back when the next `Begin` arrives, as the SQLite engine does at its next `begin`.

use super::wire::{changes_from_wire, decode, WireCommand, WireTx};
use crate::log::actor::Command;
use crate::log::writer::Committed;
use crate::log::LogError;
use crate::record::TxMeta;
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// What the materializer hands back to the node that published a command with a waiter.
pub(crate) enum Reply {
    Committed(Result<Arc<Committed>, LogError>),
    Reset(Result<u64, LogError>),
    Purged(Result<usize, LogError>),
}

/// This node's callers waiting for the materializer to apply what they published.
#[derive(Default)]
pub(crate) struct Waiters {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl Waiters {
    pub fn register(&self, id: u64) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn answer(&self, id: u64, reply: Reply) {
        if let Some(waiter) = self.lock().remove(&id) {
            let _ = waiter.send(reply);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How often a quiet materializer looks at the stream's end anyway.
const QUIET_RECHECK: Duration = Duration::from_millis(500);

/// Requests for stream messages in flight at once while catching up.
const FETCHES_IN_FLIGHT: usize = 16;

/// The sequence a doorbell message announces (`None` when it is not one).
fn rung_sequence(ring: &async_nats::Message) -> Option<u64> {
    std::str::from_utf8(&ring.payload).ok()?.parse().ok()
}

pub(crate) struct Materializer {
    pub client: async_nats::Client,
    /// The doorbell subject (see `publisher.rs`).
    pub bell: String,
    pub stream: stream::Stream,
    pub commands: mpsc::Sender<Command>,
    pub node: u64,
    pub waiters: Arc<Waiters>,
    /// The last stream sequence applied.
    pub applied: watch::Sender<u64>,
    /// Snapshots the materialization and compacts the stream (on the active node).
    pub snapshots: super::snapshot::Snapshots,
    /// What this node published itself (when active): applied without fetching it back.
    pub prefetched: Arc<super::prefetch::Prefetched>,
}

impl Materializer {
    /// Applies the stream from its start until the writer stops. Returns why it stopped.
    pub async fn run(self) -> String {
        let mut block = Block::default();
        loop {
            let from = *self.applied.borrow() + 1;
            match self.follow_from(from, &mut block).await {
                Ok(()) => return "the log writer has stopped".into(),
                Err(Fatal::Stop(reason)) => return reason,
                Err(Fatal::Retry(reason)) => {
                    tracing::warn!(%reason, from, "following the NATS log stream again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Applies the stream's messages after the last applied one, fetching each by its
    /// sequence (from the stream's leader, so that a node that died or a consumer lost with it
    /// cannot stall this node; several requests in flight), then waits for the doorbell: the
    /// writer rings it with the last sequence acknowledged, and a timer covers a ring missed
    /// while reconnecting.
    async fn follow_from(&self, from: u64, block: &mut Block) -> Result<(), Fatal> {
        tracing::debug!(from, "following the stream");
        let retry = |what: &str, e: &dyn std::fmt::Display| Fatal::Retry(format!("{what}: {e}"));
        let mut bell = self
            .client
            .subscribe(self.bell.clone())
            .await
            .map_err(|e| retry("subscribing to the doorbell", &e))?;
        let stream_end = || async {
            super::cluster::last_sequence(&self.stream)
                .await
                .map_err(|e| retry("reading the stream's end", &e))
        };
        let mut end = stream_end().await?;
        loop {
            self.apply_through(end, block).await?;
            end = match tokio::time::timeout(QUIET_RECHECK, bell.next()).await {
                Ok(None) => return Err(Fatal::Retry("the subscription ended".into())),
                Ok(Some(ring)) => {
                    let mut rung = rung_sequence(&ring);
                    // Rings queued meanwhile: the highest one counts.
                    while let Ok(Some(ring)) =
                        tokio::time::timeout(Duration::ZERO, bell.next()).await
                    {
                        rung = rung.max(rung_sequence(&ring));
                    }
                    match rung {
                        Some(end) => end,
                        None => stream_end().await?,
                    }
                }
                Err(_quiet) => stream_end().await?,
            };
        }
    }

    /// Applies the messages after the last applied one up to `end`, in order.
    async fn apply_through(&self, end: u64, block: &mut Block) -> Result<(), Fatal> {
        let next = *self.applied.borrow() + 1;
        let mut fetched = futures_util::stream::iter(next..=end)
            .map(|seq| async move {
                let payload = match self.prefetched.take(seq) {
                    Some(payload) => Ok(payload),
                    None => self.stream.get_raw_message(seq).await.map(|m| m.payload),
                };
                (seq, payload)
            })
            .buffered(FETCHES_IN_FLIGHT);
        while let Some((seq, payload)) = fetched.next().await {
            let payload = match payload {
                Ok(payload) => payload,
                Err(e) => return Err(self.missing(seq, e).await),
            };
            let command = decode(&payload).map_err(|e| {
                Fatal::Stop(format!("stream message {seq} is not a log command: {e}"))
            })?;
            let committed = self.apply(command, block).await?;
            self.applied.send_replace(seq);
            if committed {
                self.snapshots.after_commit(seq).await;
            }
        }
        Ok(())
    }

    /// Why message `next` could not be read: for now (retry), or for good when a compaction
    /// purged it before this node applied it (it lagged by more than a snapshot interval).
    async fn missing(&self, next: u64, error: impl std::fmt::Display) -> Fatal {
        let purged = match self.stream.get_info().await {
            Ok(info) => info.state.first_sequence > next,
            Err(_) => false,
        };
        match purged {
            true => Fatal::Stop(format!(
                "stream message {next} was compacted away before this node applied it; \
                 restart the node to load the newest snapshot"
            )),
            false => Fatal::Retry(format!("reading stream message {next}: {error}")),
        }
    }

    /// Applies one command; `true` when it ended a block with a commit (the local log holds
    /// exactly the state after it, a point to snapshot at).
    async fn apply(&self, command: WireCommand, block: &mut Block) -> Result<bool, Fatal> {
        let stopped = || Fatal::Stop("the log writer has stopped".into());
        let mut committed = false;
        match command {
            WireCommand::Begin => {
                *block = Block::default();
                self.send(Command::Begin).await?;
            }
            WireCommand::Append { txs } => {
                let batch = txs
                    .into_iter()
                    .map(|(tx, changes)| (block.tx(tx), changes_from_wire(changes)))
                    .collect();
                self.send(Command::Append(batch)).await?;
            }
            WireCommand::AppendCopied { tx, changes, floor } => {
                let tx = block.tx(tx);
                let changes = changes_from_wire(changes);
                self.send(Command::AppendCopied { tx, changes, floor })
                    .await?;
            }
            WireCommand::RemoveCollection { collection } => {
                self.send(Command::RemoveCollection(collection)).await?;
            }
            WireCommand::Columns {
                collection,
                columns,
            } => {
                self.send(Command::Columns {
                    collection,
                    columns,
                })
                .await?;
            }
            WireCommand::Rollback => {
                *block = Block::default();
                self.send(Command::Rollback).await?;
            }
            WireCommand::Commit {
                source,
                position,
                waiter,
            } => {
                *block = Block::default();
                let (reply, answer) = oneshot::channel();
                self.send(Command::Commit {
                    source,
                    position,
                    reply,
                })
                .await?;
                let result = answer.await.map_err(|_| stopped())?;
                committed = result.is_ok();
                self.answer(waiter, Reply::Committed(result));
            }
            WireCommand::ResetSource { source, waiter } => {
                *block = Block::default();
                let (reply, answer) = oneshot::channel();
                self.send(Command::ResetSource { source, reply }).await?;
                let result = answer.await.map_err(|_| stopped())?;
                self.answer(waiter, Reply::Reset(result));
            }
            WireCommand::PurgeTombstones { before, waiter } => {
                *block = Block::default();
                let (reply, answer) = oneshot::channel();
                self.send(Command::PurgeTombstones { before, reply })
                    .await?;
                let result = answer.await.map_err(|_| stopped())?;
                self.answer(waiter, Reply::Purged(result));
            }
        }
        Ok(committed)
    }

    fn answer(&self, waiter: super::wire::Waiter, reply: Reply) {
        if waiter.node == self.node {
            self.waiters.answer(waiter.id, reply);
        }
    }

    async fn send(&self, command: Command) -> Result<(), Fatal> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Fatal::Stop("the log writer has stopped".into()))
    }
}

enum Fatal {
    /// The stream could not be read for now: follow it again from the last applied message.
    Retry(String),
    /// The materialization cannot go on (the writer died, or the stream holds garbage).
    Stop(String),
}

/// The open block: its last upstream transaction, so that one transaction split over several
/// messages keeps one `TxMeta` (the writer groups a transaction's entries by its identity).
#[derive(Default)]
struct Block {
    last_tx: Option<(WireTx, Arc<TxMeta>)>,
}

impl Block {
    fn tx(&mut self, tx: WireTx) -> Arc<TxMeta> {
        if let Some((last, meta)) = &self.last_tx {
            if last.source == tx.source
                && last.id == tx.id
                && last.position == tx.position
                && last.commit_time == tx.commit_time
            {
                return meta.clone();
            }
        }
        let meta = Arc::new(TxMeta::from(tx.clone()));
        self.last_tx = Some((tx, meta.clone()));
        meta
    }
}
