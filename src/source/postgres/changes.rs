//! Turning decoded pgoutput rows into [`Change`]s: which columns are the key, how each column's
//! text becomes JSON, and what the old tuple tells us.

use super::pgoutput::{OldTuple, Relation, ReplicaIdentity, TupleValue};
use super::values::oid::type_name;
use super::values::{text_to_json, ValueType};
use crate::record::{Change, Op, Row};
use crate::shape::ColumnInfo;
use serde_json::Value;

/// What we know about one published table, from its Relation message plus the catalog.
#[derive(Debug, Clone)]
pub struct TableShape {
    pub collection: String,
    pub columns: Vec<ColumnShape>,
    /// Indexes into `columns` of the row identity, in key order (empty when `append_only`).
    pub key: Vec<usize>,
    /// An insert-only table (`append_only = true`): rows need no identity, each gets a
    /// synthetic key ([`TableShape::synthetic_key`]) from where it came from.
    pub append_only: bool,
}

#[derive(Debug, Clone)]
pub struct ColumnShape {
    pub name: String,
    pub value_type: ValueType,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error(
        "table {0} has no primary key and REPLICA IDENTITY {1}, so its rows cannot be told apart: \
         add a primary key, or run ALTER TABLE {0} REPLICA IDENTITY FULL (or USING INDEX <unique index>)"
    )]
    NoKey(String, &'static str),
    #[error("{collection}: a row has {got} columns but the table has {expected}; the Relation message is stale")]
    ColumnCount {
        collection: String,
        got: usize,
        expected: usize,
    },
}

impl TableShape {
    /// Columns and their types, for the log's catalog (shapes and `/v1/collections`). Domains
    /// are named by their base type; types the relay has no name for are `other`.
    pub fn column_infos(&self) -> Vec<ColumnInfo> {
        let name = |oid: u32| type_name(oid).unwrap_or("other");
        self.columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.clone(),
                type_name: match c.value_type {
                    ValueType::Scalar(oid) => name(oid).to_string(),
                    ValueType::Array { element, .. } => format!("_{}", name(element)),
                },
            })
            .collect()
    }

    /// `primary_key` are the table's primary-key column names from the catalog (may be empty);
    /// `value_types` gives each column's resolved type, in column order.
    pub fn new(
        relation: &Relation,
        primary_key: &[String],
        value_types: Vec<ValueType>,
    ) -> Result<TableShape, ShapeError> {
        let collection = format!("{}.{}", relation.namespace, relation.name);
        let columns: Vec<ColumnShape> = relation
            .columns
            .iter()
            .zip(value_types)
            .map(|(c, value_type)| ColumnShape {
                name: c.name.clone(),
                value_type,
            })
            .collect();
        let position = |name: &String| relation.columns.iter().position(|c| &c.name == name);
        let flagged: Vec<usize> = (0..relation.columns.len())
            .filter(|&i| relation.columns[i].is_key)
            .collect();
        // With REPLICA IDENTITY FULL every column is flagged; the primary key is the better
        // identity when there is one (the old image still arrives in full).
        let key = match relation.replica_identity {
            ReplicaIdentity::Full => {
                let pk: Option<Vec<usize>> = primary_key.iter().map(position).collect();
                match pk {
                    Some(pk) if !pk.is_empty() => pk,
                    _ => (0..relation.columns.len()).collect(),
                }
            }
            _ => flagged,
        };
        if key.is_empty() {
            let identity = match relation.replica_identity {
                ReplicaIdentity::Nothing => "NOTHING",
                _ => "DEFAULT",
            };
            return Err(ShapeError::NoKey(collection, identity));
        }
        Ok(TableShape {
            collection,
            columns,
            key,
            append_only: false,
        })
    }

    /// The shape of an insert-only table, whatever its replica identity.
    pub fn new_append_only(relation: &Relation, value_types: Vec<ValueType>) -> TableShape {
        TableShape {
            collection: format!("{}.{}", relation.namespace, relation.name),
            columns: relation
                .columns
                .iter()
                .zip(value_types)
                .map(|(c, value_type)| ColumnShape {
                    name: c.name.clone(),
                    value_type,
                })
                .collect(),
            key: vec![],
            append_only: true,
        }
    }

    /// An append-only row's key: `{"_row": id}`, where `id` names the row's origin stably
    /// (`<commit LSN>:<n>` for the n-th streamed row of a transaction, `copy:<table oid>:<ctid>`
    /// for a copied one), so that a row delivered again after a crash keeps its key.
    pub fn synthetic_key(id: String) -> Row {
        let mut key = Row::new();
        key.insert("_row".into(), Value::String(id));
        key
    }

    pub fn insert(&self, new: &[TupleValue]) -> Result<Change, ShapeError> {
        let (after, unchanged) = self.row(new)?;
        Ok(Change {
            collection: self.collection.clone(),
            op: Op::Insert,
            key: Some(self.key_of(&after)),
            after: Some(after),
            unchanged,
            ..Change::default()
        })
    }

    pub fn update(&self, old: Option<&OldTuple>, new: &[TupleValue]) -> Result<Change, ShapeError> {
        let (after, unchanged) = self.row(new)?;
        let mut change = Change {
            collection: self.collection.clone(),
            op: Op::Update,
            key: Some(self.key_of(&after)),
            ..Change::default()
        };
        match old {
            None => {}
            Some(OldTuple::Key(values)) => change.old_key = Some(self.key_from_tuple(values)?),
            Some(OldTuple::Full(values)) => {
                let (before, _) = self.row(values)?;
                change.old_key = Some(self.key_of(&before));
                change.changed = Some(
                    self.columns
                        .iter()
                        .filter(|c| {
                            matches!((before.get(&c.name), after.get(&c.name)), (Some(b), Some(a)) if a != b)
                        })
                        .map(|c| c.name.clone())
                        .collect(),
                );
                change.before = Some(before);
            }
        }
        // A key column the server did not send (unchanged TOAST) keeps its old value.
        if let (Some(key), Some(old_key)) = (change.key.as_mut(), change.old_key.as_ref()) {
            for (name, value) in key.iter_mut() {
                if value.is_null() && unchanged.contains(name) {
                    if let Some(old) = old_key.get(name) {
                        *value = old.clone();
                    }
                }
            }
        }
        change.after = Some(after);
        change.unchanged = unchanged;
        Ok(change)
    }

    pub fn delete(&self, old: &OldTuple) -> Result<Change, ShapeError> {
        let mut change = Change {
            collection: self.collection.clone(),
            op: Op::Delete,
            ..Change::default()
        };
        match old {
            OldTuple::Key(values) => change.key = Some(self.key_from_tuple(values)?),
            OldTuple::Full(values) => {
                let (before, _) = self.row(values)?;
                change.key = Some(self.key_of(&before));
                change.before = Some(before);
            }
        }
        Ok(change)
    }

    pub fn truncate(&self) -> Change {
        Change {
            collection: self.collection.clone(),
            op: Op::Truncate,
            ..Change::default()
        }
    }

    /// A full row; columns the server did not send are left out and named in the second half.
    fn row(&self, values: &[TupleValue]) -> Result<(Row, Vec<String>), ShapeError> {
        self.check_width(values)?;
        let mut row = Row::with_capacity(values.len());
        let mut unchanged = Vec::new();
        for (column, value) in self.columns.iter().zip(values) {
            match value {
                TupleValue::UnchangedToast => unchanged.push(column.name.clone()),
                other => {
                    row.insert(column.name.clone(), column_value(column, other));
                }
            }
        }
        Ok((row, unchanged))
    }

    /// The key from a `K` old tuple, where only key columns carry values (the others arrive as
    /// `n`, which there means "not sent", not NULL).
    fn key_from_tuple(&self, values: &[TupleValue]) -> Result<Row, ShapeError> {
        self.check_width(values)?;
        Ok(self
            .key
            .iter()
            .map(|&i| {
                let column = &self.columns[i];
                (column.name.clone(), column_value(column, &values[i]))
            })
            .collect())
    }

    fn key_of(&self, row: &Row) -> Row {
        self.key
            .iter()
            .map(|&i| {
                let name = &self.columns[i].name;
                (name.clone(), row.get(name).cloned().unwrap_or(Value::Null))
            })
            .collect()
    }

    fn check_width(&self, values: &[TupleValue]) -> Result<(), ShapeError> {
        if values.len() != self.columns.len() {
            return Err(ShapeError::ColumnCount {
                collection: self.collection.clone(),
                got: values.len(),
                expected: self.columns.len(),
            });
        }
        Ok(())
    }
}

fn column_value(column: &ColumnShape, value: &TupleValue) -> Value {
    match value {
        TupleValue::Null | TupleValue::UnchangedToast => Value::Null,
        TupleValue::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text_to_json(column.value_type, text),
            // The connection asks for UTF-8, so this is a server-side oddity: keep the data.
            Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        },
        TupleValue::Binary(bytes) => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::postgres::pgoutput::RelationColumn;
    use crate::source::postgres::values::oid;
    use bytes::Bytes;
    use serde_json::json;

    fn relation(identity: ReplicaIdentity, key_flags: &[bool]) -> Relation {
        let names = ["id", "title", "body"];
        let types = [oid::INT4, oid::TEXT, oid::TEXT];
        Relation {
            id: 1,
            namespace: "public".into(),
            name: "events".into(),
            replica_identity: identity,
            columns: (0..3)
                .map(|i| RelationColumn {
                    is_key: key_flags[i],
                    name: names[i].into(),
                    type_oid: types[i],
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn shape(identity: ReplicaIdentity, key_flags: &[bool], pk: &[&str]) -> TableShape {
        let pk: Vec<String> = pk.iter().map(|s| s.to_string()).collect();
        let types = vec![
            ValueType::Scalar(oid::INT4),
            ValueType::Scalar(oid::TEXT),
            ValueType::Scalar(oid::TEXT),
        ];
        TableShape::new(&relation(identity, key_flags), &pk, types).unwrap()
    }

    fn t(text: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn row(value: serde_json::Value) -> Row {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn insert_maps_values_and_key() {
        let s = shape(ReplicaIdentity::Default, &[true, false, false], &["id"]);
        let change = s
            .insert(&[t("42"), t("Standup"), TupleValue::Null])
            .unwrap();
        assert_eq!(change.collection, "public.events");
        assert_eq!(change.key, Some(row(json!({"id": 42}))));
        assert_eq!(
            change.after,
            Some(row(json!({"id": 42, "title": "Standup", "body": null})))
        );
    }

    #[test]
    fn update_with_unchanged_toast_lists_the_column() {
        let s = shape(ReplicaIdentity::Default, &[true, false, false], &["id"]);
        let change = s
            .update(None, &[t("1"), t("x"), TupleValue::UnchangedToast])
            .unwrap();
        assert_eq!(change.unchanged, vec!["body".to_string()]);
        assert_eq!(change.after, Some(row(json!({"id": 1, "title": "x"}))));
        assert_eq!(
            (change.old_key, change.before, change.changed),
            (None, None, None)
        );
    }

    #[test]
    fn key_old_tuple_nulls_are_not_sent_values() {
        let s = shape(ReplicaIdentity::Default, &[true, false, false], &["id"]);
        let old = OldTuple::Key(vec![t("1"), TupleValue::Null, TupleValue::Null]);
        let change = s.update(Some(&old), &[t("2"), t("x"), t("y")]).unwrap();
        assert_eq!(change.old_key, Some(row(json!({"id": 1}))));
        assert_eq!(change.before, None);
        let change = s.delete(&old).unwrap();
        assert_eq!(
            (change.key, change.before),
            (Some(row(json!({"id": 1}))), None)
        );
    }

    #[test]
    fn full_identity_keys_on_the_primary_key_and_reports_changes() {
        let s = shape(ReplicaIdentity::Full, &[true, true, true], &["id"]);
        assert_eq!(s.key, vec![0]);
        let old = OldTuple::Full(vec![t("1"), t("a"), t("b")]);
        let change = s.update(Some(&old), &[t("1"), t("A"), t("b")]).unwrap();
        assert_eq!(
            change.before,
            Some(row(json!({"id": 1, "title": "a", "body": "b"})))
        );
        assert_eq!(change.changed, Some(vec!["title".to_string()]));
        assert_eq!(change.old_key, Some(row(json!({"id": 1}))));
        let change = s.delete(&old).unwrap();
        assert_eq!(change.key, Some(row(json!({"id": 1}))));
        assert!(change.before.is_some());
    }

    #[test]
    fn full_identity_without_primary_key_keys_on_the_whole_row() {
        let s = shape(ReplicaIdentity::Full, &[true, true, true], &[]);
        assert_eq!(s.key, vec![0, 1, 2]);
    }

    #[test]
    fn index_identity_keys_on_the_index_columns() {
        let s = shape(ReplicaIdentity::Index, &[false, true, false], &["id"]);
        let change = s.insert(&[t("1"), t("slug"), t("b")]).unwrap();
        assert_eq!(change.key, Some(row(json!({"title": "slug"}))));
    }

    #[test]
    fn keyless_tables_are_refused_with_advice() {
        let rel = relation(ReplicaIdentity::Default, &[false, false, false]);
        let err = TableShape::new(&rel, &[], vec![ValueType::Scalar(oid::TEXT); 3]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("public.events") && text.contains("REPLICA IDENTITY FULL"),
            "{text}"
        );
    }

    #[test]
    fn wrong_width_is_an_error_not_a_panic() {
        let s = shape(ReplicaIdentity::Default, &[true, false, false], &["id"]);
        assert!(s.insert(&[t("1")]).is_err());
        assert!(s.delete(&OldTuple::Key(vec![])).is_err());
    }
}
