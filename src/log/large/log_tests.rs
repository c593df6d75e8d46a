use super::*;
use crate::log::reader::{ReadFrom, RowFilter};
use crate::log::{store, Log};
use crate::record::{Change, ChangeRecord, Op, Row, TxMeta};
use serde_json::json;
use std::sync::Arc;

fn row(value: Value) -> Row {
    value.as_object().cloned().unwrap()
}

fn big(letter: &str) -> String {
    letter.repeat(3 * LARGE_VALUE_BYTES)
}

fn change(op: Op, id: i64, after: Value, unchanged: &[&str]) -> Change {
    Change {
        collection: "public.docs".into(),
        op,
        key: Some(row(json!({"id": id}))),
        after: (op != Op::Delete).then(|| row(after)),
        unchanged: unchanged.iter().map(|c| c.to_string()).collect(),
        ..Change::default()
    }
}

fn tx() -> Arc<TxMeta> {
    Arc::new(TxMeta {
        source: "pg".into(),
        commit_time: "2025-01-15T11:00:00.000000Z".into(),
        id: "1".into(),
        position: "0/1".into(),
    })
}

async fn commit(log: &Log, changes: Vec<Change>) {
    let tx = tx();
    let mut txn = log.begin().await.unwrap();
    txn.append(tx, changes).await.unwrap();
    txn.commit("pg", "0/1".into()).await.unwrap();
}

/// Every record as a reader gets it, by both read paths (which must agree).
fn read_all(log: &Log) -> Vec<ChangeRecord> {
    let reader = log.reader().unwrap();
    let entries = reader.entries_after(0, 1000).unwrap();
    let page = reader
        .page(&ReadFrom::Seq(0), &RowFilter::all(), 1000)
        .unwrap();
    assert_eq!(page.entries, entries);
    entries
        .iter()
        .map(|e| serde_json::from_str(&e.record).unwrap())
        .collect()
}

/// (stored values, longest stored record)
fn storage(dir: &std::path::Path) -> (u64, usize) {
    let file = rusqlite::Connection::open(store::log_path(dir)).unwrap();
    let longest: i64 = file
        .query_row(
            "SELECT coalesce(max(length(record)), 0) FROM entries",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (count(&file).unwrap(), longest as usize)
}

fn after(records: &[ChangeRecord], id: i64) -> &Row {
    let record = records
        .iter()
        .find(|r| r.key == Some(row(json!({"id": id}))))
        .unwrap();
    record.after.as_ref().unwrap()
}

#[tokio::test]
async fn an_unchanged_large_value_is_stored_once_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    commit(
        &log,
        vec![change(
            Op::Insert,
            1,
            json!({"id": 1, "body": big("a"), "n": 0}),
            &[],
        )],
    )
    .await;
    assert_eq!(storage(dir.path()).0, 1);
    assert!(storage(dir.path()).1 < 400, "the record holds no copy");
    for n in 1..=3 {
        commit(
            &log,
            vec![change(Op::Update, 1, json!({"id": 1, "n": n}), &["body"])],
        )
        .await;
    }
    let records = read_all(&log);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].op, Op::Update);
    assert_eq!(after(&records, 1)["body"], json!(big("a")));
    assert_eq!(after(&records, 1)["n"], json!(3));
    assert!(records[0].unchanged.is_empty());
    let (stored, longest) = storage(dir.path());
    assert_eq!(stored, 1);
    assert!(longest < 400, "{longest}");

    // A new large value replaces it; a small one takes it back into the record.
    commit(
        &log,
        vec![change(
            Op::Update,
            1,
            json!({"id": 1, "body": big("b"), "n": 4}),
            &[],
        )],
    )
    .await;
    assert_eq!(after(&read_all(&log), 1)["body"], json!(big("b")));
    assert_eq!(storage(dir.path()).0, 1);
    commit(
        &log,
        vec![change(
            Op::Update,
            1,
            json!({"id": 1, "body": "small", "n": 5}),
            &[],
        )],
    )
    .await;
    assert_eq!(storage(dir.path()).0, 0);
    commit(
        &log,
        vec![change(Op::Update, 1, json!({"id": 1, "n": 6}), &["body"])],
    )
    .await;
    assert_eq!(after(&read_all(&log), 1)["body"], json!("small"));
}

/// A large `jsonb` document left unchanged is kept like a long text, and comes back as the
/// same document.
#[tokio::test]
async fn an_unchanged_large_document_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let items: Vec<Value> = (0..300)
        .map(|i| json!({"sku": format!("item-{i}"), "qty": i, "note": "a \"quoted\" line\n"}))
        .collect();
    let meta = json!({"items": items, "open": true});
    commit(
        &log,
        vec![change(
            Op::Insert,
            1,
            json!({"id": 1, "meta": meta, "n": 0}),
            &[],
        )],
    )
    .await;
    commit(
        &log,
        vec![change(Op::Update, 1, json!({"id": 1, "n": 1}), &["meta"])],
    )
    .await;
    let records = read_all(&log);
    assert_eq!(after(&records, 1)["meta"], meta);
    assert!(records[0].unchanged.is_empty());
    let (stored, longest) = storage(dir.path());
    assert_eq!(stored, 1);
    assert!(longest < 400, "{longest}");
}

#[tokio::test]
async fn deletes_truncates_and_key_changes_leave_no_stray_value() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let insert = |id: i64| change(Op::Insert, id, json!({"id": id, "body": big("c")}), &[]);
    commit(&log, vec![insert(1), insert(2), insert(3)]).await;
    assert_eq!(storage(dir.path()).0, 3);
    commit(&log, vec![change(Op::Delete, 1, json!(null), &[])]).await;
    assert_eq!(storage(dir.path()).0, 2);
    // Row 2 becomes row 20 with its body unchanged: the value moves with it.
    let mut moved = change(Op::Update, 20, json!({"id": 20}), &["body"]);
    moved.old_key = Some(row(json!({"id": 2})));
    commit(&log, vec![moved]).await;
    let records = read_all(&log);
    assert_eq!(after(&records, 20)["body"], json!(big("c")));
    assert_eq!(storage(dir.path()).0, 2);
    let truncate = Change {
        collection: "public.docs".into(),
        op: Op::Truncate,
        ..Change::default()
    };
    commit(&log, vec![truncate]).await;
    assert_eq!(storage(dir.path()).0, 0);

    // Entries removed wholesale take their values along: a collection no longer synced,
    // a source starting over.
    commit(&log, vec![insert(4), insert(5)]).await;
    assert_eq!(storage(dir.path()).0, 2);
    let mut txn = log.begin().await.unwrap();
    txn.remove_collection("public.docs").await.unwrap();
    txn.commit("pg", "0/2".into()).await.unwrap();
    assert_eq!(storage(dir.path()).0, 0);
    commit(&log, vec![insert(6)]).await;
    assert_eq!(storage(dir.path()).0, 1);
    log.reset_source("pg").await.unwrap();
    assert_eq!(storage(dir.path()).0, 0);
}

#[tokio::test]
async fn live_events_carry_the_whole_values() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let mut live = log.subscribe();
    commit(
        &log,
        vec![change(
            Op::Insert,
            1,
            json!({"id": 1, "body": big("d")}),
            &[],
        )],
    )
    .await;
    commit(
        &log,
        vec![change(Op::Update, 1, json!({"id": 1, "n": 1}), &["body"])],
    )
    .await;
    for _ in 0..2 {
        let done = live.recv().await.unwrap();
        let records = done.records.as_ref().unwrap();
        let record: ChangeRecord = serde_json::from_slice(records[0].event.json()).unwrap();
        assert_eq!(record.after.unwrap()["body"], json!(big("d")));
    }
    // The stored record, read back whole, is what the subscriber got.
    let stored = log.reader().unwrap().entries_after(0, 10).unwrap();
    assert!(stored[0].record.contains(&big("d")));
}

/// A row holding the very text of a mark gets it back unchanged, and its large value too.
#[test]
fn a_row_that_holds_a_mark_is_stored_faithfully() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = crate::log::writer::LogWriter::open(dir.path()).unwrap();
    writer.use_marks(Marks::fixed(42));
    let mark = Marks::fixed(42).mark(0);
    let tx = tx();
    let insert = change(
        Op::Insert,
        1,
        json!({"id": 1, "title": mark.clone(), "body": big("e")}),
        &[],
    );
    writer.append(&tx, insert).unwrap();
    writer.commit("pg", "0/1").unwrap();
    let reader = crate::log::LogReader::open(dir.path()).unwrap();
    let record: ChangeRecord =
        serde_json::from_str(&reader.entries_after(0, 10).unwrap()[0].record).unwrap();
    let after = record.after.unwrap();
    assert_eq!(after["title"], mark);
    assert_eq!(after["body"], json!(big("e")));
}

/// A column stored apart that later becomes the scope column: scopes are computed from the
/// whole value.
#[tokio::test]
async fn a_large_value_can_become_the_scope_column() {
    let dir = tempfile::tempdir().unwrap();
    let owner = big("o");
    {
        let log = Log::open(dir.path()).unwrap();
        commit(
            &log,
            vec![change(Op::Insert, 1, json!({"id": 1, "owner": owner}), &[])],
        )
        .await;
        assert_eq!(storage(dir.path()).0, 1);
    }
    let columns =
        crate::log::scope::ScopeColumns::from([("public.docs".to_string(), "owner".to_string())]);
    let log = Log::open_scoped(dir.path(), columns).unwrap();
    let filter = RowFilter::none().scoped("public.docs", &owner);
    let page = log
        .reader()
        .unwrap()
        .page(&ReadFrom::Seq(0), &filter, 10)
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert!(page.entries[0].record.contains(&owner));
}
