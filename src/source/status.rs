//! What a source reports about itself: connection, positions, errors, initial copy.

use serde::Serialize;
use tokio::sync::watch;

/// What `/v1/status` and `/readyz` say about one source.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SourceStatus {
    pub name: String,
    pub kind: &'static str,
    pub connected: bool,
    /// The position durable in the log (Postgres: end LSN of the last logged commit).
    pub position: Option<String>,
    /// The upstream's newest position as last reported to us (Postgres: WAL end).
    pub upstream_position: Option<String>,
    /// Bytes of upstream history not yet durable in the log, when known.
    pub lag_bytes: Option<u64>,
    pub slot: Option<String>,
    pub last_error: Option<String>,
    /// What kind of problem `last_error` is: `configuration` (a rejected login, a missing
    /// privilege or database: the operator must act; retried meanwhile), `blocked` (the source
    /// cannot pass an upstream event; the error says the fix; retried meanwhile) or
    /// `transient`.
    pub last_error_kind: Option<&'static str>,
    pub reconnects: u64,
    /// The copy of rows that existed before streaming began (first start, added tables).
    pub initial_copy: CopyProgress,
    /// Configured tables this source cannot sync (the others flow), each with the fix.
    pub unsynced_tables: Vec<UnsyncedTable>,
    /// Since when (Unix ms) the log has lacked something upstream committed: the commit time
    /// of the oldest change not yet in the log, or when the source found itself behind or
    /// lost its connection. `None`: caught up. See [`SourceStatus::lag_ms`].
    #[serde(skip)]
    pub behind_since_ms: Option<u64>,
}

/// A configured table the source skips, why, and what to do; fixed upstream, it syncs after a
/// restart.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnsyncedTable {
    pub table: String,
    pub problem: String,
    pub fix: String,
}

/// Where a source's initial copy stands; `/readyz` waits for `state == Done`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CopyProgress {
    pub state: CopyState,
    pub tables_total: usize,
    pub tables_done: usize,
    /// The table being copied now.
    pub current: Option<String>,
    pub rows_copied: u64,
    /// The server's estimate of the rows to copy in all (Postgres: `pg_class.reltuples`).
    pub rows_estimated: Option<u64>,
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Not known yet (the source has not connected since start).
    #[default]
    Pending,
    Copying,
    Done,
}

impl SourceStatus {
    /// How far (ms) the log is behind this source now; 0 when caught up.
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        self.behind_since_ms
            .map_or(0, |since| now_ms.saturating_sub(since))
    }

    /// The log lacks something committed upstream at `since_ms` (or earlier, if already
    /// known to lag).
    pub fn note_behind(&mut self, since_ms: u64) {
        let since = self.behind_since_ms.map_or(since_ms, |s| s.min(since_ms));
        self.behind_since_ms = Some(since);
    }

    /// The log holds everything upstream has committed.
    pub fn note_caught_up(&mut self) {
        self.behind_since_ms = None;
    }

    /// Why this source is not ready to serve complete data, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.connected {
            return Some(match &self.last_error {
                Some(e) => format!("source {} is not connected: {e}", self.name),
                None => format!("source {} is not connected yet", self.name),
            });
        }
        match self.initial_copy.state {
            CopyState::Done => None,
            CopyState::Pending => Some(format!(
                "source {} has not started its initial copy yet",
                self.name
            )),
            CopyState::Copying => Some(format!(
                "source {} is copying existing rows ({} of {} tables, {} rows so far)",
                self.name,
                self.initial_copy.tables_done,
                self.initial_copy.tables_total,
                self.initial_copy.rows_copied
            )),
        }
    }
}

/// Now, in Unix milliseconds (the clock freshness is measured on).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How far (ms) the log is behind its slowest source now; 0 when every source is caught up.
pub fn log_lag_ms(sources: &[watch::Receiver<SourceStatus>]) -> u64 {
    let now = now_ms();
    sources
        .iter()
        .map(|s| s.borrow().lag_ms(now))
        .max()
        .unwrap_or(0)
}

/// A session's view of [`SourceStatus::behind_since_ms`]: it publishes only changes that
/// matter (a step of at least 50 ms, or caught up), not one per upstream transaction.
pub struct Freshness {
    since: Option<u64>,
}

impl Freshness {
    pub fn new(status: &watch::Sender<SourceStatus>) -> Freshness {
        Freshness {
            since: status.borrow().behind_since_ms,
        }
    }

    /// Something upstream committed at `commit_ms` (Unix ms) is not in the log yet.
    pub fn behind(&mut self, status: &watch::Sender<SourceStatus>, commit_ms: u64) {
        let at = commit_ms.min(now_ms());
        if self.since.map_or(true, |since| at + 50 < since) {
            self.since = Some(at);
            status.send_modify(|s| s.behind_since_ms = Some(at));
        }
    }

    /// The log now holds everything received; `more` when upstream has more still (its
    /// commit times unknown yet: behind since now).
    pub fn committed(&mut self, status: &watch::Sender<SourceStatus>, more: bool) {
        if more {
            let now = now_ms();
            self.since = Some(now);
            status.send_modify(|s| s.behind_since_ms = Some(now));
        } else {
            self.caught_up(status);
        }
    }

    /// The log holds everything upstream has committed.
    pub fn caught_up(&mut self, status: &watch::Sender<SourceStatus>) {
        if self.since.take().is_some() {
            status.send_modify(SourceStatus::note_caught_up);
        }
    }
}

/// Whether the relay is ready to serve (what `/readyz` and systemd's READY=1 wait for);
/// otherwise one reason per source that is not.
pub fn all_ready(sources: &[watch::Receiver<SourceStatus>]) -> Result<(), Vec<String>> {
    let reasons: Vec<String> = sources
        .iter()
        .filter_map(|s| s.borrow().not_ready_reason())
        .collect();
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}
