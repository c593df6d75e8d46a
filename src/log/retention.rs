//! Tombstone retention: deletes and truncates are dropped once they are older than
//! `log.tombstone_retention`, and cursors from before the newest dropped one expire (410).

use super::Log;
use crate::telemetry;
use crate::time::{pg_micros_to_rfc3339, pg_now_micros};
use std::time::Duration;
use tokio::sync::watch;

/// How often to look for expired tombstones: often enough that a tombstone outlives its
/// retention by at most a fraction of it, never more than hourly.
pub fn purge_interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// The stored (`commit_time`) form of the instant `retention` ago.
pub fn cutoff(retention: Duration) -> String {
    let micros = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    pg_micros_to_rfc3339(pg_now_micros().saturating_sub(micros))
}

/// Purges expired tombstones every [`purge_interval`] until `shutdown` turns true.
pub async fn run(log: Log, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut timer = tokio::time::interval(purge_interval(retention));
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match log.purge_tombstones(cutoff(retention)).await {
            Ok(0) => {}
            Ok(purged) => {
                metrics::counter!(telemetry::TOMBSTONES_PURGED).increment(purged as u64);
                tracing::info!(purged, retention = %humantime::format_duration(retention), "purged expired tombstones");
            }
            Err(e) => tracing::warn!(error = %e, "purging expired tombstones failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_a_quarter_of_the_retention_within_bounds() {
        assert_eq!(
            purge_interval(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(40)),
            Duration::from_secs(10)
        );
        assert_eq!(
            purge_interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn the_cutoff_is_in_the_stored_form() {
        let cut = cutoff(Duration::from_secs(86_400));
        assert_eq!(cut.len(), "2025-01-15T11:00:00.000000Z".len(), "{cut}");
        assert!(cut.ends_with('Z'));
        assert!(cut < cutoff(Duration::ZERO));
    }
}
