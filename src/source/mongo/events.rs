//! Change events → changes of the unified record, and reassembly of split events.

use super::config::FullDocumentMode;
use super::values::{document_to_row, key_of};
use crate::record::{Change, Op, TxMeta};
use crate::time::unix_millis_to_rfc3339;
use mongodb::bson::{Bson, Document};
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("change event {token}: {message}")]
pub struct EventError {
    token: String,
    message: String,
}

/// What the session must do with one change event.
#[derive(Debug, Default)]
pub struct Mapped {
    /// `lsid`+`txnNumber` of a multi-document transaction; its events share one log transaction.
    pub txn: Option<String>,
    pub meta: Option<TxMeta>,
    pub changes: Vec<Change>,
    /// A synced collection to copy again after `changes` (the target of a rename).
    pub recopy: Option<String>,
    /// The stream ended (`invalidate`): reopen it with `startAfter` this event's token.
    pub invalidate: bool,
    /// An update without its post-image (`whenAvailable`): the session looks up the document
    /// (collection, `_id`) and fills `after`, or drops the change when it is gone.
    pub lookup: Option<(String, Bson)>,
}

/// Which collections of which database a source syncs, and how.
#[derive(Debug, Clone)]
pub struct Mapper {
    pub source: Arc<str>,
    pub database: String,
    /// `None` = every collection of the database.
    pub collections: Option<HashSet<String>>,
    pub pre_images: bool,
    pub full_document: FullDocumentMode,
}

impl Mapper {
    pub fn synced(&self, collection: &str) -> bool {
        // The writer's ledger of mutation ids is never synced.
        collection != super::write::LEDGER
            && match &self.collections {
                Some(list) => list.contains(collection),
                None => !collection.starts_with("system."),
            }
    }

    /// `database.collection`, the record's `collection`.
    pub fn qualified(&self, collection: &str) -> String {
        format!("{}.{collection}", self.database)
    }

    pub fn map(&self, event: Document) -> Result<Mapped, EventError> {
        let token = event.get("_id").cloned().unwrap_or(Bson::Null);
        let fail = |message: String| EventError {
            token: token.clone().into_relaxed_extjson().to_string(),
            message,
        };
        let op = event
            .get_str("operationType")
            .map_err(|_| fail("no operationType".into()))?
            .to_string();
        let ns = event.get_document("ns").ok();
        let coll = ns.and_then(|ns| ns.get_str("coll").ok()).map(String::from);
        let in_db = ns.and_then(|ns| ns.get_str("db").ok()) == Some(self.database.as_str());
        let mut mapped = Mapped {
            txn: transaction_of(&event),
            meta: Some(self.meta(&event, &token)),
            ..Mapped::default()
        };
        if op == "invalidate" {
            mapped.invalidate = true;
            return Ok(mapped);
        }
        let Some(coll) = coll.filter(|_| in_db) else {
            return Ok(mapped); // dropDatabase (its drops came first) or another database
        };
        let collection = self.qualified(&coll);
        let document_key = || -> Result<Bson, EventError> {
            event
                .get_document("documentKey")
                .ok()
                .and_then(|k| k.get("_id"))
                .cloned()
                .ok_or_else(|| fail(format!("{op} without documentKey._id")))
        };
        let before = || {
            self.pre_images
                .then(|| event.get_document("fullDocumentBeforeChange").ok())
                .flatten()
                .map(|d| document_to_row(d.clone()))
        };
        match op.as_str() {
            "insert" | "update" | "replace" if self.synced(&coll) => {
                let full = event.get_document("fullDocument").ok();
                if full.is_none() && self.full_document == FullDocumentMode::UpdateLookup {
                    // Deleted since: its delete follows in the stream.
                    tracing::debug!(source = %self.source, collection, "update of a since deleted document skipped");
                    return Ok(mapped);
                }
                if full.is_none() {
                    // whenAvailable without a post-image (not enabled then, or expired).
                    mapped.lookup = Some((coll.clone(), document_key()?));
                }
                let changed = (op == "update")
                    .then(|| {
                        event
                            .get_document("updateDescription")
                            .ok()
                            .map(changed_fields)
                    })
                    .flatten();
                mapped.changes.push(Change {
                    collection,
                    op: if op == "insert" {
                        Op::Insert
                    } else {
                        Op::Update
                    },
                    key: Some(key_of(document_key()?)),
                    after: full.map(|full| document_to_row(full.clone())),
                    before: if op == "insert" { None } else { before() },
                    changed,
                    ..Change::default()
                });
            }
            "delete" if self.synced(&coll) => mapped.changes.push(Change {
                collection,
                op: Op::Delete,
                key: Some(key_of(document_key()?)),
                before: before(),
                ..Change::default()
            }),
            "drop" if self.synced(&coll) => mapped.changes.push(truncate(collection)),
            "rename" => {
                if self.synced(&coll) {
                    mapped.changes.push(truncate(collection));
                }
                let to = event.get_document("to").ok();
                let to_db = to.and_then(|t| t.get_str("db").ok());
                let to_coll = to.and_then(|t| t.get_str("coll").ok());
                if let (Some(db), Some(to_coll)) = (to_db, to_coll) {
                    if db == self.database && self.synced(to_coll) {
                        mapped.changes.push(truncate(self.qualified(to_coll)));
                        mapped.recopy = Some(to_coll.to_string());
                    }
                }
            }
            _ => {} // unsynced collections, DDL events shown only with showExpandedEvents
        }
        Ok(mapped)
    }

    fn meta(&self, event: &Document, token: &Bson) -> TxMeta {
        let cluster_time = event.get_timestamp("clusterTime").ok();
        let millis = match (event.get_datetime("wallTime"), cluster_time) {
            (Ok(wall), _) => wall.timestamp_millis(),
            (Err(_), Some(ts)) => i64::from(ts.time) * 1000,
            (Err(_), None) => mongodb::bson::DateTime::now().timestamp_millis(),
        };
        let position = match token {
            Bson::Document(d) => d
                .get_str("_data")
                .map(String::from)
                .unwrap_or_else(|_| token.clone().into_relaxed_extjson().to_string()),
            _ => token.clone().into_relaxed_extjson().to_string(),
        };
        TxMeta {
            source: self.source.clone(),
            commit_time: unix_millis_to_rfc3339(millis),
            id: transaction_of(event).unwrap_or_else(|| match cluster_time {
                Some(ts) => format!("{}.{}", ts.time, ts.increment),
                None => position.clone(),
            }),
            position,
        }
    }
}

fn truncate(collection: String) -> Change {
    Change {
        collection,
        op: Op::Truncate,
        ..Change::default()
    }
}

/// `updateDescription` → the changed field paths (updated, removed, truncated arrays).
fn changed_fields(description: &Document) -> Vec<String> {
    let mut fields: Vec<String> = description
        .get_document("updatedFields")
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    let names = |key: &str| -> Vec<String> {
        description
            .get_array(key)
            .map(|list| {
                list.iter()
                    .filter_map(|v| match v {
                        Bson::String(s) => Some(s.clone()),
                        Bson::Document(d) => d.get_str("field").ok().map(String::from),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for field in names("removedFields")
        .into_iter()
        .chain(names("truncatedArrays"))
    {
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    fields
}

/// `lsid.id` (hex) and `txnNumber` of an event inside a multi-document transaction.
fn transaction_of(event: &Document) -> Option<String> {
    let number = match event.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => i64::from(*n),
        _ => return None,
    };
    let id = match event.get_document("lsid").ok()?.get("id")? {
        Bson::Binary(b) => b.bytes.iter().map(|b| format!("{b:02x}")).collect(),
        other => other.to_string(),
    };
    Some(format!("{id}:{number}"))
}

/// Reassembles `$changeStreamSplitLargeEvent` fragments into one event.
#[derive(Default)]
pub struct Reassembly {
    parts: Option<Document>,
}

impl Reassembly {
    /// The whole event once its last fragment arrived; `None` while fragments are missing.
    pub fn push(&mut self, mut fragment: Document) -> Result<Option<Document>, String> {
        let Ok(split) = fragment.get_document("splitEvent").cloned() else {
            if self.parts.is_some() {
                return Err("an unsplit event arrived between the fragments of a split one".into());
            }
            return Ok(Some(fragment));
        };
        let number = |key: &str| split.get(key).and_then(Bson::as_i32).unwrap_or(0);
        let (part, of) = (number("fragment"), number("of"));
        fragment.remove("splitEvent");
        match (&mut self.parts, part) {
            (None, 1) => self.parts = Some(fragment),
            (Some(parts), n) if n > 1 => {
                // The first fragment's `_id` names the event; the stream's resume token is
                // the last fragment's.
                for (k, v) in fragment {
                    if k != "_id" {
                        parts.insert(k, v);
                    }
                }
            }
            _ => return Err(format!("split event fragment {part} of {of} out of order")),
        }
        if part == of {
            return Ok(self.parts.take());
        }
        Ok(None)
    }

    pub fn in_progress(&self) -> bool {
        self.parts.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, Timestamp};
    use serde_json::json;

    fn mapper(collections: Option<&[&str]>) -> Mapper {
        Mapper {
            source: "m".into(),
            database: "app".into(),
            collections: collections.map(|c| c.iter().map(|s| s.to_string()).collect()),
            pre_images: true,
            full_document: FullDocumentMode::UpdateLookup,
        }
    }

    fn event(op: &str, extra: Document) -> Document {
        let mut e = doc! {
            "_id": {"_data": "82AA"}, "operationType": op,
            "clusterTime": Timestamp { time: 1_736_938_800, increment: 7 },
            "ns": {"db": "app", "coll": "events"},
        };
        e.extend(extra);
        e
    }

    #[test]
    fn update_carries_changed_fields_and_before() {
        let mapped = mapper(Some(&["events"]))
            .map(event(
                "update",
                doc! {
                    "documentKey": {"_id": 1},
                    "updateDescription": {"updatedFields": {"a": 1}, "removedFields": ["b"], "truncatedArrays": [{"field": "c", "newSize": 1}]},
                    "fullDocument": {"_id": 1, "a": 1, "c": [1]},
                    "fullDocumentBeforeChange": {"_id": 1, "b": 2},
                },
            ))
            .unwrap();
        let change = &mapped.changes[0];
        assert_eq!(change.op, Op::Update);
        assert_eq!(
            change.changed.as_deref(),
            Some(&["a".to_string(), "b".into(), "c".into()][..])
        );
        assert_eq!(
            serde_json::Value::Object(change.before.clone().unwrap()),
            json!({"_id": 1, "b": 2})
        );
        let meta = mapped.meta.unwrap();
        assert_eq!(meta.id, "1736938800.7");
        assert_eq!(meta.position, "82AA");
        assert_eq!(meta.commit_time, "2025-01-15T11:00:00.000000Z");
    }

    #[test]
    fn unsynced_collections_and_other_databases_are_ignored() {
        let m = mapper(Some(&["other"]));
        let mapped = m
            .map(event(
                "insert",
                doc! {"documentKey": {"_id": 1}, "fullDocument": {"_id": 1}},
            ))
            .unwrap();
        assert!(mapped.changes.is_empty());
        let all = mapper(None);
        let mut e = event("delete", doc! {"documentKey": {"_id": 1}});
        e.insert("ns", doc! {"db": "elsewhere", "coll": "events"});
        assert!(all.map(e).unwrap().changes.is_empty());
    }

    #[test]
    fn rename_truncates_the_old_name_and_recopies_the_new() {
        let mapped = mapper(None)
            .map(event(
                "rename",
                doc! {"to": {"db": "app", "coll": "archive"}},
            ))
            .unwrap();
        let ops: Vec<_> = mapped
            .changes
            .iter()
            .map(|c| (c.op, c.collection.as_str()))
            .collect();
        assert_eq!(
            ops,
            vec![(Op::Truncate, "app.events"), (Op::Truncate, "app.archive")]
        );
        assert_eq!(mapped.recopy.as_deref(), Some("archive"));
    }

    #[test]
    fn transactions_are_named_by_session_and_number() {
        let lsid = mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Uuid,
            bytes: vec![0xab; 16],
        };
        let mapped = mapper(None)
            .map(event(
                "delete",
                doc! {"documentKey": {"_id": 1}, "lsid": {"id": lsid}, "txnNumber": 3i64},
            ))
            .unwrap();
        assert_eq!(
            mapped.txn.as_deref(),
            Some(&*format!("{}:3", "ab".repeat(16)))
        );
    }

    #[test]
    fn reassembles_split_events() {
        let mut r = Reassembly::default();
        assert!(r
            .push(
                doc! {"_id": 1, "operationType": "insert", "splitEvent": {"fragment": 1, "of": 2}}
            )
            .unwrap()
            .is_none());
        assert!(r.in_progress());
        let whole = r
            .push(doc! {"_id": 2, "fullDocument": {"x": 1}, "splitEvent": {"fragment": 2, "of": 2}})
            .unwrap()
            .unwrap();
        assert_eq!(
            whole,
            doc! {"_id": 1, "operationType": "insert", "fullDocument": {"x": 1}}
        );
    }
}
