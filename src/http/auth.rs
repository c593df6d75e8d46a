//! The gate in front of the API: authenticates the caller (JWT from `Authorization: Bearer` or
//! the `access_token` query parameter), applies the per-subject request rate and header-size
//! limits, and hands the handlers a [`Caller`]. Tokens are never logged.

use super::error::ApiError;
use super::SharedState;
use crate::auth::{Access, Claims, Verifier};
use crate::config::LimitsConfig;
use crate::log::reader::RowFilter;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How the HTTP layer authenticates and limits callers. The default (no auth, no limits) is
/// what tests of the plain API use; the relay builds it from the config.
#[derive(Clone, Default)]
pub struct HttpOptions {
    pub access: Access,
    /// `Some` with `auth.mode = "jwt"`.
    pub verifier: Option<Arc<Verifier>>,
    /// `/metrics` without a token.
    pub public_metrics: bool,
    /// `None`: no limits.
    pub limits: Option<LimitsConfig>,
    /// CORS origins (`["*"]`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Writes (`POST /v1/mutations`).
    pub writes: super::mutations::WriteOptions,
}

/// Who is calling, as established by [`authenticate`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub claims: Option<Claims>,
    /// The key of per-subject limits: the token's `sub`, else the client's address. `None`
    /// without auth: `auth.mode = "none"` serves loopback (or an explicitly trusted network,
    /// typically behind a proxy) where addresses do not tell clients apart, so only the totals
    /// apply there.
    pub subject: Option<String>,
}

/// The server's limit state.
pub struct Gate {
    pub options: HttpOptions,
    rate: Option<DefaultKeyedRateLimiter<String>>,
    /// Requests checked; every few thousand, idle subjects are dropped from `rate`.
    checked: AtomicU64,
    streams: Mutex<StreamCounts>,
}

/// How often (in requests) the rate limiter forgets subjects that are back to a full burst.
const RATE_CLEANUP_EVERY: u64 = 4096;

#[derive(Default)]
struct StreamCounts {
    total: u32,
    by_subject: HashMap<String, u32>,
}

/// Retry-After for a refused stream: streams end when clients go away, not on a schedule.
const STREAM_RETRY_SECONDS: u64 = 5;

impl Gate {
    pub fn new(options: HttpOptions) -> Gate {
        let rate = options.limits.as_ref().and_then(|l| {
            let per_second = NonZeroU32::new(l.requests_per_second)?;
            let burst = NonZeroU32::new(l.burst.max(l.requests_per_second)).unwrap_or(per_second);
            Some(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ))
        });
        Gate {
            options,
            rate,
            checked: AtomicU64::new(0),
            streams: Mutex::new(StreamCounts::default()),
        }
    }

    /// The row filter for `caller` reading `requested` collections; 403 when one is not theirs.
    pub fn filter(
        &self,
        caller: &Caller,
        requested: Option<&[String]>,
    ) -> Result<RowFilter, ApiError> {
        self.options
            .access
            .filter(caller.claims.as_ref(), requested)
            .map_err(forbidden)
    }

    /// Takes one stream slot for `caller`, or 429 when the total or their share is used up.
    pub fn open_stream(self: &Arc<Self>, caller: &Caller) -> Result<StreamSlot, ApiError> {
        let Some(limits) = &self.options.limits else {
            return Ok(StreamSlot {
                gate: None,
                subject: None,
            });
        };
        let mut counts = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= limits.max_streams {
            return Err(too_many(
                STREAM_RETRY_SECONDS,
                "the relay serves as many streams as it is configured for; retry later",
            ));
        }
        let mine = match &caller.subject {
            Some(subject) => counts.by_subject.get(subject).copied().unwrap_or(0),
            None => 0,
        };
        if caller.subject.is_some() && mine >= limits.max_streams_per_subject {
            return Err(too_many(
                STREAM_RETRY_SECONDS,
                format!(
                    "at most {} concurrent streams per client; close one first",
                    limits.max_streams_per_subject
                ),
            ));
        }
        counts.total += 1;
        if let Some(subject) = &caller.subject {
            counts.by_subject.insert(subject.clone(), mine + 1);
        }
        Ok(StreamSlot {
            gate: Some(self.clone()),
            subject: caller.subject.clone(),
        })
    }
}

/// An open stream's slot, released on drop.
pub struct StreamSlot {
    gate: Option<Arc<Gate>>,
    subject: Option<String>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let Some(gate) = &self.gate else { return };
        let mut counts = gate.streams.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        let Some(subject) = &self.subject else { return };
        if let Some(n) = counts.by_subject.get_mut(subject) {
            *n -= 1;
            if *n == 0 {
                counts.by_subject.remove(subject);
            }
        }
    }
}

/// Middleware: header size, authentication, request rate; then the handler with a [`Caller`].
pub(super) async fn authenticate(
    State(shared): State<SharedState>,
    mut request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let gate = &shared.gate;
    if let Some(limits) = &gate.options.limits {
        let size: usize = request.uri().to_string().len()
            + request
                .headers()
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if size > limits.max_header_bytes {
            return ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!(
                    "the request's headers and URL take {size} bytes; the limit is {}",
                    limits.max_header_bytes
                ),
            )
            .into_response();
        }
    }
    let claims = match &gate.options.verifier {
        None => None,
        Some(verifier) => {
            let token = match token(&request) {
                Ok(Some(token)) => token,
                Ok(None) => {
                    return unauthorized("no token: send Authorization: Bearer <JWT> (or access_token=<JWT> for EventSource)")
                }
                Err(why) => return unauthorized(why),
            };
            match verifier.verify(&token) {
                Ok(claims) => Some(claims),
                Err(why) => return unauthorized(why.0),
            }
        }
    };
    let subject = claims.as_ref().map(|claims| match claims.subject() {
        Some(sub) => format!("sub:{sub}"),
        None => request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| format!("ip:{}", addr.ip()))
            .unwrap_or_else(|| "anonymous".to_string()),
    });
    if let (Some(rate), Some(subject)) = (&gate.rate, &subject) {
        if gate.checked.fetch_add(1, Ordering::Relaxed) % RATE_CLEANUP_EVERY
            == RATE_CLEANUP_EVERY - 1
        {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        if let Err(not_until) = rate.check_key(subject) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return too_many(
                wait.as_secs() + 1,
                "too many requests from this client; slow down",
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(Caller { claims, subject });
    next.run(request).await
}

/// The bearer token of a request: the `Authorization` header, else `access_token` in the query.
fn token(request: &Request<axum::body::Body>) -> Result<Option<String>, &'static str> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| "the Authorization header is not text")?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or("the Authorization header must be \"Bearer <JWT>\"")?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err("the Authorization header must be \"Bearer <JWT>\"");
        }
        return Ok(Some(token.trim().to_string()));
    }
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let mut tokens = pairs.into_iter().filter(|(n, _)| n == "access_token");
    match (tokens.next(), tokens.next()) {
        (Some(_), Some(_)) => Err("access_token given more than once"),
        (Some((_, token)), None) if !token.is_empty() => Ok(Some(token)),
        (Some(_), None) => Err("access_token is empty"),
        (None, _) => Ok(None),
    }
}

fn unauthorized(message: impl Into<String>) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// 429 with `Retry-After` (seconds).
pub fn too_many(retry_after: u64, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(retry_after)
}
