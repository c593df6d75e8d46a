//! Reconnect delays: exponential, capped, with a little jitter so several relays restarted
//! together do not reconnect in lockstep.

use std::time::Duration;
use tokio::sync::watch;

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
