//! The log's behaviour through its handle: compaction, copies, resets, purges, broadcasts.

use super::*;
use crate::record::{ChangeRecord, Op, Row};
use serde_json::json;

fn row(value: serde_json::Value) -> Row {
    value.as_object().cloned().unwrap()
}

fn tx(id: &str) -> Arc<TxMeta> {
    Arc::new(TxMeta {
        source: "pg".into(),
        commit_time: "2025-01-15T11:00:00.000000Z".into(),
        id: id.into(),
        position: "0/1".into(),
    })
}

fn upsert(op: Op, id: i64, after: serde_json::Value) -> Change {
    Change {
        collection: "public.t".into(),
        op,
        key: Some(row(json!({"id": id}))),
        after: Some(row(after)),
        ..Change::default()
    }
}

fn delete(id: i64) -> Change {
    Change {
        collection: "public.t".into(),
        op: Op::Delete,
        key: Some(row(json!({"id": id}))),
        ..Change::default()
    }
}

fn read_all(log: &Log) -> Vec<ChangeRecord> {
    log.reader()
        .unwrap()
        .entries_after(0, 1_000_000)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str(&e.record).unwrap())
        .collect()
}

async fn commit(log: &Log, position: &str, changes: Vec<Change>) -> Arc<Committed> {
    let mut txn = log.begin().await.unwrap();
    txn.append(tx(position), changes).await.unwrap();
    txn.commit("pg", position.into()).await.unwrap()
}

#[tokio::test]
async fn pages_end_at_a_byte_budget_between_transactions() {
    use reader::{ReadFrom, RowFilter};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    for t in 0..3 {
        commit(
            &log,
            &format!("{t}"),
            vec![
                upsert(
                    Op::Insert,
                    t * 2,
                    json!({"id": t * 2, "v": "x".repeat(100)}),
                ),
                upsert(Op::Insert, t * 2 + 1, json!({"id": t * 2 + 1, "v": "y"})),
            ],
        )
        .await;
    }
    let reader = log.reader().unwrap();
    let page = |max_bytes| {
        reader
            .page_within(&ReadFrom::Seq(0), &RowFilter::all(), 1000, max_bytes)
            .unwrap()
    };
    let seqs = |p: &reader::Page| p.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    let all = page(usize::MAX);
    assert_eq!((seqs(&all), all.has_more), ((1..=6).collect(), false));
    // Three records' worth ends inside the second transaction: the page stops before it.
    let three: usize = all.entries[..3].iter().map(|e| e.record.len()).sum();
    let budget = page(three);
    assert_eq!((seqs(&budget), budget.has_more), (vec![1, 2], true));
    // A budget smaller than one record still returns one.
    let tiny = page(1);
    assert_eq!((seqs(&tiny), tiny.has_more), (vec![1], true));
}

/// Live subscribers send the writer's framing of each record: the event's id is the
/// record's cursor and its data is exactly the record the log stores.
#[tokio::test]
async fn broadcast_events_frame_the_stored_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let _listening = log.subscribe();
    let done = commit(
        &log,
        "1",
        vec![
            upsert(Op::Insert, 1, json!({"id": 1, "name": "ä \"quoted\"\n"})),
            upsert(Op::Insert, 2, json!({"id": 2})),
        ],
    )
    .await;
    let stored = log.reader().unwrap().entries_after(0, 10).unwrap();
    let broadcast = done.records.as_ref().unwrap();
    assert_eq!(broadcast.len(), 2);
    for (record, entry) in broadcast.iter().zip(&stored) {
        let cursor = format!("{}-{}", log.epoch(), entry.seq);
        assert_eq!(record.event.json(), entry.record.as_bytes());
        assert_eq!(
            &record.event.bytes()[..],
            format!("id: {cursor}\nevent: change\ndata: {}\n\n", entry.record).as_bytes()
        );
        let parsed: ChangeRecord = serde_json::from_slice(record.event.json()).unwrap();
        assert_eq!(parsed.cursor, cursor);
    }
    // Stored as text (it is bound from bytes), so that SQL and readers see strings.
    let file = rusqlite::Connection::open(store::log_path(dir.path())).unwrap();
    let types: Vec<String> = file
        .prepare("SELECT DISTINCT typeof(record) FROM entries")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(types, vec!["text".to_string()]);
}

#[tokio::test]
async fn gathered_appends_keep_their_order_with_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let mut txn = log.begin().await.unwrap();
    // Fewer than a batch: still gathered when remove_collection comes, which must apply
    // after them (and so remove them).
    txn.append(tx("1"), vec![upsert(Op::Insert, 1, json!({"id": 1}))])
        .await
        .unwrap();
    txn.remove_collection("public.t").await.unwrap();
    txn.append(tx("2"), vec![upsert(Op::Insert, 2, json!({"id": 2}))])
        .await
        .unwrap();
    txn.commit("pg", "2".into()).await.unwrap();
    let ids: Vec<_> = read_all(&log)
        .iter()
        .map(|r| r.key.clone().unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(2)]);
}

#[tokio::test]
async fn many_small_transactions_in_one_commit_keep_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let mut txn = log.begin().await.unwrap();
    // 2,500 one-row upstream transactions: gathered into batches that span transactions.
    for id in 1..=2500 {
        txn.append(
            tx(&id.to_string()),
            vec![upsert(Op::Insert, id, json!({"id": id}))],
        )
        .await
        .unwrap();
    }
    let committed = txn.commit("pg", "2500".into()).await.unwrap();
    assert_eq!((committed.after_seq, committed.last_seq), (0, 2500));
    let entries = log.reader().unwrap().entries_after(0, 10_000).unwrap();
    assert_eq!(entries.len(), 2500);
    for (i, entry) in entries.iter().enumerate() {
        // Each upstream transaction is its own group (txn = its first seq).
        assert_eq!((entry.seq, entry.txn), (i as u64 + 1, i as u64 + 1));
        let record: ChangeRecord = serde_json::from_str(&entry.record).unwrap();
        assert_eq!(record.tx.id, (i + 1).to_string());
    }
}

#[tokio::test]
async fn keeps_the_latest_entry_per_key_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(
        &log,
        "1",
        vec![
            upsert(Op::Insert, 1, json!({"id": 1, "v": "a"})),
            upsert(Op::Insert, 2, json!({"id": 2, "v": "b"})),
        ],
    )
    .await;
    commit(
        &log,
        "2",
        vec![upsert(Op::Update, 1, json!({"id": 1, "v": "c"})), delete(2)],
    )
    .await;
    let records = read_all(&log);
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.op, r.key.clone().unwrap()["id"].clone()))
        .collect();
    assert_eq!(
        summary,
        vec![(Op::Update, json!(1)), (Op::Delete, json!(2))]
    );
    assert_eq!(records[0].after.as_ref().unwrap()["v"], json!("c"));
    let epoch = log.epoch();
    assert_eq!(records[0].cursor, format!("{epoch}-3"));
    assert_eq!(records[1].cursor, format!("{epoch}-4"));
    assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("2"));
    assert_eq!(*log.head().borrow(), 4);
}

#[tokio::test]
async fn fills_unchanged_columns_from_the_previous_entry() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(
        &log,
        "1",
        vec![upsert(
            Op::Insert,
            1,
            json!({"id": 1, "body": "long", "n": 1}),
        )],
    )
    .await;
    let mut update = upsert(Op::Update, 1, json!({"id": 1, "n": 2}));
    update.unchanged = vec!["body".into()];
    let mut unknown = upsert(Op::Update, 9, json!({"id": 9, "n": 2}));
    unknown.unchanged = vec!["body".into()];
    commit(&log, "2", vec![update, unknown]).await;
    let records = read_all(&log);
    assert_eq!(records[0].after.as_ref().unwrap()["body"], json!("long"));
    assert!(records[0].unchanged.is_empty());
    assert_eq!(records[1].unchanged, vec!["body".to_string()]);
    assert!(!records[1].after.as_ref().unwrap().contains_key("body"));
}

#[tokio::test]
async fn a_key_change_is_a_delete_and_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(
        &log,
        "1",
        vec![upsert(Op::Insert, 1, json!({"id": 1, "body": "x"}))],
    )
    .await;
    let mut update = upsert(Op::Update, 2, json!({"id": 2}));
    update.old_key = Some(row(json!({"id": 1})));
    update.unchanged = vec!["body".into()];
    commit(&log, "2", vec![update]).await;
    let records = read_all(&log);
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].op, &records[0].key),
        (Op::Delete, &Some(row(json!({"id": 1}))))
    );
    assert_eq!(
        (records[1].op, &records[1].key),
        (Op::Insert, &Some(row(json!({"id": 2}))))
    );
    assert_eq!(records[1].after.as_ref().unwrap()["body"], json!("x"));
}

#[tokio::test]
async fn truncate_replaces_its_collection() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let mut other = upsert(Op::Insert, 1, json!({"id": 1}));
    other.collection = "public.other".into();
    commit(
        &log,
        "1",
        vec![upsert(Op::Insert, 1, json!({"id": 1})), other],
    )
    .await;
    let truncate = Change {
        collection: "public.t".into(),
        op: Op::Truncate,
        ..Change::default()
    };
    let _listening = log.subscribe();
    let done = commit(
        &log,
        "2",
        vec![truncate, upsert(Op::Insert, 5, json!({"id": 5}))],
    )
    .await;
    let ops: Vec<_> = read_all(&log)
        .iter()
        .map(|r| (r.collection.clone(), r.op))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("public.other".into(), Op::Insert),
            ("public.t".into(), Op::Truncate),
            ("public.t".into(), Op::Insert)
        ]
    );
    assert_eq!(done.records.as_ref().unwrap().len(), 2);
}

#[tokio::test]
async fn copied_rows_never_overwrite_what_the_stream_wrote_since_the_copy_began() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    // An entry from before the copy (e.g. an interrupted earlier copy): overwritten.
    commit(
        &log,
        "1",
        vec![upsert(Op::Insert, 1, json!({"id": 1, "v": "old"}))],
    )
    .await;
    let floor = *log.head().borrow();
    // The stream writes key 2 (update) and key 3 (delete) after the copy began.
    commit(
        &log,
        "2",
        vec![
            upsert(Op::Update, 2, json!({"id": 2, "v": "stream"})),
            delete(3),
        ],
    )
    .await;
    let mut txn = log.begin().await.unwrap();
    txn.append_copied(
        tx("snapshot"),
        vec![
            upsert(Op::Insert, 1, json!({"id": 1, "v": "copy"})),
            upsert(Op::Insert, 2, json!({"id": 2, "v": "copy"})),
            upsert(Op::Insert, 3, json!({"id": 3, "v": "copy"})),
            upsert(Op::Insert, 4, json!({"id": 4, "v": "copy"})),
        ],
        floor,
    )
    .await
    .unwrap();
    txn.commit("pg#copy", "{}".into()).await.unwrap();
    let state: Vec<_> = read_all(&log)
        .iter()
        .map(|r| {
            let v = r.after.as_ref().map(|a| a["v"].clone());
            (r.key.clone().unwrap()["id"].clone(), r.op, v)
        })
        .collect();
    assert_eq!(
        state,
        vec![
            (json!(2), Op::Update, Some(json!("stream"))),
            (json!(3), Op::Delete, None),
            (json!(1), Op::Insert, Some(json!("copy"))),
            (json!(4), Op::Insert, Some(json!("copy"))),
        ]
    );
    // The copy's progress is stored apart from the stream's position.
    assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("2"));
}

#[tokio::test]
async fn reset_source_forgets_the_source_and_expires_every_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(&log, "1", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
    let mut other = upsert(Op::Insert, 7, json!({"id": 7}));
    other.collection = "app.docs".into();
    let mut txn = log.begin().await.unwrap();
    txn.append(
        Arc::new(TxMeta {
            source: "mongo".into(),
            ..(*tx("m1")).clone()
        }),
        vec![other],
    )
    .await
    .unwrap();
    txn.commit("mongo", "token".into()).await.unwrap();
    let mut live = log.subscribe();
    let mark = log.reset_source("pg").await.unwrap();
    assert_eq!(mark, 3, "every cursor up to the head (2) expires");
    assert_eq!(live.recv().await.unwrap().purged_seq, 3);
    let left: Vec<_> = read_all(&log).iter().map(|r| r.source.clone()).collect();
    assert_eq!(left, vec!["mongo".to_string()]);
    assert_eq!(log.position("pg").await.unwrap(), None);
    assert_eq!(
        log.position("mongo").await.unwrap().as_deref(),
        Some("token")
    );
    assert_eq!(log.reader().unwrap().purged_seq().unwrap(), 3);
    // Later commits carry the mark and continue the sequence.
    let done = commit(&log, "9", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
    assert_eq!((done.last_seq, done.purged_seq), (3, 3));
}

#[tokio::test]
async fn purging_tombstones_raises_the_purge_mark_to_the_newest_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(
        &log,
        "1",
        vec![
            upsert(Op::Insert, 1, json!({"id": 1})),
            delete(2),
            delete(3),
        ],
    )
    .await;
    // Tombstones committed at or after the cut stay.
    let removed = log
        .purge_tombstones("2025-01-15T11:00:00.000000Z".into())
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(log.reader().unwrap().purged_seq().unwrap(), 0);
    let removed = log
        .purge_tombstones("2025-01-16T00:00:00.000000Z".into())
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(log.reader().unwrap().purged_seq().unwrap(), 3);
    assert_eq!(read_all(&log).len(), 1);
}

#[tokio::test]
async fn a_failed_append_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(&log, "1", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
    let mut txn = log.begin().await.unwrap();
    let keyless = Change {
        collection: "public.t".into(),
        op: Op::Insert,
        ..Change::default()
    };
    txn.append(
        tx("2"),
        vec![upsert(Op::Insert, 2, json!({"id": 2})), keyless],
    )
    .await
    .unwrap();
    let err = txn.commit("pg", "2".into()).await.unwrap_err();
    assert!(err.to_string().contains("no key"), "{err}");
    assert_eq!(read_all(&log).len(), 1);
    assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("1"));
    // The next transaction continues the sequence without a hole or a reuse of a visible seq.
    commit(&log, "3", vec![upsert(Op::Insert, 3, json!({"id": 3}))]).await;
    let cursors: Vec<_> = read_all(&log).iter().map(|r| r.cursor.clone()).collect();
    assert_eq!(
        cursors,
        vec![format!("{}-1", log.epoch()), format!("{}-2", log.epoch())]
    );
}

#[tokio::test]
async fn broadcasts_only_the_surviving_version_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let mut live = log.subscribe();
    commit(
        &log,
        "1",
        vec![
            upsert(Op::Insert, 1, json!({"id": 1, "v": 1})),
            upsert(Op::Update, 1, json!({"id": 1, "v": 2})),
        ],
    )
    .await;
    let done = live.recv().await.unwrap();
    let records = done.records.as_ref().unwrap();
    assert_eq!((done.after_seq, done.last_seq, records.len()), (0, 2, 1));
    assert_eq!(records[0].seq, 2);
}

/// Records are held for live subscribers only while someone listens; a subscriber that
/// comes later learns the commit's range and reads it from the log.
#[tokio::test]
async fn records_are_held_only_while_someone_listens() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let alone = commit(&log, "1", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
    assert!(alone.records.is_none());
    assert_eq!((alone.after_seq, alone.last_seq), (0, 1));
    let mut live = log.subscribe();
    commit(&log, "2", vec![upsert(Op::Insert, 2, json!({"id": 2}))]).await;
    let heard = live.recv().await.unwrap();
    assert_eq!(heard.records.as_ref().map(Vec::len), Some(1));
    drop(live);
    let again = commit(&log, "3", vec![upsert(Op::Insert, 3, json!({"id": 3}))]).await;
    assert!(again.records.is_none());
}

#[tokio::test]
async fn reopening_keeps_epoch_head_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = {
        let log = Log::open(dir.path()).unwrap();
        commit(&log, "7", vec![upsert(Op::Insert, 1, json!({"id": 1}))]).await;
        log.epoch()
    };
    let log = Log::open(dir.path()).unwrap();
    assert_eq!(log.epoch(), epoch);
    assert_eq!(*log.head().borrow(), 1);
    assert_eq!(log.position("pg").await.unwrap().as_deref(), Some("7"));
    commit(&log, "8", vec![upsert(Op::Insert, 2, json!({"id": 2}))]).await;
    assert_eq!(read_all(&log)[1].cursor, format!("{epoch}-2"));
}
