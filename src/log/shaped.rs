//! Reading the log through a client's shape (`crate::shape`): each record read becomes what
//! that client receives (projected, turned into a delete of its key, or nothing).

use super::reader::ReadEntry;
use super::LogError;
use crate::record::ChangeRecord;
use crate::shape::{Previous, Shape};
use std::sync::Arc;

/// A shape as a read applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRead {
    pub shape: Arc<Shape>,
    /// Entries up to this seq come from a replay that began at the start of the log: the
    /// client holds no earlier version of their rows, so a row outside the shape is left out
    /// instead of being sent as a delete. (A later version of a row gets a higher seq, so an
    /// entry at or below it cannot be a row the replay already sent.)
    pub fresh_until: u64,
}

impl ShapeRead {
    /// The entries as the shape's client receives them. `from_start`: this read begins at the
    /// start of the log, so every entry in it is fresh.
    pub fn apply(
        &self,
        entries: Vec<ReadEntry>,
        from_start: bool,
    ) -> Result<Vec<ReadEntry>, LogError> {
        if self.shape.is_everything() {
            return Ok(entries);
        }
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let record: ChangeRecord = serde_json::from_str(&entry.record)?;
            let previous = if from_start || entry.seq <= self.fresh_until {
                Previous::Absent
            } else {
                Previous::Unknown
            };
            if let Some(shaped) = self.shape.apply(&record, previous) {
                out.push(ReadEntry {
                    record: serde_json::to_string(&shaped)?,
                    ..entry
                });
            }
        }
        Ok(out)
    }
}
