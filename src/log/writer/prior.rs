//! A live record's row as it was before the record's commit, for shaped followers.

use crate::log::large;
use crate::log::LogError;
use crate::record::{ChangeRecord, Row};
use rusqlite::Connection;
use std::sync::Arc;

use super::entry::LiveEntry;

#[derive(Debug, Clone, Default)]
pub enum Prior {
    /// Not read (no shaped follower of the collection when it was written).
    #[default]
    Unknown,
    /// The row did not exist (or was deleted).
    Absent,
    /// Its full previous version.
    Row(Arc<Row>),
}

impl Prior {
    /// The prior of a row whose live entry is `previous`.
    pub(super) fn of(conn: &Connection, previous: Option<&LiveEntry>) -> Result<Prior, LogError> {
        let Some(previous) = previous else {
            return Ok(Prior::Absent);
        };
        let record = large::full_record(
            conn,
            previous.seq,
            previous.record.clone(),
            previous.large.as_deref(),
        )?;
        let record: ChangeRecord = serde_json::from_str(&record)?;
        Ok(record
            .after
            .map_or(Prior::Absent, |row| Prior::Row(Arc::new(row))))
    }
}
