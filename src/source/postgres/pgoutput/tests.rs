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
