//! `GET /v1/changes`: one page of the log after a cursor, optionally long-polled.

use super::auth::Caller;
use super::error::ApiError;
use super::params::{self, RawParams, Since};
use super::shape;
use super::{check_snapshot, SharedState};
use crate::log::{Page, ReadFrom, RowFilter};
use crate::telemetry;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::time::Instant;

pub async fn changes(
    State(shared): State<SharedState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_parameter("query string", e.body_text()))?;
    let raw = RawParams::from_pairs(pairs)?;
    let since = params::parse_since("since", raw.since.as_deref())?;
    let limit = params::parse_limit(raw.limit.as_deref())?;
    let wait = params::parse_wait(raw.wait.as_deref())?;
    let collections = params::parse_collections(raw.collections.as_deref())?;
    let filter = shared.gate.filter(&caller, collections.as_deref())?;
    shared.check_request(&since, collections.as_deref()).await?;
    let filter = Arc::new(shape::shaped(shared.log(), filter, collections.as_deref(), &raw).await?);

    let deadline = Instant::now() + wait;
    let mut head = shared.log().head();
    let mut shutdown = shared.shutdown.clone();
    let mut from = match &since {
        Since::Start => ReadFrom::Seq(0),
        Since::Cursor(cursor) => ReadFrom::Seq(cursor.seq),
        Since::Time(time) => ReadFrom::CommitTime(time.clone()),
    };
    let mut first = true;
    let page = loop {
        let page = read_page(&shared, from.clone(), filter.clone(), limit).await?;
        if first {
            if let Since::Cursor(cursor) = &since {
                check_snapshot(cursor, page.purged_seq, page.head_seq)?;
            }
            first = false;
        }
        if !page.entries.is_empty() || Instant::now() >= deadline || *shutdown.borrow() {
            break page;
        }
        if page.has_more {
            // A shape left this page's entries out: read on.
            from = ReadFrom::Seq(page.scanned_seq);
            continue;
        }
        // Nothing yet: everything up to the snapshot's head is known not to match.
        let seen = page.head_seq;
        from = ReadFrom::Seq(seen);
        tokio::select! {
            woke = head.wait_for(|h| *h > seen) => if woke.is_err() { break page },
            _ = tokio::time::sleep_until(deadline) => break page,
            _ = shutdown.wait_for(|stop| *stop) => break page,
        }
    };

    // Past the entries a shape left out, too.
    let last = page
        .entries
        .last()
        .map_or(0, |e| e.seq)
        .max(page.scanned_seq);
    let cursor = match last {
        1.. => shared.cursor(last),
        0 => raw
            .since
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("0")
            .to_string(),
    };
    metrics::counter!(telemetry::CHANGES_SERVED).increment(page.entries.len() as u64);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body(
            &page,
            &cursor,
            crate::source::log_lag_ms(&shared.app.sources),
        ),
    )
        .into_response())
}

async fn read_page(
    shared: &SharedState,
    from: ReadFrom,
    filter: Arc<RowFilter>,
    limit: usize,
) -> Result<Page, ApiError> {
    let page = shared.log().page(from, filter, limit, usize::MAX).await?;
    Ok(page)
}

/// The response, written from the stored record texts without parsing them again.
fn body(page: &Page, cursor: &str, lag_ms: u64) -> String {
    let size: usize = page.entries.iter().map(|e| e.record.len() + 1).sum();
    let mut out = String::with_capacity(size + cursor.len() + 64);
    out.push_str("{\"changes\":[");
    for (i, entry) in page.entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&entry.record);
    }
    out.push_str("],\"cursor\":");
    out.push_str(&serde_json::Value::from(cursor).to_string());
    out.push_str(",\"has_more\":");
    out.push_str(if page.has_more { "true" } else { "false" });
    // How far the log is behind its slowest source (Freshness): 0 when caught up.
    out.push_str(",\"lag_ms\":");
    out.push_str(&lag_ms.to_string());
    out.push('}');
    out
}
