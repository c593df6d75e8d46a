//! Upstream sources. Each owns one upstream connection and its position, reconnects with
//! backoff, and reports its state through a [`SourceStatus`].

pub mod backoff;
pub mod postgres;

use serde::Serialize;

/// What `/v1/status` and `/readyz` say about one source.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SourceStatus {
    pub name: String,
    pub kind: &'static str,
    pub connected: bool,
    /// The position durable in the log (Postgres: end LSN of the last logged commit).
    pub position: Option<String>,
    /// The upstream's newest position as last reported to us (Postgres: WAL end).
    pub upstream_position: Option<String>,
    /// Bytes of upstream history not yet durable in the log, when known.
    pub lag_bytes: Option<u64>,
    pub slot: Option<String>,
    pub last_error: Option<String>,
    pub reconnects: u64,
}
