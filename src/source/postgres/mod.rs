//! The Postgres logical replication source (pgoutput).

pub mod pgoutput;
pub mod replication;
pub mod values;
