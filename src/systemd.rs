//! Running under systemd (`Type=notify`): READY=1 once every source is ready (the same test as
//! `/readyz`), watchdog pings when `WatchdogSec=` is set, STOPPING=1 on shutdown.
//! Outside systemd (`NOTIFY_SOCKET` unset) every function does nothing.

use crate::source::{all_ready, SourceStatus};
use sd_notify::NotifyState;
use std::time::Duration;
use tokio::sync::watch;

/// How often readiness is re-evaluated while waiting for it.
const READY_POLL: Duration = Duration::from_millis(200);

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Sends READY=1 once [`all_ready`] holds, or at once on a standby ingest node of the shared
/// log (it serves reads; its sources wait for the lease); gives up quietly on shutdown.
pub async fn notify_ready(
    sources: Vec<watch::Receiver<SourceStatus>>,
    role: watch::Receiver<crate::log::Role>,
    mut shutdown: watch::Receiver<bool>,
) {
    if !under_systemd() {
        return;
    }
    loop {
        // A standby of the shared log serves reads while its sources wait for the lease.
        let standby = *role.borrow() == crate::log::Role::Standby;
        if standby || all_ready(&sources).is_ok() {
            notify(&[NotifyState::Ready, NotifyState::Status("ready")]);
            tracing::info!("told systemd the relay is ready");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(READY_POLL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Pings the watchdog at half its period until shutdown. The pings come from the async
/// runtime, so a wedged runtime stops them and systemd restarts the relay.
pub async fn watchdog(mut shutdown: watch::Receiver<bool>) {
    let Some(usec) = watchdog_usec() else { return };
    let period = Duration::from_micros(usec / 2);
    tracing::info!(?period, "pinging the systemd watchdog");
    loop {
        notify(&[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The watchdog period systemd asked for. Like libsystemd's `sd_watchdog_enabled` (and unlike
/// the sd-notify crate, which needs both), `WATCHDOG_PID` only matters when it is set.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then_some(usec)
}

/// STOPPING=1: systemd then waits for the exit instead of treating it as a crash.
pub fn notify_stopping() {
    if under_systemd() {
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}
