//! How far a source has logged upstream: the hand-off between its session (which moves it) and
//! its writer (which waits on it for read-your-writes). Positions are source-native and ordered
//! as `u64` (Postgres: an LSN; MongoDB: a clusterTime as `seconds << 32 | increment`).

use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How often a waiter asks the session to ask Postgres where its WAL stands.
const NUDGE_EVERY: Duration = Duration::from_millis(50);

/// Every upstream commit that ends at or before `through` is in the log.
pub struct LoggedThrough {
    through: watch::Sender<u64>,
    /// A waiter wants a fresh answer: the session requests a keepalive from Postgres, whose
    /// WAL position tells how far decoding has come when nothing is in flight.
    nudge: Notify,
}

impl Default for LoggedThrough {
    fn default() -> Self {
        LoggedThrough {
            through: watch::channel(0).0,
            nudge: Notify::new(),
        }
    }
}

impl LoggedThrough {
    /// The session: everything upstream up to `lsn` is logged (only ever moves forward).
    pub fn advance(&self, lsn: u64) {
        self.through.send_if_modified(|through| {
            let moved = lsn > *through;
            if moved {
                *through = lsn;
            }
            moved
        });
    }

    /// The session: resolves when a waiter asks for a fresh position (Postgres: a keepalive).
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// The writer: `true` once everything up to `lsn` is logged, `false` after `timeout`.
    pub async fn wait(&self, lsn: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut through = self.through.subscribe();
        loop {
            if *through.borrow_and_update() >= lsn {
                return true;
            }
            self.nudge.notify_one();
            tokio::select! {
                _ = through.changed() => {}
                _ = tokio::time::sleep(NUDGE_EVERY) => {}
                _ = tokio::time::sleep_until(deadline) => return *through.borrow() >= lsn,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_until_advanced_or_timeout() {
        let logged = std::sync::Arc::new(LoggedThrough::default());
        assert!(!logged.wait(10, Duration::from_secs(1)).await);
        let session = logged.clone();
        tokio::spawn(async move {
            session.nudged().await;
            session.advance(5);
            session.advance(12);
        });
        assert!(logged.wait(10, Duration::from_secs(5)).await);
        logged.advance(3);
        assert!(logged.wait(12, Duration::from_millis(1)).await);
    }
}
