//! The embedded engine: one SQLite file under `log.dir`, written by the writer thread
//! (`actor.rs`) and read through a small pool of read-only connections.

use super::actor::Command;
use super::backend::{LogBackend, LogStats};
use super::pool::ReaderPool;
use super::reader::{CollectionSummary, LogReader, Page, ReadFrom, RowFilter};
use super::{store, LogError};
use crate::shape::ColumnInfo;
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct SqliteBackend {
    dir: PathBuf,
    commands: mpsc::Sender<Command>,
    readers: ReaderPool,
}

impl SqliteBackend {
    pub fn new(dir: PathBuf, commands: mpsc::Sender<Command>) -> SqliteBackend {
        SqliteBackend {
            readers: ReaderPool::new(dir.clone()),
            dir,
            commands,
        }
    }

    /// Bytes on disk of the SQLite database and its WAL and shared-memory files.
    fn bytes_on_disk(&self) -> u64 {
        let main = store::log_path(&self.dir);
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut path = main.clone().into_os_string();
                path.push(suffix);
                std::fs::metadata(path).ok().map(|m| m.len())
            })
            .sum()
    }
}

impl LogBackend for SqliteBackend {
    fn write(&self, command: Command) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            self.commands
                .send(command)
                .await
                .map_err(|_| LogError::Stopped)
        })
    }

    fn page(
        &self,
        from: ReadFrom,
        filter: Arc<RowFilter>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'_, Result<Page, LogError>> {
        Box::pin(
            self.readers
                .run(move |reader| reader.page_within(&from, &filter, limit, max_bytes)),
        )
    }

    fn collections(&self) -> BoxFuture<'_, Result<Vec<String>, LogError>> {
        Box::pin(self.readers.run(|reader| reader.collections()))
    }

    fn collection_summaries(&self) -> BoxFuture<'_, Result<Vec<CollectionSummary>, LogError>> {
        Box::pin(self.readers.run(|reader| reader.collection_summaries()))
    }

    fn columns(
        &self,
        collection: String,
    ) -> BoxFuture<'_, Result<Option<Vec<ColumnInfo>>, LogError>> {
        Box::pin(self.readers.run(move |reader| reader.columns(&collection)))
    }

    fn has_entries_of(&self, source: String) -> BoxFuture<'_, Result<bool, LogError>> {
        Box::pin(
            self.readers
                .run(move |reader| reader.has_entries_of(&source)),
        )
    }

    fn stats(&self) -> BoxFuture<'_, Result<LogStats, LogError>> {
        Box::pin(async move {
            let (entries, purged_seq) = self
                .readers
                .run(|reader| Ok((reader.entry_count()?, reader.purged_seq()?)))
                .await?;
            Ok(LogStats {
                entries,
                purged_seq,
                bytes: self.bytes_on_disk(),
            })
        })
    }

    fn reader(&self) -> Result<LogReader, LogError> {
        LogReader::open(&self.dir)
    }
}
