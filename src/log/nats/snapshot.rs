//! Compaction of the log stream by snapshots of the materialization.
//!
//! The active ingest node's materializer, every so often and right after it applied a block's
//! commit, copies its SQLite materialization (`VACUUM INTO`, while it applies nothing else, so
//! the copy is exactly the state after stream sequence S) and stores it in the object store
//! bucket `<stream>_snapshots` as `snapshot-<S>`. Once it is stored, the stream is purged up to
//! the *previous* snapshot's sequence and older snapshots are deleted: the two newest
//! snapshots stay, and the stream still holds everything after the older of them, so a node
//! that loaded the previous snapshot, or lags behind by less than one snapshot interval, finds
//! every message it needs. A starting node loads the newest snapshot and follows the stream
//! from S + 1 (see `restore`).

use super::cluster::{nats_error, patiently, NatsSettings};
use crate::log::role::Role;
use crate::log::store;
use crate::log::LogError;
use async_nats::jetstream::{self, object_store, stream};
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// When the active ingest node snapshots: after `every`, or after `after` stream messages,
/// whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    pub every: Duration,
    pub after: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every: Duration::from_secs(600),
            after: 100_000,
        }
    }
}

const NAME_PREFIX: &str = "snapshot-";

/// How long storing one snapshot (and compacting the stream after it) may take.
const STORE_LIMIT: Duration = Duration::from_secs(30);

fn object_name(seq: u64) -> String {
    format!("{NAME_PREFIX}{seq:020}")
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix(NAME_PREFIX)?.parse().ok()
}

/// The snapshot bucket, created on first use.
pub async fn bucket(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<object_store::ObjectStore, LogError> {
    let name = settings.snapshot_bucket();
    patiently("opening the snapshot bucket", || async {
        if let Ok(store) = js.get_object_store(&name).await {
            return Ok(store);
        }
        js.create_object_store(object_store::Config {
            bucket: name.clone(),
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error(&format!("creating the bucket {name}"), e))
    })
    .await
}

/// The stream sequences of the stored snapshots, newest first.
async fn stored(bucket: &object_store::ObjectStore) -> Result<Vec<u64>, LogError> {
    let mut list = bucket
        .list()
        .await
        .map_err(|e| nats_error("listing the snapshots", e))?;
    let mut seqs = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| nats_error("listing the snapshots", e))?;
        seqs.extend(seq_of(&info.name));
    }
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(seqs)
}

/// The stream's first sequence (the one after the last purged message).
async fn first_sequence(stream: &stream::Stream) -> Result<u64, LogError> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| nats_error("reading the stream's state", e))?;
    Ok(info.state.first_sequence)
}

/// Loads the newest snapshot into `dir` (empty) and returns the stream sequence it covers (0
/// with no snapshot: then the stream must start at its first message). Loads again while a
/// newer compaction purged messages after the loaded snapshot, so no command is ever skipped.
pub async fn restore(
    bucket: &object_store::ObjectStore,
    stream: &stream::Stream,
    dir: &Path,
) -> Result<u64, LogError> {
    for attempt in 1.. {
        let Some(&seq) = stored(bucket).await?.first() else {
            let first = first_sequence(stream).await?;
            if first > 1 {
                return Err(LogError::Corrupt(format!(
                    "the log stream starts at message {first}, but no snapshot covers the ones before"
                )));
            }
            return Ok(0);
        };
        match download(bucket, seq, dir).await {
            Ok(()) => {}
            // Deleted meanwhile by a newer compaction: take the newest again.
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, seq, "loading the snapshot; trying again");
                continue;
            }
            Err(e) => return Err(e),
        }
        let first = first_sequence(stream).await?;
        if first <= seq + 1 {
            tracing::info!(
                seq,
                "loaded the log snapshot; following the stream after it"
            );
            return Ok(seq);
        }
        tracing::info!(
            seq,
            first,
            "the stream was compacted past the loaded snapshot: loading the newest again"
        );
    }
    unreachable!("the loop only ends by returning")
}

async fn download(
    bucket: &object_store::ObjectStore,
    seq: u64,
    dir: &Path,
) -> Result<(), LogError> {
    let part = dir.join("snapshot.part");
    let file_error = |source| LogError::Dir {
        dir: part.clone(),
        source,
    };
    let mut object = bucket
        .get(object_name(seq))
        .await
        .map_err(|e| nats_error(&format!("reading snapshot {seq}"), e))?;
    let mut file = tokio::fs::File::create(&part).await.map_err(file_error)?;
    tokio::io::copy(&mut object, &mut file)
        .await
        .map_err(|e| nats_error(&format!("reading snapshot {seq}"), e))?;
    file.sync_all().await.map_err(file_error)?;
    tokio::fs::rename(&part, store::log_path(dir))
        .await
        .map_err(|e| nats_error(&format!("renaming {}", part.display()), e))
}

/// The materializer's snapshot taker (it acts only while this node is the active one).
pub(crate) struct Snapshots {
    pub bucket: object_store::ObjectStore,
    pub stream: stream::Stream,
    /// The materialization's directory.
    pub dir: PathBuf,
    pub policy: SnapshotPolicy,
    pub role: watch::Receiver<Role>,
    /// The last snapshot taken (or loaded) and when.
    pub last: Mutex<(u64, Instant)>,
    /// A snapshot is being stored: the next one waits for it.
    pub storing: Arc<AtomicBool>,
}

impl Snapshots {
    pub fn new(
        bucket: object_store::ObjectStore,
        stream: stream::Stream,
        dir: PathBuf,
        policy: SnapshotPolicy,
        role: watch::Receiver<Role>,
        restored: u64,
    ) -> Snapshots {
        Snapshots {
            bucket,
            stream,
            dir,
            policy,
            role,
            last: Mutex::new((restored, Instant::now())),
            storing: Arc::default(),
        }
    }

    fn due(&self, seq: u64) -> bool {
        if *self.role.borrow() != Role::Active || self.storing.load(Ordering::Acquire) {
            return false;
        }
        let (last, at) = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        seq > last && (seq - last >= self.policy.after || at.elapsed() >= self.policy.every)
    }

    /// Called right after the materializer applied stream message `seq`, a block's commit:
    /// the local log holds exactly the state after `seq`. Takes a snapshot when one is due,
    /// and stores it (then compacts the stream) in the background.
    pub async fn after_commit(&self, seq: u64) {
        if !self.due(seq) {
            return;
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (seq, Instant::now());
        let file = self.dir.join(format!("snapshot-{seq}.sqlite3"));
        let copy = {
            let (source, file) = (store::log_path(&self.dir), file.clone());
            tokio::task::spawn_blocking(move || copy_log(&source, &file)).await
        };
        match copy {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return tracing::warn!(error = %e, seq, "copying the log for a snapshot"),
            Err(e) => return tracing::warn!(error = %e, seq, "copying the log for a snapshot"),
        }
        self.storing.store(true, Ordering::Release);
        let (bucket, stream, storing) = (
            self.bucket.clone(),
            self.stream.clone(),
            self.storing.clone(),
        );
        tokio::spawn(async move {
            // A store that never ends (a JetStream request lost under load) must not stop
            // every later snapshot: give up on it and let the next one try again. The stream
            // is only purged after a store completed, so an abandoned one purges nothing.
            let stored =
                tokio::time::timeout(STORE_LIMIT, store_and_compact(&bucket, &stream, &file, seq))
                    .await;
            match stored {
                Ok(Ok(purged)) => tracing::info!(seq, purged, "stored a log snapshot"),
                Ok(Err(e)) => tracing::warn!(error = %e, seq, "storing a log snapshot"),
                Err(_) => tracing::warn!(
                    seq,
                    limit_s = STORE_LIMIT.as_secs(),
                    "storing a log snapshot took too long: abandoned, the next snapshot tries again"
                ),
            }
            let _ = std::fs::remove_file(&file);
            storing.store(false, Ordering::Release);
        });
    }
}

/// A consistent copy of the log (a read transaction sees only committed blocks).
fn copy_log(source: &Path, file: &Path) -> Result<(), LogError> {
    let _ = std::fs::remove_file(file);
    let conn = rusqlite::Connection::open_with_flags(
        source,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute("VACUUM INTO ?1", [file.to_string_lossy()])?;
    Ok(())
}

/// Stores the snapshot of `seq`, then purges the stream up to the previous snapshot and
/// deletes the ones before it. Returns the last purged stream sequence (0 if none).
async fn store_and_compact(
    bucket: &object_store::ObjectStore,
    stream: &stream::Stream,
    file: &Path,
    seq: u64,
) -> Result<u64, LogError> {
    let mut data = tokio::fs::File::open(file)
        .await
        .map_err(|source| LogError::Dir {
            dir: file.to_path_buf(),
            source,
        })?;
    bucket
        .put(object_name(seq).as_str(), &mut data)
        .await
        .map_err(|e| nats_error(&format!("storing snapshot {seq}"), e))?;
    let seqs = stored(bucket).await?;
    // The newest snapshot and the one before it stay; the stream keeps what follows the
    // older of the two, so a node that just loaded it, or lags by less than one snapshot
    // interval, still finds every message it needs.
    let Some(&previous) = seqs.get(1) else {
        return Ok(0);
    };
    stream
        .purge()
        .sequence(previous + 1)
        .await
        .map_err(|e| nats_error(&format!("purging the log stream up to {previous}"), e))?;
    for old in &seqs[2..] {
        bucket
            .delete(object_name(*old))
            .await
            .map_err(|e| nats_error(&format!("deleting snapshot {old}"), e))?;
    }
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_sort_and_parse_back() {
        assert_eq!(seq_of(&object_name(42)), Some(42));
        assert!(object_name(9) < object_name(10));
        assert_eq!(seq_of("other"), None);
    }
}
