//! The one supervise loop every source runs under: a session, then (unless it ended cleanly
//! or for good) a report and a backoff delay, then the next session.
//!
//! A [`Source`] only has to run one session and say what kind its errors are; reconnect
//! delays, status reporting, logs and the bounded stop are the same for every kind.

use super::backoff::{wait_for_shutdown, Backoff};
use super::status::SourceStatus;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A session that streamed this long resets the reconnect backoff.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// How long a stopping session may take to commit what it holds before it is dropped (an
/// open copy is abandoned; it restarts from its stored position).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
const MIN_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What the supervisor does with a session's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Transient (network, server restart): reconnect after the backoff delay.
    Retry,
    /// The upstream refuses us (login, privilege, missing database): said loudly as a
    /// configuration error, in the log and `/v1/status`, and retried, since the operator may
    /// fix it upstream without restarting the relay.
    Config,
    /// The source reset its own state (upstream history lost): start again at once.
    Reset,
    /// The source cannot get past an upstream event until the operator acts (the error's
    /// message says how): said loudly, in the log and `/v1/status`, and retried with backoff.
    Blocked,
    /// Retrying cannot fix it: the source stops, and the relay with it.
    Fatal,
}

impl ErrorKind {
    fn label(self) -> &'static str {
        match self {
            ErrorKind::Config => "configuration",
            ErrorKind::Blocked => "blocked",
            _ => "transient",
        }
    }
}

/// One upstream source kind, as the supervisor drives it.
///
/// Contract: a session connects, catches up and streams into the log until `shutdown` turns
/// true (then it commits what it holds and returns `Ok`) or an error ends it. Positions only
/// move forward, and only after the log commit that holds them is durable.
pub trait Source: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Where this source reports its state (the supervisor updates connection and errors).
    fn status(&self) -> &watch::Sender<SourceStatus>;

    /// One session, from connecting to its end.
    fn session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// What the supervisor should do about `error`.
    fn classify(error: &Self::Error) -> ErrorKind;
}

/// Runs sessions of `source` until `shutdown` turns true (or its sender goes away), or an
/// error retrying cannot fix.
pub async fn supervise<S: Source>(
    mut source: S,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), S::Error> {
    let mut backoff = Backoff::new(MIN_DELAY, MAX_DELAY);
    let name = source.status().borrow().name.clone();
    loop {
        let started = Instant::now();
        let position = source.status().borrow().position.clone();
        let mut session_shutdown = shutdown.clone();
        let mut stop = shutdown.clone();
        let result = tokio::select! {
            r = source.session(&mut session_shutdown) => r,
            _ = async {
                wait_for_shutdown(&mut stop).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => Ok(()),
        };
        let status = source.status();
        status.send_modify(|s| {
            s.connected = false;
            // Whatever upstream commits from now on is not in the log until it reconnects.
            s.note_behind(super::now_ms());
        });
        let error = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let kind = S::classify(&error);
        status.send_modify(|s| {
            s.last_error = Some(error.to_string());
            s.last_error_kind = Some(kind.label());
        });
        match kind {
            ErrorKind::Fatal => {
                tracing::error!(source = %name, error = %error, "source stopped");
                return Err(error);
            }
            ErrorKind::Reset => continue,
            ErrorKind::Retry | ErrorKind::Config | ErrorKind::Blocked => {}
        }
        // A session that moved the log forward, or streamed for a while, was healthy however
        // it ended: the next outage starts from the shortest delay. (A session failing again
        // and again at the same position still backs off.)
        if started.elapsed() > HEALTHY_SESSION || source.status().borrow().position != position {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        if kind == ErrorKind::Blocked {
            tracing::error!(source = %name, error = %error, retry_in = ?delay, "source blocked; retrying meanwhile");
        } else if kind == ErrorKind::Config {
            tracing::error!(source = %name, error = %error, retry_in = ?delay,
                "CONFIGURATION ERROR: the upstream refuses the relay; fix the URL, role or grants (deltarelay check says more); retrying meanwhile");
        } else {
            tracing::warn!(source = %name, error = %error, retry_in = ?delay, "source session failed; reconnecting");
        }
        source.status().send_modify(|s| s.reconnects += 1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_for_shutdown(&mut shutdown) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug, thiserror::Error)]
    #[error("{0:?}")]
    struct Failed(ErrorKind);

    /// Fails with the given kinds in turn, then waits for shutdown.
    struct Scripted {
        status: watch::Sender<SourceStatus>,
        script: Vec<ErrorKind>,
        sessions: Arc<AtomicUsize>,
    }

    impl Source for Scripted {
        type Error = Failed;
        fn status(&self) -> &watch::Sender<SourceStatus> {
            &self.status
        }
        async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Failed> {
            self.sessions.fetch_add(1, Ordering::SeqCst);
            self.status.send_modify(|s| s.connected = true);
            if self.script.is_empty() {
                let _ = shutdown.wait_for(|stop| *stop).await;
                return Ok(());
            }
            Err(Failed(self.script.remove(0)))
        }
        fn classify(error: &Failed) -> ErrorKind {
            error.0
        }
    }

    fn scripted(script: Vec<ErrorKind>) -> (Scripted, Arc<AtomicUsize>) {
        let sessions = Arc::new(AtomicUsize::new(0));
        let status = SourceStatus {
            name: "s".into(),
            ..SourceStatus::default()
        };
        let source = Scripted {
            status: watch::channel(status).0,
            script,
            sessions: sessions.clone(),
        };
        (source, sessions)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_config_errors_loudly_and_stops_on_fatal_ones() {
        let (source, sessions) =
            scripted(vec![ErrorKind::Retry, ErrorKind::Config, ErrorKind::Fatal]);
        let status = source.status.subscribe();
        let (_stop, shutdown) = watch::channel(false);
        let ended = supervise(source, shutdown).await;
        assert!(matches!(ended, Err(Failed(ErrorKind::Fatal))));
        assert_eq!(sessions.load(Ordering::SeqCst), 3);
        let status = status.borrow();
        assert_eq!(status.reconnects, 2);
        assert_eq!(status.last_error_kind, Some("transient"));
        assert!(!status.connected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_error_is_reported_as_such_until_the_next_session() {
        let (source, sessions) = scripted(vec![ErrorKind::Config]);
        let mut status = source.status.subscribe();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(supervise(source, shutdown));
        status
            .wait_for(|s| s.last_error_kind == Some("configuration"))
            .await
            .unwrap();
        // The retry comes after the backoff delay; then the second session runs until stopped.
        status.wait_for(|s| s.connected).await.unwrap();
        assert_eq!(sessions.load(Ordering::SeqCst), 2);
        stop.send(true).unwrap();
        assert!(task.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_starts_the_next_session_at_once() {
        let (source, sessions) = scripted(vec![ErrorKind::Reset, ErrorKind::Fatal]);
        let (_stop, shutdown) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let _ = supervise(source, shutdown).await;
        assert_eq!(sessions.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() < MIN_DELAY, "no backoff after a reset");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_backoff_delay_ends_cleanly() {
        let (source, _) = scripted(vec![ErrorKind::Retry; 100]);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(supervise(source, shutdown));
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.send(true).unwrap();
        assert!(task.await.unwrap().is_ok());
    }
}
