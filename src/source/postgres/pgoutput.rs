//! A pure decoder for pgoutput logical replication messages, protocol version 1.
//!
//! The input is the payload of one XLogData message (the replication-stream framing is
//! handled elsewhere). Wire format: PostgreSQL docs, "Logical Replication Message Formats".
//! Integers are big-endian, strings are NUL-terminated UTF-8. Every malformed, truncated or
//! unknown input is an `Err`; nothing here panics on input bytes.

use bytes::Bytes;

use crate::source::postgres::Lsn;

/// `pg_class.relreplident` of a published table: which old values UPDATE/DELETE carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (flags bit 1).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// One column of a TupleData, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// 'n': SQL NULL (but see [`OldTuple::Key`]).
    Null,
    /// 'u': an unchanged TOASTed value the server did not send. Not NULL.
    UnchangedToast,
    /// 't': the value in text format.
    Text(Bytes),
    /// 'b': the value in binary format (only with the `binary` option, protocol v2+).
    Binary(Bytes),
}

/// The old row sent with an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica identity columns; the others arrive as `Null` meaning
    /// "not sent", not SQL NULL.
    Key(Vec<TupleValue>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Vec<TupleValue>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relation_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {}", describe_byte(*.0))]
    UnknownTag(u8),
    #[error(
        "pgoutput {kind} message {} is unsupported in protocol version 1 \
         (it needs protocol version {needs_version})",
        describe_byte(*.tag)
    )]
    Unsupported {
        tag: u8,
        kind: &'static str,
        needs_version: u8,
    },
    #[error(
        "pgoutput message truncated: needed {needed} more bytes reading {field} of {kind} message"
    )]
    Truncated {
        needed: usize,
        field: String,
        kind: &'static str,
    },
    #[error("pgoutput message truncated: {field} of {kind} message has no terminating NUL")]
    UnterminatedString { field: String, kind: &'static str },
    #[error("invalid UTF-8 in {field} of {kind} message")]
    InvalidUtf8 { field: String, kind: &'static str },
    #[error("negative {field} ({value}) in {kind} message")]
    NegativeLength {
        field: String,
        value: i64,
        kind: &'static str,
    },
    #[error("unknown tuple column kind {} in {field} of {kind} message (expected 'n', 'u', 't' or 'b')", describe_byte(*.found))]
    UnknownColumnKind {
        found: u8,
        field: String,
        kind: &'static str,
    },
    #[error("unknown replica identity {} in Relation message (expected 'd', 'n', 'f' or 'i')", describe_byte(*.0))]
    UnknownReplicaIdentity(u8),
    #[error("unexpected {} reading {field} of {kind} message (expected {expected})", describe_byte(*.found))]
    UnexpectedMarker {
        found: u8,
        field: &'static str,
        expected: &'static str,
        kind: &'static str,
    },
    #[error("{count} trailing bytes after a complete {kind} message")]
    TrailingBytes { count: usize, kind: &'static str },
}

/// `'X' (0x58)` for printable ASCII, `0x05` otherwise.
fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}' (0x{b:02X})", char::from(b))
    } else {
        format!("0x{b:02X}")
    }
}

/// Decodes one pgoutput message. `Bytes` so tuple values are zero-copy slices of the payload.
pub fn decode(payload: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let mut reader = Reader::new(payload, "pgoutput");
    let tag = reader.u8("tag").map_err(|_| DecodeError::Empty)?;
    reader.kind = message_kind(tag)?;
    let message = match tag {
        b'B' => begin(&mut reader)?,
        b'C' => commit(&mut reader)?,
        b'O' => origin(&mut reader)?,
        b'R' => PgOutputMessage::Relation(relation(&mut reader)?),
        b'Y' => type_message(&mut reader)?,
        b'I' => insert(&mut reader)?,
        b'U' => update(&mut reader)?,
        b'D' => delete(&mut reader)?,
        b'T' => truncate(&mut reader)?,
        b'M' => logical_message(&mut reader)?,
        other => return Err(DecodeError::UnknownTag(other)),
    };
    reader.finish()?;
    Ok(message)
}

/// The name of a message kind, used in error messages, or an error for tags we cannot decode.
fn message_kind(tag: u8) -> Result<&'static str, DecodeError> {
    let unsupported = |kind, needs_version| DecodeError::Unsupported {
        tag,
        kind,
        needs_version,
    };
    Ok(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        // Streaming of in-progress transactions (protocol v2); we never ask for it.
        b'S' => return Err(unsupported("Stream Start", 2)),
        b'E' => return Err(unsupported("Stream Stop", 2)),
        b'c' => return Err(unsupported("Stream Commit", 2)),
        b'A' => return Err(unsupported("Stream Abort", 2)),
        // Two-phase commit (protocol v3).
        b'b' => return Err(unsupported("Begin Prepare", 3)),
        b'P' => return Err(unsupported("Prepare", 3)),
        b'K' => return Err(unsupported("Commit Prepared", 3)),
        b'r' => return Err(unsupported("Rollback Prepared", 3)),
        b'p' => return Err(unsupported("Stream Prepare", 3)),
        other => return Err(DecodeError::UnknownTag(other)),
    })
}

fn begin(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Begin {
        final_lsn: r.lsn("final LSN")?,
        commit_time: r.i64("commit timestamp")?,
        xid: r.u32("xid")?,
    })
}

fn commit(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Commit {
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit LSN")?,
        end_lsn: r.lsn("end LSN")?,
        commit_time: r.i64("commit timestamp")?,
    })
}

fn origin(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Origin {
        commit_lsn: r.lsn("commit LSN")?,
        name: r.string("origin name")?,
    })
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = match r.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::UnknownReplicaIdentity(other)),
    };
    let count = r.count16("column count")?;
    let mut columns = Vec::with_capacity(count);
    for i in 0..count {
        r.column = Some(i);
        columns.push(RelationColumn {
            is_key: r.u8("flags")? & 1 != 0,
            name: r.string("name")?,
            type_oid: r.u32("type oid")?,
            type_modifier: r.i32("type modifier")?,
        });
    }
    r.column = None;
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_message(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Type {
        id: r.u32("type oid")?,
        namespace: r.string("namespace")?,
        name: r.string("type name")?,
    })
}

fn insert(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let relation_id = r.u32("relation id")?;
    r.expect_new_tuple_marker()?;
    Ok(PgOutputMessage::Insert {
        relation_id,
        new: r.tuple_data()?,
    })
}

fn update(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let relation_id = r.u32("relation id")?;
    // The old tuple is optional: without it the next marker is already 'N'.
    let old = match r.u8("tuple marker")? {
        b'K' => Some(OldTuple::Key(r.tuple_data()?)),
        b'O' => Some(OldTuple::Full(r.tuple_data()?)),
        b'N' => None,
        found => {
            return Err(r.unexpected_marker(found, "tuple marker", "'K', 'O' or 'N'"));
        }
    };
    if old.is_some() {
        r.expect_new_tuple_marker()?;
    }
    Ok(PgOutputMessage::Update {
        relation_id,
        old,
        new: r.tuple_data()?,
    })
}

fn delete(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let old = match r.u8("tuple marker")? {
        b'K' => OldTuple::Key(r.tuple_data()?),
        b'O' => OldTuple::Full(r.tuple_data()?),
        found => return Err(r.unexpected_marker(found, "tuple marker", "'K' or 'O'")),
    };
    Ok(PgOutputMessage::Delete { relation_id, old })
}

fn truncate(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let count = r.length32("relation count")?;
    let options = r.u8("options")?;
    // Cap the allocation by what the payload can hold, not by the untrusted count.
    let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relation_ids.push(r.u32("relation id")?);
    }
    Ok(PgOutputMessage::Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_ids,
    })
}

fn logical_message(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let transactional = r.u8("flags")? & 1 != 0;
    let lsn = r.lsn("LSN")?;
    let prefix = r.string("prefix")?;
    let len = r.length32("content length")?;
    let content = r.take(len, "content")?;
    Ok(PgOutputMessage::Message {
        transactional,
        lsn,
        prefix,
        content,
    })
}

/// Reads fields off the front of a payload, naming the field and message in every error.
struct Reader {
    rest: Bytes,
    kind: &'static str,
    /// The column being read, so errors inside a tuple or column list can say which.
    column: Option<usize>,
}

impl Reader {
    fn new(payload: Bytes, kind: &'static str) -> Self {
        Reader {
            rest: payload,
            kind,
            column: None,
        }
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The field's name for an error message, qualified by the column when inside one.
    fn field(&self, name: &str) -> String {
        match self.column {
            Some(i) => format!("{name} of column {i}"),
            None => name.to_string(),
        }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<Bytes, DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.rest.len(),
                field: self.field(field),
                kind: self.kind,
            });
        }
        Ok(self.rest.split_to(n))
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        for (dst, src) in out.iter_mut().zip(bytes.iter()) {
            *dst = *src;
        }
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(field)?;
        Ok(b)
    }

    fn i16(&mut self, field: &str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// An Int16 count; the server never sends a negative one.
    fn count16(&mut self, field: &str) -> Result<usize, DecodeError> {
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| self.negative(field, value.into()))
    }

    /// An Int32 length or count; the server never sends a negative one.
    fn length32(&mut self, field: &str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| self.negative(field, value.into()))
    }

    fn negative(&self, field: &str, value: i64) -> DecodeError {
        DecodeError::NegativeLength {
            field: self.field(field),
            value,
            kind: self.kind,
        }
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        let Some(len) = self.rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                field: self.field(field),
                kind: self.kind,
            });
        };
        let raw = self.take(len, field)?;
        self.take(1, field)?; // the NUL
        match std::str::from_utf8(&raw) {
            Ok(text) => Ok(text.to_string()),
            Err(_) => Err(DecodeError::InvalidUtf8 {
                field: self.field(field),
                kind: self.kind,
            }),
        }
    }

    fn unexpected_marker(
        &self,
        found: u8,
        field: &'static str,
        expected: &'static str,
    ) -> DecodeError {
        DecodeError::UnexpectedMarker {
            found,
            field,
            expected,
            kind: self.kind,
        }
    }

    fn expect_new_tuple_marker(&mut self) -> Result<(), DecodeError> {
        match self.u8("new tuple marker")? {
            b'N' => Ok(()),
            found => Err(self.unexpected_marker(found, "new tuple marker", "'N'")),
        }
    }

    /// TupleData: Int16 column count, then one kind byte (+ value) per column.
    fn tuple_data(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let count = self.count16("tuple column count")?;
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for i in 0..count {
            self.column = Some(i);
            values.push(self.tuple_value()?);
        }
        self.column = None;
        Ok(values)
    }

    fn tuple_value(&mut self) -> Result<TupleValue, DecodeError> {
        Ok(match self.u8("kind")? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => TupleValue::Text(self.sized_value()?),
            b'b' => TupleValue::Binary(self.sized_value()?),
            found => {
                return Err(DecodeError::UnknownColumnKind {
                    found,
                    field: self.field("kind"),
                    kind: self.kind,
                })
            }
        })
    }

    fn sized_value(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.length32("value length")?;
        self.take(len, "value")
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
                kind: self.kind,
            })
        }
    }
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Days in a 400-year Gregorian cycle.
const DAYS_PER_400_YEARS: i64 = 146_097;
/// 2000-03-01 is 60 days after the Postgres epoch (2000 is a leap year).
const MARCH_2000_AFTER_EPOCH: i64 = 60;

/// Postgres epoch (2000-01-01) microseconds → RFC 3339 UTC with exactly 6 fractional digits,
/// e.g. "2025-01-15T11:00:00.123456Z".
///
/// `i64::MAX`/`i64::MIN` are Postgres' `infinity`/`-infinity` and come back as those words.
/// Years outside 0000..=9999 (which RFC 3339 cannot express) use the ISO 8601 expanded form
/// with a sign and six digits, as JavaScript's `Date` does, e.g. "+294276-12-31T…Z".
pub fn pg_micros_to_rfc3339(micros: i64) -> String {
    match micros {
        i64::MAX => return "infinity".to_string(),
        i64::MIN => return "-infinity".to_string(),
        _ => {}
    }
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_pg_days(days);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+07}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    )
}

/// Days since 2000-01-01 → proleptic Gregorian (year, month, day).
///
/// Counting from 2000-03-01 puts the leap day at the end of each (March-based) year and
/// starts a 400-year cycle, so the arithmetic needs no special cases.
fn civil_from_pg_days(days: i64) -> (i64, u32, u32) {
    let since_march = days - MARCH_2000_AFTER_EPOCH;
    let cycle = since_march.div_euclid(DAYS_PER_400_YEARS);
    let day_of_cycle = since_march.rem_euclid(DAYS_PER_400_YEARS);
    // Remove the leap days before this point (one per 4 years, less one per 100, plus the
    // one ending the cycle) so that a plain division by 365 finds the year.
    let leap_days_before = day_of_cycle / 1460 - day_of_cycle / 36524 + day_of_cycle / 146_096;
    let year_of_cycle = (day_of_cycle - leap_days_before) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months from March have lengths 31,30,31,30,31 repeating: 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let (month, year_carry) = if month_from_march < 10 {
        (month_from_march + 3, 0)
    } else {
        (month_from_march - 9, 1)
    };
    let year = 2000 + 400 * cycle + year_of_cycle + year_carry;
    // month is 1..=12 and day 1..=31 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds pgoutput payloads for the tests.
    struct Msg(Vec<u8>);

    /// One TupleData column for [`Msg::tuple`].
    enum Col<'a> {
        Null,
        Unchanged,
        Text(&'a str),
        Binary(&'a [u8]),
    }

    impl Msg {
        fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn str(self, s: &str) -> Self {
            self.raw(s.as_bytes()).u8(0)
        }
        fn tuple(mut self, cols: &[Col]) -> Self {
            self = self.i16(cols.len() as i16);
            for col in cols {
                self = match col {
                    Col::Null => self.u8(b'n'),
                    Col::Unchanged => self.u8(b'u'),
                    Col::Text(s) => self.u8(b't').i32(s.len() as i32).raw(s.as_bytes()),
                    Col::Binary(b) => self.u8(b'b').i32(b.len() as i32).raw(b),
                };
            }
            self
        }
        fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn decode_ok(msg: Msg) -> PgOutputMessage {
        match decode(msg.build()) {
            Ok(m) => m,
            Err(e) => panic!("decode failed: {e}"),
        }
    }

    fn decode_err(bytes: Bytes) -> DecodeError {
        match decode(bytes) {
            Ok(m) => panic!("expected an error, decoded {m:?}"),
            Err(e) => e,
        }
    }

    /// Every strict prefix of a valid message is an error, and so is one extra byte.
    fn assert_truncations_fail(msg: Msg) {
        let full = msg.build();
        assert!(decode(full.clone()).is_ok());
        for len in 0..full.len() {
            let err = decode_err(full.slice(..len));
            assert!(
                matches!(
                    err,
                    DecodeError::Empty
                        | DecodeError::Truncated { .. }
                        | DecodeError::UnterminatedString { .. }
                ),
                "prefix of {len} bytes: {err}"
            );
        }
        let mut longer = full.to_vec();
        longer.push(0);
        let err = decode_err(Bytes::from(longer));
        assert!(
            matches!(err, DecodeError::TrailingBytes { count: 1, .. }),
            "{err}"
        );
    }

    fn begin_msg() -> Msg {
        Msg::new(b'B')
            .u64(0x1_16B3748)
            .i64(790_254_000_123_456)
            .u32(771)
    }

    fn relation_msg() -> Msg {
        Msg::new(b'R')
            .u32(16385)
            .str("public")
            .str("events")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("title")
            .u32(1043)
            .i32(104)
    }

    fn update_full_msg() -> Msg {
        Msg::new(b'U')
            .u32(16385)
            .u8(b'O')
            .tuple(&[Col::Text("42"), Col::Text("old"), Col::Null])
            .u8(b'N')
            .tuple(&[Col::Text("42"), Col::Text("new"), Col::Unchanged])
    }

    fn message_msg() -> Msg {
        Msg::new(b'M')
            .u8(1)
            .u64(0x2A)
            .str("deltarelay")
            .i32(5)
            .raw(b"hello")
    }

    #[test]
    fn decodes_begin() {
        assert_eq!(
            decode_ok(begin_msg()),
            PgOutputMessage::Begin {
                final_lsn: Lsn(0x1_16B3748),
                commit_time: 790_254_000_123_456,
                xid: 771,
            }
        );
    }

    #[test]
    fn decodes_commit() {
        let msg = Msg::new(b'C').u8(0).u64(10).u64(20).i64(-5);
        assert_eq!(
            decode_ok(msg),
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_time: -5,
            }
        );
    }

    #[test]
    fn decodes_origin() {
        let msg = Msg::new(b'O').u64(99).str("node_a");
        assert_eq!(
            decode_ok(msg),
            PgOutputMessage::Origin {
                commit_lsn: Lsn(99),
                name: "node_a".to_string(),
            }
        );
    }

    #[test]
    fn decodes_relation() {
        assert_eq!(
            decode_ok(relation_msg()),
            PgOutputMessage::Relation(Relation {
                id: 16385,
                namespace: "public".to_string(),
                name: "events".to_string(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".to_string(),
                        type_oid: 23,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "title".to_string(),
                        type_oid: 1043,
                        type_modifier: 104,
                    },
                ],
            })
        );
    }

    #[test]
    fn decodes_every_replica_identity() {
        let cases = [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ];
        for (byte, expected) in cases {
            let msg = Msg::new(b'R').u32(1).str("").str("t").u8(byte).i16(0);
            match decode_ok(msg) {
                PgOutputMessage::Relation(rel) => {
                    assert_eq!(rel.replica_identity, expected);
                    assert_eq!(rel.namespace, "");
                    assert!(rel.columns.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
        let msg = Msg::new(b'R').u32(1).str("").str("t").u8(b'x').i16(0);
        let err = decode_err(msg.build());
        assert!(
            matches!(err, DecodeError::UnknownReplicaIdentity(b'x')),
            "{err}"
        );
    }

    #[test]
    fn decodes_type() {
        let msg = Msg::new(b'Y').u32(70000).str("public").str("mood");
        assert_eq!(
            decode_ok(msg),
            PgOutputMessage::Type {
                id: 70000,
                namespace: "public".to_string(),
                name: "mood".to_string(),
            }
        );
    }

    #[test]
    fn decodes_insert_with_every_column_kind() {
        let msg = Msg::new(b'I').u32(16385).u8(b'N').tuple(&[
            Col::Text("42"),
            Col::Null,
            Col::Unchanged,
            Col::Binary(&[0, 0, 0, 42]),
            Col::Text(""),
        ]);
        assert_eq!(
            decode_ok(msg),
            PgOutputMessage::Insert {
                relation_id: 16385,
                new: vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 42])),
                    text(""),
                ],
            }
        );
    }

    #[test]
    fn tuple_values_are_slices_of_the_payload() {
        let payload = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[Col::Text("abc")])
            .build();
        let start = payload.as_ptr() as usize;
        let end = start + payload.len();
        match decode(payload.clone()) {
            Ok(PgOutputMessage::Insert { new, .. }) => match new.first() {
                Some(TupleValue::Text(b)) => {
                    let p = b.as_ptr() as usize;
                    assert!(p >= start && p + b.len() <= end);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_update_without_old_tuple() {
        let msg = Msg::new(b'U')
            .u32(7)
            .u8(b'N')
            .tuple(&[Col::Text("1"), Col::Unchanged]);
        assert_eq!(
            decode_ok(msg),
            PgOutputMessage::Update {
                relation_id: 7,
                old: None,
                new: vec![text("1"), TupleValue::UnchangedToast],
            }
        );
    }

    #[test]
    fn decodes_update_with_key_old_tuple() {
        // The key changed: the old key is sent, non-key columns arrive as 'n' (not sent).
        let msg = Msg::new(b'U')
            .u32(7)
            .u8(b'K')
            .tuple(&[Col::Text("1"), Col::Null])
            .u8(b'N')
            .tuple(&[Col::Text("2"), Col::Text("x")]);
        assert_eq!(
            decode_ok(msg),
            PgOutputMessage::Update {
                relation_id: 7,
                old: Some(OldTuple::Key(vec![text("1"), TupleValue::Null])),
                new: vec![text("2"), text("x")],
            }
        );
    }

    #[test]
    fn decodes_update_with_full_old_tuple() {
        assert_eq!(
            decode_ok(update_full_msg()),
            PgOutputMessage::Update {
                relation_id: 16385,
                old: Some(OldTuple::Full(vec![
                    text("42"),
                    text("old"),
                    TupleValue::Null
                ])),
                new: vec![text("42"), text("new"), TupleValue::UnchangedToast],
            }
        );
    }

    #[test]
    fn rejects_update_with_bad_markers() {
        let bad_first = Msg::new(b'U').u32(7).u8(b'X').tuple(&[]);
        let err = decode_err(bad_first.build());
        assert!(
            matches!(err, DecodeError::UnexpectedMarker { found: b'X', .. }),
            "{err}"
        );
        // After an old tuple, the new one must follow with 'N'.
        let bad_second = Msg::new(b'U')
            .u32(7)
            .u8(b'K')
            .tuple(&[])
            .u8(b'O')
            .tuple(&[]);
        let err = decode_err(bad_second.build());
        assert!(
            matches!(err, DecodeError::UnexpectedMarker { found: b'O', .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Update"), "{err}");
    }

    #[test]
    fn decodes_delete_key_and_full() {
        let key = Msg::new(b'D')
            .u32(9)
            .u8(b'K')
            .tuple(&[Col::Text("5"), Col::Null]);
        assert_eq!(
            decode_ok(key),
            PgOutputMessage::Delete {
                relation_id: 9,
                old: OldTuple::Key(vec![text("5"), TupleValue::Null]),
            }
        );
        let full = Msg::new(b'D')
            .u32(9)
            .u8(b'O')
            .tuple(&[Col::Text("5"), Col::Text("y")]);
        assert_eq!(
            decode_ok(full),
            PgOutputMessage::Delete {
                relation_id: 9,
                old: OldTuple::Full(vec![text("5"), text("y")]),
            }
        );
        let bad = Msg::new(b'D').u32(9).u8(b'N').tuple(&[]);
        let err = decode_err(bad.build());
        assert!(
            matches!(err, DecodeError::UnexpectedMarker { found: b'N', .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_insert_without_new_marker() {
        let msg = Msg::new(b'I').u32(1).u8(b'K').tuple(&[]);
        let err = decode_err(msg.build());
        assert!(
            matches!(err, DecodeError::UnexpectedMarker { found: b'K', .. }),
            "{err}"
        );
    }

    #[test]
    fn decodes_truncate_options() {
        let cases = [
            (0, false, false),
            (1, true, false),
            (2, false, true),
            (3, true, true),
        ];
        for (options, cascade, restart_identity) in cases {
            let msg = Msg::new(b'T').i32(2).u8(options).u32(16385).u32(16390);
            assert_eq!(
                decode_ok(msg),
                PgOutputMessage::Truncate {
                    cascade,
                    restart_identity,
                    relation_ids: vec![16385, 16390],
                }
            );
        }
    }

    #[test]
    fn rejects_truncate_with_huge_or_negative_count() {
        let huge = Msg::new(b'T').i32(i32::MAX).u8(0).u32(1);
        let err = decode_err(huge.build());
        assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
        let negative = Msg::new(b'T').i32(-1).u8(0);
        let err = decode_err(negative.build());
        assert!(matches!(err, DecodeError::NegativeLength { .. }), "{err}");
    }

    #[test]
    fn decodes_logical_message() {
        assert_eq!(
            decode_ok(message_msg()),
            PgOutputMessage::Message {
                transactional: true,
                lsn: Lsn(0x2A),
                prefix: "deltarelay".to_string(),
                content: Bytes::from_static(b"hello"),
            }
        );
        let non_tx = Msg::new(b'M').u8(0).u64(1).str("p").i32(0);
        assert_eq!(
            decode_ok(non_tx),
            PgOutputMessage::Message {
                transactional: false,
                lsn: Lsn(1),
                prefix: "p".to_string(),
                content: Bytes::new(),
            }
        );
    }

    #[test]
    fn every_truncation_point_is_an_error() {
        assert_truncations_fail(begin_msg());
        assert_truncations_fail(Msg::new(b'C').u8(0).u64(10).u64(20).i64(30));
        assert_truncations_fail(Msg::new(b'O').u64(99).str("node_a"));
        assert_truncations_fail(relation_msg());
        assert_truncations_fail(Msg::new(b'Y').u32(1).str("s").str("t"));
        assert_truncations_fail(Msg::new(b'I').u32(1).u8(b'N').tuple(&[
            Col::Text("42"),
            Col::Null,
            Col::Unchanged,
            Col::Binary(&[1, 2]),
        ]));
        assert_truncations_fail(update_full_msg());
        assert_truncations_fail(Msg::new(b'D').u32(9).u8(b'K').tuple(&[Col::Text("5")]));
        assert_truncations_fail(Msg::new(b'T').i32(2).u8(1).u32(1).u32(2));
        assert_truncations_fail(message_msg());
    }

    #[test]
    fn truncation_error_names_field_and_message() {
        let full = relation_msg().build();
        // Cut inside the type oid of the second column (after its name "title\0").
        let cut = full.len() - 6;
        let err = decode_err(full.slice(..cut));
        assert_eq!(
            err.to_string(),
            "pgoutput message truncated: needed 2 more bytes reading type oid of column 1 \
             of Relation message"
        );
    }

    #[test]
    fn rejects_empty_payload() {
        let err = decode_err(Bytes::new());
        assert!(matches!(err, DecodeError::Empty), "{err}");
    }

    #[test]
    fn rejects_unknown_tag() {
        let err = decode_err(Bytes::from_static(b"X"));
        assert!(matches!(err, DecodeError::UnknownTag(b'X')), "{err}");
        assert_eq!(err.to_string(), "unknown pgoutput message tag 'X' (0x58)");
        let err = decode_err(Bytes::from_static(&[0x01, 0x02]));
        assert_eq!(err.to_string(), "unknown pgoutput message tag 0x01");
    }

    #[test]
    fn rejects_streaming_and_two_phase_messages() {
        for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p'] {
            let err = decode_err(Msg::new(tag).u32(1).build());
            assert!(matches!(err, DecodeError::Unsupported { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("unsupported in protocol version 1"),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_unknown_tuple_column_kind() {
        let msg = Msg::new(b'I').u32(1).u8(b'N').i16(2).u8(b'n').u8(b'x');
        let err = decode_err(msg.build());
        assert!(
            matches!(err, DecodeError::UnknownColumnKind { found: b'x', .. }),
            "{err}"
        );
        assert!(err.to_string().contains("column 1"), "{err}");
    }

    #[test]
    fn rejects_negative_value_length() {
        let msg = Msg::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1);
        let err = decode_err(msg.build());
        assert!(matches!(err, DecodeError::NegativeLength { .. }), "{err}");
    }

    #[test]
    fn rejects_invalid_utf8() {
        let msg = Msg::new(b'Y').u32(1).raw(&[0xFF, 0xFE, 0]).str("t");
        let err = decode_err(msg.build());
        assert!(matches!(err, DecodeError::InvalidUtf8 { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "invalid UTF-8 in namespace of Type message"
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        let msg = begin_msg().raw(b"junk");
        let err = decode_err(msg.build());
        assert_eq!(
            err.to_string(),
            "4 trailing bytes after a complete Begin message"
        );
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(pg_micros_to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        // 2025-01-15T11:00:00Z is Unix 1736938800; the Postgres epoch is Unix 946684800.
        let micros = (1_736_938_800 - 946_684_800) * MICROS_PER_SECOND + 123_456;
        assert_eq!(pg_micros_to_rfc3339(micros), "2025-01-15T11:00:00.123456Z");
        assert_eq!(pg_micros_to_rfc3339(1), "2000-01-01T00:00:00.000001Z");
    }

    #[test]
    fn formats_negative_timestamps() {
        assert_eq!(pg_micros_to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            pg_micros_to_rfc3339(-MICROS_PER_SECOND),
            "1999-12-31T23:59:59.000000Z"
        );
        // 1900-03-01 is Unix -2203891200.
        let micros = (-2_203_891_200 - 946_684_800) * MICROS_PER_SECOND;
        assert_eq!(pg_micros_to_rfc3339(micros), "1900-03-01T00:00:00.000000Z");
        // 1970-01-01, the Unix epoch.
        assert_eq!(
            pg_micros_to_rfc3339(-946_684_800 * MICROS_PER_SECOND),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn formats_leap_years() {
        let at = |unix: i64| pg_micros_to_rfc3339((unix - 946_684_800) * MICROS_PER_SECOND);
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000000Z");
        assert_eq!(at(1_709_251_200), "2024-03-01T00:00:00.000000Z");
        // 2000 is a leap year (divisible by 400): Feb 29 exists.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000Z");
        // 2100 is not (divisible by 100): Feb 28 is followed by Mar 1.
        assert_eq!(at(4_107_456_000), "2100-02-28T00:00:00.000000Z");
        assert_eq!(at(4_107_456_000 + 86_400), "2100-03-01T00:00:00.000000Z");
        // 1600 is (divisible by 400), before the epoch.
        assert_eq!(at(-11_670_955_200), "1600-02-29T12:00:00.000000Z");
        assert_eq!(
            at(-11_670_955_200 - 12 * 3600 - 1),
            "1600-02-28T23:59:59.000000Z"
        );
    }

    #[test]
    fn formats_extreme_timestamps() {
        assert_eq!(pg_micros_to_rfc3339(i64::MAX), "infinity");
        assert_eq!(pg_micros_to_rfc3339(i64::MIN), "-infinity");
        // Near the ends of the range nothing overflows and the year gets a sign.
        assert_eq!(
            pg_micros_to_rfc3339(i64::MAX - 1),
            "+294277-01-09T04:00:54.775806Z"
        );
        assert_eq!(
            pg_micros_to_rfc3339(i64::MIN + 1),
            "-290278-12-22T19:59:05.224193Z"
        );
        // The last and first four-digit years.
        let day = 86_400 * MICROS_PER_SECOND;
        let year_10000 = (253_402_300_800 - 946_684_800) * MICROS_PER_SECOND;
        assert_eq!(
            pg_micros_to_rfc3339(year_10000 - 1),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            pg_micros_to_rfc3339(year_10000),
            "+010000-01-01T00:00:00.000000Z"
        );
        let year_0 = (-62_167_219_200 - 946_684_800) * MICROS_PER_SECOND;
        assert_eq!(pg_micros_to_rfc3339(year_0), "0000-01-01T00:00:00.000000Z");
        assert_eq!(
            pg_micros_to_rfc3339(year_0 - day),
            "-000001-12-31T00:00:00.000000Z"
        );
    }

    #[test]
    fn civil_dates_round_trip_day_by_day() {
        // Walk ~900 years across the epoch and check each day follows the previous one.
        let mut prev = civil_from_pg_days(-200_000);
        for days in -199_999..130_000 {
            let (y, m, d) = civil_from_pg_days(days);
            let expected = if prev.2 < days_in_month(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "day {days}");
            prev = (y, m, d);
        }
    }

    fn days_in_month(year: i64, month: u32) -> u32 {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }
}
