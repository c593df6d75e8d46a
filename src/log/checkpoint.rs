//! WAL checkpoints on a thread of their own. Copying committed pages from the WAL into the
//! database file took 7–9 % of the log writer's time when SQLite did it inside the writer's
//! commits; here it overlaps with the writer's next transaction.
//!
//! The writer keeps a high `wal_autocheckpoint` as a safety valve: SQLite restarts the WAL only
//! after a checkpoint that caught up with the last commit, which under steady load is the
//! writer's own (cheap, as this thread has copied nearly everything already); it also bounds the
//! WAL if this thread falls behind or fails.

use super::store;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};

/// Wakes the checkpoint thread; the thread ends when this is dropped.
pub struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Opens its own connection to the log under `dir` and starts the thread.
    pub fn start(dir: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = store::open_for_checkpoints(dir)?;
        // One pending wake-up is enough: a checkpoint copies everything committed so far.
        let (wake, woken) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("log-checkpoint".into())
            .spawn(move || run(conn, woken));
        if let Err(e) = spawned {
            // Not fatal: the writer's own autocheckpoint still keeps the WAL bounded.
            tracing::warn!(error = %e, "cannot start the log checkpoint thread; the writer checkpoints itself");
        }
        Ok(Checkpointer { wake })
    }

    /// Asks for a checkpoint of everything committed so far (after each log commit).
    pub fn wake(&self) {
        // Full: a wake-up is already pending. Disconnected: the thread never started, and the
        // writer's own autocheckpoint does the work.
        let _ = self.wake.try_send(());
    }
}

fn run(conn: Connection, woken: Receiver<()>) {
    while woken.recv().is_ok() {
        if let Err(e) = checkpoint(&conn) {
            // A full disk or a busy lock: the WAL keeps every page, so nothing is lost; the next
            // commit wakes us again and the writer's valve still bounds the WAL.
            tracing::debug!(error = %e, "log checkpoint failed; will retry after the next commit");
        }
    }
}

/// A passive checkpoint: copies what it can without waiting for readers or the writer.
/// Returns the WAL's size in frames and how many of them are now in the database file.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_copies_committed_pages_beside_an_open_writer() {
        let dir = tempfile::tempdir().unwrap();
        let writer = store::open_for_writing(dir.path()).unwrap();
        writer
            .execute_batch(
                "CREATE TABLE t (x);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO t SELECT i FROM n;",
            )
            .unwrap();
        let conn = store::open_for_checkpoints(dir.path()).unwrap();
        let (frames, copied) = checkpoint(&conn).unwrap();
        assert!(frames > 0, "the commit left frames in the WAL");
        assert_eq!(
            copied, frames,
            "a passive checkpoint with no readers copies every frame"
        );
        // The writer's next transaction restarts the WAL from its beginning.
        writer.execute_batch("INSERT INTO t VALUES (0)").unwrap();
        let (after, _) = checkpoint(&conn).unwrap();
        assert!(
            after < frames,
            "WAL restarted: {after} frames, was {frames}"
        );
    }

    #[test]
    fn the_thread_ends_when_the_checkpointer_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let _writer = store::open_for_writing(dir.path()).unwrap();
        let checkpointer = Checkpointer::start(dir.path()).unwrap();
        checkpointer.wake();
        checkpointer.wake();
        drop(checkpointer);
    }
}
