//! The Postgres logical replication source (pgoutput).

pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod values;

pub use lsn::Lsn;
