//! `GET /v1/stream`: Server-Sent Events. Frames what [`crate::log::Follower`] hands out (the
//! replay from the client's cursor, `event: ready`, then live commits): the log owns the
//! hand-off and its positions; this module owns the framing and the client's pace.
//!
//! The body is pulled by the connection, so a client that stops reading stops its own stream
//! and nothing else.
//!
//! Memory per slow client is bounded too: at most `CHUNKS_IN_FLIGHT` chunks are handed to the
//! connection and not yet written to its socket (each chunk holds a permit until the
//! connection drops it), and a stream that has to wait for its client lets go of the log page
//! it was replaying and reads on from `pos` once the client has caught up. Without this, the
//! connection buffers hundreds of KiB and the stream a whole page per silent client.

use super::auth::{Caller, StreamSlot};
use super::error::ApiError;
use super::params::{self, RawParams, Since};
use super::shape;
use super::{check_snapshot, SharedState};
use crate::log::{follow, Cursor, FollowEnd, Followed, Follower, ReadFrom};
use crate::sse::{self, ChangeEvent};
use crate::telemetry;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A body chunk is handed to the connection once it holds this much.
const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks handed to the connection and not yet written to its socket, per stream.
const CHUNKS_IN_FLIGHT: usize = 1;
/// A replaying stream whose client has taken nothing for this long lets go of its page.
const PATIENCE: Duration = Duration::from_millis(100);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// After `ready`, an `event: heartbeat` this often, with the log head and `lag_ms`.
const HEARTBEAT: Duration = Duration::from_secs(15);
const RETRY_MS: u32 = 2000;

pub async fn stream(
    State(shared): State<SharedState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_parameter("query string", e.body_text()))?;
    let raw = RawParams::from_pairs(pairs)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_parameter("Last-Event-ID", "not a cursor"))?
                .to_string(),
        ),
        None => None,
    };
    let since = match last_event_id
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        Some(id) => params::parse_since("Last-Event-ID", Some(id))?,
        None => params::parse_since("since", raw.since.as_deref())?,
    };
    let collections = params::parse_collections(raw.collections.as_deref())?;
    let filter = shared.gate.filter(&caller, collections.as_deref())?;
    shared.check_request(&since, collections.as_deref()).await?;
    let filter = Arc::new(shape::shaped(shared.log(), filter, collections.as_deref(), &raw).await?);
    let slot = shared.gate.open_stream(&caller)?;

    let from = match &since {
        Since::Start => ReadFrom::Seq(0),
        Since::Cursor(cursor) => ReadFrom::Seq(cursor.seq),
        Since::Time(time) => ReadFrom::CommitTime(time.clone()),
    };
    let follower = shared.log().follow(from, filter).await?;
    if let (Since::Cursor(cursor), Some((purged_seq, head_seq))) = (&since, follower.first_bounds())
    {
        check_snapshot(cursor, purged_seq, head_seq)?;
    }

    let subscriber = Subscriber::new(shared.clone(), slot);
    let body = events(subscriber, follower);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Counts an open stream while it lives, and holds its limit slot.
struct Subscriber {
    shared: SharedState,
    _slot: StreamSlot,
}

impl Subscriber {
    fn new(shared: SharedState, slot: StreamSlot) -> Subscriber {
        let now = shared.subscribers.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(telemetry::SSE_SUBSCRIBERS).set(now as f64);
        Subscriber {
            shared,
            _slot: slot,
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let now = self.shared.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(telemetry::SSE_SUBSCRIBERS).set(now as f64);
    }
}

/// A chunk on its way to the client: its permit returns when the connection has written it
/// (and dropped it).
struct Chunk {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Limits the chunks of one stream that are not written yet.
struct InFlight(Arc<Semaphore>);

impl InFlight {
    fn new() -> InFlight {
        InFlight(Arc::new(Semaphore::new(CHUNKS_IN_FLIGHT)))
    }

    /// `bytes` as a chunk that holds a permit, waiting as long as the client needs.
    async fn track(&self, bytes: Bytes) -> Bytes {
        let permit = self.0.clone().acquire_owned().await.ok();
        chunk(bytes, permit)
    }

    /// A permit for the next chunk, unless the client has not taken the earlier ones within
    /// PATIENCE (its socket is full), so the caller can let go of what it holds first. (The
    /// connection writes what it has whenever the stream waits, so a reading client frees a
    /// permit at once.)
    async fn permit_soon(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(PATIENCE, self.0.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// `bytes` holding `permit` until the connection drops it. (The semaphore is never closed;
/// were it, an untracked chunk is still correct.)
fn chunk(bytes: Bytes, permit: Option<OwnedSemaphorePermit>) -> Bytes {
    match permit {
        Some(permit) => Bytes::from_owner(Chunk {
            bytes,
            _permit: permit,
        }),
        None => bytes,
    }
}

/// The event stream's output: what is gathered for the next chunk.
struct Out {
    buf: BytesMut,
    /// A live event shared with every other subscriber, held as is while it is the only thing
    /// to send (the usual case for a live commit), so that it is sent without a copy.
    shared: Option<Bytes>,
    epoch: u32,
    /// Events gathered since the last `take`, and the counter they are added to (looked up
    /// once per stream rather than by name for every chunk).
    sent: u64,
    events_sent: metrics::Counter,
}

impl Out {
    fn new(epoch: u32) -> Out {
        Out {
            buf: BytesMut::new(),
            shared: None,
            epoch,
            sent: 0,
            events_sent: metrics::counter!(telemetry::SSE_EVENTS_SENT),
        }
    }

    /// A change read from the log (replay and catch-up).
    fn change(&mut self, seq: u64, json: &str) {
        self.unshare();
        let cursor = Cursor {
            epoch: self.epoch,
            seq,
        }
        .to_string();
        self.buf
            .reserve(json.len() + cursor.len() + sse::CHANGE_OVERHEAD);
        sse::change_head(&mut self.buf, &cursor);
        self.buf.put_slice(json.as_bytes());
        sse::change_end(&mut self.buf);
        self.sent += 1;
    }

    /// A change from the live broadcast, already framed by the log writer.
    fn event(&mut self, event: &ChangeEvent) {
        self.sent += 1;
        if self.is_empty() {
            self.shared = Some(event.bytes().clone());
        } else {
            self.put(event.bytes());
        }
    }

    /// Anything else: the `retry` line, `ready`, comments.
    fn put(&mut self, bytes: &[u8]) {
        self.unshare();
        self.buf.put_slice(bytes);
    }

    /// Moves a held shared event into the buffer, before something is added after it.
    fn unshare(&mut self) {
        if let Some(shared) = self.shared.take() {
            self.buf.put_slice(&shared);
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.shared.is_none()
    }

    /// Room for a whole chunk at once, so that a replay chunk is one allocation of about
    /// CHUNK_BYTES rather than one grown by doubling. (Live events are small: they skip it.)
    fn reserve_chunk(&mut self) {
        self.unshare();
        self.buf.reserve(CHUNK_BYTES + 8 * 1024);
    }

    fn full(&self) -> bool {
        self.buf.len() + self.shared.as_ref().map_or(0, Bytes::len) >= CHUNK_BYTES
    }

    /// Hands everything over. Leaving nothing behind (rather than the unused rest of the
    /// allocation, as `split` would) is what keeps an idle live stream at a few hundred bytes.
    fn take(&mut self) -> Bytes {
        if self.sent > 0 {
            self.events_sent.increment(self.sent);
            self.sent = 0;
        }
        match self.shared.take() {
            Some(shared) => shared,
            None => std::mem::take(&mut self.buf).freeze(),
        }
    }
}

fn events(
    subscriber: Subscriber,
    mut follower: Follower,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    async_stream::stream! {
        let shared = subscriber.shared.clone();
        let mut shutdown = shared.shutdown.clone();
        let mut out = Out::new(shared.log().epoch());
        out.put(format!("retry: {RETRY_MS}\n\n").as_bytes());
        let in_flight = InFlight::new();
        let mut quiet_since = Instant::now();
        let heartbeat_every = heartbeat_interval();
        // Set at `ready`: from then on the heartbeat (every 15 s, busy or not) keeps the
        // connection alive instead of the keep-alive comment.
        let mut next_heartbeat: Option<Instant> = None;
        let end = loop {
            let quiet_until = next_heartbeat.unwrap_or(quiet_since + KEEP_ALIVE);
            let woke = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
                _ = tokio::time::sleep_until(quiet_until), if next_heartbeat.is_some() => Wake::Quiet,
                followed = follower.next() => Wake::Next(followed),
                _ = tokio::time::sleep_until(quiet_until) => Wake::Quiet,
            };
            let followed = match woke {
                Wake::Stop => break None,
                Wake::Quiet if next_heartbeat.is_some() => {
                    next_heartbeat = Some(Instant::now() + heartbeat_every);
                    out.put(freshness_event("heartbeat", &shared).as_bytes());
                    yield Ok(in_flight.track(out.take()).await);
                    continue;
                }
                Wake::Quiet => {
                    quiet_since = Instant::now();
                    out.put(b": keep-alive\n\n");
                    yield Ok(out.take());
                    continue;
                }
                Wake::Next(followed) => followed,
            };
            match followed {
                Followed::Page { entries, more } => {
                    // When the client is behind, let go of the page and read on from the last
                    // entry sent once it has caught up, rather than hold the page meanwhile; that
                    // next page is about what the client took, so that a slow client does not
                    // make the stream read much more than it sends.
                    let mut behind = false;
                    out.reserve_chunk();
                    for (taken, entry) in entries.iter().enumerate() {
                        out.change(entry.seq, &entry.record);
                        if out.full() {
                            let Some(permit) = in_flight.permit_soon().await else {
                                behind = true;
                                follower.taken(entry.seq, (taken + 1).clamp(16, follow::REPLAY_PAGE));
                                break;
                            };
                            yield Ok(chunk(out.take(), Some(permit)));
                            out.reserve_chunk();
                        }
                    }
                    drop(entries);
                    if behind || !more {
                        yield Ok(in_flight.track(out.take()).await);
                    }
                    if stopping(&shutdown) {
                        break None;
                    }
                }
                Followed::Ready { seq } => {
                    let cursor = Cursor { epoch: out.epoch, seq };
                    let lag_ms = crate::source::log_lag_ms(&shared.app.sources);
                    out.put(format!("id: {cursor}\nevent: ready\ndata: {{\"cursor\":\"{cursor}\",\"lag_ms\":{lag_ms}}}\n\n").as_bytes());
                    yield Ok(in_flight.track(out.take()).await);
                    quiet_since = Instant::now();
                    next_heartbeat = Some(Instant::now() + heartbeat_every);
                }
                Followed::Live(commit) => {
                    for event in commit.events() {
                        out.event(&event);
                        if out.full() {
                            yield Ok(in_flight.track(out.take()).await);
                        }
                    }
                    drop(commit);
                    if !out.is_empty() {
                        quiet_since = Instant::now();
                        yield Ok(in_flight.track(out.take()).await);
                    }
                }
                Followed::Ended(end) => break Some(end),
            }
        };
        match end {
            Some(FollowEnd::Expired) => out.put(b": the log was reset or purged past this stream's position; reconnect to start over\n\n"),
            // The client reconnects (EventSource does) and resumes from its last event.
            Some(FollowEnd::ReadFailed(_)) => out.put(b": the relay could not read its log; reconnect\n\n"),
            Some(FollowEnd::Closed) | None => {}
        }
        if !out.is_empty() {
            yield Ok(out.take());
        }
        drop(subscriber);
    }
}

/// `event: heartbeat` (no `id`: the head is not a position this stream has delivered up to)
/// with the log's head cursor and how far the log is behind its slowest source.
fn freshness_event(name: &str, shared: &SharedState) -> String {
    let head = shared.cursor(*shared.log().head().borrow());
    let lag_ms = crate::source::log_lag_ms(&shared.app.sources);
    format!("event: {name}\ndata: {{\"cursor\":\"{head}\",\"lag_ms\":{lag_ms}}}\n\n")
}

/// 15 s; tests shorten it with `DELTARELAY_TEST_HEARTBEAT_MS` (read once).
fn heartbeat_interval() -> Duration {
    static INTERVAL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *INTERVAL.get_or_init(|| {
        std::env::var("DELTARELAY_TEST_HEARTBEAT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(HEARTBEAT, Duration::from_millis)
    })
}

fn stopping(shutdown: &tokio::sync::watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

enum Wake {
    Stop,
    Next(Followed),
    Quiet,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle live stream must hold no output buffer: `take` hands over the whole
    /// allocation, not just the written part (which would keep the rest alive with it).
    #[test]
    fn take_leaves_no_buffer_behind() {
        let mut out = Out::new(7);
        out.reserve_chunk();
        out.change(42, r#"{"op":"insert"}"#);
        let chunk = out.take();
        assert_eq!(
            &chunk[..],
            b"id: 7-42\nevent: change\ndata: {\"op\":\"insert\"}\n\n"
        );
        assert_eq!(out.buf.capacity(), 0, "the stream kept part of the buffer");
    }

    fn live_event(seq: u64) -> ChangeEvent {
        ChangeEvent::build::<()>(&format!("7-{seq}"), 0, |buf| {
            buf.extend_from_slice(format!(r#"{{"seq":{seq}}}"#).as_bytes());
            Ok(())
        })
        .unwrap()
    }

    /// A live commit's one event goes out as the very bytes the writer framed (shared by every
    /// subscriber, not copied); anything around it is gathered in order.
    #[test]
    fn a_lone_live_event_is_sent_without_a_copy() {
        let mut out = Out::new(7);
        let first = live_event(1);
        out.event(&first);
        let chunk = out.take();
        assert_eq!(
            chunk.as_ptr(),
            first.bytes().as_ptr(),
            "the event was copied"
        );
        assert!(out.is_empty());

        let second = live_event(2);
        out.put(b": before\n\n");
        out.event(&first);
        out.event(&second);
        out.put(b": after\n\n");
        let mut expected = b": before\n\n".to_vec();
        expected.extend_from_slice(first.bytes());
        expected.extend_from_slice(second.bytes());
        expected.extend_from_slice(b": after\n\n");
        assert_eq!(&out.take()[..], &expected[..]);

        out.event(&second);
        out.change(3, r#"{"seq":3}"#);
        let mut expected = second.bytes().to_vec();
        expected.extend_from_slice(b"id: 7-3\nevent: change\ndata: {\"seq\":3}\n\n");
        assert_eq!(&out.take()[..], &expected[..]);
        assert!(out.is_empty());
    }
}
