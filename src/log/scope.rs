//! Row scopes: each entry of a scoped collection carries the value of its scope column, so that
//! a reader restricted to one scope (e.g. `user_id` = the token's `sub`) reads only its rows,
//! through an index, and still receives the deletes of rows that left its scope.
//!
//! The compaction identity of a scoped collection is (collection, key, scope): when a row moves
//! from scope A to B the writer leaves a `delete` tombstone under (key, A) and the new version
//! under (key, B), so a reader of A catching up from any cursor sees the delete, exactly as its
//! live stream did. Unscoped collections store `''` and behave as before.

use super::large;
use super::store;
use super::LogError;
use crate::record::Row;
use rusqlite::{params, Connection};
use serde_json::Value;
use std::collections::BTreeMap;

/// Collection → name of its scope column.
pub type ScopeColumns = BTreeMap<String, String>;

/// The stored text of a scope value. Strings are stored as they are and other scalars as JSON
/// text, so a numeric `family_id` column matches a `"family": "42"` claim as well as `42`.
/// `''` means "no scope": rows without a value are visible to no scoped reader.
pub fn scope_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The scope of a row image, when it carries the column.
pub fn row_scope(row: Option<&Row>, column: &str) -> Option<String> {
    row.and_then(|r| r.get(column)).map(scope_text)
}

const META: &str = "scope_columns";

/// Brings stored scope values in line with `columns` when the configured scope columns changed
/// since the last open (or the log predates scopes): recomputes the scope of every entry of the
/// affected collections from its record, in seq order so that, where two entries of a key
/// collapse into one scope, the later one survives.
pub fn reconcile(conn: &Connection, columns: &ScopeColumns) -> Result<(), LogError> {
    let stored: ScopeColumns = match store::get_meta(conn, META)? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| LogError::Corrupt(format!("meta {META}: {e}")))?,
        None => ScopeColumns::new(),
    };
    if &stored == columns {
        return Ok(());
    }
    let changed: Vec<&String> = stored
        .keys()
        .chain(columns.keys())
        .filter(|c| stored.get(*c) != columns.get(*c))
        .collect();
    let tx = conn.unchecked_transaction()?;
    for collection in changed {
        let column = columns.get(collection);
        let rows: Vec<(i64, String, Option<String>)> = {
            let mut stmt = conn.prepare(
                "SELECT seq, record, large FROM entries WHERE collection = ?1 AND key != '' ORDER BY seq",
            )?;
            let rows = stmt.query_map([collection], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        tracing::info!(collection, column = ?column, entries = rows.len(), "recomputing row scopes");
        let mut update = conn.prepare("UPDATE OR REPLACE entries SET scope = ?2 WHERE seq = ?1")?;
        for (seq, record, large) in rows {
            let scope = match column {
                None => String::new(),
                Some(column) => {
                    // The new scope column may be one whose large values are stored apart.
                    let record = large::full_record(conn, seq, record, large.as_deref())?;
                    let record: Value = serde_json::from_str(&record)?;
                    let image = |field: &str| record[field].as_object().cloned();
                    row_scope(image("after").as_ref(), column)
                        .or_else(|| row_scope(image("before").as_ref(), column))
                        .unwrap_or_default()
                }
            };
            update.execute(params![seq, scope])?;
        }
    }
    store::set_meta(conn, META, &serde_json::to_string(columns)?)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::{ReadFrom, RowFilter};
    use crate::log::Log;
    use crate::record::{Change, ChangeRecord, Op, TxMeta};
    use serde_json::json;
    use std::sync::Arc;

    fn tx() -> Arc<TxMeta> {
        Arc::new(TxMeta {
            source: "pg".into(),
            commit_time: "2025-01-15T11:00:00.000000Z".into(),
            id: "1".into(),
            position: "0/1".into(),
        })
    }

    fn change(op: Op, id: i64, owner: Option<&str>) -> Change {
        let key = json!({"id": id}).as_object().cloned();
        Change {
            collection: "public.todos".into(),
            op,
            key,
            after: owner.map(|o| json!({"id": id, "owner": o}).as_object().cloned().unwrap()),
            ..Change::default()
        }
    }

    async fn commit(log: &Log, changes: Vec<Change>) {
        let mut txn = log.begin().await.unwrap();
        txn.append(tx(), changes).await.unwrap();
        txn.commit("pg", "1".into()).await.unwrap();
    }

    fn read(log: &Log, filter: &RowFilter) -> Vec<(Op, i64)> {
        log.reader()
            .unwrap()
            .page(&ReadFrom::Seq(0), filter, 1000)
            .unwrap()
            .entries
            .iter()
            .map(|e| {
                let r: ChangeRecord = serde_json::from_str(&e.record).unwrap();
                (r.op, r.key.map_or(0, |k| k["id"].as_i64().unwrap()))
            })
            .collect()
    }

    fn scoped(owner: &str) -> RowFilter {
        RowFilter::none().scoped("public.todos", owner)
    }

    fn open(dir: &std::path::Path) -> Log {
        let columns = ScopeColumns::from([("public.todos".to_string(), "owner".to_string())]);
        Log::open_scoped(dir, columns).unwrap()
    }

    #[tokio::test]
    async fn moves_and_deletes_reach_the_scope_the_row_was_in() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut live = log.subscribe();
        commit(
            &log,
            vec![
                change(Op::Insert, 1, Some("a")),
                change(Op::Insert, 2, Some("a")),
                change(Op::Insert, 3, Some("b")),
            ],
        )
        .await;
        // Row 1 moves to b; row 2 is deleted with only its key; row 3 is updated in place.
        commit(
            &log,
            vec![
                change(Op::Update, 1, Some("b")),
                change(Op::Delete, 2, None),
                change(Op::Update, 3, Some("b")),
            ],
        )
        .await;
        assert_eq!(
            read(&log, &scoped("a")),
            vec![(Op::Delete, 1), (Op::Delete, 2)]
        );
        assert_eq!(
            read(&log, &scoped("b")),
            vec![(Op::Insert, 1), (Op::Update, 3)]
        );
        // Unscoped readers see the old scope's tombstone before the new version.
        assert_eq!(
            read(&log, &RowFilter::all()),
            vec![
                (Op::Delete, 1),
                (Op::Insert, 1),
                (Op::Delete, 2),
                (Op::Update, 3)
            ]
        );
        // Live records carry the same scopes.
        live.recv().await.unwrap();
        let second = live.recv().await.unwrap();
        let scopes: Vec<_> = second
            .records
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| (r.op, r.scope.as_str()))
            .collect();
        assert_eq!(
            scopes,
            vec![
                (Op::Delete, "a"),
                (Op::Insert, "b"),
                (Op::Delete, "a"),
                (Op::Update, "b")
            ]
        );
        // Moving back replaces the old tombstone; each scope still ends in the right state.
        commit(&log, vec![change(Op::Update, 1, Some("a"))]).await;
        assert_eq!(
            read(&log, &scoped("a")),
            vec![(Op::Delete, 2), (Op::Insert, 1)]
        );
        assert_eq!(
            read(&log, &scoped("b")),
            vec![(Op::Update, 3), (Op::Delete, 1)]
        );
    }

    #[tokio::test]
    async fn scoped_reads_use_the_scope_index() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        commit(&log, vec![change(Op::Insert, 1, Some("a"))]).await;
        let reader = log.reader().unwrap();
        let filter = scoped("a").full("public.tags");
        let plan = reader.plan(&ReadFrom::Seq(0), &filter).unwrap();
        assert!(plan.contains("entries_by_scope"), "{plan}");
        assert!(plan.contains("entries_by_collection"), "{plan}");
        assert!(!plan.contains("SCAN entries"), "{plan}");
        // The scope's truncates are found by key, not by walking the collection from the cursor.
        let plan = reader.plan(&ReadFrom::Seq(0), &scoped("a")).unwrap();
        assert!(plan.contains("entries_by_scope "), "{plan}");
        assert!(
            plan.contains("entries_by_key_first (key=? AND collection=?)"),
            "{plan}"
        );
        assert!(!plan.contains("entries_by_collection"), "{plan}");
    }

    #[tokio::test]
    async fn the_writer_finds_a_key_by_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        commit(&log, vec![change(Op::Insert, 1, Some("a"))]).await;
        let conn = rusqlite::Connection::open(store::log_path(dir.path())).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq, scope, record FROM entries WHERE collection = ?1 AND key = ?2
                 AND op NOT IN ('delete', 'truncate')",
            )
            .unwrap()
            .query_map(["public.todos", "{\"id\":1}"], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.join(" ").contains("entries_by_key_first"), "{plan:?}");
    }

    #[tokio::test]
    async fn a_truncate_reaches_every_scope() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        commit(&log, vec![change(Op::Insert, 1, Some("a"))]).await;
        let truncate = Change {
            collection: "public.todos".into(),
            op: Op::Truncate,
            ..Change::default()
        };
        commit(&log, vec![truncate, change(Op::Insert, 2, Some("b"))]).await;
        assert_eq!(read(&log, &scoped("a")), vec![(Op::Truncate, 0)]);
        assert_eq!(
            read(&log, &scoped("b")),
            vec![(Op::Truncate, 0), (Op::Insert, 2)]
        );
    }

    #[tokio::test]
    async fn a_changed_scope_column_is_recomputed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(dir.path()).unwrap();
            commit(
                &log,
                vec![
                    change(Op::Insert, 1, Some("a")),
                    change(Op::Insert, 2, Some("b")),
                ],
            )
            .await;
        }
        let log = open(dir.path());
        assert_eq!(read(&log, &scoped("a")), vec![(Op::Insert, 1)]);
        assert_eq!(read(&log, &scoped("b")), vec![(Op::Insert, 2)]);
    }
}
