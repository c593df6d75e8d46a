//! deltarelay: a change-data-capture relay.
//!
//! Sources tail an upstream database (Postgres logical replication, MongoDB change streams) and
//! turn every committed change into a [`record::Change`], grouped by upstream transaction. The
//! [`log`] appends them durably together with the source's position, in one local transaction,
//! and only then does the source acknowledge upstream: every committed upstream change is in the
//! log exactly once, in commit order, across crashes and restarts. [`http`] serves the log as a
//! delta-since query and as Server-Sent Events, optionally through a shape (a row filter and a
//! column projection), and takes clients' writes back to the source (`POST /v1/mutations`).
//!
//! The crate in layers, bottom to top; an import only ever points down (`src/layers.rs` tests
//! it):
//!
//! - Leaves: [`record`] (the change record and its JSON), [`time`] (RFC 3339 and Postgres epoch
//!   conversions), [`telemetry`] (metric names and the Prometheus recorder), [`config`] (the
//!   typed TOML config; each source kind parses its own keys), [`sse`] (Server-Sent Events
//!   framing), [`check`] (the results and report of `deltarelay check`).
//! - [`shape`]: a subscription's `where` (parsed with sqlparser into our own typed expression,
//!   evaluated over records) and its column projection.
//! - [`log`]: the change log. [`log::Log`] is the handle: a single writer thread appends and
//!   compacts, [`log::Log::page`] reads, [`log::Log::follow`] owns the replay → catch-up → live
//!   hand-off. A writer that dies is reported by [`log::Log::writer_stopped`].
//! - [`source`]: the upstream sources. [`source::SourceSpec`] is the registry of kinds (parse,
//!   start, check); each kind implements [`source::Source`] and runs under the one
//!   [`source::supervise()`] loop; a kind that takes writes implements [`source::write::Writer`].
//!   [`auth`]: who may read and write what.
//! - [`http`]: routes, the auth gate and framing; [`systemd`]: readiness and watchdog.
//! - [`relay`]: wires everything together and stops it in order; `main.rs` is the CLI.

pub mod auth;
pub mod check;
pub mod config;
pub mod http;
pub mod log;
pub mod record;
pub mod relay;
pub mod shape;
pub mod source;
pub mod sse;
pub mod systemd;
pub mod telemetry;
pub mod time;

#[cfg(test)]
mod layers;
