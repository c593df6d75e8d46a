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

mod text_format;

use super::catalog::{self, CatalogError, TypeCache};
use super::changes::{ShapeError, TableShape};
use super::filters::TableSpec;
use super::pgoutput::{Relation, RelationColumn, ReplicaIdentity, TupleValue};
use super::Lsn;
use crate::config::split_table_name;
use crate::log::{Log, LogError, ReadFrom, RowFilter};
use crate::record::{Change, TxMeta};
use crate::source::{CopyState, SourceStatus};
use crate::telemetry;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use text_format::TextRows;
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
    /// The columns and row filter each table was copied with ([`TableSpec::to_text`]),
    /// for those that have any: a table whose spec changed is copied again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub specs: BTreeMap<String, String>,
    /// Append-only tables: the snapshot position of their copy. The stream's rows of such a
    /// table committed before it are in the copy (under other synthetic keys): dropped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_from: BTreeMap<String, String>,
}

impl CopiedTables {
    /// Whether `table` was copied, with `spec`.
    pub fn has(&self, table: &str, spec: Option<&TableSpec>) -> bool {
        let wanted = spec.filter(|s| !s.is_whole()).map(TableSpec::to_text);
        self.tables.contains(table) && self.specs.get(table) == wanted.as_ref()
    }

    fn mark_copied(&mut self, table: &str, spec: Option<&TableSpec>) {
        self.tables.insert(table.to_string());
        match spec.filter(|s| !s.is_whole()) {
            Some(spec) => self.specs.insert(table.to_string(), spec.to_text()),
            None => self.specs.remove(table),
        };
    }
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
    /// The columns and rows it is copied with.
    spec: Option<TableSpec>,
}

/// Reads a table's columns, identity and size from the catalog, as pgoutput would describe it.
pub async fn describe(
    client: &Client,
    types: &mut TypeCache,
    table: &str,
    spec: Option<&TableSpec>,
    append_only: bool,
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
    let published = spec.and_then(|s| s.columns.as_ref());
    for column in &columns {
        let name: String = column.get(0);
        // Only the publication's column list, as the stream's Relation message has it.
        if published.is_some_and(|list| !list.contains(&name)) {
            continue;
        }
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
    let row_filter = spec.and_then(|s| s.row_filter.as_ref());
    // An append-only row's synthetic key comes from where it lies (a leading column).
    let list = if append_only {
        let mut with_origin = vec!["tableoid::oid::text || ':' || ctid::text".to_string()];
        with_origin.extend(list);
        with_origin
    } else {
        list
    };
    let kind = if append_only && kind != "p" {
        // A query: COPY of a table cannot add the origin column.
        "query".to_string()
    } else {
        kind
    };
    // A partitioned table has no rows of its own: COPY reads its partitions through a query;
    // a row filter is a query's too.
    let statement = if let Some(filter) = row_filter {
        format!(
            "COPY (SELECT {} FROM {quoted} WHERE ({filter})) TO STDOUT",
            list.join(", ")
        )
    } else if kind == "p" || kind == "query" {
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
    let shape = if append_only {
        TableShape::new_append_only(&relation, value_types)
    } else {
        TableShape::new(&relation, &primary_key, value_types)?
    };
    Ok(CopyTable {
        shape,
        statement,
        estimate: (reltuples >= 0.0).then_some(reltuples as u64),
        spec: spec.cloned(),
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
    /// Tables' column lists and row filters (those that have one).
    pub specs: Arc<BTreeMap<String, TableSpec>>,
    /// The append-only tables (rows keyed by their origin).
    pub append_only: Arc<BTreeSet<String>>,
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
            let append_only = self.append_only.contains(table);
            tables.push(
                describe(
                    &client,
                    &mut types,
                    table,
                    self.specs.get(table),
                    append_only,
                )
                .await?,
            );
        }
        let estimate: u64 = tables.iter().filter_map(|t| t.estimate).sum();
        let mut progress = Progress::new(self, pending.len(), estimate);
        for table in &tables {
            self.copy_table(&client, table, &mut copied, &mut progress)
                .await?;
            // Beside the stream, the table may have been copied before (a copy cut short, a
            // partition attached or detached): rows it no longer has leave the log.
            if let Some(floor) = self.floor {
                self.sweep_stale(&table.shape.collection, floor, &copied)
                    .await?;
            }
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
        copied.mark_copied(&collection, table.spec.as_ref());
        if table.shape.append_only {
            copied
                .append_from
                .insert(collection.clone(), self.position.to_string());
        }
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
        let append_only = table.shape.append_only;
        let width = table.shape.columns.len() + usize::from(append_only);
        let mut rows = TextRows::default();
        let mut batch = Vec::with_capacity(ROWS_PER_COMMIT);
        while let Some(chunk) = stream.next().await {
            rows.push(&chunk.map_err(query_error)?);
            while let Some(values) = rows.next_row(width).map_err(|message| CopyError::Format {
                table: collection.clone(),
                message: message.to_string(),
            })? {
                batch.push(if append_only {
                    copied_append_only(&table.shape, values)?
                } else {
                    table.shape.insert(&values)?
                });
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

    /// Deletes the keys of `collection` whose live entry is at or below `floor`: the copy
    /// rewrote every row of its snapshot and the stream every key it touched since, so what
    /// is left there is a row the table no longer has. Read a page at a time.
    async fn sweep_stale(
        &self,
        collection: &str,
        floor: u64,
        copied: &CopiedTables,
    ) -> Result<(), CopyError> {
        #[derive(Deserialize)]
        struct Entry {
            op: crate::record::Op,
            key: Option<crate::record::Row>,
        }
        let filter = Arc::new(RowFilter::collections(Some(&[collection.to_string()])));
        let mut after = 0;
        let mut swept = 0u64;
        loop {
            let page = self
                .log
                .page(ReadFrom::Seq(after), filter.clone(), 1000, 1 << 20)
                .await?;
            let mut deletes = Vec::new();
            let mut past_floor = !page.has_more;
            for entry in &page.entries {
                if entry.seq > floor {
                    past_floor = true;
                    break;
                }
                after = entry.seq;
                let read: Entry = serde_json::from_str(&entry.record).map_err(|e| {
                    LogError::Corrupt(format!("an entry of {collection} is unreadable: {e}"))
                })?;
                if matches!(
                    read.op,
                    crate::record::Op::Insert | crate::record::Op::Update
                ) {
                    deletes.push(Change {
                        collection: collection.to_string(),
                        op: crate::record::Op::Delete,
                        key: read.key,
                        ..Change::default()
                    });
                }
            }
            swept += deletes.len() as u64;
            self.write(deletes, copied).await?;
            if past_floor || page.entries.is_empty() {
                break;
            }
        }
        if swept > 0 {
            tracing::info!(source = %self.source, collection, rows = swept, "rows no longer in the table deleted");
        }
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

/// A copied row of an append-only table: the leading `<table oid>:<ctid>` is its key.
fn copied_append_only(
    shape: &TableShape,
    mut values: Vec<TupleValue>,
) -> Result<Change, CopyError> {
    let origin = match values.remove(0) {
        TupleValue::Text(text) => String::from_utf8_lossy(&text).into_owned(),
        _ => String::new(),
    };
    let mut change = shape.insert(&values)?;
    change.key = Some(TableShape::synthetic_key(format!("copy:{origin}")));
    Ok(change)
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

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_tables_round_trip_through_their_stored_form() {
        let mut copied = CopiedTables::default();
        copied.tables.insert("public.a".into());
        assert_eq!(CopiedTables::parse(&copied.to_json()).unwrap(), copied);
        assert!(CopiedTables::parse("nonsense").is_err());
        assert_eq!(CopiedTables::key("app"), "app#copy");
    }
}
