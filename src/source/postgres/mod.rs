//! The Postgres logical replication source (pgoutput).
//!
//! [`PostgresSource`] checks prerequisites and the publication over an ordinary connection
//! ([`catalog`]), streams the slot over a replication connection ([`replication`]), decodes
//! pgoutput ([`pgoutput`]), turns rows into changes ([`changes`], [`values`]), appends them to the
//! log and acknowledges upstream what the log holds durably ([`ack`]). It owns its config
//! section ([`PostgresConfig`]) and its `deltarelay check` ([`check`]).

pub mod ack;
pub mod catalog;
pub mod changes;
pub mod check;
mod config;
pub mod copy;
mod filters;
pub mod lsn;
mod partitions;
mod pg_error;
pub mod pgoutput;
pub mod replication;
mod session;
mod tables;
pub mod tls;
pub mod values;
pub mod write;

pub use config::{PostgresConfig, TableOptions};
pub use lsn::Lsn;
pub use session::{PostgresSource, SourceError};
