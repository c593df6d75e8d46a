//! What to acknowledge upstream, and when. Kept apart from I/O so the rules are testable:
//!
//! - `flush` is the end LSN of the last commit that is durable in our log — never the commit's
//!   start LSN (Postgres would replay that transaction) and never a received-but-not-durable one;
//! - while no transaction is open and everything received is durable, a keepalive's WAL end may
//!   be acknowledged too, so an idle slot (published tables quiet, others busy) keeps advancing.

use super::Lsn;

#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    received: Lsn,
    flushed: Lsn,
    in_transaction: bool,
    /// A commit was received but is not durable in the log yet.
    undurable_commit: bool,
}

impl AckTracker {
    /// Starts from the position the log already holds.
    pub fn new(durable: Lsn) -> AckTracker {
        AckTracker {
            received: durable,
            flushed: durable,
            ..AckTracker::default()
        }
    }

    pub fn on_begin(&mut self) {
        self.in_transaction = true;
    }

    /// The commit of a transaction that will be appended to the log.
    pub fn on_commit(&mut self, end: Lsn) {
        self.in_transaction = false;
        self.undurable_commit = true;
        self.received = self.received.max(end);
    }

    /// The commit of a transaction the log already had (replayed after a restart).
    pub fn on_skipped_commit(&mut self, end: Lsn) {
        self.in_transaction = false;
        self.received = self.received.max(end);
        if !self.undurable_commit {
            self.flushed = self.flushed.max(end);
        }
    }

    /// Everything received up to `end` is now durable in the log.
    pub fn on_durable(&mut self, end: Lsn) {
        self.undurable_commit = false;
        self.flushed = self.flushed.max(end);
    }

    pub fn on_keepalive(&mut self, wal_end: Lsn) {
        self.received = self.received.max(wal_end);
        if !self.in_transaction && !self.undurable_commit {
            self.flushed = self.flushed.max(wal_end);
        }
    }

    /// Upstream may forget WAL up to here.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// What we have seen of the WAL.
    pub fn received(&self) -> Lsn {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_only_durable_commit_ends() {
        let mut ack = AckTracker::new(Lsn(100));
        ack.on_begin();
        ack.on_commit(Lsn(200));
        assert_eq!(ack.flushed(), Lsn(100));
        ack.on_durable(Lsn(200));
        assert_eq!(ack.flushed(), Lsn(200));
    }

    #[test]
    fn keepalive_advances_only_when_nothing_is_pending() {
        let mut ack = AckTracker::new(Lsn(100));
        ack.on_keepalive(Lsn(150));
        assert_eq!(ack.flushed(), Lsn(150));
        ack.on_begin();
        ack.on_keepalive(Lsn(300));
        assert_eq!(ack.flushed(), Lsn(150), "transaction open");
        ack.on_commit(Lsn(310));
        ack.on_keepalive(Lsn(320));
        assert_eq!(ack.flushed(), Lsn(150), "commit not durable yet");
        ack.on_durable(Lsn(310));
        ack.on_keepalive(Lsn(330));
        assert_eq!(ack.flushed(), Lsn(330));
        assert_eq!(ack.received(), Lsn(330));
    }

    #[test]
    fn never_goes_backwards() {
        let mut ack = AckTracker::new(Lsn(500));
        ack.on_keepalive(Lsn(400));
        ack.on_skipped_commit(Lsn(450));
        ack.on_durable(Lsn(480));
        assert_eq!(ack.flushed(), Lsn(500));
    }

    #[test]
    fn skipped_commits_do_not_flush_past_pending_ones() {
        let mut ack = AckTracker::new(Lsn(100));
        ack.on_begin();
        ack.on_commit(Lsn(200));
        ack.on_skipped_commit(Lsn(250));
        assert_eq!(ack.flushed(), Lsn(100));
    }
}
