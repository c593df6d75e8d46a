//! How far the source has logged upstream's WAL: the hand-off between the replication session
//! (which moves it) and the writer (which waits on it for read-your-writes).

use super::super::Lsn;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How often a waiter asks the session to ask Postgres where its WAL stands.
const NUDGE_EVERY: Duration = Duration::from_millis(50);

/// Every upstream commit that ends at or before `through` is in the log.
pub struct LoggedThrough {
    through: watch::Sender<Lsn>,
    /// A waiter wants a fresh answer: the session requests a keepalive from Postgres, whose
    /// WAL position tells how far decoding has come when nothing is in flight.
    nudge: Notify,
}

impl Default for LoggedThrough {
    fn default() -> Self {
        LoggedThrough {
            through: watch::channel(Lsn(0)).0,
            nudge: Notify::new(),
        }
    }
}

impl LoggedThrough {
    /// The session: everything upstream up to `lsn` is logged (only ever moves forward).
    pub fn advance(&self, lsn: Lsn) {
        self.through.send_if_modified(|through| {
            let moved = lsn > *through;
            if moved {
                *through = lsn;
            }
            moved
        });
    }

    /// The session: resolves when a waiter asks for a fresh position.
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// The writer: `true` once everything up to `lsn` is logged, `false` after `timeout`.
    pub async fn wait(&self, lsn: Lsn, timeout: Duration) -> bool {
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
        assert!(!logged.wait(Lsn(10), Duration::from_secs(1)).await);
        let session = logged.clone();
        tokio::spawn(async move {
            session.nudged().await;
            session.advance(Lsn(5));
            session.advance(Lsn(12));
        });
        assert!(logged.wait(Lsn(10), Duration::from_secs(5)).await);
        logged.advance(Lsn(3));
        assert!(logged.wait(Lsn(12), Duration::from_millis(1)).await);
    }
}
