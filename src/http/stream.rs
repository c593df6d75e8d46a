//! `GET /v1/stream`: Server-Sent Events. Replays the log from the client's cursor, sends
//! `event: ready`, then follows the log's live broadcast.
//!
//! No gap and no duplicate at the hand-off: the broadcast is subscribed to before the log is
//! read, and `pos` (the seq up to which every matching entry has been sent) decides what a
//! broadcast commit still has to contribute. A subscriber that falls behind the broadcast
//! (`Lagged`), sees a commit announced without its records, or notices a hole goes back to
//! reading the log from `pos`. The body is pulled by the connection, so a client that stops
//! reading stops its own stream and nothing else; what it leaves behind is bounded by the
//! broadcast channel's capacity, shared by all subscribers.

use super::error::ApiError;
use super::params::{self, RawParams, Since};
use super::{check_snapshot, telemetry, SharedState};
use crate::log::reader::{Page, ReadFrom};
use crate::log::Committed;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// Entries read from the log per query while replaying or catching up.
const REPLAY_PAGE: usize = 1000;
/// A body chunk is handed to the connection once it holds this much.
const CHUNK_BYTES: usize = 64 * 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const RETRY_MS: u32 = 2000;

pub async fn stream(
    State(shared): State<SharedState>,
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
    let collections = params::parse_collections(raw.collections.as_deref())?.map(Arc::new);
    shared
        .check_request(&since, collections.as_deref().map(Vec::as_slice))
        .await?;

    // Subscribe first: every commit after the snapshot read below reaches `live`.
    let live = shared.log().subscribe();
    let from = match &since {
        Since::Start => ReadFrom::Seq(0),
        Since::Cursor(cursor) => ReadFrom::Seq(cursor.seq),
        Since::Time(time) => ReadFrom::CommitTime(time.clone()),
    };
    let first = read_page(&shared, from, collections.clone()).await?;
    if let Since::Cursor(cursor) = &since {
        check_snapshot(cursor, first.purged_seq, first.head_seq)?;
    }
    let start_seq = match &since {
        Since::Cursor(cursor) => cursor.seq,
        _ => 0,
    };

    let subscriber = Subscriber::new(shared.clone());
    let body = events(subscriber, live, first, start_seq, collections);
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

async fn read_page(
    shared: &SharedState,
    from: ReadFrom,
    collections: Option<Arc<Vec<String>>>,
) -> Result<Page, ApiError> {
    shared
        .readers
        .run(move |reader| {
            reader.page(
                &from,
                collections.as_deref().map(Vec::as_slice),
                REPLAY_PAGE,
            )
        })
        .await
}

/// Counts an open stream while it lives.
struct Subscriber {
    shared: SharedState,
}

impl Subscriber {
    fn new(shared: SharedState) -> Subscriber {
        let now = shared.subscribers.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(telemetry::SSE_SUBSCRIBERS).set(now as f64);
        Subscriber { shared }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let now = self.shared.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(telemetry::SSE_SUBSCRIBERS).set(now as f64);
    }
}

/// The event stream's output buffer.
struct Out {
    buf: BytesMut,
    epoch: u32,
    sent: u64,
}

impl Out {
    fn change(&mut self, seq: u64, json: &str) {
        self.buf.reserve(json.len() + 48);
        self.buf.put_slice(b"id: ");
        self.buf
            .put_slice(format!("{}-{}", self.epoch, seq).as_bytes());
        self.buf.put_slice(b"\nevent: change\ndata: ");
        self.buf.put_slice(json.as_bytes());
        self.buf.put_slice(b"\n\n");
        self.sent += 1;
    }

    fn full(&self) -> bool {
        self.buf.len() >= CHUNK_BYTES
    }

    fn take(&mut self) -> Bytes {
        if self.sent > 0 {
            metrics::counter!(telemetry::SSE_EVENTS_SENT).increment(self.sent);
            self.sent = 0;
        }
        self.buf.split().freeze()
    }
}

fn events(
    subscriber: Subscriber,
    mut live: tokio::sync::broadcast::Receiver<Arc<Committed>>,
    first: Page,
    start_seq: u64,
    collections: Option<Arc<Vec<String>>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    async_stream::stream! {
        let shared = subscriber.shared.clone();
        let mut shutdown = shared.shutdown.clone();
        let mut out = Out { buf: BytesMut::new(), epoch: shared.log().epoch(), sent: 0 };
        out.buf.put_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
        let wanted = |collection: &str| collections.as_ref().map_or(true, |names| names.iter().any(|n| n == collection));

        // `pos`: every matching entry with seq <= pos has been sent.
        let mut pos = start_seq;
        let mut page = Some(first);
        let mut ready = false;
        let mut failed = false;
        // Replay (and, later, catch-up): read the log from `pos` until a page reaches its head.
        'outer: loop {
            while let Some(current) = page.take() {
                for entry in &current.entries {
                    out.change(entry.seq, &entry.record);
                    pos = entry.seq;
                    if out.full() {
                        yield Ok(out.take());
                    }
                }
                if current.has_more {
                    if stopping(&shutdown) {
                        break 'outer;
                    }
                    match read_page(&shared, ReadFrom::Seq(pos), collections.clone()).await {
                        Ok(next) => page = Some(next),
                        Err(_) => { failed = true; break 'outer; }
                    }
                } else {
                    pos = pos.max(current.head_seq);
                }
            }
            if !ready {
                ready = true;
                out.buf.put_slice(format!("id: {}-{}\nevent: ready\ndata: {{\"cursor\":\"{}-{}\"}}\n\n", out.epoch, pos, out.epoch, pos).as_bytes());
            }
            yield Ok(out.take());

            // Live: follow the broadcast until we fall behind it.
            let mut quiet_since = Instant::now();
            loop {
                let woke = tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
                    received = live.recv() => Wake::Live(received),
                    _ = tokio::time::sleep_until(quiet_since + KEEP_ALIVE) => Wake::Quiet,
                };
                let received = match woke {
                    Wake::Stop => break 'outer,
                    Wake::Quiet => {
                        quiet_since = Instant::now();
                        yield Ok(Bytes::from_static(b": keep-alive\n\n"));
                        continue;
                    }
                    Wake::Live(received) => received,
                };
                match received {
                    Ok(commit) => {
                        if commit.last_seq <= pos {
                            continue;
                        }
                        let records = match &commit.records {
                            Some(records) if commit.after_seq <= pos => records,
                            // Too large to broadcast, or a hole before it: read the log.
                            _ => break,
                        };
                        for record in records.iter().filter(|r| r.seq > pos && wanted(&r.collection)) {
                            out.change(record.seq, &record.json);
                            if out.full() {
                                yield Ok(out.take());
                            }
                        }
                        pos = commit.last_seq;
                        if !out.buf.is_empty() {
                            quiet_since = Instant::now();
                            yield Ok(out.take());
                        }
                    }
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => break 'outer,
                }
            }
            metrics::counter!(telemetry::SSE_LOG_FALLBACKS).increment(1);
            if stopping(&shutdown) {
                break;
            }
            match read_page(&shared, ReadFrom::Seq(pos), collections.clone()).await {
                Ok(next) => page = Some(next),
                Err(_) => { failed = true; break; }
            }
        }
        if failed {
            // The client reconnects (EventSource does) and resumes from its last event.
            out.buf.put_slice(b": the relay could not read its log; reconnect\n\n");
        }
        if !out.buf.is_empty() {
            yield Ok(out.take());
        }
        drop(subscriber);
    }
}

fn stopping(shutdown: &tokio::sync::watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

enum Wake {
    Stop,
    Live(Result<Arc<Committed>, RecvError>),
    Quiet,
}
