//! What a test can make the server do: faults on chosen commands, a held split event, an older
//! version, a step-down, idle cursor timeouts. Each knob is a field of [`Faults`] set through a
//! method of [`MongoWire`]; the command handlers read them.

use super::commands::error;
use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hold {
    Never,
    /// After a fragment that is not the last of a split event (the batch ends there).
    BetweenFragments,
    /// After any batch that holds an event.
    AfterEvents,
}

pub(super) struct Faults {
    /// The next `n` change-stream `getMore`s fail with a resumable error.
    pub change_getmore_errors: u32,
    /// The next `n` `getMore`s of `find` cursors fail (a network-level error the driver does not
    /// retry on a cursor).
    pub find_getmore_errors: u32,
    /// Where change streams are held: their next `getMore` waits until released (like
    /// `failCommand` with `blockConnection`).
    pub hold: Hold,
    /// `getMore`s waiting on a held cursor right now.
    pub held_getmores: u32,
    /// `buildInfo`'s version (`$changeStreamSplitLargeEvent` exists from 6.0.9 / 7.0).
    pub version: [i32; 3],
    /// Stepped down: `hello` says secondary, writes fail with NotWritablePrimary (10107) and
    /// open change-stream `getMore`s with InterruptedDueToReplStateChange (11602).
    pub secondary: bool,
    /// Cursors idle for longer are killed (their next `getMore` gets CursorNotFound, 43).
    pub cursor_timeout: Option<Duration>,
    /// An idle primary writes a no-op to the oplog this often (`periodicNoopIntervalSecs`), so
    /// that `postBatchResumeToken`s move on an idle cluster.
    pub noop_interval: Duration,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            change_getmore_errors: 0,
            find_getmore_errors: 0,
            hold: Hold::Never,
            held_getmores: 0,
            version: [7, 0, 0],
            secondary: false,
            cursor_timeout: None,
            noop_interval: Duration::from_secs(10),
        }
    }
}

impl MongoWire {
    /// The next `n` change-stream `getMore`s fail with a resumable error.
    pub fn fail_change_stream_getmores(&self, n: u32) {
        self.shared.lock().faults.change_getmore_errors = n;
    }

    /// The next `n` `getMore`s on `find` cursors (a copy in progress) fail.
    pub fn fail_find_getmores(&self, n: u32) {
        self.shared.lock().faults.find_getmore_errors = n;
    }

    /// Find-cursor faults not met yet.
    pub fn find_getmore_faults_left(&self) -> u32 {
        self.shared.lock().faults.find_getmore_errors
    }

    /// Holds change streams as `hold` says; [`Hold::Never`] releases them.
    pub fn hold_change_streams(&self, hold: Hold) {
        self.shared.lock().faults.hold = hold;
    }

    /// `getMore`s waiting between two fragments right now.
    pub fn held_getmores(&self) -> u32 {
        self.shared.lock().faults.held_getmores
    }

    /// The version `buildInfo` reports, e.g. `[6, 0, 5]` (no split events).
    pub fn set_version(&self, version: [i32; 3]) {
        self.shared.lock().faults.version = version;
    }

    /// Steps down (`true`: secondary, no primary) or up again.
    pub fn set_secondary(&self, secondary: bool) {
        self.shared.lock().faults.secondary = secondary;
        // Waiting getMores look at the state again.
        self.shared.head.send_modify(|_| {});
    }

    /// How often an idle server writes a no-op (10 s by default, as a real one).
    pub fn set_noop_interval(&self, every: Duration) {
        self.shared.lock().faults.noop_interval = every;
    }

    /// Kills cursors idle for longer than `timeout` (the server's `cursorTimeoutMillis`).
    pub fn set_cursor_timeout(&self, timeout: Duration) {
        self.shared.lock().faults.cursor_timeout = Some(timeout);
    }
}

pub(super) fn not_writable_primary() -> Document {
    let mut e = error(10107, "NotWritablePrimary", "not primary");
    e.insert("errorLabels", vec!["RetryableWriteError"]);
    e
}

pub(super) fn interrupted_by_step_down() -> Document {
    let mut e = error(
        11602,
        "InterruptedDueToReplStateChange",
        "operation was interrupted because the node stepped down",
    );
    e.insert("errorLabels", vec!["ResumableChangeStreamError"]);
    e
}

impl State {
    /// Removes cursors idle beyond the timeout, as the server's cursor monitor does.
    pub(super) fn expire_cursors(&mut self) {
        let Some(timeout) = self.faults.cursor_timeout else {
            return;
        };
        let now = Instant::now();
        self.cursor_used.retain(|id, used| {
            let alive = self.cursors_in_use.contains(id) || now.duration_since(*used) <= timeout;
            if !alive {
                self.cursors.remove(id);
            }
            alive
        });
    }
}

/// The periodic no-op writer of an idle primary. It looks at the interval every few
/// milliseconds, so that a test's shorter interval applies at once (sleeping the default
/// 10 s first made such a test depend on which ran first, it or this task).
pub(super) async fn write_noops(shared: Arc<Shared>) {
    let mut last_head = 0;
    let mut last_look = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let every = shared.lock().faults.noop_interval;
        if last_look.elapsed() < every {
            continue;
        }
        last_look = Instant::now();
        let mut state = shared.lock();
        if state.head == last_head && !state.faults.secondary {
            state.log(
                None,
                doc! {"op": "n", "o": {"msg": "periodic noop"}},
                None,
                None,
                None,
            );
            shared.head.send_replace(state.head);
        }
        last_head = state.head;
    }
}

/// Marks a cursor in use for as long as a `getMore` runs on it.
pub(super) struct InUse<'a> {
    shared: &'a Shared,
    id: i64,
}

impl<'a> InUse<'a> {
    pub(super) fn mark(shared: &'a Shared, id: i64) -> InUse<'a> {
        shared.lock().cursors_in_use.insert(id);
        InUse { shared, id }
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.cursors_in_use.remove(&self.id);
        state
            .cursor_used
            .entry(self.id)
            .and_modify(|t| *t = Instant::now());
    }
}
