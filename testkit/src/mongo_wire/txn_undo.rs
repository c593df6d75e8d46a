//! What a 7.0 server adds around writes in transactions: `abortTransaction` (the transaction's
//! writes undone, its held-back oplog entries dropped), `operationTime` and `$clusterTime` in
//! replies, and the duplicate-key write error's shape.
//!
//! Undo works per collection: before a transaction's first write to a collection, the
//! collection is remembered as it was; an abort puts it back. A write outside the transaction
//! to the same collection meanwhile would be undone too (a server would have raised a write
//! conflict instead); the tests do not do that.

use super::commands::{bad, ok, Reply};
use super::transactions::TxnKey;
use super::*;

impl State {
    /// Before a write in transaction `key`: remember its collection if this is the
    /// transaction's first write to it.
    pub(super) fn remember_before_write(
        &mut self,
        key: &TxnKey,
        name: &str,
        db: &str,
        command: &Document,
    ) {
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "insert" | "update" | "delete") {
            return;
        }
        let Some(coll) = command.iter().next().and_then(|(_, v)| v.as_str()) else {
            return;
        };
        let ns = format!("{db}.{coll}");
        let before = self.colls.get(&ns).cloned();
        self.undo
            .entry(key.clone())
            .or_default()
            .entry(ns)
            .or_insert(before);
    }

    /// `abortTransaction`: the writes are undone and nothing enters the oplog.
    pub(super) fn abort_transaction(&mut self, txn: Option<TxnKey>) -> Reply {
        let key = txn.ok_or_else(|| bad("abortTransaction without a transaction"))?;
        self.txns.remove(&key);
        for (ns, before) in self.undo.remove(&key).unwrap_or_default() {
            match before {
                Some(coll) => {
                    self.colls.insert(ns, coll);
                }
                None => {
                    self.colls.remove(&ns);
                }
            }
        }
        Ok(ok(doc! {}))
    }

    /// A committed transaction needs no undo.
    pub(super) fn forget_undo(&mut self, key: &TxnKey) {
        self.undo.remove(key);
    }

    /// `operationTime` (the clusterTime of the newest oplog entry) and a gossiped
    /// `$clusterTime`, as a replica-set member adds them to every reply.
    pub(super) fn stamp(&self, reply: &mut Document) {
        let time = self.oplog.back().map_or(
            Timestamp {
                time: self.boot_secs,
                increment: 0,
            },
            |e| e.ts,
        );
        if !reply.contains_key("operationTime") {
            reply.insert("operationTime", time);
        }
        reply.insert(
            "$clusterTime",
            doc! {
                "clusterTime": time,
                "signature": {
                    "hash": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0; 20] }),
                    "keyId": 0i64,
                },
            },
        );
    }
}

/// The write error of an insert whose `_id` is taken, as a 7.0 server reports it.
pub(super) fn duplicate_key(index: usize, ns: &str, id: &Bson) -> Document {
    doc! {
        "index": index as i32,
        "code": 11000,
        "errmsg": format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"),
        "keyPattern": {"_id": 1},
        "keyValue": {"_id": id.clone()},
    }
}
