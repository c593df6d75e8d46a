//! Following the log: replay from a position, catch up, then live commits, with no gap and no
//! duplicate at the hand-off. `/v1/stream` frames what a [`Follower`] hands out; it decides
//! nothing about positions.
//!
//! The broadcast is subscribed to before the first page is read, and `pos` (the seq up to which
//! every matching entry has been handed out) decides what a broadcast commit still has to
//! contribute. A follower that falls behind the broadcast (`Lagged`), sees a commit announced
//! without its records (too large to hold), or notices a hole goes back to reading the log from
//! `pos`. What a slow reader leaves behind is bounded by the broadcast channel's capacity,
//! shared by all followers.

use super::interest::InterestGuard;
use super::reader::{Page, ReadEntry, ReadFrom, RowFilter};
use super::shape_index::{Delivery, ShapedReceiver};
use super::writer::Prior;
use super::writer::{Committed, StoredRecord};
use super::{Log, LogError};
use crate::record::ChangeRecord;
use crate::shape::Previous;
use crate::sse::ChangeEvent;
use crate::telemetry;
use std::borrow::Cow;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

/// Entries read from the log per query while replaying or catching up.
pub const REPLAY_PAGE: usize = 1000;
/// ... and at most about this many bytes of records, so a page's memory is bounded.
pub const REPLAY_BYTES: usize = 64 * 1024;

/// What [`Follower::next`] hands out.
pub enum Followed {
    /// Entries read from the log, oldest first. `more`: another page follows before the
    /// follower goes live (so the caller may keep gathering output).
    Page { entries: Vec<ReadEntry>, more: bool },
    /// Caught up with the log for the first time: every matching entry up to `seq` was handed
    /// out. Comes once.
    Ready { seq: u64 },
    /// A live commit; its matching records are [`LiveCommit::records`].
    Live(LiveCommit),
    /// The end of following.
    Ended(FollowEnd),
}

/// Why following ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// The purge mark passed the position after following began (a reset source or purged
    /// tombstones not yet handed out): the client must start over (410 on reconnect).
    Expired,
    /// The log could not be read.
    ReadFailed(LogError),
    /// The log closed (the relay is stopping).
    Closed,
}

/// One live commit, as far as this follower has not handed it out yet.
pub struct LiveCommit {
    commit: Arc<Committed>,
    after: u64,
    filter: Arc<RowFilter>,
    /// The indexes of the only records that can concern this follower (its shape's index
    /// found them), or `None`: any of them.
    only: Option<Vec<u32>>,
}

impl LiveCommit {
    /// The commit's records after the follower's position that its filter lets through.
    pub fn records(&self) -> impl Iterator<Item = &StoredRecord> {
        let records = self.commit.records.as_deref().unwrap_or_default();
        let picked: Box<dyn Iterator<Item = &Arc<StoredRecord>> + Send + '_> = match &self.only {
            None => Box::new(records.iter()),
            Some(only) => Box::new(only.iter().filter_map(|&at| records.get(at as usize))),
        };
        picked.map(|record| &**record).filter(move |r| {
            r.seq > self.after && self.filter.allows(&r.collection, &r.scope, r.op)
        })
    }
}

impl LiveCommit {
    /// The events its follower sends for this commit: [`LiveCommit::records`]' events, each
    /// through the follower's shape when it has one.
    pub fn events(&self) -> impl Iterator<Item = Cow<'_, ChangeEvent>> {
        self.records()
            .filter_map(move |record| match self.filter.shape() {
                Some(shape) if record.collection == shape.collection => {
                    let previous = match &record.prior {
                        Prior::Unknown => Previous::Unknown,
                        Prior::Absent => Previous::Absent,
                        Prior::Row(row) => Previous::Row(row),
                    };
                    // The writer serialized it, so it parses; were it not to, sending it unshaped
                    // could show columns the shape leaves out.
                    let parsed: ChangeRecord = serde_json::from_slice(record.event.json()).ok()?;
                    let shaped = shape.apply(&parsed, previous)?;
                    let json = serde_json::to_vec(&shaped).ok()?;
                    let event = ChangeEvent::build::<std::convert::Infallible>(
                        &shaped.cursor,
                        json.len(),
                        |buf| {
                            buf.extend_from_slice(&json);
                            Ok(())
                        },
                    )
                    .ok()?;
                    Some(Cow::Owned(event))
                }
                _ => Some(Cow::Borrowed(&record.event)),
            })
    }
}

/// Where live commits come from.
enum Live {
    /// Every commit.
    All(broadcast::Receiver<Arc<Committed>>),
    /// The commits that concern this follower's shape (shape_index.rs): the ones it does not
    /// get held nothing for it, so a gap before a commit is no hole.
    Shaped(ShapedReceiver),
}

enum State {
    /// Read the log from `pos`, at most `limit` entries.
    Reading {
        limit: usize,
    },
    /// The page in hand is handed out next.
    Holding(Page),
    /// Read up to the head: live next (after `Ready`, the first time).
    CaughtUp,
    Live,
}

/// Replay, catch-up and live commits of the log after a position, for one reader.
pub struct Follower {
    log: Log,
    filter: Arc<RowFilter>,
    live: Live,
    /// Every matching entry with seq <= pos has been handed out.
    pos: u64,
    /// The purge mark when following began: only a later rise expires this follower.
    start_mark: u64,
    state: State,
    ready: bool,
    _interest: Option<InterestGuard>,
}

impl Follower {
    pub(super) async fn start(
        log: Log,
        from: ReadFrom,
        filter: Arc<RowFilter>,
    ) -> Result<Follower, LogError> {
        // Shaped: from now on the writer says what each changed row was before.
        let interest = filter
            .shape()
            .map(|shape| log.shapes.register(&shape.collection));
        // Subscribe first: every commit after the snapshot read below reaches `live`. A shaped
        // follower gets the commits that concern its shape from the index.
        let live = match filter.shape() {
            Some(shape) => Live::Shaped(log.shape_index.register(shape, || log.subscribe())),
            None => Live::All(log.subscribe()),
        };
        let pos = match &from {
            ReadFrom::Seq(seq) => *seq,
            ReadFrom::CommitTime(_) => 0,
        };
        let from_start = from == ReadFrom::Seq(0);
        let first = log
            .page(from, filter.clone(), REPLAY_PAGE, REPLAY_BYTES)
            .await?;
        // A replay from the start: the client holds nothing that the first snapshot had.
        let filter = match filter.shape() {
            Some(_) if from_start => Arc::new(filter.fresh_until(first.head_seq)),
            _ => filter,
        };
        Ok(Follower {
            log,
            filter,
            live,
            pos,
            start_mark: first.purged_seq,
            state: State::Holding(first),
            ready: false,
            _interest: interest,
        })
    }

    /// The first page's snapshot bounds, `(purged_seq, head_seq)`, before anything was handed
    /// out: a cursor outside them cannot be served.
    pub fn first_bounds(&self) -> Option<(u64, u64)> {
        match &self.state {
            State::Holding(page) => Some((page.purged_seq, page.head_seq)),
            _ => None,
        }
    }

    /// The caller handed out only the entries up to `seq` of the last page (its client is
    /// slow): read on from there, at most `limit` entries.
    pub fn taken(&mut self, seq: u64, limit: usize) {
        self.pos = seq;
        self.state = State::Reading {
            limit: limit.clamp(1, REPLAY_PAGE),
        };
    }

    fn expired(&self, mark: u64) -> bool {
        mark > self.pos && mark > self.start_mark
    }

    /// The next thing to hand out. Cancel-safe: dropped before it completes, nothing is lost
    /// (a page being read is read again).
    pub async fn next(&mut self) -> Followed {
        loop {
            match std::mem::replace(&mut self.state, State::Live) {
                State::Reading { limit } => {
                    let read = self.log.page(
                        ReadFrom::Seq(self.pos),
                        self.filter.clone(),
                        limit,
                        REPLAY_BYTES,
                    );
                    // Restored first, so that a cancelled read is simply read again.
                    self.state = State::Reading { limit };
                    match read.await {
                        Ok(page) => self.state = State::Holding(page),
                        Err(e) => return Followed::Ended(FollowEnd::ReadFailed(e)),
                    }
                }
                State::Holding(page) => {
                    if self.expired(page.purged_seq) {
                        return Followed::Ended(FollowEnd::Expired);
                    }
                    // Past the entries a shape left out, too.
                    self.pos = self.pos.max(page.scanned_seq);
                    let more = page.has_more;
                    self.state = if more {
                        State::Reading { limit: REPLAY_PAGE }
                    } else {
                        self.pos = self.pos.max(page.head_seq);
                        State::CaughtUp
                    };
                    if !page.entries.is_empty() {
                        return Followed::Page {
                            entries: page.entries,
                            more,
                        };
                    }
                }
                State::CaughtUp => {
                    self.state = State::Live;
                    if !self.ready {
                        self.ready = true;
                        return Followed::Ready { seq: self.pos };
                    }
                }
                State::Live => match self.next_commit().await {
                    Ok(((commit, only), complete)) => {
                        if self.expired(commit.purged_seq) {
                            return Followed::Ended(FollowEnd::Expired);
                        }
                        if commit.last_seq <= self.pos && complete {
                            continue;
                        }
                        if commit.records.is_some() && complete {
                            let after = std::mem::replace(&mut self.pos, commit.last_seq);
                            return Followed::Live(LiveCommit {
                                commit,
                                after,
                                filter: self.filter.clone(),
                                only,
                            });
                        }
                        // Too large to broadcast, or a hole before it: read the log.
                        self.fall_back();
                    }
                    Err(RecvError::Lagged(_)) => self.fall_back(),
                    Err(RecvError::Closed) => return Followed::Ended(FollowEnd::Closed),
                },
            }
        }
    }

    /// The next live commit, and whether everything the follower needs before it has been
    /// handed out (else it reads the log).
    async fn next_commit(&mut self) -> Result<(Delivery, bool), RecvError> {
        match &mut self.live {
            Live::All(live) => {
                let commit = live.recv().await?;
                let complete = commit.after_seq <= self.pos;
                Ok(((commit, None), complete))
            }
            Live::Shaped(live) => match live.recv().await {
                Some((delivery, lagged)) => Ok((delivery, !lagged)),
                None => Err(RecvError::Closed),
            },
        }
    }

    fn fall_back(&mut self) {
        metrics::counter!(telemetry::SSE_LOG_FALLBACKS).increment(1);
        self.state = State::Reading { limit: REPLAY_PAGE };
    }
}
