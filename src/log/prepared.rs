//! Serializing changes on the source's task, before the log writer gets them.
//!
//! The writer thread is the log's bottleneck: it runs SQLite for every change. Most changes
//! need nothing from the log to become a record (no key change, no row scope, no column left
//! out by the source), so a [`LogTxn`](super::LogTxn) serializes those on the source's task and
//! the writer only puts the cursor in front. The rest go to the writer as they are.

use super::scope::ScopeColumns;
use crate::record::{key_text, Change, ChangeRecordRef, Op, TxInfoRef, TxMeta};

/// A change on its way to the writer. (Not boxed: a batch holds at most `APPEND_BATCH` of
/// them, and a raw change would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
pub enum Pending {
    /// Serialized already: the writer adds the cursor, stores and broadcasts it.
    Prepared(PreparedChange),
    /// Needs the log (a key change, a row scope, unchanged columns to fill, a truncate).
    Raw(Change),
}

/// A change whose record is serialized except for its cursor.
pub struct PreparedChange {
    pub collection: String,
    pub op: Op,
    /// The key's canonical text ([`key_text`]).
    pub key: String,
    /// The record's JSON object without its leading `cursor` field: `{"source":…}`.
    pub body: Vec<u8>,
}

/// Serializes `change` when the writer would write it as it is (see [`Pending`]).
pub fn prepare(change: Change, tx: &TxMeta, scopes: &ScopeColumns) -> Pending {
    let as_is = matches!(change.op, Op::Insert | Op::Update | Op::Delete)
        && change.unchanged.is_empty()
        && !scopes.contains_key(&change.collection)
        && (change.old_key.is_none() || change.old_key == change.key);
    let Some(key) = change.key.as_ref().filter(|_| as_is) else {
        return Pending::Raw(change);
    };
    // A delete is stored as its tombstone: the key and the old image, nothing else.
    let delete = change.op == Op::Delete;
    let record = ChangeRecordRef {
        cursor: None,
        source: &tx.source,
        collection: &change.collection,
        op: change.op,
        key: Some(key),
        after: change.after.as_ref().filter(|_| !delete),
        before: change.before.as_ref(),
        changed: change.changed.as_deref().filter(|_| !delete),
        unchanged: &[],
        commit_time: &tx.commit_time,
        tx: TxInfoRef {
            id: &tx.id,
            position: &tx.position,
        },
    };
    let body = match serde_json::to_vec(&record) {
        Ok(body) => body,
        // Cannot happen (string keys, JSON values); the writer reports it if it does.
        Err(_) => return Pending::Raw(change),
    };
    Pending::Prepared(PreparedChange {
        key: key_text(key),
        collection: change.collection,
        op: change.op,
        body,
    })
}

/// Writes the whole record: `{"cursor":"<cursor>",` and the rest of `body`.
pub fn write_record(buf: &mut Vec<u8>, cursor: &str, body: &[u8]) {
    buf.extend_from_slice(b"{\"cursor\":\"");
    buf.extend_from_slice(cursor.as_bytes());
    buf.extend_from_slice(b"\",");
    // `body` is a JSON object with at least `source`: skip its `{`.
    buf.extend_from_slice(body.get(1..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::LogReader;
    use crate::log::writer::LogWriter;
    use crate::record::Row;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn row(value: Value) -> Row {
        value.as_object().cloned().unwrap()
    }

    fn tx() -> Arc<TxMeta> {
        Arc::new(TxMeta {
            source: "pg".into(),
            commit_time: "2025-01-15T11:00:00.000000Z".into(),
            id: "77".into(),
            position: "0/16B3748".into(),
        })
    }

    /// Changes the writer stores as they are, in every shape a source sends them.
    fn as_is_changes() -> Vec<Change> {
        let change = |op, id: i64| Change {
            collection: "public.t".into(),
            op,
            key: Some(row(json!({"id": id}))),
            ..Change::default()
        };
        vec![
            Change {
                after: Some(row(json!({"id": 1, "name": "ä \"q\"\n", "n": null}))),
                ..change(Op::Insert, 1)
            },
            Change {
                after: Some(row(json!({"id": 2, "tags": ["a", {"b": 1.5}]}))),
                before: Some(row(json!({"id": 2, "tags": []}))),
                changed: Some(vec!["tags".into()]),
                old_key: Some(row(json!({"id": 2}))),
                ..change(Op::Update, 2)
            },
            Change {
                after: Some(row(json!({"id": 1, "name": "b"}))),
                ..change(Op::Update, 1)
            },
            Change {
                before: Some(row(json!({"id": 1, "name": "b"}))),
                ..change(Op::Delete, 1)
            },
            change(Op::Delete, 3),
        ]
    }

    /// The stored records of `changes` appended one by one, with their cursors taken out
    /// (each log has its own epoch).
    fn stored(changes: Vec<Change>, prepared: bool) -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path()).unwrap();
        let tx = tx();
        for change in changes {
            if prepared {
                let Pending::Prepared(change) = prepare(change, &tx, &ScopeColumns::new()) else {
                    panic!("not prepared");
                };
                writer.append_prepared(&tx, change).unwrap();
            } else {
                writer.append(&tx, change).unwrap();
            }
        }
        writer.commit("pg", "0/16B3748").unwrap();
        let entries = LogReader::open(dir.path())
            .unwrap()
            .entries_after(0, 100)
            .unwrap();
        entries
            .iter()
            .map(|entry| {
                let mut record: Value = serde_json::from_str(&entry.record).unwrap();
                let cursor = record["cursor"].as_str().unwrap().to_string();
                assert!(cursor.ends_with(&format!("-{}", entry.seq)), "{cursor}");
                let object = record.as_object_mut().unwrap();
                assert_eq!(object.keys().next().unwrap(), "cursor", "cursor first");
                object.remove("cursor");
                json!([entry.seq, record])
            })
            .collect()
    }

    #[test]
    fn prepared_changes_are_stored_exactly_as_the_writer_would_store_them() {
        let direct = stored(as_is_changes(), false);
        assert_eq!(direct.len(), 3, "compaction: {direct:?}");
        assert_eq!(stored(as_is_changes(), true), direct);
    }

    #[test]
    fn changes_that_need_the_log_go_to_the_writer_as_they_are() {
        let tx = tx();
        let scoped: ScopeColumns = [("public.scoped".to_string(), "owner".to_string())].into();
        let base = Change {
            collection: "public.t".into(),
            op: Op::Update,
            key: Some(row(json!({"id": 1}))),
            after: Some(row(json!({"id": 1}))),
            ..Change::default()
        };
        let needs_log = [
            Change {
                unchanged: vec!["big".into()],
                ..base.clone()
            },
            Change {
                old_key: Some(row(json!({"id": 0}))),
                ..base.clone()
            },
            Change {
                collection: "public.scoped".into(),
                ..base.clone()
            },
            Change {
                op: Op::Truncate,
                key: None,
                after: None,
                ..base.clone()
            },
            Change {
                key: None,
                ..base.clone()
            },
        ];
        for change in needs_log {
            assert!(
                matches!(prepare(change.clone(), &tx, &scoped), Pending::Raw(_)),
                "{change:?}"
            );
        }
        assert!(matches!(prepare(base, &tx, &scoped), Pending::Prepared(_)));
    }

    #[test]
    fn the_cursor_goes_first() {
        let mut buf = Vec::new();
        write_record(&mut buf, "7-42", br#"{"source":"pg","op":"insert"}"#);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            r#"{"cursor":"7-42","source":"pg","op":"insert"}"#
        );
    }
}
