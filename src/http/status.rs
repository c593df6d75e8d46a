//! `/v1/collections`, `/v1/status`, `/readyz`, `/metrics`.

use super::auth::Caller;
use super::error::ApiError;
use super::SharedState;
use crate::telemetry;
use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::atomic::Ordering;

pub async fn collections(
    State(shared): State<SharedState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let summaries = shared.log().collection_summaries().await?;
    {
        let mut known = shared.known.write().expect("known collections lock");
        known.extend(summaries.iter().map(|s| s.name.clone()));
    }
    let access = &shared.gate.options.access;
    let list: Vec<_> = summaries
        .into_iter()
        .filter(|s| {
            !matches!(
                access.grant(&s.name, caller.claims.as_ref()),
                crate::auth::Grant::Denied(_)
            )
        })
        .map(|s| json!({"name": s.name, "source": s.source, "key_columns": s.key_columns, "columns": s.columns}))
        .collect();
    Ok(Json(json!({ "collections": list })).into_response())
}

pub async fn status(State(shared): State<SharedState>) -> Result<Response, ApiError> {
    let stats = shared.log().stats().await?;
    let head_seq = *shared.log().head().borrow();
    let now_ms = crate::source::now_ms();
    let sources: Vec<_> = shared
        .app
        .sources
        .iter()
        .map(|s| {
            let status = s.borrow().clone();
            let mut value = serde_json::to_value(&status).unwrap_or_default();
            value["lag_ms"] = status.lag_ms(now_ms).into();
            value
        })
        .collect();
    let body = json!({
        "sources": sources,
        "log": {
            "epoch": shared.log().epoch(),
            "head_cursor": shared.cursor(head_seq),
            "head_seq": head_seq,
            "lag_ms": crate::source::log_lag_ms(&shared.app.sources),
            "purged_seq": stats.purged_seq,
            "entries": stats.entries,
            "bytes": stats.bytes,
        },
        "subscribers": shared.subscribers.load(Ordering::Relaxed),
        "role": shared.log().role().borrow().as_str(),
        "cluster": shared.log().cluster_view(),
    });
    Ok(Json(body).into_response())
}

pub async fn readyz(State(shared): State<SharedState>) -> Response {
    // A standby's sources wait for the lease: it serves reads all the same.
    let role = *shared.log().role().borrow();
    let sources = match role {
        crate::log::Role::Standby => Ok(()),
        _ => crate::source::all_ready(&shared.app.sources),
    };
    match sources {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reasons) => {
            let body =
                json!({"error": "not_ready", "message": reasons.join("; "), "reasons": reasons});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

pub async fn metrics(State(shared): State<SharedState>) -> Result<Response, ApiError> {
    let handle = telemetry::handle().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        )
    })?;
    metrics::gauge!(telemetry::LOG_HEAD_SEQ).set(*shared.log().head().borrow() as f64);
    let role = *shared.log().role().borrow();
    for each in crate::log::Role::ALL {
        metrics::gauge!(telemetry::NODE_ROLE, "role" => each.as_str()).set(if each == role {
            1.0
        } else {
            0.0
        });
    }
    if let Some(view) = shared.log().cluster_view() {
        metrics::gauge!(telemetry::NATS_APPLIED_SEQ).set(view.applied as f64);
    }
    metrics::gauge!(telemetry::SSE_SUBSCRIBERS)
        .set(shared.subscribers.load(Ordering::Relaxed) as f64);
    handle.run_upkeep();
    let text = handle.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
