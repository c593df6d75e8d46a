//! Prometheus metrics. [`install`] sets the global `metrics` recorder once; after that any
//! module records with `metrics::counter!` / `gauge!` / `histogram!` and `/metrics` renders
//! everything. Metric names used by the HTTP layer are constants here.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const HTTP_REQUESTS: &str = "deltarelay_http_requests_total";
pub const SSE_SUBSCRIBERS: &str = "deltarelay_sse_subscribers";
/// 1 for this node's role (`single`, `active`, `standby`, `serve`), 0 for the others.
pub const NODE_ROLE: &str = "deltarelay_node_role";
/// The last NATS stream sequence this node's materialization applied (shared log only).
pub const NATS_APPLIED_SEQ: &str = "deltarelay_nats_applied_seq";
pub const SSE_EVENTS_SENT: &str = "deltarelay_sse_events_sent_total";
pub const SSE_LOG_FALLBACKS: &str = "deltarelay_sse_log_fallbacks_total";
pub const CHANGES_SERVED: &str = "deltarelay_changes_served_total";
pub const LOG_HEAD_SEQ: &str = "deltarelay_log_head_seq";
pub const CHANGES_INGESTED: &str = "deltarelay_changes_ingested_total";
pub const LOG_COMMIT_SECONDS: &str = "deltarelay_log_commit_seconds";
pub const REPLICATION_LAG_BYTES: &str = "deltarelay_replication_lag_bytes";
pub const COPY_ROWS: &str = "deltarelay_copy_rows_total";
pub const COPY_TABLES_REMAINING: &str = "deltarelay_copy_tables_remaining";
pub const TABLES_UNSYNCED: &str = "deltarelay_tables_unsynced";
pub const SOURCE_RESETS: &str = "deltarelay_source_resets_total";
pub const TOMBSTONES_PURGED: &str = "deltarelay_tombstones_purged_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the global `metrics` recorder, once per process; later
/// calls return the same handle. `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!(
                        "another metrics recorder is installed: /metrics is unavailable"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The installed handle, if any.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get().and_then(Option::as_ref)
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    metrics::describe_gauge!(SSE_SUBSCRIBERS, "Open /v1/stream connections");
    metrics::describe_gauge!(
        NODE_ROLE,
        "1 for this node's role (single, active, standby, serve)"
    );
    metrics::describe_gauge!(
        NATS_APPLIED_SEQ,
        "The last NATS stream sequence this node's log materialization applied"
    );
    metrics::describe_counter!(SSE_EVENTS_SENT, "Change events sent on /v1/stream");
    metrics::describe_counter!(
        SSE_LOG_FALLBACKS,
        "Times a live subscriber fell behind the broadcast and read the log instead"
    );
    metrics::describe_counter!(CHANGES_SERVED, "Records returned by /v1/changes");
    metrics::describe_gauge!(LOG_HEAD_SEQ, "The last committed seq of the log");
    metrics::describe_counter!(
        CHANGES_INGESTED,
        "Changes received from a source, by source and collection"
    );
    metrics::describe_histogram!(
        LOG_COMMIT_SECONDS,
        "Time to make a group of upstream transactions durable in the log"
    );
    metrics::describe_gauge!(
        REPLICATION_LAG_BYTES,
        "Upstream WAL not yet durable in the log, by source"
    );
    metrics::describe_gauge!(
        TABLES_UNSYNCED,
        "Configured tables a source cannot sync (see /v1/status for why and the fix), by source"
    );
    metrics::describe_counter!(
        COPY_ROWS,
        "Rows written by initial copies, by source and collection"
    );
    metrics::describe_gauge!(
        COPY_TABLES_REMAINING,
        "Tables still to copy before a source is ready, by source"
    );
    metrics::describe_counter!(
        SOURCE_RESETS,
        "Times a source lost its upstream history and started over with a new copy"
    );
    metrics::describe_counter!(
        TOMBSTONES_PURGED,
        "Delete and truncate tombstones dropped after log.tombstone_retention"
    );
}
