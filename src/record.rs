//! The unified change record (DESIGN.md, "Unified change record") shared by every source.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// A JSON object of column (or field) names to values: a row, a key or an old image.
pub type Row = Map<String, Value>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    #[default]
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }

    /// Deletes and truncates are tombstones: they say a row is gone.
    pub fn is_tombstone(self) -> bool {
        matches!(self, Op::Delete | Op::Truncate)
    }
}

/// What every change of one upstream transaction has in common.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxMeta {
    pub source: Arc<str>,
    /// RFC 3339 UTC with microseconds.
    pub commit_time: String,
    pub id: String,
    /// The source's native position of the commit (Postgres commit LSN `X/Y`).
    pub position: String,
}

/// One change as a source produces it, before the log gives it a cursor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    pub collection: String,
    pub op: Op,
    /// `None` only for `truncate`.
    pub key: Option<Row>,
    /// The row's key before an update that changed it; the log turns such an update into a
    /// delete of the old key and an insert of the new one.
    pub old_key: Option<Row>,
    pub after: Option<Row>,
    pub before: Option<Row>,
    pub changed: Option<Vec<String>>,
    /// Columns whose value the source did not send (unchanged TOAST); the log fills them from
    /// the key's previous entry where it can.
    pub unchanged: Vec<String>,
}

/// `tx` of a stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxInfo {
    pub id: String,
    pub position: String,
}

/// A change as stored in the log and served to clients (the contract's JSON shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub cursor: String,
    pub source: String,
    pub collection: String,
    pub op: Op,
    pub key: Option<Row>,
    pub after: Option<Row>,
    pub before: Option<Row>,
    pub changed: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
    pub commit_time: String,
    pub tx: TxInfo,
}

/// A [`ChangeRecord`] borrowed from its parts, so that the log writer serializes a record without
/// copying them. Same fields, order and attributes as `ChangeRecord`, hence the same JSON.
#[derive(Serialize)]
pub struct ChangeRecordRef<'a> {
    pub cursor: &'a str,
    pub source: &'a str,
    pub collection: &'a str,
    pub op: Op,
    pub key: Option<&'a Row>,
    pub after: Option<&'a Row>,
    pub before: Option<&'a Row>,
    pub changed: Option<&'a [String]>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub unchanged: &'a [String],
    pub commit_time: &'a str,
    pub tx: TxInfoRef<'a>,
}

/// `tx` of a [`ChangeRecordRef`].
#[derive(Serialize)]
pub struct TxInfoRef<'a> {
    pub id: &'a str,
    pub position: &'a str,
}

/// The canonical text of a key, used by the log to find a key's entry. Column order is the
/// source's (stable per table), so equal keys give equal text.
pub fn key_text(key: &Row) -> String {
    // A map serializes exactly as the object holding it, without cloning it into a Value. It
    // cannot fail (string keys, JSON values); were it to, the clone gives the same text.
    serde_json::to_string(key).unwrap_or_else(|_| Value::Object(key.clone()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_in_the_contract_shape() {
        let record = ChangeRecord {
            cursor: "1-42".into(),
            source: "app_pg".into(),
            collection: "public.events".into(),
            op: Op::Update,
            key: json!({"id": 42}).as_object().cloned(),
            after: json!({"id": 42, "status": "done"}).as_object().cloned(),
            before: None,
            changed: None,
            unchanged: vec![],
            commit_time: "2025-01-15T11:00:00.123456Z".into(),
            tx: TxInfo {
                id: "771".into(),
                position: "0/16B3748".into(),
            },
        };
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            text,
            r#"{"cursor":"1-42","source":"app_pg","collection":"public.events","op":"update","key":{"id":42},"after":{"id":42,"status":"done"},"before":null,"changed":null,"commit_time":"2025-01-15T11:00:00.123456Z","tx":{"id":"771","position":"0/16B3748"}}"#
        );
        let back: ChangeRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn the_borrowed_record_serializes_like_the_owned_one() {
        let row = |v: Value| v.as_object().cloned();
        let owned = ChangeRecord {
            cursor: "7-9".into(),
            source: "app_pg".into(),
            collection: "public.docs".into(),
            op: Op::Update,
            key: row(json!({"id": 1})),
            after: row(json!({"id": 1, "title": "a \"quoted\" é"})),
            before: row(json!({"id": 1, "title": "b"})),
            changed: Some(vec!["title".into()]),
            unchanged: vec!["body".into()],
            commit_time: "2025-01-15T11:00:00.123456Z".into(),
            tx: TxInfo {
                id: "771".into(),
                position: "0/16B3748".into(),
            },
        };
        let borrowed = |record: &ChangeRecord| {
            serde_json::to_string(&ChangeRecordRef {
                cursor: &record.cursor,
                source: &record.source,
                collection: &record.collection,
                op: record.op,
                key: record.key.as_ref(),
                after: record.after.as_ref(),
                before: record.before.as_ref(),
                changed: record.changed.as_deref(),
                unchanged: &record.unchanged,
                commit_time: &record.commit_time,
                tx: TxInfoRef {
                    id: &record.tx.id,
                    position: &record.tx.position,
                },
            })
            .unwrap()
        };
        assert_eq!(borrowed(&owned), serde_json::to_string(&owned).unwrap());
        let sparse = ChangeRecord {
            op: Op::Delete,
            after: None,
            before: None,
            changed: None,
            unchanged: vec![],
            ..owned
        };
        assert_eq!(borrowed(&sparse), serde_json::to_string(&sparse).unwrap());
    }

    #[test]
    fn key_text_keeps_column_order() {
        let key = json!({"tenant": 1, "id": "a"})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(key_text(&key), r#"{"tenant":1,"id":"a"}"#);
    }
}
