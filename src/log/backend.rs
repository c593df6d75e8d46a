//! The seam between the log's handle and the engine that stores it.
//!
//! [`super::Log`] owns what every engine shares: the write lock (one local transaction at a
//! time), the broadcast of commits to live followers, the head, and the writer's health. An
//! engine stores entries and positions and answers reads. SQLite ([`super::sqlite`]) is the
//! embedded default; a distributed engine (NATS JetStream) implements the same trait.
//!
//! The contract an engine keeps: [`Command`]s are applied in the order they are written; a
//! `Commit` makes everything appended since `Begin` durable together with the source's
//! position, or nothing; seqs only grow; a read sees one consistent snapshot.

use super::actor::Command;
use super::reader::{CollectionSummary, LogReader, Page, ReadFrom, RowFilter};
use super::LogError;
use crate::shape::ColumnInfo;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Counts `/v1/status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    pub entries: u64,
    /// Cursors below this seq are expired.
    pub purged_seq: u64,
    pub bytes: u64,
}

pub(crate) trait LogBackend: Send + Sync + 'static {
    /// Hands a write command to the engine's single writer.
    fn write(&self, command: Command) -> BoxFuture<'_, Result<(), LogError>>;

    /// One page after `from` that `filter` lets through (at most `limit` entries and about
    /// `max_bytes` of records, at least one entry).
    fn page(
        &self,
        from: ReadFrom,
        filter: Arc<RowFilter>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Page, LogError>>;

    /// Every collection with an entry.
    fn collections(&self) -> BoxFuture<'_, Result<Vec<String>, LogError>>;

    fn collection_summaries(&self) -> BoxFuture<'_, Result<Vec<CollectionSummary>, LogError>>;

    /// A collection's columns and types, when its source stored them.
    fn columns(
        &self,
        collection: String,
    ) -> BoxFuture<'_, Result<Option<Vec<ColumnInfo>>, LogError>>;

    /// Whether `source` has any entry (it copied or streamed something).
    fn has_entries_of(&self, source: String) -> BoxFuture<'_, Result<bool, LogError>>;

    fn stats(&self) -> BoxFuture<'_, Result<LogStats, LogError>>;

    /// A direct, blocking reader (tests and tools; engines without one say so).
    fn reader(&self) -> Result<LogReader, LogError>;
}
