//! `POST /v1/mutations`: clients' writes, through the writer of the source that holds the
//! collections (DESIGN.md, "Writes"). This layer parses, authorizes and frames; the
//! [`Writer`] applies upstream and says when its commit is in the log.

use super::auth::Caller;
use super::error::ApiError;
use super::mutation_body::{self, Body};
use super::params::{self, Since};
use super::{check_snapshot, SharedState};
use crate::auth::WriteGrant;
use crate::log::ReadFrom;
use crate::source::write::{Author, Mutation, Permit, Scope, WriteError, Writer};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The default request body limit when no `[limits]` are configured.
const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// What the HTTP layer needs for writes.
#[derive(Clone, Default)]
pub struct WriteOptions {
    /// One per source that takes writes.
    pub writers: Vec<Arc<dyn Writer>>,
    /// `writes.allow_unauthenticated`: accept writes with `auth.mode = "none"`.
    pub allow_unauthenticated: bool,
}

pub(super) async fn mutations(
    State(shared): State<SharedState>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller {
            claims: None,
            subject: None,
        });
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string());
    let options = &shared.gate.options;
    let authenticated = options.verifier.is_some();
    if !authenticated && !options.writes.allow_unauthenticated {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "writes are refused while auth.mode = \"none\": configure JWT auth, or set [writes] allow_unauthenticated = true (loopback only)",
        ));
    }
    let max_body = options
        .limits
        .as_ref()
        .map_or(DEFAULT_MAX_BODY, |l| l.max_body);
    let bytes = axum::body::to_bytes(request.into_body(), max_body)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than limits.max_body ({max_body} bytes): send fewer mutations per request"),
            )
        })?;
    let body = mutation_body::parse(&bytes)?;
    let since = match &body.since {
        Some(text) => {
            let since = params::parse_since("since", Some(text))?;
            if let Since::Cursor(cursor) = &since {
                shared.check_cursor(cursor)?;
            }
            Some(since)
        }
        None => None,
    };
    let writer = writer_for(&options.writes.writers, &body)?;
    // `current` never shows a row the caller may not read.
    let readable: Vec<bool> = body
        .mutations
        .iter()
        .map(|m| {
            !matches!(
                options.access.grant(&m.collection, caller.claims.as_ref()),
                crate::auth::Grant::Denied(_)
            )
        })
        .collect();
    let mutations: Vec<Mutation> = body
        .mutations
        .into_iter()
        .map(|m| {
            let permit = match options
                .access
                .write_grant(&m.collection, caller.claims.as_ref())
            {
                WriteGrant::Denied(why) => Permit::Denied(why),
                WriteGrant::Allowed { rules, scope } => Permit::Allowed {
                    rules,
                    scope: scope.map(|(column, value)| Scope { column, value }),
                },
            };
            Mutation {
                id: m.id,
                collection: m.collection,
                op: m.op,
                key: m.key,
                value: m.value,
                expect: m.expect,
                at: m.at,
                permit,
            }
        })
        .collect();
    let author = Author {
        subject: caller
            .subject
            .clone()
            .or_else(|| address.map(|a| format!("ip:{a}")))
            .unwrap_or_else(|| "anonymous".to_string()),
        claims: caller
            .claims
            .as_ref()
            .map(|c| c.0.clone())
            .unwrap_or_default(),
    };
    // Its own task: a client that hangs up must not cut a transaction short.
    let task_writer = writer.clone();
    let atomic = body.atomic;
    let applied = tokio::spawn(async move { task_writer.apply(&author, &mutations, atomic).await })
        .await
        .map_err(|e| ApiError::internal(format!("the write task failed: {e}")))?
        .map_err(write_error)?;
    let mut applied = applied;
    for (result, readable) in applied.results.iter_mut().zip(readable) {
        if !readable && result.current.is_some() {
            result.current = Some(None);
        }
    }

    let visible = match applied.mark {
        Some(mark) => writer.wait_visible(mark, body.wait).await,
        None => true,
    };
    let mut seq = *shared.log().head().borrow();
    let mut out = json!({"results": applied.results});
    if let Some(since) = since {
        let filter = Arc::new(shared.gate.filter(&caller, None)?);
        let from = match &since {
            Since::Start => ReadFrom::Seq(0),
            Since::Cursor(cursor) => ReadFrom::Seq(cursor.seq),
            Since::Time(time) => ReadFrom::CommitTime(time.clone()),
        };
        let page = shared
            .log()
            .page(from, filter, params::DEFAULT_LIMIT, usize::MAX)
            .await?;
        if let Since::Cursor(cursor) = &since {
            check_snapshot(cursor, page.purged_seq, page.head_seq)?;
        }
        let changes: Vec<Value> = page
            .entries
            .iter()
            .map(|e| serde_json::from_str(&e.record).unwrap_or(Value::Null))
            .collect();
        if page.has_more {
            // The client continues from here; its writes come in a later page.
            seq = page.entries.last().map_or(seq, |e| e.seq);
        } else {
            seq = seq.max(page.head_seq);
        }
        out["changes"] = Value::Array(changes);
        out["has_more"] = Value::Bool(page.has_more);
    }
    out["cursor"] = Value::String(shared.cursor(seq));
    out["visible"] = Value::Bool(visible);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        out.to_string(),
    )
        .into_response())
}

/// The one writer holding every collection of the batch.
fn writer_for(writers: &[Arc<dyn Writer>], body: &Body) -> Result<Arc<dyn Writer>, ApiError> {
    let mut chosen: Option<&Arc<dyn Writer>> = None;
    for (index, m) in body.mutations.iter().enumerate() {
        let Some(writer) = writers.iter().find(|w| w.holds(&m.collection)) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_collection",
                format!(
                    "mutations[{index}].collection: {:?} is not a collection of a source that takes writes",
                    m.collection
                ),
            ));
        };
        match chosen {
            Some(first) if !Arc::ptr_eq(first, writer) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_mutation",
                    format!(
                        "mutations[{index}].collection: {:?} belongs to source {:?}, the batch's first to {:?}: send one request per source",
                        m.collection,
                        writer.source(),
                        first.source()
                    ),
                ))
            }
            _ => chosen = Some(writer),
        }
    }
    chosen
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", "no mutations"))
}

fn write_error(e: WriteError) -> ApiError {
    let message = e.to_string();
    match e {
        WriteError::Invalid { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", message)
        }
        WriteError::UnknownCollection { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_collection", message)
        }
        WriteError::UnknownColumn { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_column", message)
        }
        WriteError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "source_unavailable",
            message,
        )
        .retry_after(1),
    }
}
