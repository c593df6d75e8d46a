//! The HTTP API (DESIGN.md, "HTTP API"): delta-since queries, Server-Sent Events, status.
//!
//! Handlers read the log through a small pool of read-only SQLite connections, on the blocking
//! thread pool and with a bounded number of reads at once. Live subscribers are woken by the
//! log's broadcast of committed records (already serialized once, shared by every subscriber)
//! and fall back to reading the log whenever they fall behind it.

pub mod auth;
mod changes;
pub mod console;
mod error;
mod mutation_body;
pub mod mutations;
mod openapi;
pub mod params;
mod server;
mod shape;
mod status;
mod stream;

pub use auth::HttpOptions;
pub use error::ApiError;

use crate::log::role::Role;
use crate::log::{Cursor, Log};
use crate::source::SourceStatus;
use crate::telemetry;
use axum::extract::MatchedPath;
use axum::http::{Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub log: Log,
    pub sources: Vec<watch::Receiver<SourceStatus>>,
}

/// The server's shared state: the caller's [`AppState`] plus what the server keeps itself.
struct Shared {
    app: AppState,
    shutdown: watch::Receiver<bool>,
    /// Open `/v1/stream` connections.
    subscribers: AtomicUsize,
    /// Collections known to exist (only grows; refreshed from the log on a miss).
    known: RwLock<BTreeSet<String>>,
    /// Authentication, access rules and limits.
    gate: Arc<auth::Gate>,
}

type SharedState = Arc<Shared>;

impl Shared {
    fn log(&self) -> &Log {
        &self.app.log
    }

    fn cursor(&self, seq: u64) -> String {
        Cursor {
            epoch: self.app.log.epoch(),
            seq,
        }
        .to_string()
    }

    /// The collections a client may name: every collection present in the log. (Configured
    /// tables and per-token rules will extend and narrow this.)
    async fn check_collections(&self, names: Option<&[String]>) -> Result<(), ApiError> {
        let Some(names) = names else { return Ok(()) };
        let missing =
            |known: &BTreeSet<String>| names.iter().find(|n| !known.contains(*n)).cloned();
        if missing(&self.known.read().expect("known collections lock")).is_none() {
            return Ok(());
        }
        let found = self.log().collections().await?;
        let mut known = self.known.write().expect("known collections lock");
        known.extend(found);
        match missing(&known) {
            Some(name) => Err(ApiError::unknown_collection(&name)),
            None => Ok(()),
        }
    }

    /// The checks every read request makes before touching the log: the cursor belongs to
    /// this log (410) and every named collection exists (404).
    async fn check_request(
        &self,
        since: &params::Since,
        collections: Option<&[String]>,
    ) -> Result<(), ApiError> {
        if let params::Since::Cursor(cursor) = since {
            self.check_cursor(cursor)?;
            self.reach(cursor).await;
        }
        self.check_collections(collections).await
    }

    /// On the shared log every node materializes the same stream at its own pace, so a client
    /// moving here from a node that is ahead brings a cursor this node has not reached yet:
    /// wait for it (bounded) rather than answer 410, which makes the client start over from
    /// nothing. With the embedded log a cursor ahead of the head is final (the log was
    /// restored from an older copy): no wait.
    async fn reach(&self, cursor: &Cursor) {
        if *self.log().role().borrow() == Role::Single {
            return;
        }
        let mut head = self.log().head();
        let reached = head.wait_for(|seq| *seq >= cursor.seq);
        let _ = tokio::time::timeout(REACH_CURSOR, reached).await;
    }

    /// 410 when the cursor cannot be served from this log.
    fn check_cursor(&self, cursor: &Cursor) -> Result<(), ApiError> {
        if cursor.epoch != self.app.log.epoch() {
            return Err(ApiError::expired(format!(
                "cursor {cursor} belongs to another incarnation of the log (it was reset or rebuilt): restart from the beginning (since=0)"
            )));
        }
        Ok(())
    }
}

/// How long a node of the shared log waits for its materialization to reach a client's cursor
/// before answering 410 (a restarted serve node catching up, or one whose NATS server died).
const REACH_CURSOR: std::time::Duration = std::time::Duration::from_secs(20);

/// Checks a cursor against a page's snapshot: purged tombstones or a position beyond the log.
fn check_snapshot(cursor: &Cursor, purged_seq: u64, head_seq: u64) -> Result<(), ApiError> {
    if cursor.seq < purged_seq {
        return Err(ApiError::expired(format!(
            "cursor {cursor} is older than the oldest retained delete: restart from the beginning (since=0)"
        )));
    }
    if cursor.seq > head_seq {
        return Err(ApiError::expired(format!(
            "cursor {cursor} is ahead of this log (it was restored from an older copy): restart from the beginning (since=0)"
        )));
    }
    Ok(())
}

/// The router over `state`; [`serve`] runs it. `shutdown` ends long polls and streams.
pub fn router(state: AppState, shutdown: watch::Receiver<bool>) -> Router {
    router_with(state, HttpOptions::default(), shutdown)
}

/// The router with authentication, access rules, limits and CORS as `options` say.
pub fn router_with(
    state: AppState,
    options: HttpOptions,
    shutdown: watch::Receiver<bool>,
) -> Router {
    telemetry::install();
    let cors = cors_layer(&options.cors_origins);
    let public_metrics = options.public_metrics;
    let shared = Arc::new(Shared {
        app: state,
        shutdown,
        subscribers: AtomicUsize::new(0),
        known: RwLock::new(BTreeSet::new()),
        gate: Arc::new(auth::Gate::new(options)),
    });
    // Behind the gate: everything that reveals data or the setup. /healthz and /readyz stay
    // open for load balancers and systemd; /metrics is open only when configured.
    let mut gated = Router::new()
        .route("/v1/changes", get(changes::changes))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/collections", get(status::collections))
        .route("/v1/status", get(status::status))
        .route("/v1/mutations", post(mutations::mutations));
    let mut open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(status::readyz))
        .route("/v1/openapi.json", get(openapi::document));
    if public_metrics {
        open = open.route("/metrics", get(status::metrics));
    } else {
        gated = gated.route("/metrics", get(status::metrics));
    }
    let gated = gated.route_layer(middleware::from_fn_with_state(
        shared.clone(),
        auth::authenticate,
    ));
    let router = gated
        .merge(open)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see the HTTP API in the documentation",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here: POST /v1/mutations, GET everything else",
            )
        })
        .layer(middleware::from_fn(count_requests))
        .with_state(shared);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the configured origins (`*`: any); `None` when there are none.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(listener, state, HttpOptions::default(), shutdown).await
}

/// [`serve`] with [`HttpOptions`].
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    options: HttpOptions,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router_with(state, options, shutdown.clone());
    serve_router(listener, app, shutdown).await
}

/// Serves `app` (a [`router`], possibly merged with more routes) until `shutdown` turns true.
/// Handlers see the client's address (`ConnectInfo`), used by per-client limits.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    server::serve(listener, app, shutdown).await
}

/// Counts requests by route and status.
async fn count_requests(request: Request<axum::body::Body>, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await.into_response();
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}
