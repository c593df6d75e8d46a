//! The live fan-out of shaped followers: one dispatcher task takes every commit and hands it
//! only to the followers whose shape it concerns, found through an index by (collection,
//! column, value) for shapes with an equality (`owner = 7`, `owner IN (…)`), so that the cost
//! of a change does not grow with the followers it does not match. Shapes without one are
//! matched by collection.
//!
//! A record concerns a follower when its new row or its prior row (see [`Prior`]) has the
//! follower's value: a row entering and a row leaving the shape both reach it. A record whose
//! prior is unknown, a truncate, a commit announced without its records and a rise of the
//! purge mark reach every shaped follower of the collection (or all of them).
//!
//! A follower whose queue is full is marked lagged instead of waited for; it then reads the
//! log from its position, as an unshaped follower does after `Lagged`.

use super::writer::{Committed, Prior};
use crate::record::{Op, Row};
use crate::shape::{value_in, Column, Const, Shape};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

/// Commits queued per shaped follower before it is marked lagged.
const QUEUE: usize = 256;

type SubId = u64;

struct Sub {
    collection: String,
    /// Where it sits in the index: (column name, values), or `None` (matched by collection).
    indexed: Option<(String, Vec<Const>)>,
    queue: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
}

/// A commit for one follower: `Some(indexes)` of the records that concern it (the others need
/// not even be looked at), or `None` for all of them.
pub type Delivery = (Arc<Committed>, Option<Vec<u32>>);

/// One collection's shaped followers.
#[derive(Default)]
struct CollectionSubs {
    all: HashSet<SubId>,
    unindexed: HashSet<SubId>,
    /// Indexed columns (with how many followers use each) and followers by value.
    columns: HashMap<String, (Column, usize)>,
    by_value: HashMap<String, HashMap<Const, Vec<SubId>>>,
}

#[derive(Default)]
struct Index {
    next: SubId,
    subs: HashMap<SubId, Sub>,
    collections: HashMap<String, CollectionSubs>,
    purged_seq: u64,
}

#[derive(Default)]
pub struct ShapeIndex {
    inner: Mutex<Index>,
    dispatching: AtomicBool,
}

impl ShapeIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a follower of `shape`; commits that concern it arrive on the receiver. Starts
    /// the dispatcher on the first call (on the current runtime), fed by `commits`.
    pub fn register(
        self: &Arc<Self>,
        shape: &Shape,
        commits: impl FnOnce() -> broadcast::Receiver<Arc<Committed>>,
    ) -> ShapedReceiver {
        if !self.dispatching.swap(true, Ordering::SeqCst) {
            tokio::spawn(dispatch(Arc::downgrade(self), commits()));
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let equality = shape.equality();
        let mut index = self.lock();
        let id = index.next;
        index.next += 1;
        let subs = index
            .collections
            .entry(shape.collection.clone())
            .or_default();
        subs.all.insert(id);
        let indexed = match equality {
            None => {
                subs.unindexed.insert(id);
                None
            }
            Some(eq) => {
                let name = eq.column.name.clone();
                subs.columns
                    .entry(name.clone())
                    .or_insert_with(|| (eq.column.clone(), 0))
                    .1 += 1;
                let values = subs.by_value.entry(name.clone()).or_default();
                for value in &eq.values {
                    values.entry(value.clone()).or_default().push(id);
                }
                Some((name, eq.values))
            }
        };
        index.subs.insert(
            id,
            Sub {
                collection: shape.collection.clone(),
                indexed,
                queue,
                lagged: lagged.clone(),
            },
        );
        ShapedReceiver {
            id,
            index: self.clone(),
            rx,
            lagged,
        }
    }

    fn unregister(&self, id: SubId) {
        let mut index = self.lock();
        let Some(sub) = index.subs.remove(&id) else {
            return;
        };
        let Some(subs) = index.collections.get_mut(&sub.collection) else {
            return;
        };
        subs.all.remove(&id);
        subs.unindexed.remove(&id);
        if let Some((name, values)) = sub.indexed {
            if let Some(by_value) = subs.by_value.get_mut(&name) {
                for value in values {
                    if let Some(ids) = by_value.get_mut(&value) {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            by_value.remove(&value);
                        }
                    }
                }
            }
            if let Some(column) = subs.columns.get_mut(&name) {
                column.1 -= 1;
                if column.1 == 0 {
                    subs.columns.remove(&name);
                    subs.by_value.remove(&name);
                }
            }
        }
        if subs.all.is_empty() {
            index.collections.remove(&sub.collection);
        }
    }

    /// Hands `commit` to the followers it concerns.
    fn deliver(&self, commit: &Arc<Committed>) {
        let mut index = self.lock();
        let purge_rose = commit.purged_seq > index.purged_seq;
        index.purged_seq = index.purged_seq.max(commit.purged_seq);
        if index.subs.is_empty() {
            return;
        }
        let mut targets: HashMap<SubId, Option<Vec<u32>>> = HashMap::new();
        let mut add = |ids: &mut dyn Iterator<Item = &SubId>, at: usize| {
            for id in ids {
                let only = targets.entry(*id).or_insert_with(|| Some(Vec::new()));
                if let Some(only) = only {
                    if only.last() != Some(&(at as u32)) {
                        only.push(at as u32);
                    }
                }
            }
        };
        match &commit.records {
            Some(records) if !purge_rose => {
                for (at, record) in records.iter().enumerate() {
                    let Some(subs) = index.collections.get(&record.collection) else {
                        continue;
                    };
                    let prior = match &record.prior {
                        Prior::Row(row) => Some(&**row),
                        Prior::Absent => None,
                        Prior::Unknown => {
                            add(&mut subs.all.iter(), at);
                            continue;
                        }
                    };
                    if record.op == Op::Truncate {
                        add(&mut subs.all.iter(), at);
                        continue;
                    }
                    add(&mut subs.unindexed.iter(), at);
                    if subs.columns.is_empty() {
                        continue;
                    }
                    let after = after_of(record.event.json(), record.op);
                    for (name, (column, _)) in &subs.columns {
                        let Some(by_value) = subs.by_value.get(name) else {
                            continue;
                        };
                        for row in [after.as_ref(), prior].into_iter().flatten() {
                            if let Some(ids) = value_in(row, column).and_then(|v| by_value.get(&v))
                            {
                                add(&mut ids.iter(), at);
                            }
                        }
                    }
                }
            }
            // Too large to hold, or the purge mark rose: everyone looks for themselves.
            _ => {
                for id in index.subs.keys() {
                    targets.insert(*id, None);
                }
            }
        }
        for (id, only) in targets {
            if let Some(sub) = index.subs.get(&id) {
                if sub.queue.try_send((commit.clone(), only)).is_err() {
                    sub.lagged.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    fn lag_all(&self) {
        for sub in self.lock().subs.values() {
            sub.lagged.store(true, Ordering::SeqCst);
            // Wake it: an empty queue would otherwise keep it waiting.
            let _ = sub.queue.try_send((
                Arc::new(Committed {
                    after_seq: 0,
                    last_seq: 0,
                    records: Some(Vec::new()),
                    purged_seq: 0,
                }),
                None,
            ));
        }
    }
}

/// The new row of a stored record (its JSON's `after`).
fn after_of(json: &[u8], op: Op) -> Option<Row> {
    if op.is_tombstone() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct After {
        after: Option<Row>,
    }
    serde_json::from_slice::<After>(json).ok()?.after
}

async fn dispatch(index: Weak<ShapeIndex>, mut commits: broadcast::Receiver<Arc<Committed>>) {
    loop {
        let received = commits.recv().await;
        let Some(index) = index.upgrade() else {
            return;
        };
        match received {
            Ok(commit) => index.deliver(&commit),
            Err(RecvError::Lagged(_)) => index.lag_all(),
            Err(RecvError::Closed) => {
                // The log closed: its followers' queues close too, so they end.
                let mut inner = index.lock();
                inner.subs.clear();
                inner.collections.clear();
                return;
            }
        }
    }
}

/// A shaped follower's commits; unregisters when dropped.
pub struct ShapedReceiver {
    id: SubId,
    index: Arc<ShapeIndex>,
    rx: mpsc::Receiver<Delivery>,
    lagged: Arc<AtomicBool>,
}

impl ShapedReceiver {
    /// The next commit that concerns the follower, and whether commits were dropped before
    /// it (then the follower reads the log instead). `None`: the log closed.
    pub async fn recv(&mut self) -> Option<(Delivery, bool)> {
        let delivery = self.rx.recv().await?;
        Some((delivery, self.lagged.swap(false, Ordering::SeqCst)))
    }
}

impl Drop for ShapedReceiver {
    fn drop(&mut self) {
        self.index.unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::StoredRecord;
    use crate::shape::ColumnInfo;
    use crate::sse::ChangeEvent;
    use serde_json::json;

    fn shape(filter: &str) -> Shape {
        let catalog =
            [("id", "int4"), ("owner", "int4"), ("title", "text")].map(|(n, t)| ColumnInfo {
                name: n.into(),
                type_name: t.into(),
            });
        Shape::new("public.t", Some(filter), &[], None, Some(&catalog)).unwrap()
    }

    fn record(seq: u64, owner: i64, prior: Prior) -> Arc<StoredRecord> {
        let json = json!({"cursor": format!("1-{seq}"), "collection": "public.t", "op": "update",
            "key": {"id": 1}, "after": {"id": 1, "owner": owner, "title": "a"}});
        Arc::new(StoredRecord {
            seq,
            txn: seq,
            collection: "public.t".into(),
            op: Op::Update,
            scope: String::new(),
            event: ChangeEvent::build::<()>(&format!("1-{seq}"), 0, |buf| {
                buf.extend_from_slice(json.to_string().as_bytes());
                Ok(())
            })
            .unwrap(),
            prior,
        })
    }

    fn commit(seq: u64, record: Arc<StoredRecord>) -> Arc<Committed> {
        Arc::new(Committed {
            after_seq: seq - 1,
            last_seq: seq,
            records: Some(vec![record]),
            purged_seq: 0,
        })
    }

    fn got(rx: &mut ShapedReceiver) -> usize {
        let mut n = 0;
        while rx.rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn a_change_reaches_only_the_shapes_it_concerns() {
        let index = Arc::new(ShapeIndex::default());
        let (sender, _) = broadcast::channel(4);
        let mut owners: Vec<ShapedReceiver> = (0..100)
            .map(|n| index.register(&shape(&format!("owner = {n}")), || sender.subscribe()))
            .collect();
        let mut listed = index.register(&shape("owner IN (7, 8) AND title = 'a'"), || {
            sender.subscribe()
        });
        let mut unindexed = index.register(&shape("title LIKE '%a%'"), || sender.subscribe());
        let was = |owner: i64| {
            Prior::Row(Arc::new(
                json!({"id": 1, "owner": owner})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ))
        };

        // Owner 3 → 7: the shapes of 3 (a row leaving) and 7 (a row entering), the IN list of
        // 7, and the unindexed shape.
        index.deliver(&commit(1, record(1, 7, was(3))));
        let reached: Vec<usize> = (0..100).filter(|n| got(&mut owners[*n]) > 0).collect();
        assert_eq!(reached, vec![3, 7]);
        assert_eq!((got(&mut listed), got(&mut unindexed)), (1, 1));

        // A prior that was not read reaches every shape of the collection.
        index.deliver(&commit(2, record(2, 7, Prior::Unknown)));
        assert!(owners.iter_mut().all(|rx| got(rx) == 1));

        // A follower gone is out of the index.
        drop(owners.remove(7));
        index.deliver(&commit(3, record(3, 7, Prior::Absent)));
        assert!(owners.iter_mut().all(|rx| got(rx) == 0));
        assert_eq!(got(&mut listed), 2);
        let seven = Const::Num(crate::shape::Num::from_i64(7));
        let inner = index.lock();
        assert_eq!(
            inner.collections["public.t"].by_value["owner"][&seven],
            vec![100]
        );
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_follower_lagged() {
        let index = Arc::new(ShapeIndex::default());
        let (sender, _) = broadcast::channel(4);
        let mut rx = index.register(&shape("owner = 1"), || sender.subscribe());
        for seq in 1..=(QUEUE as u64 + 5) {
            index.deliver(&commit(seq, record(seq, 1, Prior::Absent)));
        }
        let ((_, only), lagged) = rx.recv().await.unwrap();
        assert!(lagged);
        assert_eq!(only, Some(vec![0]));
        let (_, lagged) = rx.recv().await.unwrap();
        assert!(!lagged);
    }
}
