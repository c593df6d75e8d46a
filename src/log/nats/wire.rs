//! The stream's message format: one log write command per JetStream message, JSON.
//!
//! Every node applies the same messages in stream order to its local SQLite materialization,
//! so that it assigns the same seqs as every other node. Replies stay local: a command that
//! wants one carries a `waiter` (the publishing node's id and a counter), and only the node that
//! published it hands the materializer's result back to the caller.

use crate::record::{Change, Op, Row, TxMeta};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Who waits for a command's result: the node that published it (`node`) and its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Waiter {
    pub node: u64,
    pub id: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireCommand {
    /// Opens a block (one local transaction); an unfinished earlier block is discarded.
    Begin,
    Append {
        txs: Vec<(WireTx, Vec<WireChange>)>,
    },
    AppendCopied {
        tx: WireTx,
        changes: Vec<WireChange>,
        floor: u64,
    },
    RemoveCollection {
        collection: String,
    },
    Columns {
        collection: String,
        columns: String,
    },
    ResetSource {
        source: String,
        waiter: Waiter,
    },
    PurgeTombstones {
        before: String,
        waiter: Waiter,
    },
    /// The commit marker: a block counts only once this is in the stream.
    Commit {
        source: String,
        position: String,
        waiter: Waiter,
    },
    Rollback,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireTx {
    pub source: String,
    pub commit_time: String,
    pub id: String,
    pub position: String,
}

impl From<&TxMeta> for WireTx {
    fn from(tx: &TxMeta) -> WireTx {
        WireTx {
            source: tx.source.to_string(),
            commit_time: tx.commit_time.clone(),
            id: tx.id.clone(),
            position: tx.position.clone(),
        }
    }
}

impl From<WireTx> for TxMeta {
    fn from(tx: WireTx) -> TxMeta {
        TxMeta {
            source: Arc::from(tx.source),
            commit_time: tx.commit_time,
            id: tx.id,
            position: tx.position,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireChange {
    pub collection: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Row>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_key: Option<Row>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Row>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Row>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
}

impl From<Change> for WireChange {
    fn from(c: Change) -> WireChange {
        WireChange {
            collection: c.collection,
            op: c.op,
            key: c.key,
            old_key: c.old_key,
            after: c.after,
            before: c.before,
            changed: c.changed,
            unchanged: c.unchanged,
        }
    }
}

impl From<WireChange> for Change {
    fn from(c: WireChange) -> Change {
        Change {
            collection: c.collection,
            op: c.op,
            key: c.key,
            old_key: c.old_key,
            after: c.after,
            before: c.before,
            changed: c.changed,
            unchanged: c.unchanged,
        }
    }
}

/// Encodes `command`, split into several messages of the same kind when one would pass
/// `max_bytes` (NATS refuses payloads over the server's `max_payload`, 1 MiB by default).
pub fn encode(command: WireCommand, max_bytes: usize) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let bytes = serde_json::to_vec(&command)?;
    if bytes.len() <= max_bytes {
        return Ok(vec![bytes]);
    }
    match command {
        WireCommand::Append { mut txs } if txs.len() > 1 => {
            let rest = txs.split_off(txs.len() / 2);
            let mut out = encode(WireCommand::Append { txs }, max_bytes)?;
            out.extend(encode(WireCommand::Append { txs: rest }, max_bytes)?);
            Ok(out)
        }
        WireCommand::Append { mut txs } if txs[0].1.len() > 1 => {
            let (tx, mut changes) = txs.remove(0);
            let rest = changes.split_off(changes.len() / 2);
            let mut out = encode(
                WireCommand::Append {
                    txs: vec![(tx.clone(), changes)],
                },
                max_bytes,
            )?;
            out.extend(encode(
                WireCommand::Append {
                    txs: vec![(tx, rest)],
                },
                max_bytes,
            )?);
            Ok(out)
        }
        WireCommand::AppendCopied {
            tx,
            mut changes,
            floor,
        } if changes.len() > 1 => {
            let rest = changes.split_off(changes.len() / 2);
            let mut out = encode(
                WireCommand::AppendCopied {
                    tx: tx.clone(),
                    changes,
                    floor,
                },
                max_bytes,
            )?;
            out.extend(encode(
                WireCommand::AppendCopied {
                    tx,
                    changes: rest,
                    floor,
                },
                max_bytes,
            )?);
            Ok(out)
        }
        // One change larger than a message: sent whole (the server refuses it, and says so).
        _ => Ok(vec![bytes]),
    }
}

pub fn decode(payload: &[u8]) -> Result<WireCommand, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// `Change` values are compared by field; `Change` has no serde of its own.
pub fn changes_to_wire(changes: Vec<Change>) -> Vec<WireChange> {
    changes.into_iter().map(WireChange::from).collect()
}

pub fn changes_from_wire(changes: Vec<WireChange>) -> Vec<Change> {
    changes.into_iter().map(Change::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: usize) -> WireChange {
        let mut key = Row::new();
        key.insert("id".into(), serde_json::json!(i));
        WireChange::from(Change {
            collection: "public.t".into(),
            op: Op::Insert,
            after: Some(key.clone()),
            key: Some(key),
            ..Change::default()
        })
    }

    #[test]
    fn a_large_append_splits_into_messages_under_the_limit_in_order() {
        let tx = WireTx {
            source: "s".into(),
            commit_time: "t".into(),
            id: "1".into(),
            position: "0/1".into(),
        };
        let changes: Vec<_> = (0..1000).map(change).collect();
        let parts = encode(
            WireCommand::Append {
                txs: vec![(tx, changes)],
            },
            4096,
        )
        .unwrap();
        assert!(parts.len() > 1);
        let mut ids = Vec::new();
        for part in &parts {
            assert!(part.len() <= 4096, "{}", part.len());
            let WireCommand::Append { txs } = decode(part).unwrap() else {
                panic!("not an append");
            };
            for (_, changes) in txs {
                ids.extend(changes.into_iter().map(|c| c.key.unwrap()["id"].clone()));
            }
        }
        let expected: Vec<_> = (0..1000).map(|i| serde_json::json!(i)).collect();
        assert_eq!(ids, expected);
    }
}
