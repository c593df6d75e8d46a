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
    /// privilege or database: the operator must act; retried meanwhile) or `transient`.
    pub last_error_kind: Option<&'static str>,
    pub reconnects: u64,
    /// The copy of rows that existed before streaming began (first start, added tables).
    pub initial_copy: CopyProgress,
    /// Configured tables this source cannot sync (the others flow), each with the fix.
    pub unsynced_tables: Vec<UnsyncedTable>,
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
