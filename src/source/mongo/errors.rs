//! The source's errors, and what each server error code means for it.
//!
//! A change stream fails for a few reasons that retrying from the same token cannot fix; each
//! is named here with what happened and what the relay does, so that nothing loops silently.

use super::config::FullDocumentMode;
use crate::log::LogError;
use crate::source::ErrorKind;
use mongodb::error::ErrorKind as DriverErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("source {source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error("MongoDB: {0}")]
    Driver(#[from] mongodb::error::Error),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Event(#[from] super::events::EventError),
    #[error("the change stream returned no resume token: the server is too old (change streams with postBatchResumeToken need MongoDB 4.0.7 or later)")]
    NoToken,
    #[error("the server closed the change stream")]
    StreamClosed,
    #[error("cannot read the resume token: {0}")]
    Token(String),
    #[error("upstream history was lost; the source was reset and copies everything again")]
    Recopy,
    /// The stream cannot get past an event until the operator acts.
    #[error("{0}")]
    Blocked(String),
}

/// Server error codes that mean the deployment refuses the relay as configured:
/// Unauthorized (13), AuthenticationFailed (18).
const REFUSED: &[i32] = &[13, 18];

impl MongoError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MongoError::Config { .. } | MongoError::NoToken => ErrorKind::Fatal,
            MongoError::Log(e) if e.is_fatal() => ErrorKind::Fatal,
            MongoError::Recopy => ErrorKind::Reset,
            MongoError::Blocked(_) => ErrorKind::Blocked,
            MongoError::Driver(e) => match e.kind.as_ref() {
                DriverErrorKind::Authentication { .. } => ErrorKind::Config,
                DriverErrorKind::Command(c) if REFUSED.contains(&c.code) => ErrorKind::Config,
                _ => ErrorKind::Retry,
            },
            _ => ErrorKind::Retry,
        }
    }
}

/// What a server error means for the source.
#[derive(Debug, PartialEq)]
pub enum Upstream {
    /// The stream's place in the oplog is gone: reset and copy again. The text says why.
    HistoryLost(String),
    /// The stream cannot pass an event: said loudly with the fix, retried with backoff.
    Blocked(String),
    /// Transient, or not the stream's own problem: retried.
    Other,
}

/// ChangeStreamHistoryLost.
const HISTORY_LOST: i32 = 286;
/// ChangeStreamFatalError.
const FATAL: i32 = 280;
/// CappedPositionLost: a live cursor's next oplog entry was overwritten.
const CAPPED_POSITION_LOST: i32 = 136;
/// BSONObjectTooLarge: an event over 16 MiB on a server that cannot split it.
const TOO_LARGE: i32 = 10334;
/// `$changeStreamSplitLargeEvent` found a single field over the limit.
const FIELD_TOO_LARGE: i32 = 7_182_500;
/// NoMatchingDocument: `fullDocument: required` and no post-image.
const NO_MATCHING_DOCUMENT: i32 = 47;

pub fn classify(error: &mongodb::error::Error, full_document: FullDocumentMode) -> Upstream {
    let DriverErrorKind::Command(c) = error.kind.as_ref() else {
        return Upstream::Other;
    };
    let (code, server) = (c.code, &c.message);
    match code {
        HISTORY_LOST => Upstream::HistoryLost(format!(
            "the stored resume point is no longer in the oplog (286 ChangeStreamHistoryLost: {server})"
        )),
        CAPPED_POSITION_LOST => Upstream::HistoryLost(format!(
            "the open change stream fell behind the oplog, which overwrote its next entry \
             (136 CappedPositionLost: {server})"
        )),
        FATAL => Upstream::HistoryLost(format!(
            "the server cannot resume the change stream from the stored token (280 \
             ChangeStreamFatalError: {server}); the token is not in this deployment's oplog (a \
             token of another deployment or of a restored backup, or history lost) or names an \
             event the stream no longer includes (a collection removed from the config)"
        )),
        TOO_LARGE => Upstream::Blocked(format!(
            "SOURCE BLOCKED: a change event is over 16 MiB and this server cannot split it (10334 \
             BSONObjectTooLarge: {server}). The source cannot pass this event and retries it. \
             Fix: upgrade MongoDB to 6.0.9+ or 7.0+, where the relay splits large events \
             ($changeStreamSplitLargeEvent){}",
            if full_document == FullDocumentMode::UpdateLookup {
                ""
            } else {
                ", or set pre_images = false / full_document = \"updateLookup\" to make events smaller"
            }
        )),
        FIELD_TOO_LARGE => Upstream::Blocked(format!(
            "SOURCE BLOCKED: a change event has a single field too large to split into 16 MiB \
             fragments (7182500: {server}). The source cannot pass this event and retries it. \
             Fix: set pre_images = false (the before image of a large update) or full_document \
             = \"updateLookup\", or make the document smaller"
        )),
        NO_MATCHING_DOCUMENT => Upstream::Blocked(format!(
            "SOURCE BLOCKED: full_document = \"required\" but an update has no post-image (47 \
             NoMatchingDocument: {server}): the collection had changeStreamPreAndPostImages off \
             when it was written, or the image expired (expireAfterSeconds). The source retries \
             it. Fix: set full_document = \"whenAvailable\" (the relay then looks such documents \
             up) or \"updateLookup\""
        )),
        _ => Upstream::Other,
    }
}
