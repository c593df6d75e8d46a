//! The SQLite file behind the log: opening it, its schema, and the small `meta` table.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "changes.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per (collection, key, scope) (scope: see scope.rs): the latest change of that key. seq orders the log and is the
-- cursor's second half; txn groups the entries of one upstream transaction (the seq of its
-- first entry) so that pages never split a transaction.
CREATE TABLE IF NOT EXISTS entries (
    seq         INTEGER PRIMARY KEY,
    txn         INTEGER NOT NULL,
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,          -- canonical JSON of the key; '' for a truncate
    op          TEXT NOT NULL,
    commit_time TEXT NOT NULL,
    record      TEXT NOT NULL           -- the record as served, JSON
);
CREATE INDEX IF NOT EXISTS entries_tombstones ON entries (seq) WHERE op IN ('delete', 'truncate');

-- Large values of live rows, stored once instead of in every record of the row (large.rs).
CREATE TABLE IF NOT EXISTS large_values (
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    name       TEXT NOT NULL,           -- the column
    value      TEXT NOT NULL,           -- its JSON
    PRIMARY KEY (collection, key, name)
);

-- Each source's position: where to resume so that nothing is skipped or repeated.
CREATE TABLE IF NOT EXISTS positions (
    source     TEXT PRIMARY KEY,
    position   TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
";

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Columns added after the first release, with how to fill them in an older log.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    (
        "source",
        "ALTER TABLE entries ADD COLUMN source TEXT NOT NULL DEFAULT ''",
        "UPDATE entries SET source = coalesce(json_extract(record, '$.source'), '')",
    ),
    // Row scopes (see `scope.rs`): filled by `scope::reconcile` from the configured columns.
    (
        "scope",
        "ALTER TABLE entries ADD COLUMN scope TEXT NOT NULL DEFAULT ''",
        "DELETE FROM meta WHERE name = 'scope_columns'",
    ),
    // Where the record's large values stored apart go (large.rs); NULL: none, as in every
    // older entry, whose values are all in its record.
    ("large", "ALTER TABLE entries ADD COLUMN large TEXT", ""),
];

/// Brings an older log file up to the current schema (idempotent).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (column, add, fill) in MIGRATIONS {
        let present: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('entries') WHERE name = ?1)",
            [column],
            |row| row.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("BEGIN; {add}; {fill}; COMMIT;"))?;
        }
    }
    // The scope index holds scoped entries only (scope != ''), so that a log without row
    // scopes pays for two indexes per entry, not three; an older log's full index is rebuilt.
    let scope_index: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'entries_by_scope'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if scope_index.is_some_and(|sql| !sql.contains("WHERE")) {
        conn.execute_batch("DROP INDEX entries_by_scope")?;
    }
    // No index on `source`: only a source reset reads by it, and that is rare enough to scan.
    // Compaction by (collection, key, scope) instead of (collection, key); indexes for scoped
    // and per-collection reads.
    // The key index leads with the key: keys differ in their first bytes, while every entry of
    // a collection shares its name, which a (collection, …) index compares at every step.
    conn.execute_batch(
        "DROP INDEX IF EXISTS entries_by_source;
         DROP INDEX IF EXISTS entries_by_key;
         DROP INDEX IF EXISTS entries_by_scoped_key;
         CREATE UNIQUE INDEX IF NOT EXISTS entries_by_key_first ON entries (key, collection, scope);
         CREATE INDEX IF NOT EXISTS entries_by_scope ON entries (collection, scope, seq) WHERE scope != '';
         CREATE INDEX IF NOT EXISTS entries_by_collection ON entries (collection, seq);",
    )
}

/// Opens (creating if needed) the log for writing. WAL mode lets readers work beside the one
/// writer; `synchronous = FULL` makes a commit durable before we acknowledge upstream.
pub fn open_for_writing(dir: &Path) -> rusqlite::Result<Connection> {
    // NO_MUTEX: only the writer thread ever uses this connection, so SQLite's own locking
    // per call is pure cost.
    let conn = Connection::open_with_flags(
        log_path(dir),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Room for every statement the writer runs (rusqlite keeps 16), so that none is evicted
    // and prepared again.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // KiB: a bounded page cache.
    conn.pragma_update(None, "cache_size", -32_000)?;
    // Checkpoints normally run on their own thread (checkpoint.rs); this is the valve that
    // bounds the WAL (64 MiB of 4 KiB pages) when that thread cannot keep up.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// SQLite's own checkpoint inside the writer's commit, once the WAL holds this many pages.
pub const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_000;

/// Opens the log for the checkpoint thread: read-write (a checkpoint writes the database file)
/// but never used for transactions.
pub fn open_for_checkpoints(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        log_path(dir),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Opens the log read-only (for the HTTP readers and tools).
pub fn open_for_reading(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        log_path(dir),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "cache_size", -8_000)?;
    Ok(conn)
}

pub fn get_meta(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |row| {
        row.get(0)
    })
    .optional()
}

pub fn set_meta(conn: &Connection, name: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [name, value],
    )?;
    Ok(())
}

/// The stored position of `source`, if it ever committed.
pub fn position(conn: &Connection, source: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT position FROM positions WHERE source = ?1")?
        .query_row([source], |row| row.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope_index_sql(conn: &Connection) -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'entries_by_scope'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    }

    #[test]
    fn an_older_full_scope_index_becomes_partial() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_for_writing(dir.path()).unwrap();
        assert!(scope_index_sql(&conn).ends_with("WHERE scope != ''"));
        conn.execute_batch(
            "DROP INDEX entries_by_scope;
             CREATE INDEX entries_by_scope ON entries (collection, scope, seq);",
        )
        .unwrap();
        drop(conn);
        let conn = open_for_writing(dir.path()).unwrap();
        assert!(
            scope_index_sql(&conn).ends_with("WHERE scope != ''"),
            "{}",
            scope_index_sql(&conn)
        );
    }

    #[test]
    fn an_older_log_gains_the_large_column() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_for_writing(dir.path()).unwrap();
        conn.execute_batch("ALTER TABLE entries DROP COLUMN large")
            .unwrap();
        drop(conn);
        let conn = open_for_writing(dir.path()).unwrap();
        let present: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('entries') WHERE name = 'large')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(present);
    }

    #[test]
    fn an_older_collection_first_key_index_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_for_writing(dir.path()).unwrap();
        conn.execute_batch(
            "DROP INDEX entries_by_key_first;
             CREATE UNIQUE INDEX entries_by_scoped_key ON entries (collection, key, scope);",
        )
        .unwrap();
        drop(conn);
        let conn = open_for_writing(dir.path()).unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'entries_by_%key%'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, vec!["entries_by_key_first".to_string()]);
    }
}
