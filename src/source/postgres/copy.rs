//! The initial copy: the rows that existed before streaming began, read from a snapshot with
//! `COPY … TO STDOUT` (streamed, never a whole table in memory) and written into the log as
//! inserts, a bounded batch per log commit.
//!
//! The snapshot comes from a replication slot, so it is consistent with the stream:
//! - On a source's first start the permanent slot exports it, and streaming starts from the
//!   slot's consistent point once the copy has finished.
//! - For tables added to the config later, or a copy that was cut short, a temporary slot exports
//!   it while the permanent slot keeps streaming. The stream delivers every change of those tables
//!   committed after they joined the publication, so a copied row is skipped when the stream has
//!   already written its key since the copy began ([`crate::log::LogTxn::append_copied`]); every
//!   other key ends at the stream's last version or the snapshot's, whichever is newer.
//!
//! Which tables are complete is kept in the log (position key `<source>#copy`), committed with
//! each table's last rows, so a restarted relay copies only what is missing.

use super::catalog::{self, CatalogError, TypeCache};
use super::changes::{ShapeError, TableShape};
use super::pgoutput::{Relation, RelationColumn, ReplicaIdentity, TupleValue};
use super::Lsn;
use crate::config::split_table_name;
use crate::log::{Log, LogError};
use crate::record::{Change, TxMeta};
use crate::source::{CopyState, SourceStatus};
use crate::telemetry;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::Client;

/// Rows per log commit: bounds memory and how long the copy holds the log's write lock.
const ROWS_PER_COMMIT: usize = 5_000;
/// How often progress goes to the log output.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("copying {table}: {}", super::pg_error::describe(.source))]
    Query {
        table: String,
        source: tokio_postgres::Error,
    },
    #[error("preparing the copy snapshot: {}", super::pg_error::describe(.0))]
    Snapshot(tokio_postgres::Error),
    #[error("copying {table}: malformed COPY output: {message}")]
    Format { table: String, message: String },
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("log: {0}")]
    Log(#[from] LogError),
}

/// The tables whose copy finished, as stored in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedTables {
    pub tables: BTreeSet<String>,
}

impl CopiedTables {
    /// The log position key under which a source's copy progress is stored.
    pub fn key(source: &str) -> String {
        format!("{source}#copy")
    }

    pub fn parse(text: &str) -> Result<CopiedTables, LogError> {
        serde_json::from_str(text).map_err(|e| {
            LogError::Corrupt(format!(
                "the stored copy progress {text:?} is unreadable: {e}"
            ))
        })
    }

    /// The stored form (see [`CopiedTables::parse`]).
    pub fn to_json(&self) -> String {
        // Serializing a set of strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{\"tables\":[]}".into())
    }
}

/// A table ready to copy: its shape (the same as the stream's) and the COPY statement.
pub struct CopyTable {
    pub shape: TableShape,
    statement: String,
    /// `pg_class.reltuples`, when the table was ever analyzed.
    estimate: Option<u64>,
}

/// Reads a table's columns, identity and size from the catalog, as pgoutput would describe it.
pub async fn describe(
    client: &Client,
    types: &mut TypeCache,
    table: &str,
) -> Result<CopyTable, CopyError> {
    let (schema, name) = split_table_name(table)
        .ok_or_else(|| CatalogError::Unusable(format!("table {table:?} is not schema.table")))?;
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.relkind::text, c.reltuples::float8
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .map_err(CatalogError::from)?
        .ok_or_else(|| CatalogError::Unusable(format!("table {table} does not exist")))?;
    let oid: u32 = row.get(0);
    let identity: String = row.get(1);
    let kind: String = row.get(2);
    let reltuples: f64 = row.get(3);
    // Generated columns are not published by pgoutput (PG 15): leave them out here too.
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod
               FROM pg_attribute a
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(CatalogError::from)?;
    let primary_key = catalog::primary_key(client, oid).await?;
    let (replica_identity, identity_columns) = match identity.as_str() {
        "f" => (ReplicaIdentity::Full, vec![]),
        "i" => (
            ReplicaIdentity::Index,
            catalog::replica_identity_index(client, oid).await?,
        ),
        "n" => (ReplicaIdentity::Nothing, vec![]),
        _ => (ReplicaIdentity::Default, primary_key.clone()),
    };
    let mut relation_columns = Vec::with_capacity(columns.len());
    let mut value_types = Vec::with_capacity(columns.len());
    for column in &columns {
        let name: String = column.get(0);
        let type_oid: u32 = column.get(1);
        value_types.push(types.resolve(client, type_oid).await?);
        relation_columns.push(RelationColumn {
            is_key: replica_identity == ReplicaIdentity::Full || identity_columns.contains(&name),
            name,
            type_oid,
            type_modifier: column.get(2),
        });
    }
    let list: Vec<String> = relation_columns
        .iter()
        .map(|c| catalog::quote_ident(&c.name))
        .collect();
    let quoted = catalog::quote_table(table);
    // A partitioned table has no rows of its own: COPY reads its partitions through a query.
    let statement = if kind == "p" {
        format!("COPY (SELECT {} FROM {quoted}) TO STDOUT", list.join(", "))
    } else {
        format!("COPY {quoted} ({}) TO STDOUT", list.join(", "))
    };
    let relation = Relation {
        id: oid,
        namespace: schema.to_string(),
        name: name.to_string(),
        replica_identity,
        columns: relation_columns,
    };
    Ok(CopyTable {
        shape: TableShape::new(&relation, &primary_key, value_types)?,
        statement,
        estimate: (reltuples >= 0.0).then_some(reltuples as u64),
    })
}

/// One run of the copy: which source, where its rows go, and what it reports.
pub struct Copier {
    pub source: Arc<str>,
    pub log: Log,
    pub status: Arc<watch::Sender<SourceStatus>>,
    /// For a copy beside the running stream: the log's head when the copy began (see the
    /// module doc). `None` when nothing else writes the source meanwhile (first start).
    pub floor: Option<u64>,
    /// The snapshot's consistent point, recorded as the copied rows' position.
    pub position: Lsn,
    /// TLS for the copy's query connection, as for the source's other connections.
    pub tls: super::tls::PgTls,
}

impl Copier {
    /// Copies `pending` from the exported snapshot `snapshot` over a new connection, adding each
    /// finished table to `copied` in the same log commit as its last rows.
    pub async fn run(
        &self,
        pg_config: &tokio_postgres::Config,
        session_params: &[(&str, &str)],
        snapshot: &str,
        pending: &[String],
        mut copied: CopiedTables,
    ) -> Result<CopiedTables, CopyError> {
        let client = catalog::connect_tls(pg_config, &self.tls)
            .await
            .map_err(CopyError::Snapshot)?;
        let mut setup = String::new();
        for (name, value) in session_params {
            setup.push_str(&format!("SET {name} = {};\n", quote_literal(value)));
        }
        setup.push_str(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSET TRANSACTION SNAPSHOT {};",
            quote_literal(snapshot)
        ));
        client
            .batch_execute(&setup)
            .await
            .map_err(CopyError::Snapshot)?;

        let mut types = TypeCache::default();
        let mut tables = Vec::with_capacity(pending.len());
        for table in pending {
            tables.push(describe(&client, &mut types, table).await?);
        }
        let estimate: u64 = tables.iter().filter_map(|t| t.estimate).sum();
        let mut progress = Progress::new(self, pending.len(), estimate);
        for table in &tables {
            self.copy_table(&client, table, &mut copied, &mut progress)
                .await?;
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(CopyError::Snapshot)?;
        progress.finish();
        Ok(copied)
    }

    async fn copy_table(
        &self,
        client: &Client,
        table: &CopyTable,
        copied: &mut CopiedTables,
        progress: &mut Progress<'_>,
    ) -> Result<(), CopyError> {
        let collection = table.shape.collection.clone();
        self.log
            .set_columns(&collection, &table.shape.column_infos())
            .await?;
        progress.start_table(&collection);
        // Reading and decoding overlap with the log writing the previous batch.
        let (batches, mut ready) = tokio::sync::mpsc::channel::<Vec<Change>>(2);
        let read = self.read_table(client, table, batches);
        let write = async {
            let rows_counter = metrics::counter!(
                telemetry::COPY_ROWS,
                "source" => self.source.to_string(),
                "collection" => collection.clone()
            );
            let mut last = Vec::new();
            while let Some(batch) = ready.recv().await {
                // Hold one batch back: the table's last rows and its completion are one commit.
                let batch = std::mem::replace(&mut last, batch);
                if batch.is_empty() {
                    continue;
                }
                let written = batch.len() as u64;
                self.write(batch, copied).await?;
                rows_counter.increment(written);
                progress.add_rows(written);
            }
            Ok::<_, CopyError>((last, rows_counter))
        };
        let ((), (last, rows_counter)) = tokio::try_join!(read, write)?;
        copied.tables.insert(collection);
        let written = last.len() as u64;
        self.write(last, copied).await?;
        rows_counter.increment(written);
        progress.add_rows(written);
        progress.end_table();
        Ok(())
    }

    /// Streams the table's rows out of COPY and sends them on in batches.
    async fn read_table(
        &self,
        client: &Client,
        table: &CopyTable,
        batches: tokio::sync::mpsc::Sender<Vec<Change>>,
    ) -> Result<(), CopyError> {
        let collection = &table.shape.collection;
        let query_error = |source| CopyError::Query {
            table: collection.clone(),
            source,
        };
        let stream = client
            .copy_out(table.statement.as_str())
            .await
            .map_err(query_error)?;
        futures_util::pin_mut!(stream);
        let width = table.shape.columns.len();
        let mut rows = TextRows::default();
        let mut batch = Vec::with_capacity(ROWS_PER_COMMIT);
        while let Some(chunk) = stream.next().await {
            rows.push(&chunk.map_err(query_error)?);
            while let Some(values) = rows.next_row(width).map_err(|message| CopyError::Format {
                table: collection.clone(),
                message,
            })? {
                batch.push(table.shape.insert(&values)?);
                if batch.len() >= ROWS_PER_COMMIT {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(ROWS_PER_COMMIT));
                    if batches.send(full).await.is_err() {
                        return Ok(()); // The writing side failed; it reports why.
                    }
                }
            }
        }
        if !rows.is_empty() {
            return Err(CopyError::Format {
                table: collection.clone(),
                message: "the output ends inside a row".into(),
            });
        }
        let _ = batches.send(batch).await;
        Ok(())
    }

    async fn write(&self, batch: Vec<Change>, copied: &CopiedTables) -> Result<(), CopyError> {
        let meta = Arc::new(TxMeta {
            source: self.source.clone(),
            commit_time: crate::time::pg_micros_to_rfc3339(crate::time::pg_now_micros()),
            id: "initial-copy".into(),
            position: self.position.to_string(),
        });
        let mut txn = self.log.begin().await?;
        match (self.floor, batch.is_empty()) {
            (_, true) => {}
            (Some(floor), false) => txn.append_copied(meta, batch, floor).await?,
            (None, false) => txn.append(meta, batch).await?,
        }
        txn.commit(&CopiedTables::key(&self.source), copied.to_json())
            .await?;
        Ok(())
    }
}

/// Progress of one copy run, published to `/v1/status`, the metrics and the log output.
struct Progress<'a> {
    copier: &'a Copier,
    started: Instant,
    last_report: Instant,
    rows: u64,
    estimate: u64,
    tables_total: usize,
    tables_done: usize,
}

impl<'a> Progress<'a> {
    fn new(copier: &'a Copier, tables_total: usize, estimate: u64) -> Progress<'a> {
        copier.status.send_modify(|s| {
            s.initial_copy.state = CopyState::Copying;
            s.initial_copy.tables_total = tables_total;
            s.initial_copy.tables_done = 0;
            s.initial_copy.rows_copied = 0;
            s.initial_copy.rows_estimated = Some(estimate);
        });
        metrics::gauge!(telemetry::COPY_TABLES_REMAINING, "source" => copier.source.to_string())
            .set(tables_total as f64);
        tracing::info!(source = %copier.source, tables = tables_total, estimated_rows = estimate, "initial copy started");
        let now = Instant::now();
        Progress {
            copier,
            started: now,
            last_report: now,
            rows: 0,
            estimate,
            tables_total,
            tables_done: 0,
        }
    }

    fn start_table(&self, table: &str) {
        tracing::info!(source = %self.copier.source, table, "copying table");
        self.copier
            .status
            .send_modify(|s| s.initial_copy.current = Some(table.to_string()));
    }

    fn add_rows(&mut self, rows: u64) {
        self.rows += rows;
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (elapsed > 0.0).then(|| self.rows as f64 / elapsed);
        let eta = rate
            .filter(|r| *r > 0.0)
            .map(|r| (self.estimate.saturating_sub(self.rows) as f64 / r).ceil() as u64);
        let copied = self.rows;
        self.copier.status.send_modify(|s| {
            s.initial_copy.rows_copied = copied;
            s.initial_copy.rows_per_second = rate.map(|r| r.round());
            s.initial_copy.eta_seconds = eta;
        });
        if self.last_report.elapsed() >= PROGRESS_EVERY {
            self.last_report = Instant::now();
            tracing::info!(
                source = %self.copier.source,
                rows = copied,
                estimated_rows = self.estimate,
                tables_done = self.tables_done,
                tables = self.tables_total,
                rows_per_second = rate.unwrap_or(0.0).round(),
                eta_seconds = eta.unwrap_or(0),
                "initial copy progress"
            );
        }
    }

    fn end_table(&mut self) {
        self.tables_done += 1;
        let done = self.tables_done;
        self.copier
            .status
            .send_modify(|s| s.initial_copy.tables_done = done);
        metrics::gauge!(telemetry::COPY_TABLES_REMAINING, "source" => self.copier.source.to_string())
            .set((self.tables_total - done) as f64);
    }

    fn finish(&self) {
        let elapsed = self.started.elapsed();
        self.copier.status.send_modify(|s| {
            s.initial_copy.state = CopyState::Done;
            s.initial_copy.current = None;
            s.initial_copy.eta_seconds = Some(0);
        });
        tracing::info!(
            source = %self.copier.source,
            rows = self.rows,
            tables = self.tables_total,
            seconds = elapsed.as_secs_f64(),
            rows_per_second = (self.rows as f64 / elapsed.as_secs_f64().max(1e-3)).round(),
            "initial copy finished"
        );
    }
}

/// Splits `COPY … TO STDOUT` text-format output, arriving in arbitrary chunks, into rows.
#[derive(Default)]
pub struct TextRows {
    pending: BytesMut,
}

impl TextRows {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// Bytes received that do not yet form a whole row.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next complete row, which must have `width` fields.
    pub fn next_row(&mut self, width: usize) -> Result<Option<Vec<TupleValue>>, String> {
        let Some(end) = self.pending.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line = self.pending.split_to(end + 1).freeze().slice(..end);
        parse_line(&line, width).map(Some)
    }
}

/// One text-format line: fields split by tab, `\N` for NULL, backslash escapes.
fn parse_line(line: &Bytes, width: usize) -> Result<Vec<TupleValue>, String> {
    let mut values = Vec::with_capacity(width);
    if width == 0 {
        return if line.is_empty() {
            Ok(values)
        } else {
            Err("a row with values for a table without columns".into())
        };
    }
    let mut start = 0;
    for field_end in line
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\t')
        .map(|(i, _)| i)
        .chain(std::iter::once(line.len()))
    {
        let field = line.slice(start..field_end);
        start = field_end + 1;
        values.push(if &field[..] == b"\\N" {
            TupleValue::Null
        } else if field.contains(&b'\\') {
            TupleValue::Text(unescape(&field)?)
        } else {
            TupleValue::Text(field)
        });
    }
    if values.len() != width {
        return Err(format!(
            "a row has {} fields, the table has {width} columns",
            values.len()
        ));
    }
    Ok(values)
}

/// Undoes COPY's text-format escaping (`\\`, `\n`, `\t`, `\b`, `\f`, `\r`, `\v`, octal
/// `\ooo` and hex `\xhh`; any other escaped character stands for itself).
fn unescape(field: &[u8]) -> Result<Bytes, String> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let byte = field[i];
        i += 1;
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let Some(&next) = field.get(i) else {
            return Err("a field ends with a lone backslash".into());
        };
        i += 1;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    Ok(Bytes::from(out))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn splits_rows_across_chunks_and_fields_by_tab() {
        let mut rows = TextRows::default();
        rows.push(b"1\thello\t\\N\n2\twor");
        assert_eq!(
            rows.next_row(3).unwrap(),
            Some(vec![text("1"), text("hello"), TupleValue::Null])
        );
        assert_eq!(rows.next_row(3).unwrap(), None);
        assert!(!rows.is_empty());
        rows.push(b"ld\t\n");
        assert_eq!(
            rows.next_row(3).unwrap(),
            Some(vec![text("2"), text("world"), text("")])
        );
        assert!(rows.is_empty());
    }

    #[test]
    fn undoes_every_escape() {
        let mut rows = TextRows::default();
        rows.push(b"a\\tb\\nc\\\\d\\r\\b\\f\\v\t\\101\\x41\\x4a\\q\t\\\\N\n");
        assert_eq!(
            rows.next_row(3).unwrap(),
            Some(vec![
                text("a\tb\nc\\d\r\x08\x0c\x0b"),
                text("AAJq"),
                text("\\N"),
            ])
        );
    }

    #[test]
    fn a_wrong_field_count_or_a_lone_backslash_is_an_error() {
        let mut rows = TextRows::default();
        rows.push(b"1\t2\n");
        assert!(rows.next_row(3).unwrap_err().contains("2 fields"));
        rows.push(b"ab\\\n");
        assert!(rows.next_row(1).unwrap_err().contains("lone backslash"));
    }

    #[test]
    fn copied_tables_round_trip_through_their_stored_form() {
        let mut copied = CopiedTables::default();
        copied.tables.insert("public.a".into());
        assert_eq!(CopiedTables::parse(&copied.to_json()).unwrap(), copied);
        assert!(CopiedTables::parse("nonsense").is_err());
        assert_eq!(CopiedTables::key("app"), "app#copy");
    }
}
