//! Multi-document transactions: a write with `autocommit: false` is applied at once, but its
//! oplog entry is held back under its (`lsid.id`, `txnNumber`) until `commitTransaction`, when
//! all of them enter the oplog together with one `clusterTime`. Isolation and write conflicts
//! are not emulated; `abortTransaction` is in `txn_undo`.

use super::commands::{bad, ok, Reply};
use super::*;

/// (`lsid.id` bytes, `txnNumber`).
pub(super) type TxnKey = (Vec<u8>, i64);

/// The transaction a command belongs to, if it is inside one.
pub(super) fn transaction_of(command: &Document) -> Option<TxnKey> {
    if command.get_bool("autocommit") != Ok(false) {
        return None;
    }
    let number = command.get_i64("txnNumber").ok()?;
    let lsid = command.get_document("lsid").ok()?;
    match lsid.get("id")? {
        Bson::Binary(b) => Some((b.bytes.clone(), number)),
        _ => None,
    }
}

impl State {
    /// Keeps an open transaction's event (with its images) until the commit.
    pub(super) fn hold_back(
        &mut self,
        key: &TxnKey,
        mut event: Document,
        pre: Option<Document>,
        post: Option<Document>,
    ) {
        if let Some(pre) = pre {
            event.insert("__pre", pre);
        }
        if let Some(post) = post {
            event.insert("__post", post);
        }
        // As the server shows it: the session id and the hash of the user who owns it.
        event.insert("lsid", doc! {
            "id": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: key.0.clone() }),
            "uid": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0xe3; 32] }),
        });
        event.insert("txnNumber", key.1);
        self.txns.entry(key.clone()).or_default().push(event);
    }

    /// `commitTransaction`: the held-back events enter the oplog, sharing one clusterTime.
    pub(super) fn commit_transaction(&mut self, txn: Option<TxnKey>) -> Reply {
        let key = txn.ok_or_else(|| bad("commitTransaction without a transaction"))?;
        self.forget_undo(&key);
        if let Some(events) = self.txns.remove(&key) {
            self.txn_time = Some(self.next_ts());
            for mut event in events {
                let pre = event.remove("__pre").and_then(|b| b.as_document().cloned());
                let post = event
                    .remove("__post")
                    .and_then(|b| b.as_document().cloned());
                let db = event
                    .get_document("ns")
                    .ok()
                    .and_then(|ns| ns.get_str("db").ok())
                    .map(String::from);
                self.log(db.as_deref(), event, pre, post, None);
            }
            self.txn_time = None;
        }
        Ok(ok(doc! {}))
    }
}
