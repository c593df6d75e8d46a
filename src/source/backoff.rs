//! Reconnect delays: exponential, capped, with a little jitter so several relays restarted
//! together do not reconnect in lockstep.

use super::SourceStatus;
use std::time::Duration;
use tokio::sync::watch;

/// A session that streamed this long resets the reconnect backoff.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The delay before the next attempt; each call doubles the following one up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.2 * base.as_secs_f64();
        base + Duration::from_secs_f64(jitter)
    }

    /// After a connection that worked for a while, start again from `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The reconnect loop's step after a session that lasted `lasted` ended with `result`:
    /// `Some` ends the loop with it (a clean stop, or an error `is_fatal` says retrying cannot
    /// fix); `None` means the failure was reported (log, `status`) and the delay waited out, so
    /// connect again.
    pub async fn after_session<E: std::fmt::Display + Sync>(
        &mut self,
        result: Result<(), E>,
        is_fatal: impl Fn(&E) -> bool,
        lasted: Duration,
        status: &watch::Sender<SourceStatus>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Result<(), E>> {
        status.send_modify(|s| s.connected = false);
        let source = status.borrow().name.clone();
        let error = match result {
            Ok(()) => return Some(Ok(())),
            Err(e) if is_fatal(&e) => {
                tracing::error!(source = %source, error = %e, "source stopped");
                status.send_modify(|s| s.last_error = Some(e.to_string()));
                return Some(Err(e));
            }
            Err(e) => e,
        };
        if lasted > HEALTHY_SESSION {
            self.reset();
        }
        let delay = self.next_delay();
        tracing::warn!(source = %source, error = %error, retry_in = ?delay, "source session failed; reconnecting");
        status.send_modify(|s| {
            s.last_error = Some(error.to_string());
            s.reconnects += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            _ = wait_for_shutdown(shutdown) => Some(Ok(())),
        }
    }
}

/// Returns once `shutdown` is true or its sender is gone.
pub async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..=120).contains(&delays[0]), "{delays:?}");
        assert!((200..=240).contains(&delays[1]), "{delays:?}");
        assert!((350..=420).contains(&delays[2]), "{delays:?}");
        assert!((350..=420).contains(&delays[3]), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
