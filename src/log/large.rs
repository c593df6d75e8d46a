//! Large values stored once per row instead of in every record of the row.
//!
//! A value whose JSON is at least [`LARGE_VALUE_BYTES`] long in a record's `after` image (a long
//! text, a large `jsonb` document) is kept in the `large_values` table under (collection, key,
//! column); the stored record holds `null` in its place and the entry's `large` column says
//! where and which column (see [`Splice`]). An update
//! that leaves the value alone (Postgres sends no value for an unchanged TOASTed column) then
//! refers to the stored value instead of writing it again, and every read splices it back.
//!
//! Only a key's live entry has an `after` image (a row that changes scope or key leaves a
//! tombstone behind), so the stored values of a key are exactly those its live entry refers to.
//! The writer keeps it so: a new version stores its fresh large values, keeps the ones it refers
//! to and removes the rest; a delete, truncate or removed collection removes them all.

use super::LogError;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A string value whose JSON is at least this long is stored apart. Postgres TOASTs values from
/// about 2 KB, so every value Postgres may send as "unchanged" is at least this large.
pub const LARGE_VALUE_BYTES: usize = 2048;

/// One value of a record stored apart: the byte offset of the `null` standing for it in the
/// stored record, and its column. Stored as a JSON array `[offset, "column"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splice(pub usize, pub String);

/// Whether `value` is stored apart when it is in a record's `after` image: its JSON is at
/// least [`LARGE_VALUE_BYTES`] long (a long text, or a large `jsonb` document or array).
pub fn is_large(value: &Value) -> bool {
    json_len_below(value, LARGE_VALUE_BYTES).is_none()
}

/// A lower bound of the JSON length of `value`, if it is below `room`. It stops adding as soon
/// as it reaches `room`, so a huge document costs no full walk.
fn json_len_below(value: &Value, room: usize) -> Option<usize> {
    let len = match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 1,
        // The text and its two quotes (escapes only add).
        Value::String(text) => text.len() + 2,
        Value::Array(items) => {
            let mut len = 2 + items.len().saturating_sub(1);
            for item in items {
                len += json_len_below(item, room.checked_sub(len)?)?;
            }
            len
        }
        Value::Object(fields) => {
            let mut len = 2 + fields.len().saturating_sub(1);
            for (name, item) in fields {
                len += name.len() + 3;
                len += json_len_below(item, room.checked_sub(len)?)?;
            }
            len
        }
    };
    (len < room).then_some(len)
}

/// The text of an entry's `large` column.
pub fn encode(splices: &[Splice]) -> Result<String, LogError> {
    Ok(serde_json::to_string(splices)?)
}

fn decode(text: &str) -> Result<Vec<Splice>, LogError> {
    serde_json::from_str(text)
        .map_err(|e| LogError::Corrupt(format!("an entry's large column {text:?}: {e}")))
}

/// The columns an entry's `large` column names.
pub fn columns_of(text: &str) -> Result<Vec<String>, LogError> {
    Ok(decode(text)?
        .into_iter()
        .map(|Splice(_, column)| column)
        .collect())
}

/// Marks standing for the values stored apart while a record is serialized, found afterwards
/// and replaced by `null`. A mark is a string no source sends in practice (a NUL character and a
/// random number); should a record still hold one elsewhere, [`cut`] says so and the writer
/// draws another number.
pub struct Marks {
    nonce: u64,
    /// Finds the serialized marks' common beginning: `"\u0000deltarelay-large:<nonce>:`.
    finder: memchr::memmem::Finder<'static>,
}

impl Marks {
    /// Marks with a fresh random number.
    pub fn random() -> Marks {
        Marks::fixed(rand::random())
    }

    pub fn fixed(nonce: u64) -> Marks {
        let prefix = format!("\"\\u0000deltarelay-large:{nonce:016x}:");
        Marks {
            nonce,
            finder: memchr::memmem::Finder::new(prefix.as_bytes()).into_owned(),
        }
    }

    pub fn redraw(&mut self) {
        *self = Marks::random();
    }

    /// The mark of the `index`th value stored apart.
    pub fn mark(&self, index: usize) -> Value {
        Value::String(format!("\0deltarelay-large:{:016x}:{index}", self.nonce))
    }
}

/// The record to store, with the mark of each of `columns` (the `i`th marked by
/// `marks.mark(i)`) replaced by `null`, and where those are; `None` when a mark is missing or
/// found more than once, or when the record holds any other string that looks like one.
pub fn cut(json: &[u8], marks: &Marks, columns: &[&str]) -> Option<(Vec<u8>, Vec<Splice>)> {
    let mut stored = Vec::with_capacity(json.len());
    let mut splices = Vec::with_capacity(columns.len());
    let mut seen = vec![false; columns.len()];
    let mut from = 0;
    for at in marks.finder.find_iter(json) {
        if at < from {
            return None;
        }
        // The mark's index, then its closing quote.
        let digits_from = at + marks.finder.needle().len();
        let digits = json[digits_from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let index: usize = std::str::from_utf8(&json[digits_from..digits_from + digits])
            .ok()?
            .parse()
            .ok()?;
        let end = digits_from + digits;
        if json.get(end) != Some(&b'"') || index >= columns.len() || seen[index] {
            return None;
        }
        seen[index] = true;
        stored.extend_from_slice(&json[from..at]);
        splices.push(Splice(stored.len(), columns[index].to_string()));
        stored.extend_from_slice(b"null");
        from = end + 1;
    }
    if seen.contains(&false) {
        return None;
    }
    stored.extend_from_slice(&json[from..]);
    Some((stored, splices))
}

/// Appends `record` to `out` with the values stored apart put back; `value` appends the JSON of
/// a column's value and says whether it had one.
pub fn splice_into(
    out: &mut Vec<u8>,
    record: &[u8],
    splices: &[Splice],
    mut value: impl FnMut(&str, &mut Vec<u8>) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    let mut from = 0;
    for Splice(offset, column) in splices {
        let end = offset.saturating_add(4);
        if *offset < from || record.get(*offset..end) != Some(&b"null"[..]) {
            return Err(LogError::Corrupt(format!(
                "a record has no placeholder for its large value {column:?} at byte {offset}"
            )));
        }
        out.extend_from_slice(&record[from..*offset]);
        if !value(column, out)? {
            return Err(LogError::Corrupt(format!(
                "the large value of column {column:?} is missing"
            )));
        }
        from = end;
    }
    out.extend_from_slice(&record[from..]);
    Ok(())
}

/// The full record of the entry `seq`, from its stored `record` and `large` columns.
pub fn full_record(
    conn: &Connection,
    seq: i64,
    record: String,
    large: Option<&str>,
) -> Result<String, LogError> {
    let Some(large) = large else {
        return Ok(record);
    };
    let splices = decode(large)?;
    let mut stmt = conn.prepare_cached(
        "SELECT v.value FROM entries e JOIN large_values v
           ON v.collection = e.collection AND v.key = e.key
         WHERE e.seq = ?1 AND v.name = ?2",
    )?;
    let mut out = Vec::with_capacity(record.len() + splices.len() * 4 * LARGE_VALUE_BYTES);
    splice_into(&mut out, record.as_bytes(), &splices, |column, out| {
        append_first(stmt.query(params![seq, column])?, out)
    })?;
    String::from_utf8(out)
        .map_err(|_| LogError::Corrupt(format!("entry {seq}: a large value is not UTF-8")))
}

/// Appends the JSON of the stored value of `column` of a key to `out`; whether there is one.
pub fn append_value(
    conn: &Connection,
    collection: &str,
    key: &str,
    column: &str,
    out: &mut Vec<u8>,
) -> Result<bool, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT value FROM large_values WHERE collection = ?1 AND key = ?2 AND name = ?3",
    )?;
    let found = append_first(stmt.query(params![collection, key, column])?, out)?;
    Ok(found)
}

/// Appends the stored value in the first column of the first row of `rows` to `out`; whether
/// there was a row.
fn append_first(mut rows: rusqlite::Rows<'_>, out: &mut Vec<u8>) -> Result<bool, LogError> {
    let Some(row) = rows.next()? else {
        return Ok(false);
    };
    let value = row
        .get_ref(0)?
        .as_bytes()
        .map_err(|e| LogError::Corrupt(format!("a stored large value is not text: {e}")))?;
    out.extend_from_slice(value);
    Ok(true)
}

/// The columns of a key with a value stored apart.
pub fn columns(conn: &Connection, collection: &str, key: &str) -> Result<Vec<String>, LogError> {
    let mut stmt =
        conn.prepare_cached("SELECT name FROM large_values WHERE collection = ?1 AND key = ?2")?;
    let rows = stmt.query_map(params![collection, key], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stores (or replaces) the JSON of a key's value of `column`.
pub fn put(
    conn: &Connection,
    collection: &str,
    key: &str,
    column: &str,
    json: &[u8],
) -> Result<(), LogError> {
    conn.prepare_cached(
        "INSERT INTO large_values (collection, key, name, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (collection, key, name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![
        collection,
        key,
        column,
        rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(json)),
    ])?;
    Ok(())
}

/// Stores the value of `column` of key `from` under key `to` as well (a key change).
pub fn copy(
    conn: &Connection,
    collection: &str,
    from: &str,
    to: &str,
    column: &str,
) -> Result<(), LogError> {
    conn.prepare_cached(
        "INSERT INTO large_values (collection, key, name, value)
         SELECT collection, ?3, name, value FROM large_values
         WHERE collection = ?1 AND key = ?2 AND name = ?4
         ON CONFLICT (collection, key, name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![collection, from, to, column])?;
    Ok(())
}

pub fn remove(
    conn: &Connection,
    collection: &str,
    key: &str,
    column: &str,
) -> Result<(), LogError> {
    conn.prepare_cached(
        "DELETE FROM large_values WHERE collection = ?1 AND key = ?2 AND name = ?3",
    )?
    .execute(params![collection, key, column])?;
    Ok(())
}

pub fn remove_key(conn: &Connection, collection: &str, key: &str) -> Result<(), LogError> {
    conn.prepare_cached("DELETE FROM large_values WHERE collection = ?1 AND key = ?2")?
        .execute(params![collection, key])?;
    Ok(())
}

pub fn remove_collection(conn: &Connection, collection: &str) -> Result<(), LogError> {
    conn.prepare_cached("DELETE FROM large_values WHERE collection = ?1")?
        .execute([collection])?;
    Ok(())
}

/// Removes the values no live entry refers to (after entries were removed wholesale).
pub fn remove_orphans(conn: &Connection) -> Result<usize, LogError> {
    Ok(conn.execute(
        "DELETE FROM large_values WHERE NOT EXISTS (
             SELECT 1 FROM entries e
             WHERE e.collection = large_values.collection AND e.key = large_values.key
               AND e.large IS NOT NULL)",
        [],
    )?)
}

/// The collections with any value stored apart.
pub fn collections(conn: &Connection) -> Result<std::collections::HashSet<String>, LogError> {
    let mut stmt = conn.prepare("SELECT DISTINCT collection FROM large_values")?;
    let rows = stmt.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many values are stored apart.
#[cfg(test)]
pub fn count(conn: &Connection) -> Result<u64, LogError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM large_values", [], |row| row.get(0))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marks_are_cut_out_and_spliced_back() {
        let marks = Marks::fixed(7);
        let big = "x".repeat(LARGE_VALUE_BYTES);
        let record = json!({"after": {"id": 1, "body": marks.mark(0), "notes": marks.mark(1)}});
        let json = serde_json::to_vec(&record).unwrap();
        let (stored, splices) = cut(&json, &marks, &["body", "notes"]).unwrap();
        assert_eq!(
            std::str::from_utf8(&stored).unwrap(),
            r#"{"after":{"id":1,"body":null,"notes":null}}"#
        );
        assert_eq!(
            splices,
            vec![Splice(24, "body".into()), Splice(37, "notes".into())]
        );
        let mut out = Vec::new();
        splice_into(&mut out, &stored, &splices, |column, out| {
            out.extend_from_slice(&serde_json::to_vec(&format!("{column}:{big}")).unwrap());
            Ok(true)
        })
        .unwrap();
        let back: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["after"]["body"], json!(format!("body:{big}")));
        assert_eq!(back["after"]["notes"], json!(format!("notes:{big}")));
        assert_eq!(back["after"]["id"], json!(1));
    }

    #[test]
    fn a_mark_found_twice_is_refused() {
        let marks = Marks::fixed(7);
        let record = json!({"after": {"body": marks.mark(0), "title": marks.mark(0)}});
        let json = serde_json::to_vec(&record).unwrap();
        assert!(cut(&json, &marks, &["body"]).is_none());
        assert!(cut(b"{}", &marks, &["body"]).is_none());
        // A mark's text after an escaped quote inside another string is seen, and refused.
        let Value::String(text) = marks.mark(0) else {
            unreachable!()
        };
        let record = json!({"title": format!("a\"{text}"), "body": marks.mark(0)});
        let json = serde_json::to_vec(&record).unwrap();
        assert!(cut(&json, &marks, &["body"]).is_none());
        let record = json!({"title": format!("{text}7"), "body": marks.mark(0)});
        let json = serde_json::to_vec(&record).unwrap();
        assert!(cut(&json, &marks, &["body"]).is_none());
    }

    #[test]
    fn a_damaged_splice_is_an_error_not_a_panic() {
        let splices = vec![Splice(3, "body".into())];
        let mut out = Vec::new();
        let err = splice_into(&mut out, b"{\"a\":1}", &splices, |_, _| Ok(true)).unwrap_err();
        assert!(err.to_string().contains("placeholder"), "{err}");
        let beyond = vec![Splice(usize::MAX, "body".into())];
        assert!(splice_into(&mut out, b"null", &beyond, |_, _| Ok(true)).is_err());
        let err = splice_into(&mut out, b"null", &[Splice(0, "b".into())], |_, _| {
            Ok(false)
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(decode("[[1]]").is_err());
    }

    #[test]
    fn long_texts_and_large_documents_are_large() {
        assert!(is_large(&json!("y".repeat(LARGE_VALUE_BYTES))));
        assert!(is_large(&json!("y".repeat(LARGE_VALUE_BYTES - 2))));
        assert!(!is_large(&json!("y".repeat(LARGE_VALUE_BYTES - 3))));
        assert!(!is_large(&json!("short")));
        assert!(!is_large(&json!(12)));
        let tags: Vec<String> = (0..400).map(|i| format!("tag{i}")).collect();
        assert!(is_large(&json!({"tags": tags})));
        assert!(!is_large(&json!({"tags": tags[..10]})));
        assert!(is_large(&json!([[["z".repeat(LARGE_VALUE_BYTES)]]])));
        // The bound never exceeds the real length, so nothing small is stored apart.
        for value in [
            json!({"a": [1, 2, {"b": null}], "c": "d"}),
            json!([]),
            json!({}),
        ] {
            let real = serde_json::to_vec(&value).unwrap().len();
            assert!(json_len_below(&value, usize::MAX).unwrap() <= real);
        }
    }
}

/// The log storing, keeping, removing and reading back large values.
#[cfg(test)]
mod log_tests {
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
        let columns = crate::log::scope::ScopeColumns::from([(
            "public.docs".to_string(),
            "owner".to_string(),
        )]);
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
}
