//! The Server-Sent Events framing of one change (DESIGN.md, "HTTP API"):
//! `id: <cursor>\nevent: change\ndata: <record JSON>\n\n`.
//!
//! Shared by the log writer, which frames every record once as it is written so that all live
//! subscribers send the same bytes, and by `/v1/stream`'s replay, which frames records read
//! back from the log.

use bytes::{BufMut, Bytes};
use std::ops::Range;

const ID: &[u8] = b"id: ";
const DATA: &[u8] = b"\nevent: change\ndata: ";
const END: &[u8] = b"\n\n";

/// Appends everything of the event that comes before the record's JSON.
pub fn change_head(buf: &mut impl BufMut, cursor: &str) {
    buf.put_slice(ID);
    buf.put_slice(cursor.as_bytes());
    buf.put_slice(DATA);
}

/// Appends what ends the event, after the record's JSON.
pub fn change_end(buf: &mut impl BufMut) {
    buf.put_slice(END);
}

/// The bytes framing `json` take besides `cursor` (for reserving room).
pub const CHANGE_OVERHEAD: usize = ID.len() + DATA.len() + END.len();

/// One change framed as an event, with where its record's JSON sits in it.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    bytes: Bytes,
    json: Range<usize>,
}

impl ChangeEvent {
    /// Frames a record serialized by `write_json` into the same buffer (no copy of the record).
    pub fn build<E>(
        cursor: &str,
        size_hint: usize,
        write_json: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<ChangeEvent, E> {
        let mut buf = Vec::with_capacity(size_hint + cursor.len() + CHANGE_OVERHEAD);
        change_head(&mut buf, cursor);
        let start = buf.len();
        write_json(&mut buf)?;
        let json = start..buf.len();
        change_end(&mut buf);
        Ok(ChangeEvent {
            bytes: Bytes::from(buf),
            json,
        })
    }

    /// The whole event, as sent.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The record's JSON inside the event.
    pub fn json(&self) -> &[u8] {
        &self.bytes[self.json.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frames_its_record_and_knows_where_it_is() {
        let event = ChangeEvent::build::<()>("7-42", 0, |buf| {
            buf.extend_from_slice(br#"{"op":"insert"}"#);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            &event.bytes()[..],
            b"id: 7-42\nevent: change\ndata: {\"op\":\"insert\"}\n\n"
        );
        assert_eq!(event.json(), br#"{"op":"insert"}"#);
        assert_eq!(
            event.bytes().len(),
            event.json().len() + "7-42".len() + CHANGE_OVERHEAD
        );
    }

    #[test]
    fn a_failed_serialization_is_returned() {
        let failed = ChangeEvent::build("7-42", 0, |_| Err("no"));
        assert_eq!(failed.unwrap_err(), "no");
    }
}
