//! The MongoDB change-stream source.
//!
//! [`MongoSource`] watches one database with the official driver (one database-wide change
//! stream, filtered to the configured collections), maps events to changes ([`events`],
//! [`values`]), appends them to the log with the stream's resume token as the position, and
//! copies the collections on first start and whenever upstream history is lost ([`session`],
//! [`copy`]).
//! `crate::check::mongo` tells an operator what the deployment lacks.

mod copy;
pub mod events;
mod position;
mod session;
pub mod values;

pub use session::{MongoError, MongoSource};
