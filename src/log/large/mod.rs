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
mod tests;

/// The log storing, keeping, removing and reading back large values.
#[cfg(test)]
mod log_tests;
