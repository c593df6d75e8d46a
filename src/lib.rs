//! deltarelay: a change-data-capture relay.
//!
//! Sources (Postgres logical replication) produce [`record::Change`]s grouped by upstream
//! transaction; the [`log`] appends them durably with the source position and serves them back
//! in order.

pub mod auth;
pub mod check;
pub mod config;
pub mod http;
pub mod log;
pub mod record;
pub mod relay;
pub mod source;
pub mod sse;
pub mod systemd;
