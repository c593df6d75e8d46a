//! COPY's text format (`COPY … TO STDOUT`): rows split from chunks as they arrive, fields by
//! tab, `\N` for NULL, backslash escapes undone.

use crate::source::postgres::pgoutput::TupleValue;
use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextFormatError {
    #[error("a row with values for a table without columns")]
    ValuesWithoutColumns,
    #[error("a row has {fields} fields, the table has {columns} columns")]
    FieldCount { fields: usize, columns: usize },
    #[error("a field ends with a lone backslash")]
    LoneBackslash,
}

/// Splits `COPY … TO STDOUT` text-format output, arriving in arbitrary chunks, into rows.
#[derive(Default)]
pub struct TextRows {
    pending: BytesMut,
}

impl TextRows {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// Bytes received that do not yet form a whole row.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next complete row, which must have `width` fields.
    pub fn next_row(&mut self, width: usize) -> Result<Option<Vec<TupleValue>>, TextFormatError> {
        let Some(end) = self.pending.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = self.pending.split_to(end + 1).freeze().slice(..end);
        parse_line(&line, width).map(Some)
    }
}

/// One text-format line: fields split by tab, `\N` for NULL, backslash escapes.
fn parse_line(line: &Bytes, width: usize) -> Result<Vec<TupleValue>, TextFormatError> {
    let mut values = Vec::with_capacity(width);
    if width == 0 {
        return if line.is_empty() {
            Ok(values)
        } else {
            Err(TextFormatError::ValuesWithoutColumns)
        };
    }
    let mut start = 0;
    for field_end in line
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\t')
        .map(|(i, _)| i)
        .chain(std::iter::once(line.len()))
    {
        let field = line.slice(start..field_end);
        start = field_end + 1;
        values.push(if &field[..] == b"\\N" {
            TupleValue::Null
        } else if field.contains(&b'\\') {
            TupleValue::Text(unescape(&field)?)
        } else {
            TupleValue::Text(field)
        });
    }
    if values.len() != width {
        return Err(TextFormatError::FieldCount {
            fields: values.len(),
            columns: width,
        });
    }
    Ok(values)
}

/// Undoes COPY's text-format escaping (`\\`, `\n`, `\t`, `\b`, `\f`, `\r`, `\v`, octal
/// `\ooo` and hex `\xhh`; any other escaped character stands for itself).
fn unescape(field: &[u8]) -> Result<Bytes, TextFormatError> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let byte = field[i];
        i += 1;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let Some(&next) = field.get(i) else {
            return Err(TextFormatError::LoneBackslash);
        };
        i += 1;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn splits_rows_across_chunks_and_fields_by_tab() {
        let mut rows = TextRows::default();
        rows.push(b"1\thello\t\\N\n2\twor");
        assert_eq!(
            rows.next_row(3).unwrap(),
            Some(vec![text("1"), text("hello"), TupleValue::Null])
        );
        assert_eq!(rows.next_row(3).unwrap(), None);
        assert!(!rows.is_empty());
        rows.push(b"ld\t\n");
        assert_eq!(
            rows.next_row(3).unwrap(),
            Some(vec![text("2"), text("world"), text("")])
        );
        assert!(rows.is_empty());
    }

    #[test]
    fn undoes_every_escape() {
        let mut rows = TextRows::default();
        rows.push(b"a\\tb\\nc\\\\d\\r\\b\\f\\v\t\\101\\x41\\x4a\\q\t\\\\N\n");
        assert_eq!(
            rows.next_row(3).unwrap(),
            Some(vec![
                text("a\tb\nc\\d\r\x08\x0c\x0b"),
                text("AAJq"),
                text("\\N"),
            ])
        );
    }

    #[test]
    fn a_wrong_field_count_or_a_lone_backslash_is_an_error() {
        let mut rows = TextRows::default();
        rows.push(b"1\t2\n");
        assert!(rows
            .next_row(3)
            .unwrap_err()
            .to_string()
            .contains("2 fields"));
        rows.push(b"ab\\\n");
        assert!(rows
            .next_row(1)
            .unwrap_err()
            .to_string()
            .contains("lone backslash"));
    }
}
