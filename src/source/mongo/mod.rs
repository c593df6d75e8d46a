//! The MongoDB change-stream source.
//!
//! [`MongoSource`] watches one database with the official driver (one database-wide change
//! stream, filtered to the configured collections), maps events to changes ([`events`],
//! [`values`]), appends them to the log with the stream's resume token as the position, and
//! copies the collections on first start and whenever upstream history is lost ([`session`],
//! [`copy`]).
//! Its [`MongoWriter`] takes `POST /v1/mutations` for its collections ([`write`]).
//! It owns its config section ([`MongoConfig`]); [`check`] tells an operator what the
//! deployment lacks.

pub mod check;
mod config;
mod copy;
mod errors;
pub mod events;
mod position;
mod session;
pub mod values;
pub mod write;

pub use config::{FullDocumentMode, MongoConfig};
pub use session::{MongoError, MongoSource};
pub use write::MongoWriter;
