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

#[cfg(test)]
mod tests;
