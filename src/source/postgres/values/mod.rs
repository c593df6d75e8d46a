//! Postgres text-format values → JSON, the value mapping of the unified change record.
//!
//! The replication connection and the initial copy both run with `DateStyle=ISO, MDY`,
//! `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex` and `IntervalStyle=postgres`,
//! so each type arrives in one known text form. Anything that does not parse as expected
//! falls back to the text itself as a JSON string: a value is never lost or rejected here.
//!
//! Text kept as is, by design: `numeric` (exact, may exceed any JSON number), `date`,
//! `time`/`timetz`, `infinity`/`-infinity` and BC dates or timestamps (RFC 3339 cannot
//! express them), timestamps with a year beyond 9999 or a seconds-level zone offset,
//! `uuid`, `interval`, `money`, network and geometric types, ranges, enums and every type
//! this module does not know.

mod array;
mod builtin;
pub mod oid;
#[cfg(test)]
mod tests;

use array::parse_array;
use base64::Engine as _;
use builtin::{BUILTIN_ARRAYS, BUILTIN_SCALARS};
use serde_json::Value;

/// What a column's value is, after the caller has resolved domains to their base type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Scalar(u32),
    Array { element: u32, delimiter: u8 },
}

/// The ValueType of a built-in type oid, `None` for a non-built-in oid (the caller then asks
/// the catalog: typtype, typbasetype, typelem, typdelim).
pub fn builtin_value_type(oid: u32) -> Option<ValueType> {
    if BUILTIN_SCALARS.contains(&oid) {
        return Some(ValueType::Scalar(oid));
    }
    let &(_, element) = BUILTIN_ARRAYS.iter().find(|&&(array, _)| array == oid)?;
    // `box` is the only built-in type whose typdelim is not a comma: its text has commas.
    let delimiter = if element == oid::BOX { b';' } else { b',' };
    Some(ValueType::Array { element, delimiter })
}

/// Never fails, never panics: text that does not parse as its type falls back to a JSON string.
pub fn text_to_json(ty: ValueType, text: &str) -> Value {
    match ty {
        ValueType::Scalar(oid) => scalar_to_json(oid, text),
        ValueType::Array { element, delimiter } => {
            parse_array(text, element, delimiter).unwrap_or_else(|| Value::String(text.to_string()))
        }
    }
}

fn scalar_to_json(type_oid: u32, text: &str) -> Value {
    use oid::*;
    let converted = match type_oid {
        INT2 | INT4 | INT8 | OID | XID | CID | XID8 => integer(text),
        FLOAT4 | FLOAT8 => float(text),
        BOOL => boolean(text),
        JSON | JSONB => serde_json::from_str(text).ok(),
        BYTEA => bytea(text),
        TIMESTAMPTZ => timestamp(text, true),
        TIMESTAMP => timestamp(text, false),
        _ => None,
    };
    converted.unwrap_or_else(|| Value::String(text.to_string()))
}

/// The largest integer a JSON consumer using IEEE doubles (JavaScript) reads exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A number when a double holds it exactly; beyond ±(2^53 - 1) the caller keeps the text.
fn integer(text: &str) -> Option<Value> {
    let value: i64 = text.parse().ok()?;
    (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER)
        .contains(&value)
        .then(|| Value::from(value))
}

/// Finite floats become numbers; `NaN` and `±Infinity` have no JSON form and stay text.
fn float(text: &str) -> Option<Value> {
    let value: f64 = text.parse().ok()?;
    serde_json::Number::from_f64(value).map(Value::Number)
}

/// `t`/`f` as pgoutput sends them; `true`/`false` as `bool::text` spells them (the writer
/// reads `current` rows through `::text` casts).
fn boolean(text: &str) -> Option<Value> {
    match text {
        "t" | "true" => Some(Value::Bool(true)),
        "f" | "false" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// `\x0a0b` (bytea_output=hex) → standard padded base64.
fn bytea(text: &str) -> Option<Value> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some((hex_digit(*hi)? << 4) | hex_digit(*lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    Some(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// ISO `2025-01-15 11:00:00.123+00` → `2025-01-15T11:00:00.123000Z` (with a zone), or
/// `2025-01-15 11:00:00` → `2025-01-15T11:00:00.000000` (without). `None` for anything
/// RFC 3339 cannot say as is (BC, infinity, years beyond 9999, seconds in the offset).
fn timestamp(text: &str, with_zone: bool) -> Option<Value> {
    let mut s = Scanner::new(text);
    let year = s.digits(4)?;
    s.expect(b'-')?;
    let month = s.digits(2)?;
    s.expect(b'-')?;
    let day = s.digits(2)?;
    s.expect(b' ')?;
    let hour = s.digits(2)?;
    s.expect(b':')?;
    let minute = s.digits(2)?;
    s.expect(b':')?;
    let second = s.digits(2)?;
    let micros = if s.eat(b'.') { s.fraction_micros()? } else { 0 };
    let zone = if with_zone {
        utc_offset(&mut s)?
    } else {
        String::new()
    };
    s.end()?;
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    valid.then(|| {
        Value::String(format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}{zone}"
        ))
    })
}

/// `+00` → `Z`; `+05:30` or `-03` → `+05:30`, `-03:00`. Postgres prints seconds only for
/// historical local mean time offsets, which RFC 3339 cannot express: `None`.
fn utc_offset(s: &mut Scanner) -> Option<String> {
    let sign = if s.eat(b'+') {
        '+'
    } else if s.eat(b'-') {
        '-'
    } else {
        return None;
    };
    let hours = s.digits(2)?;
    let minutes = if s.eat(b':') { s.digits(2)? } else { 0 };
    if s.eat(b':') {
        let seconds = s.digits(2)?;
        if seconds != 0 {
            return None;
        }
    }
    if minutes > 59 {
        return None;
    }
    Some(if hours == 0 && minutes == 0 {
        "Z".to_string()
    } else {
        format!("{sign}{hours:02}:{minutes:02}")
    })
}

/// A cursor over ASCII text for the fixed-layout date/time forms.
struct Scanner<'a> {
    rest: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            rest: text.as_bytes(),
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Exactly `count` ASCII digits as a number.
    fn digits(&mut self, count: usize) -> Option<u32> {
        let mut value = 0;
        for _ in 0..count {
            let (&c, rest) = self.rest.split_first()?;
            if !c.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(c - b'0');
            self.rest = rest;
        }
        Some(value)
    }

    /// 1 to 6 fractional digits, scaled to microseconds.
    fn fraction_micros(&mut self) -> Option<u32> {
        let mut value = 0;
        let mut count = 0;
        while let Some((&c, rest)) = self.rest.split_first() {
            if !c.is_ascii_digit() {
                break;
            }
            count += 1;
            if count > 6 {
                return None;
            }
            value = value * 10 + u32::from(c - b'0');
            self.rest = rest;
        }
        if count == 0 {
            return None;
        }
        Some(value * 10u32.pow(6 - count))
    }

    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}
